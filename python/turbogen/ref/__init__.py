"""Pure-torch reference implementations of every op: the test oracle and the universal fallback.
Everything here is plain torch, so ``torch.compile(fullgraph=True)`` can compile it.

This package is the ``ref`` backend: the op registry (``turbogen/ops/_registry.py``) finds each op's
reference here by name, and production code reaches it only that way."""

from .beam import beam_step
from .penalties import apply_penalties
from .paged import paged_attention, write_kv
from .philox import gumbel_noise
from .sampling import filter_logits, sample
from .softmax import softmax
from .topk import topk
from .verify import verify

__all__ = ["apply_penalties", "beam_step", "filter_logits", "gumbel_noise", "paged_attention", "sample", "softmax", "topk",
           "verify", "write_kv"]
