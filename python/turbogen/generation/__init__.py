"""The machinery behind :func:`turbogen.generate`, one concern per module.

- :mod:`~turbogen.generation.prepare`: resolving a call (config, inputs, special tokens, lengths, model
  kwargs, processors, stopping criteria, cache) with transformers v4.57's rules;
- :mod:`~turbogen.generation.runner`: :class:`ModelRunner` (``prefill`` / ``decode`` / ``verify`` /
  ``reorder`` / ``crop``) and its implementations over a transformers model;
- :mod:`~turbogen.generation.batch_state`: the per-row device state of a greedy / sampling batch (seeds,
  offsets, sampling filters, unfinished flags);
- :mod:`~turbogen.generation.decode`: the greedy / sampling loop as verbs (``prefill``,
  ``decode_one_token``, ``decode_n_tokens``) and the late read of the finish flag;
- :mod:`~turbogen.generation.beam_search`: vectorised beam search and beam sampling;
- :mod:`~turbogen.generation.record`: the optional per-step outputs;
- :mod:`~turbogen.generation.transition_scores`: :func:`compute_transition_scores`.
"""

from .batch_state import BatchState, NonFiniteScoresError
from .runner import DirectRunner, ModelRunner, PreparedRunner, make_runner
from .transition_scores import compute_transition_scores

__all__ = ["BatchState", "DirectRunner", "ModelRunner", "NonFiniteScoresError", "PreparedRunner",
           "compute_transition_scores", "make_runner"]
