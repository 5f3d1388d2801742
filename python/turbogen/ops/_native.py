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


def _penalty_fields(penalties) -> dict:
    """The penalty fields shared by ``SamplingArgs`` and ``PenaltyArgs`` (all 0 / False for ``None``):
    ``penalties`` has tensors ``mask``, ``seen`` (or None), ``generated`` (or None), and float32
    ``[1]`` or ``[rows]`` ``repetition``, ``presence``, ``frequency`` (ops/penalties.py PenaltyTensors)."""
    if penalties is None:
        return dict(penalty_mask=0, penalty_seen=0, penalty_generated=0)
    return dict(penalty_mask=penalties.mask.data_ptr(), penalty_seen=_address(penalties.seen),
                penalty_generated=_address(penalties.generated),
                repetition_penalty=penalties.repetition.data_ptr(),
                repetition_penalty_per_row=_per_row(penalties.repetition),
                presence_penalty=penalties.presence.data_ptr(), presence_penalty_per_row=_per_row(penalties.presence),
                frequency_penalty=penalties.frequency.data_ptr(),
                frequency_penalty_per_row=_per_row(penalties.frequency))


def launch_sample(backend: str, logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  top_p: torch.Tensor, min_p: torch.Tensor, seed: torch.Tensor | None, offset: torch.Tensor | None,
                  tokens: torch.Tensor | None, logprobs: torch.Tensor | None, filtered: torch.Tensor | None,
                  penalties=None) -> None:
    """Sampling / filtering on ``backend`` ("cpu" or "cuda"), writing whichever outputs are given.

    With ``penalties`` (ops/penalties.py PenaltyTensors, or None), the sampler reads the logits as
    ``apply_penalties`` would leave them, without writing them anywhere."""
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
                 tokens=_address(tokens), logprobs=_address(logprobs), filtered=_address(filtered),
                 **_penalty_fields(penalties))
    if backend == "cpu":
        extension.launch_sample_cpu(args)
        return
    workspace = torch.empty(extension.sampling_workspace_bytes(rows, vocab), dtype=torch.uint8, device=logits.device)
    _fill(args, workspace=workspace.data_ptr(), workspace_bytes=workspace.numel())
    extension.launch_sample_cuda(args, _ext.cuda_stream_handle(logits.device))


def launch_apply_penalties(backend: str, logits: torch.Tensor, penalties, out: torch.Tensor) -> None:
    """Repetition / presence / frequency penalties on ``backend`` ("cpu" or "cuda"): ``out`` (same
    shape and dtype as ``logits``, contiguous) gets ``logits`` with every marked token penalised; when
    ``out`` is ``logits`` only the penalised entries are written. ``penalties`` as in launch_sample."""
    _check_backend(backend, "apply_penalties", ("cpu", "cuda"))
    rows, vocab = logits.shape
    if rows == 0 or vocab == 0:  # nothing to write, and empty tensors have no address
        return
    extension = _ext.extension()
    args = _fill(extension.PenaltyArgs(),
                 logits=logits.data_ptr(), out=out.data_ptr(), rows=rows, vocab=vocab,
                 row_stride=_row_stride(logits), dtype=_ext.dtype_code(logits.dtype), **_penalty_fields(penalties))
    if backend == "cpu":
        extension.launch_apply_penalties_cpu(args)
    else:
        extension.launch_apply_penalties_cuda(args, _ext.cuda_stream_handle(logits.device))


def launch_accept_penalty_tokens(state, tokens: torch.Tensor) -> None:
    """Counts ``tokens`` (int64 [rows, n], contiguous, on the CPU) into the CPU penalty ``state``
    (ops/penalties.py PenaltyState): its mask, counts, lengths, ring of recent tokens and retained
    count, exactly as the torch version. An id outside [0, vocab_size) raises ValueError naming
    ``tokens``, before anything is written."""
    rows, n = tokens.shape
    if rows != state.lengths.shape[0]:
        raise ValueError(f"tokens must have one row per state row ({state.lengths.shape[0]}), got {rows}")
    if rows == 0 or n == 0:  # nothing to count, and empty tensors have no address
        return
    extension = _ext.extension()
    args = _fill(extension.PenaltyAcceptArgs(),
                 mask=state.mask.data_ptr(), seen=_address(state.seen), generated=_address(state.generated),
                 seen_from=_address(state.seen_from if state.seen is not None else None),
                 generated_from=_address(state.generated_from if state.generated is not None else None),
                 lengths=state.lengths.data_ptr(), recent=_address(state.recent if state.window > 0 else None),
                 retained=state.retained.data_ptr(), tokens=tokens.data_ptr(),
                 rows=rows, vocab=state.vocab_size, window=state.window, n=n)
    extension.launch_accept_penalty_tokens_cpu(args)


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


