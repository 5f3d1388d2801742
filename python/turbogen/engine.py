"""Continuous batching: :class:`Engine` and :func:`generate_batch` (implemented in :mod:`turbogen.serving`)."""

from .serving import Engine, FinishReason, RequestHandle, RequestOutput, generate_batch

__all__ = ["Engine", "FinishReason", "RequestHandle", "RequestOutput", "generate_batch"]
