"""Public kernel API. Every op validates its inputs, then runs on the backend chosen by
``backend=``, the ``TURBOGEN_BACKEND`` environment variable, or the input's device.

Each op is one declaration in the registry (``_registry.py``): its reference in ``turbogen.ref``, its
cpu / triton / cuda launchers and its output allocation; the registry does the dispatch, the
``torch.compile`` path and the ``torch.ops.turbogen.<op>`` custom op. ``gumbel_noise`` is the
sampling contract's noise (beam sampling's Gumbel-top-k); ``row_seeds`` and ``row_offsets`` turn a
scalar seed or offset into the per-row counters of the sampling contract. ``apply_penalties`` reads the
per-row token state of a :class:`PenaltyState`, which ``sample`` can also apply while it draws.
"""

from ._counters import row_offsets, row_seeds
from ._dispatch import BACKENDS, BackendStatus, available_backends
from .beam import BeamStepResult, beam_step
from .noise import gumbel_noise
from .penalties import PenaltyState, PenaltyTensors, apply_penalties
from .sampling import Sampler, filter_logits, sample
from .softmax import softmax
from .topk import topk

__all__ = ["BACKENDS", "BackendStatus", "BeamStepResult", "beam_step", "PenaltyState", "PenaltyTensors", "Sampler", "apply_penalties", "available_backends",
           "filter_logits", "gumbel_noise", "row_offsets", "row_seeds", "sample", "softmax", "topk"]
