"""Public kernel API. Every op validates its inputs, then runs on the backend chosen by
``backend=``, the ``TURBOGEN_BACKEND`` environment variable, or the input's device.

Each op is one declaration in the registry (``_registry.py``): its reference in ``turbogen.ref``, its
cpu / triton / cuda launchers and its output allocation; the registry does the dispatch, the
``torch.compile`` path and the ``torch.ops.turbogen.<op>`` custom op. ``gumbel_noise`` is the
sampling contract's noise (beam sampling's Gumbel-top-k); ``row_seeds`` and ``row_offsets`` turn a
scalar seed or offset into the per-row counters of the sampling contract. ``apply_penalties`` reads the
per-row token state of a :class:`PenaltyState`, which ``sample`` can also apply while it draws.
``verify`` checks speculative drafts against the target's logits (coupled mode: exactly ``sample`` at each
position; or rejection sampling) and returns a :class:`VerifyResult`. ``write_kv`` scatters new keys and values
into a paged KV cache (turbogen.cache.paged) and ``paged_attention`` attends packed ragged queries over it.

Arrays from other libraries: every op, and the methods of :class:`PenaltyState` and :class:`Sampler`, also
takes any array that exports DLPack (numpy, JAX, CuPy; TensorFlow tensors through
``tf.experimental.dlpack``) wherever it takes a tensor, on CPU and CUDA, without copying it, and returns
its results in the caller's array type: that of the first such argument (an op given only numbers and
torch tensors returns torch tensors). A result that is an argument (``apply_penalties(..., out=x)``)
is the caller's own object, written in place; an array an op writes must be writable, so a read-only
numpy array, a JAX array or a TensorFlow tensor given as ``out=`` raises a ValueError. JAX without
``jax_enable_x64`` holds int64 results (tokens, indices) as int32, and raises rather than wrap a value
that does not fit. Calls with torch tensors, and ``torch.compile``, are unaffected (``_interop.py``).
"""

from ._counters import row_offsets, row_seeds
from ._dispatch import BACKENDS, BackendStatus, available_backends
from .beam import BeamStep, BeamStepResult, beam_step
from .noise import gumbel_noise
from .paged_attention import paged_attention
from .penalties import PenaltyState, PenaltyTensors, apply_penalties
from .sampling import Sampler, filter_logits, sample
from .softmax import softmax
from .topk import topk
from .verify import VerifyResult, verify
from .write_kv import write_kv

__all__ = ["BACKENDS", "BackendStatus", "BeamStep", "BeamStepResult", "beam_step", "PenaltyState", "PenaltyTensors", "Sampler", "apply_penalties", "available_backends",
           "filter_logits", "gumbel_noise", "row_offsets", "row_seeds", "sample", "softmax", "topk",
           "verify", "VerifyResult", "paged_attention", "write_kv"]
