"""The launchers of the C++ backends (``cpu``, ``cuda``): the only module that calls ``turbogen._C``.

Each ``launch_<op>`` takes validated tensors (outputs preallocated), fills the op's argument struct
of the extension (``_C.<Op>Args``) by field name with their addresses, sizes, strides and dtype
code, and calls ``_C.launch_<op>_cpu(args)`` or ``_C.launch_<op>_cuda(args, stream)``. The
extension validates the struct before touching memory and raises ValueError on bad arguments
instead of reading or writing out of bounds.
"""

from __future__ import annotations

import torch

from .. import _ext


def _address(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.data_ptr()


def _row_stride(tensor: torch.Tensor) -> int:
    return tensor.stride(0) if tensor.shape[0] > 1 else tensor.shape[1]


def _per_row(tensor: torch.Tensor) -> bool:
    """Whether a ``[1]`` or ``[rows]`` parameter holds one value per row."""
    return tensor.numel() != 1


def _check_backend(backend: str, op: str, supported: tuple[str, ...]) -> None:
    if backend not in supported:
        raise ValueError(f"backend must be one of {supported} for the native {op} launcher, got {backend!r}")


def _fill(args, **fields):
    """Sets the struct's fields by name (a misspelt name raises AttributeError)."""
    for name, value in fields.items():
        setattr(args, name, value)
    return args


def launch_sample(backend: str, logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, min_p: torch.Tensor, seed: torch.Tensor | None, offset: torch.Tensor | None,
                  tokens: torch.Tensor | None, logprobs: torch.Tensor | None, filtered: torch.Tensor | None) -> None:
    """Sampling / filtering on ``backend`` ("cpu" or "cuda"), writing whichever outputs are given."""
    _check_backend(backend, "sampling", ("cpu", "cuda"))
    extension = _ext.extension()
    rows, vocab = logits.shape
    args = _fill(extension.SamplingArgs(),
                 logits=logits.data_ptr(), rows=rows, vocab=vocab, row_stride=_row_stride(logits),
                 dtype=_ext.dtype_code(logits.dtype),
                 temperature=temperature.data_ptr(), temperature_per_row=_per_row(temperature),
                 top_k=top_k.data_ptr(), top_k_per_row=_per_row(top_k),
                 top_p=top_p.data_ptr(), top_p_per_row=_per_row(top_p),
                 min_p=min_p.data_ptr(), min_p_per_row=_per_row(min_p),
                 seed=_address(seed), offset=_address(offset),
                 offset_per_row=offset is not None and _per_row(offset),
                 tokens=_address(tokens), logprobs=_address(logprobs), filtered=_address(filtered))
    if backend == "cpu":
        extension.launch_sample_cpu(args)
        return
    workspace = torch.empty(extension.sampling_workspace_bytes(rows, vocab), dtype=torch.uint8, device=logits.device)
    _fill(args, workspace=workspace.data_ptr(), workspace_bytes=workspace.numel())
    extension.launch_sample_cuda(args, _ext.cuda_stream_handle(logits.device))


def launch_softmax(backend: str, logits: torch.Tensor, temperature: torch.Tensor, out: torch.Tensor) -> None:
    """Row-wise softmax on ``backend`` ("cpu" or "cuda") into ``out``."""
    _check_backend(backend, "softmax", ("cpu", "cuda"))
    extension = _ext.extension()
    rows, cols = logits.shape
    args = _fill(extension.SoftmaxArgs(),
                 logits=logits.data_ptr(), out=out.data_ptr(), rows=rows, cols=cols, row_stride=_row_stride(logits),
                 dtype=_ext.dtype_code(logits.dtype),
                 temperature=temperature.data_ptr(), temperature_per_row=_per_row(temperature))
    if backend == "cpu":
        extension.launch_softmax_cpu(args)
    else:
        extension.launch_softmax_cuda(args, _ext.cuda_stream_handle(logits.device))


def launch_topk(backend: str, scores: torch.Tensor, k: int, values: torch.Tensor, indices: torch.Tensor) -> None:
    """Row-wise top-k on ``backend`` ("cpu") into ``values`` and ``indices``."""
    _check_backend(backend, "top-k", ("cpu",))
    rows, cols = scores.shape
    if rows == 0 or k == 0:  # empty outputs: nothing to write, and empty tensors have no address
        return
    extension = _ext.extension()
    args = _fill(extension.TopKArgs(),
                 scores=scores.data_ptr(), values=values.data_ptr(), indices=indices.data_ptr(),
                 rows=rows, cols=cols, row_stride=_row_stride(scores), k=k)
    extension.launch_topk_cpu(args)
