"""Triton kernels, one op family per module, each with its launcher. Installed as ``turbogen.kernels``.

Import these modules lazily: on a machine without a GPU, Triton runs them only when
``TRITON_INTERPRET=1`` was set before the first ``@triton.jit`` module was imported.
"""
