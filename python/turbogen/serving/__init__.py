"""``turbogen.serving``: continuous batching (issue 10).

- :mod:`~turbogen.serving.request`: a request's resolution (as ``generate`` resolves one prompt), state and output;
- :mod:`~turbogen.serving.scheduler`: which requests run in a step (FIFO, chunked prefill, preemption);
- :mod:`~turbogen.serving.selection`: the step's token choice (per-request stages, one argmax, one fused draw);
- :mod:`~turbogen.serving.engine`: :class:`Engine` (the step, streaming, memory statistics);
- :mod:`~turbogen.serving.background`: the Engine's background-thread mode and :class:`RequestHandle`;
- :mod:`~turbogen.serving.batch`: :func:`generate_batch`.
"""

from .batch import generate_batch
from .background import RequestHandle
from .engine import Engine
from .request import FinishReason, RequestOutput

__all__ = ["Engine", "FinishReason", "RequestHandle", "RequestOutput", "generate_batch"]
