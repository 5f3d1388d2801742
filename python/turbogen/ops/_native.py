"""The launchers of the C++ backends (``cpu``, ``cuda``): the only module that calls ``turbogen._C``.

Each ``launch_<op>`` takes validated tensors (outputs preallocated), passes their addresses, sizes and
strides to the extension, and returns nothing; the extension checks what it can and raises on bad
arguments instead of reading or writing out of bounds.
"""

from __future__ import annotations

import torch

from .. import _ext


def _address(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _row_stride(tensor: torch.Tensor) -> int:
    return tensor.stride(0) if tensor.shape[0] > 1 else tensor.shape[1]


def launch_sample(backend: str, logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, min_p: torch.Tensor, seed: torch.Tensor | None, offset: torch.Tensor | None,
                  tokens: torch.Tensor | None, logprobs: torch.Tensor | None, filtered: torch.Tensor | None) -> None:
    """Sampling / filtering on ``backend`` ("cpu" or "cuda"), writing whichever outputs are given."""
    rows, vocab = logits.shape
    args = (_address(logits), rows, vocab, _row_stride(logits), _ext.dtype_code(logits.dtype),
            _address(temperature), temperature.numel() != 1, _address(top_k), top_k.numel() != 1,
            _address(top_p), top_p.numel() != 1, _address(min_p), min_p.numel() != 1,
            _address(seed), _address(offset), offset is not None and offset.numel() != 1,
            _address(tokens), _address(logprobs), _address(filtered))
    extension = _ext.extension()
    if backend == "cpu":
        extension.sample_cpu(*args)
    elif backend == "cuda":
        workspace = torch.empty(extension.sampling_workspace_bytes(rows, vocab), dtype=torch.uint8,
                                device=logits.device)
        extension.sample_cuda(*args, workspace.data_ptr(), _ext.cuda_stream_handle(logits.device))
    else:
        raise ValueError(f"backend must be 'cpu' or 'cuda' for the native sampling launcher, got {backend!r}")


def launch_softmax(backend: str, logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor) -> None:
    """Row-wise softmax on ``backend`` ("cpu" or "cuda") into ``out``."""
    rows, cols = logits.shape
    args = (logits.data_ptr(), out.data_ptr(), temperature.data_ptr(), rows, cols, _row_stride(logits),
            _ext.dtype_code(logits.dtype), temperature.numel() != 1)
    if backend == "cpu":
        _ext.extension().softmax_cpu(*args)
    elif backend == "cuda":
        _ext.extension().softmax_cuda(*args, _ext.cuda_stream_handle(logits.device))
    else:
        raise ValueError(f"backend must be 'cpu' or 'cuda' for the native softmax launcher, got {backend!r}")


def launch_topk(backend: str, scores: torch.Tensor, k: int, values: torch.Tensor, indices: torch.Tensor) -> None:
    """Row-wise top-k on ``backend`` ("cpu") into ``values`` and ``indices``."""
    if backend != "cpu":
        raise ValueError(f"backend must be 'cpu' for the native top-k launcher, got {backend!r}")
    rows, cols = scores.shape
    if rows and k:
        _ext.extension().topk_cpu(scores.data_ptr(), values.data_ptr(), indices.data_ptr(), rows, cols,
                                  _row_stride(scores), k)
