"""``synced_gpus=True`` across two processes (torch.distributed, gloo on the CPU): every rank keeps making model
calls until every rank has finished, the ranks make the same number of model calls, and each rank's output is the
output of the same call run alone (greedy search, beam search, sampling, DoLa)."""

from __future__ import annotations

import datetime
import os
import pickle
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import turbogen
from turbogen.errors import UnsupportedByTurbogen

# Per rank: (prompt token lists, generation arguments). Rank 0 stops long before rank 1.
RANK_CALLS = {
    0: [([[5, 9, 12], [7, 3]], dict(max_new_tokens=2)),
        ([[5, 9, 12]], dict(max_new_tokens=2, num_beams=2)),
        ([[8, 8, 4]], dict(max_new_tokens=3, do_sample=True, seed=11)),
        ([[5, 9, 12]], dict(max_new_tokens=2, dola_layers="low"))],
    1: [([[4, 4, 6, 1, 20]], dict(max_new_tokens=7)),
        ([[6, 2, 2]], dict(max_new_tokens=6, num_beams=3, num_return_sequences=2)),
        ([[8, 8, 4], [9, 1]], dict(max_new_tokens=5, do_sample=True, seed=11)),
        ([[6, 2, 2, 9]], dict(max_new_tokens=5, dola_layers="high", repetition_penalty=1.2))],
}


def _run_calls(rank: int, synced: bool) -> list:
    from tiny_models import tiny_model

    model = tiny_model("llama")
    results = []
    for prompts, arguments in RANK_CALLS[rank]:
        calls = []
        handle = model.register_forward_hook(lambda *_: calls.append(1))
        try:
            out = turbogen.generate(model, prompts, pad_token_id=0, synced_gpus=synced, **arguments)
        finally:
            handle.remove()
        results.append((out.tolist(), len(calls)))
    return results


def _worker(rank: int, world_size: int, init_file: str, output_dir: str) -> None:
    torch.set_num_threads(1)
    # A rank left waiting in a collective (a broken sync) fails after a minute instead of hanging the suite.
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = _run_calls(rank, synced=True)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(output_dir, f"rank{rank}.pkl"), "wb") as handle:
        pickle.dump(results, handle)


@pytest.mark.skipif(sys.platform != "linux", reason="forks the two ranks (fast: no re-import), Linux only")
def test_two_ranks_stay_in_step_and_match_single_process_runs(tmp_path):
    from tiny_models import tiny_model

    tiny_model("llama")  # built once here, inherited by the forked ranks
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    synced = [pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes()) for rank in range(2)]
    alone = [_run_calls(rank, synced=False) for rank in range(2)]
    for rank in range(2):
        assert [tokens for tokens, _ in synced[rank]] == [tokens for tokens, _ in alone[rank]], rank
    for call in range(len(RANK_CALLS[0])):
        forwards = [synced[rank][call][1] for rank in range(2)]
        # the same number of model calls on both ranks: the longer rank's count (rank 0 adds dummy ones)
        assert forwards[0] == forwards[1] == alone[1][call][1], (call, forwards)
        assert alone[0][call][1] < forwards[0], call


def test_synced_gpus_needs_a_process_group():
    from tiny_models import tiny_model

    with pytest.raises(ValueError, match="init_process_group"):
        turbogen.generate(tiny_model("llama"), [[5, 6]], synced_gpus=True, max_new_tokens=2)


def test_synced_gpus_false_or_none_is_a_plain_call():
    from tiny_models import tiny_model

    model = tiny_model("llama")
    plain = turbogen.generate(model, [[5, 6]], max_new_tokens=3)
    for value in (False, None):
        assert torch.equal(turbogen.generate(model, [[5, 6]], max_new_tokens=3, synced_gpus=value), plain)


@pytest.mark.filterwarnings("ignore:GenerationConfig has flags:UserWarning")
def test_single_rank_group_and_refused_strategies(tmp_path):
    from tiny_models import tiny_model

    model = tiny_model("llama")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        plain = turbogen.generate(model, [[5, 6]], max_new_tokens=3)
        assert torch.equal(turbogen.generate(model, [[5, 6]], max_new_tokens=3, synced_gpus=True), plain)
        with pytest.raises(UnsupportedByTurbogen) as refusal:
            turbogen.generate(model, [[5, 6]], max_new_tokens=3, synced_gpus=True, penalty_alpha=0.6, top_k=4)
        assert refusal.value.reason == "synced_gpus with contrastive_search"
    finally:
        dist.destroy_process_group()
