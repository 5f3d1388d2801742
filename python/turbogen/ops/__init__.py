"""Public kernel API. Every op validates its inputs, then runs on the backend chosen by
``backend=``, the ``TURBOGEN_BACKEND`` environment variable, or the input's device."""

from ._dispatch import BACKENDS, BackendStatus, available_backends
from .sampling import Sampler, filter_logits, sample
from .softmax import softmax
from .topk import topk

__all__ = ["BACKENDS", "BackendStatus", "Sampler", "available_backends", "filter_logits", "sample", "softmax", "topk"]
