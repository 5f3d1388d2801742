"""A model's LM head on CPUs as one oneDNN product over a weight packed once for it.

Why: the head of a decode step is a product of a few rows by a ``[vocab, hidden]`` weight, and BLAS (MKL) runs
that shape far below the memory bandwidth on CPUs, worst at a few rows (the tiny Llama's 32000 x 256 head on
the project's machine: 3.9 ms at one row, 8.9 ms at four, 9.7 ms at eight; a 128256 x 1024 head: 33 ms at one
row, 139 ms at four). oneDNN's product over a weight reordered once into its blocked layout takes 1.5, 2.0 and
2.7 ms (33 and 36 ms for the large head); bench/RESULTS.md has the table. It differs from BLAS's product in
the last float bits (another summation order), and a row's result does not depend on the other rows of the
call (BLAS's does, from two rows up).

So turbogen uses it only where its logits are compared with plain decoding's within the cross-compilation
tolerance, not bit for bit: the Engine's ragged forwards, speculative decoding (the drafts and the target's
verification) and contrastive search's head over the chosen rows. Plain ``generate()`` keeps the model's own
head, whose logits equal transformers' bit for bit.

Cost: a second copy of the head's weight, packed on first use (26 ms for 32000 x 256, 1 s for 128256 x 1024)
and kept while the head module lives; packed again when the weight changes (its version counter moves) or is
replaced. Where the product cannot serve a call (autograd on, a compiled trace, another dtype or device) the
module's own ``F.linear`` runs.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

__all__ = ["PackedHead", "packed_heads"]

_LOCK = threading.Lock()
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Linear, tuple[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
_INSTALLED: "weakref.WeakKeyDictionary[torch.nn.Linear, int]" = weakref.WeakKeyDictionary()


def _onednn_linear_available() -> bool:
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018  (private ops: present in CPU builds with oneDNN)
        torch.ops.mkldnn._linear_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _packed_product(rows: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``[rows, out]`` = ``rows`` (``[rows, in]``, contiguous float32) times the packed ``[out, in]`` weight."""
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


def _weight_key(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
    """What identifies the values a packed copy was made from: storage, shape and in-place version."""
    parts = (weight.data_ptr(), tuple(weight.shape), weight._version)
    return parts if bias is None else parts + (bias.data_ptr(), bias._version)


class PackedHead:
    """The product ``hidden @ weight.T (+ bias)`` of an ``nn.Linear`` head through a oneDNN-packed copy of its
    weight (see the module docstring). :meth:`for_model` / :meth:`for_module` say where it applies; calling it
    computes the logits of ``[..., hidden]`` states; :meth:`installed` makes the module itself compute through
    it, for forwards turbogen does not write (a transformers model's)."""

    def __init__(self, module: torch.nn.Linear):
        self.module = module

    @classmethod
    def for_model(cls, model: Any) -> Optional["PackedHead"]:
        """The packed head of ``model``'s output embeddings, or None where it does not apply."""
        get_head = getattr(model, "get_output_embeddings", None)
        if get_head is None:
            return None
        try:
            head = get_head()
        except (AttributeError, NotImplementedError):
            return None
        return cls.for_module(head)

    @classmethod
    def for_module(cls, module: Any) -> Optional["PackedHead"]:
        """A packed head for ``module`` when it is a plain ``nn.Linear`` (not a subclass, whose forward may do
        more; not one whose ``forward`` was replaced on the instance, e.g. by an offloading hook, other than by
        :meth:`installed`) with float32 CPU parameters and oneDNN is available; else None."""
        if type(module) is not torch.nn.Linear or not _onednn_linear_available():
            return None
        replaced = vars(module).get("forward")
        if replaced is not None and not isinstance(replaced, PackedHead):
            return None
        parameters = [module.weight] + ([] if module.bias is None else [module.bias])
        if any(p.device.type != "cpu" or p.dtype != torch.float32 or p.layout != torch.strided for p in parameters):
            return None
        return cls(module)

    def _serves(self, hidden: torch.Tensor) -> bool:
        module = self.module
        return (isinstance(hidden, torch.Tensor) and hidden.dtype == torch.float32 and hidden.device.type == "cpu"
                and hidden.dim() >= 1 and hidden.shape[-1] == module.in_features and hidden.numel() > 0
                and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32
                and not (torch.is_grad_enabled() and (hidden.requires_grad or module.weight.requires_grad))
                and not torch.compiler.is_compiling())

    def _packed_weight(self) -> torch.Tensor:
        module = self.module
        weight, bias = module.weight, module.bias
        key = _weight_key(weight, bias)
        with _LOCK:
            cached = _PACKED.get(module)
            if cached is not None and cached[0] == key:
                return cached[1]
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
        with _LOCK:
            _PACKED[module] = (key, packed)
        return packed

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """``F.linear(hidden, weight, bias)`` (``[..., in_features]`` -> ``[..., out_features]``), through the
        packed weight where it serves the call (float32 CPU input, no autograd, not traced), else ``F.linear``."""
        module = self.module
        if not self._serves(hidden):
            return F.linear(hidden, module.weight, module.bias)
        bias = None if module.bias is None else module.bias.detach()
        rows = hidden.reshape(-1, module.in_features).contiguous()
        logits = _packed_product(rows, self._packed_weight(), bias)
        return logits.view(*hidden.shape[:-1], module.out_features)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Within: calling the module computes through the packed weight (its ``forward`` is this object's
        ``__call__``; restored on exit). Nests, and several threads may hold it at once: the module's own
        forward comes back when the last one leaves. Anyone else calling the module meanwhile gets the packed
        product too."""
        module = self.module
        with _LOCK:
            holders = _INSTALLED.get(module, 0)
            if holders == 0:
                module.forward = self
            _INSTALLED[module] = holders + 1
        try:
            yield
        finally:
            with _LOCK:
                holders = _INSTALLED[module] - 1
                if holders == 0:
                    del _INSTALLED[module]
                    vars(module).pop("forward", None)
                else:
                    _INSTALLED[module] = holders


@contextlib.contextmanager
def packed_heads(*models: Any) -> Iterator[None]:
    """Within: the LM head of each model (None entries skipped) computes through its packed weight wherever
    :meth:`PackedHead.for_model` applies; the others run as they are."""
    with contextlib.ExitStack() as stack:
        for model in models:
            head = PackedHead.for_model(model) if model is not None else None
            if head is not None:
                stack.enter_context(head.installed())
        yield
