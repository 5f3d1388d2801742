"""Running turbogen over datasets.

- :mod:`turbogen.integrations.batch`: :class:`~turbogen.integrations.batch.BatchGenerator`, which loads a model
  once and appends generated columns to batches of rows, with per-row seeds (no Ray needed);
- :mod:`turbogen.integrations.ray`: the same on a Ray Data dataset with an actor pool, and a loopback-only
  local Ray cluster.

Nothing is imported here: each submodule loads its own (optional) dependencies.
"""
