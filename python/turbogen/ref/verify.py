"""Reference speculative verification: the executable spec of ``turbogen.ops.verify``.

Torch ops only, ``torch.compile(fullgraph=True)``-able. Every position of every row is computed (the
kernels stop at a row's first rejection; the result is the same). Row ``r`` has ``k + 1`` positions:
position ``i`` holds the target's logits for the token after draft ``i`` (position 0: after the last
accepted token), its own seed ``seed[r]`` and offset ``n = offset[r]`` (docs/design.md, "Contract
extensions").

Coupled mode (the default): the target's token at position ``i`` is ``turbogen.ref.sample`` of that
position's logits with the row's filters, seed and offset ``n + i`` (greedy: the argmax, lowest index on
ties; -1 for a position without a finite kept logit). Draft ``i`` is accepted while it equals the target's
token; the first position that is not accepted (or position ``k``, the bonus) emits the target's token.
The tokens are therefore exactly those of non-speculative decoding.

Rejection mode: with ``p`` the target's filtered, tempered distribution at position ``i`` (the softmax of
``turbogen.ref.filter_logits``; a point mass for greedy rows) and ``q = draft_probs[r, i]``, draft token
``x`` is accepted iff ``u <= p(x) / q(x)`` in float32 (so ``p(x) = 0`` never accepts, ``q(x) = 0 < p(x)``
always does), ``u`` the contract's uniform of counter ``j = 2**32 + i`` (low word ``i``, high word 1) at
offset ``n``. At the first rejected position the token is the contract's Gumbel-max draw at offset
``n + i`` over ``log(max(p - q, 0))`` (the residual distribution; when no residual is positive, which
rounding alone can cause, the draw over ``p``, i.e. the coupled token). A position without a draft (a value
< 0 or >= vocab), and the bonus position ``k``, emit the coupled token: the target's own draw.

Drafts outside ``[0, vocab)`` are "no draft": never accepted. Greedy (``seed`` None at the op) is
temperature 0 on every row.
"""

from __future__ import annotations

import torch

from .philox import gumbel_noise, philox4x32, split_uint64, uniform_from_bits
from .sampling import _column, filter_logits, sample

_NEG_INF = float("-inf")


def _per_position(value, rows: int, positions: int):
    """A scalar, ``[1]`` or ``[rows]`` parameter as a scalar, ``[1]`` or ``[rows * positions]`` one."""
    if isinstance(value, torch.Tensor) and value.numel() == rows and rows != 1:
        return value.repeat_interleave(positions)
    return value


def acceptance_uniforms(seed: torch.Tensor, offset: torch.Tensor, k: int) -> torch.Tensor:
    """float32 ``[rows, k]``: the uniform of counter ``2**32 + i`` at each row's seed and offset."""
    index = torch.arange(k, dtype=torch.int64, device=seed.device)
    seed_lo, seed_hi = split_uint64(seed.to(torch.int64).reshape(-1, 1))
    offset_lo, offset_hi = split_uint64(offset.to(torch.int64).reshape(-1, 1))
    word0, _, _, _ = philox4x32(index, torch.ones_like(index), offset_lo, offset_hi, seed_lo, seed_hi)
    return uniform_from_bits(word0)


def _leading_run(accept: torch.Tensor) -> torch.Tensor:
    """int64 ``[rows]``: how many leading entries of each row of the bool ``[rows, k]`` are True."""
    return accept.to(torch.int64).cumprod(dim=-1).sum(dim=-1)


def verify(target_logits: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None = None, *,
           rejection: bool = False, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
           seed: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Verify ``draft_tokens`` against ``target_logits`` (module docstring).

    Args:
        target_logits: ``[rows, k + 1, vocab]`` float32/float16/bfloat16.
        draft_tokens: int64 ``[rows, k]``.
        draft_probs: float32 ``[rows, k, vocab]``, used with ``rejection`` only.
        temperature, top_k, top_p, min_p: scalars or ``[1]`` / ``[rows]`` tensors (as ``sample``).
        seed: int64 ``[rows]``; offset: int64 ``[1]`` or ``[rows]``.

    Returns:
        ``(accepted [rows] int64, tokens [rows, k + 1] int64)``: ``tokens[r, :accepted[r]]`` are the
        drafts, ``tokens[r, accepted[r]]`` the target's token, the rest -1.
    """
    rows, positions, vocab = target_logits.shape
    k = positions - 1
    device = target_logits.device
    flat = target_logits.reshape(rows * positions, vocab)
    step = torch.arange(positions, dtype=torch.int64, device=device)
    seeds = seed.to(torch.int64).reshape(-1, 1).expand(rows, positions).reshape(-1)
    offsets = (offset.to(torch.int64).reshape(-1, 1) + step).expand(rows, positions).reshape(-1)
    filters = dict(temperature=_per_position(temperature, rows, positions), top_k=_per_position(top_k, rows, positions),
                   top_p=_per_position(top_p, rows, positions), min_p=_per_position(min_p, rows, positions))
    drafts = draft_tokens.to(torch.int64)
    has_draft = (drafts >= 0) & (drafts < vocab)
    if not rejection:
        target = sample(flat, **filters, seed=seeds, offset=offsets).reshape(rows, positions)
        accepted = _leading_run(has_draft & (drafts == target[:, :k]))
        emitted = target
    else:
        # ref.sample's draw, with its filtered logits and noise kept for p and the residual draw.
        filtered = filter_logits(flat, **filters)
        noise = gumbel_noise(seeds, offsets, vocab)
        greedy = _column(filters["temperature"], torch.float32, device) == 0
        best, drawn = torch.where(greedy, filtered, filtered + noise).max(dim=-1)
        target = torch.where(best > _NEG_INF, drawn, -1).reshape(rows, positions)

        # p: the target's filtered distribution at every position; q: the draft's.
        p = filtered.softmax(dim=-1).reshape(rows, positions, vocab)[:, :k]
        q = draft_probs.to(torch.float32)
        safe = drafts.clamp(0, max(vocab - 1, 0)).unsqueeze(-1)
        ratio = p.gather(-1, safe).squeeze(-1) / q.gather(-1, safe).squeeze(-1)
        u = acceptance_uniforms(seed, offset.reshape(-1).expand(rows), k)
        accepted = _leading_run(has_draft & (u <= ratio))

        residual = torch.log(torch.clamp(p - q, min=0.0))
        best, corrected = (residual + noise.reshape(rows, positions, vocab)[:, :k]).max(dim=-1)
        corrected = torch.where((best > _NEG_INF) & has_draft, corrected, target[:, :k])
        emitted = torch.cat([corrected, target[:, k:]], dim=-1)

    position = step.reshape(1, -1)
    padded_drafts = torch.cat([drafts, torch.full((rows, 1), -1, dtype=torch.int64, device=device)], dim=-1)
    tokens = torch.where(position < accepted.unsqueeze(-1), padded_drafts,
                         torch.where(position == accepted.unsqueeze(-1), emitted, -1))
    return accepted, tokens


__all__ = ["acceptance_uniforms", "verify"]