def launch_beam_step(backend: str, logits: torch.Tensor, running_scores: torch.Tensor, finished_scores: torch.Tensor,
                     is_finished: torch.Tensor, may_improve: torch.Tensor, eos: torch.Tensor, seeds: torch.Tensor,
                     offsets: torch.Tensor, normalized: bool, generated_length: int, max_generated_length: int,
                     length_penalty: float, early_stopping: int, all_stop: bool,
                     candidate_scores: torch.Tensor, candidate_flat: torch.Tensor, next_scores: torch.Tensor,
                     next_source: torch.Tensor, next_finished_scores: torch.Tensor, finished_source: torch.Tensor,
                     next_is_finished: torch.Tensor, next_may_improve: torch.Tensor,
                     row_is_finite: torch.Tensor) -> None:
    """The fused beam-search step on ``backend`` ("cpu" or "cuda") into the nine given outputs; ``seeds`` and
    ``offsets`` empty ([0]) mean no sampling."""
    _check_backend(backend, "beam_step", ("cpu", "cuda"))
    batch, beams = running_scores.shape
    if batch == 0:  # empty outputs: nothing to write, and empty tensors have no address
        return
    extension = _ext.extension()
    sampling = seeds.numel() > 0
    args = _fill(extension.BeamStepArgs(),
                 logits=logits.data_ptr(), rows=logits.shape[0], vocab=logits.shape[1],
                 row_stride=_row_stride(logits), dtype=_ext.dtype_code(logits.dtype),
                 running_scores=running_scores.data_ptr(), finished_scores=finished_scores.data_ptr(),
                 is_finished=is_finished.data_ptr(), may_improve=may_improve.data_ptr(),
                 eos=eos.data_ptr() if eos.numel() else 0, num_eos=eos.numel(),
                 seeds=seeds.data_ptr() if sampling else 0, offsets=offsets.data_ptr() if sampling else 0,
                 batch=batch, beams=beams, k=candidate_scores.shape[1], normalized=normalized,
                 generated_length=generated_length, max_generated_length=max_generated_length,
                 length_penalty=length_penalty, early_stopping=early_stopping, all_stop=all_stop,
                 candidate_scores=candidate_scores.data_ptr(), candidate_flat=candidate_flat.data_ptr(),
                 next_scores=next_scores.data_ptr(), next_source=next_source.data_ptr(),
                 next_finished_scores=next_finished_scores.data_ptr(), finished_source=finished_source.data_ptr(),
                 next_is_finished=next_is_finished.data_ptr(), next_may_improve=next_may_improve.data_ptr(),
                 row_is_finite=row_is_finite.data_ptr())
    if backend == "cpu":
        extension.launch_beam_step_cpu(args)
    else:
        extension.launch_beam_step_cuda(args, _ext.cuda_stream_handle(logits.device))


def launch_gumbel_noise(backend: str, seed: torch.Tensor, offset: torch.Tensor, columns: int,
                        out: torch.Tensor) -> None:
    """The contract's Gumbel noise on ``backend`` ("cpu" or "cuda") into ``out`` (float32
    [rows, columns], contiguous), for int64 ``seed`` and ``offset`` of shape [rows] (contiguous)."""
    _check_backend(backend, "gumbel_noise", ("cpu", "cuda"))
    rows = out.shape[0]
    if rows == 0 or columns == 0:  # empty tensors have no address
        return
    extension = _ext.extension()
    args = _fill(extension.GumbelNoiseArgs(),
                 seed=seed.data_ptr(), offset=offset.data_ptr(), out=out.data_ptr(), rows=rows, columns=columns)
    if backend == "cpu":
        extension.launch_gumbel_noise_cpu(args)
    else:
        extension.launch_gumbel_noise_cuda(args, _ext.cuda_stream_handle(out.device))


def _flat_row_stride(logits: torch.Tensor) -> int:
    """Elements between the rows of the ``[rows * positions, vocab]`` view of a ``[rows, positions, vocab]``
    tensor (ops/verify.py guarantees that view has one stride)."""
    rows, positions, vocab = logits.shape
    if positions > 1:
        return logits.stride(1)
    return logits.stride(0) if rows > 1 else vocab


def launch_verify(backend: str, logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
                  rejection: bool, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  min_p: torch.Tensor, seed: torch.Tensor, offset: torch.Tensor, accepted: torch.Tensor,
                  tokens: torch.Tensor) -> None:
    """Speculative verification on ``backend`` ("cpu" or "cuda") into ``accepted`` and ``tokens``
    (ops/verify.py gives the validated inputs)."""
    _check_backend(backend, "verify", ("cpu", "cuda"))
    rows, positions, vocab = logits.shape
    if rows == 0:  # nothing to write, and empty tensors have no address
        return
    extension = _ext.extension()
    args = _fill(extension.VerifyArgs(),
                 logits=logits.data_ptr(), rows=rows, positions=positions, vocab=vocab,
                 row_stride=_flat_row_stride(logits), dtype=_ext.dtype_code(logits.dtype),
                 draft_tokens=draft_tokens.data_ptr() if positions > 1 else 0,
                 draft_probs=_address(draft_probs) if rejection and positions > 1 else 0, rejection=bool(rejection),
                 temperature=temperature.data_ptr(), temperature_per_row=_per_row(temperature),
                 top_k=top_k.data_ptr(), top_k_per_row=_per_row(top_k),
                 top_p=top_p.data_ptr(), top_p_per_row=_per_row(top_p),
                 min_p=min_p.data_ptr(), min_p_per_row=_per_row(min_p),
                 seed=seed.data_ptr(), offset=offset.data_ptr(), offset_per_row=_per_row(offset),
                 accepted=accepted.data_ptr(), tokens=tokens.data_ptr())
    if backend == "cpu":
        extension.launch_verify_cpu(args)
        return
    workspace = torch.empty(extension.verify_workspace_bytes(rows, positions, vocab, bool(rejection)),
                            dtype=torch.uint8, device=logits.device)
    _fill(args, workspace=workspace.data_ptr(), workspace_bytes=workspace.numel())
    extension.launch_verify_cuda(args, _ext.cuda_stream_handle(logits.device))
