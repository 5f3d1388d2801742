"""``synced_gpus=True``: generation on several processes of a ``torch.distributed`` group whose model forwards must
stay in step (DeepSpeed ZeRO-3 or FSDP gather each layer's weights with a collective inside ``forward``).

As transformers does: before each model call every rank tells the group whether it has finished (one
``all_reduce`` of a float, summed: 0 means all have); a rank that has finished keeps calling the model (a *dummy*
forward, whose output is discarded) until every rank has, so all ranks make the same number of model calls and the
same number of reductions. A rank's output is the output of the same call run alone.

Here a loop's runner is wrapped (:class:`SyncedRunner`: one reduction before each ``prefill`` / ``decode``; DoLa,
which calls the model itself, votes before each of its forwards), and after the loop :meth:`PeerSync.drain` runs
the dummy forwards (the last prompt token of each row, without a cache,
so the rank's cache and results are untouched). The reduction tensor lives on the prompt's device (a CPU tensor for
``gloo``, a CUDA one for ``nccl``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["PeerSync", "SyncedRunner", "check_synced_gpus"]


def check_synced_gpus() -> None:
    """Raise ValueError unless a ``torch.distributed`` process group is initialised."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("`synced_gpus=True` needs an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group) on every rank.")


class PeerSync:
    """The group-wide "has every rank finished" vote (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reductions = 0

    def all_finished(self, this_rank_finished: bool) -> bool:
        """One collective: True when every rank says it has finished."""
        import torch.distributed as dist

        unfinished = torch.tensor(0.0 if this_rank_finished else 1.0, device=self.device)
        dist.all_reduce(unfinished, op=dist.ReduceOp.SUM)
        self.reductions += 1
        return unfinished.item() == 0.0

    def drain(self, dummy_forward: Callable[[], Any]) -> None:
        """After this rank's loop: dummy forwards until every rank has finished."""
        while not self.all_finished(True):
            dummy_forward()


class SyncedRunner:
    """A :class:`~turbogen.generation.runner.ModelRunner` that votes "not finished" before each model call of the
    wrapped runner; everything else is the wrapped runner's."""

    def __init__(self, runner: Any, peers: PeerSync):
        self._runner = runner
        self._peers = peers

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        self._peers.all_finished(False)
        return self._runner.prefill(input_ids)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        self._peers.all_finished(False)
        return self._runner.decode(tokens)

    def __getattr__(self, name: str) -> Any:  # fed_length, past_key_values, crop, reorder, ...
        return getattr(self._runner, name)
