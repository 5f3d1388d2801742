"""The Engine's scheduler alone (no model), fuzzed over random workloads with requests arriving while others run:
each step stays within max_batched_tokens and max_num_seqs, its block needs fit the free blocks (the caller's slot
reservation never fails), the oldest unfinished request is served every step (no starvation), every request
finishes, and the allocator's invariants hold after every step with nothing held at the end."""

from __future__ import annotations

import random

import pytest

from turbogen.cache.paged import BlockAllocator
from turbogen.serving.request import RequestStatus
from turbogen.serving.scheduler import Scheduler


class FakeRequest:
    """What the scheduler reads of a request: its tokens, how many are in the cache, its arrival and status."""

    def __init__(self, arrival: int, prompt: int, new_tokens: int):
        self.arrival = arrival
        self.seq_id = ("fake", arrival)
        self.length = prompt
        self.final_length = prompt + new_tokens
        self.num_computed = 0
        self.num_preemptions = 0
        self.status = RequestStatus.WAITING

    @property
    def num_pending(self) -> int:
        return self.length - self.num_computed


def run_fuzz(seed: int) -> None:
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4, 16])
    requests = [FakeRequest(i, rng.randint(1, 40), rng.randint(1, 20)) for i in range(rng.randint(1, 25))]
    longest = max(r.final_length - 1 for r in requests)
    allocator = BlockAllocator(-(-longest // block_size) + rng.choice([0, 1, 5, 40]), block_size)
    budget, max_seqs = rng.choice([1, 4, 16, 128]), rng.randint(1, 8)
    scheduler = Scheduler(allocator, max_seqs, budget)
    pending = list(requests)
    finished = []
    steps = 0
    while pending or scheduler.has_work():
        while pending and (not scheduler.has_work() or rng.random() < 0.3):
            scheduler.add(pending.pop(0))
        oldest = min((r for r in scheduler.waiting + scheduler.running), key=lambda r: r.arrival)
        plan = scheduler.schedule()
        steps += 1
        assert plan, "nothing scheduled although requests wait"
        assert plan.requests[0] is oldest, "the oldest request was not served first"
        assert plan.num_tokens <= budget
        assert len(scheduler.running) <= max_seqs
        assert all(r.status is RequestStatus.RUNNING for r in plan.requests)
        for request in plan.added:
            allocator.add(request.seq_id)
        for request, count in zip(plan.requests, plan.counts):
            assert 1 <= count <= request.num_pending
            allocator.grow(request.seq_id, count)  # never OutOfBlocks: the scheduler counted the blocks
            request.num_computed += count
        for request in list(plan.requests):
            if request.num_pending == 0:  # all fed: a token is generated
                request.length += 1
                if request.length == request.final_length:
                    scheduler.remove(request)
                    request.status = RequestStatus.FINISHED
                    finished.append(request)
        allocator.check()
        assert steps < 10_000
    assert sorted(r.arrival for r in finished) == [r.arrival for r in requests]
    assert allocator.num_free_blocks == allocator.num_blocks and not allocator.sequences


@pytest.mark.parametrize("seed", range(40))
def test_scheduler_fuzz(seed):
    run_fuzz(seed)
