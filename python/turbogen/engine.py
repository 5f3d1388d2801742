"""Continuous batching: :class:`Engine` and :func:`generate_batch` (being built)."""
