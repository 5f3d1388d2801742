"""Triton kernels, one op family per module, each with its launcher. Installed as ``turbogen.kernels``.

Import these modules lazily: on a machine without a GPU, Triton runs them only when
``TRITON_INTERPRET=1`` was set before the first ``@triton.jit`` module was imported.
"""

import os


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (``TRITON_INTERPRET`` set): the launchers then choose
    fewer, larger programs and the operations the interpreter has."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
