"""Pure-torch reference implementations of every op: the test oracle and the universal fallback.
Everything here is plain torch, so ``torch.compile(fullgraph=True)`` can compile it."""

from .sampling import filter_logits, sample
from .softmax import softmax
from .topk import topk

__all__ = ["filter_logits", "sample", "softmax", "topk"]
