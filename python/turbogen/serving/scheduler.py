"""The Engine's scheduler: which requests run in the next step, with how many tokens each.

Policy (one :meth:`Scheduler.schedule` call per step):

1. The running requests, oldest first, each get their pending tokens (one decode token, or the next chunk of a
   prompt or of a recomputation), as far as ``max_batched_tokens`` allows: a prompt longer than what is left of
   the budget is fed in chunks over several steps.
2. When the free blocks cannot hold a running request's next tokens, the youngest running request is preempted
   (recompute: its blocks are freed, it goes back to the waiting queue at its arrival position, and it is
   re-prefilled later with its prompt and the tokens it generated so far), until the tokens fit; if the
   request is itself the youngest, it is the one preempted.
3. Then waiting requests are admitted in arrival order while there is a free sequence slot (``max_num_seqs``),
   budget left, and free blocks for their first chunk beyond one block per request already scheduled (head
   room for their next decode token, so a fresh admission is rarely preempted at once). Admission stops at the
   first request that does not fit: a younger request never overtakes an older one.

No starvation: the oldest request is always scheduled first and can preempt every younger one, and any single
request fits the cache alone (the Engine refuses longer ones at ``add_request``), so the oldest request always
progresses and finishes; then the next oldest is the oldest.

The scheduler only decides and reserves: it frees the blocks of preempted requests itself, and leaves the slot
reservation of the scheduled tokens to the caller (:meth:`turbogen.attention.PagedBatch.prepare`), whose block
needs it has counted.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Callable, Optional

from ..cache.paged import BlockAllocator
from .request import Request, RequestStatus

__all__ = ["ScheduledStep", "Scheduler"]


@dataclasses.dataclass
class ScheduledStep:
    """One step's plan: ``requests[i]`` feeds ``counts[i]`` tokens (from its ``num_computed`` on), packed in this
    order; ``added`` are the requests admitted by this step (their cache sequences must be created first);
    ``preempted`` lost their cache in this step."""

    requests: list
    counts: list
    added: list
    preempted: list

    @property
    def num_tokens(self) -> int:
        return sum(self.counts)

    def __bool__(self) -> bool:
        return bool(self.requests)


class Scheduler:
    """FIFO scheduling with chunked prefill and preemption by recomputation (see the module docstring).

    Args:
        allocator: the paged cache's block allocator (read for free blocks; preempted sequences are freed in it).
        max_num_seqs: most requests running at once.
        max_batched_tokens: most tokens fed by one step.
        on_preempt: called with each request preempted, after its blocks were freed.
    """

    def __init__(self, allocator: BlockAllocator, max_num_seqs: int, max_batched_tokens: int,
                 on_preempt: Optional[Callable[[Request], None]] = None):
        self.allocator = allocator
        self.max_num_seqs = max_num_seqs
        self.max_batched_tokens = max_batched_tokens
        self.on_preempt = on_preempt
        self.waiting: list = []   # by arrival
        self.running: list = []   # by arrival
        self.num_preemptions = 0

    # --- queues ---------------------------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self._insert_waiting(request)

    def remove(self, request: Request) -> None:
        """Forget ``request`` (finished or aborted); a running one's blocks are freed."""
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
            self.allocator.free(request.seq_id)
        elif request.status is RequestStatus.WAITING:
            self.waiting.remove(request)
        request.num_computed = 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _insert_waiting(self, request: Request) -> None:
        if not self.waiting or self.waiting[-1].arrival < request.arrival:
            self.waiting.append(request)  # the common case: a new request
        else:
            self.waiting.insert(bisect.bisect([r.arrival for r in self.waiting], request.arrival), request)

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.allocator.free(request.seq_id)
        request.num_computed = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        request.status = RequestStatus.WAITING
        self._insert_waiting(request)
        if self.on_preempt is not None:
            self.on_preempt(request)

    # --- the step -------------------------------------------------------------------------------------------

    def schedule(self) -> ScheduledStep:
        """The next step's plan (see the module docstring); empty when nothing can run."""
        allocator = self.allocator
        budget = self.max_batched_tokens
        reserved = 0  # blocks the scheduled tokens will take
        requests, counts, preempted = [], [], []
        position = 0
        while position < len(self.running) and budget > 0:
            request = self.running[position]
            count = min(request.num_pending, budget)
            needed = allocator.blocks_needed(request.seq_id, count)
            while needed > allocator.num_free_blocks - reserved:
                victim = self.running[-1]
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                requests.append(request)
                counts.append(count)
                reserved += needed
                budget -= count
                position += 1
                continue
            break  # the request preempted itself: every younger one is gone too
        added = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            count = min(request.num_pending, budget)
            needed = -(-count // allocator.block_size)
            if needed + reserved + len(requests) > allocator.num_free_blocks:
                break
            self.waiting.pop(0)
            request.status = RequestStatus.RUNNING
            # Kept by arrival (a re-admitted preempted request is older than some running ones).
            self.running.insert(bisect.bisect([r.arrival for r in self.running], request.arrival), request)
            requests.append(request)
            counts.append(count)
            added.append(request)
            reserved += needed
            budget -= count
        return ScheduledStep(requests, counts, added, preempted)
