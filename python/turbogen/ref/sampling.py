"""Reference top-k / top-p / min-p sampling: the executable spec of ``turbogen.ops.sample``.

Torch ops only (one sort per call; kernels avoid it), ``torch.compile(fullgraph=True)``-able.

Filtering follows transformers' TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper
-> MinPLogitsWarper (v4.57, ``min_tokens_to_keep=1``) literally, on ``z = float32(logits) /
temperature`` with NaN read as -inf:

- top-k keeps every token whose value is >= the k-th largest value (ties with it included);
- top-p sorts ascending, removes tokens whose cumulative probability is <= 1 - top_p, always keeps
  the most probable one. Ties are ordered by token index (the lower index counts as more
  probable), which transformers leaves to its unstable sort;
- min-p removes tokens whose probability (renormalised over the survivors) is < min_p times the
  largest one.

Sampling is Gumbel-max (docs/design.md, "Randomness: the determinism contract"): the token is the
argmax of ``z_j + g_j`` over the kept tokens, ``g`` from :func:`turbogen.ref.philox.gumbel_noise`,
ties to the lowest index. Temperature 0 means greedy: ``argmax z`` (lowest index on ties), and the
filtered distribution is a point mass on that token. A row without a finite logit gives -1.
"""

from __future__ import annotations

import torch

# The scalar-to-per-row counter rule is shared with the ops and generate(), so it lives with the ops;
# row_seeds stays importable from here for callers that still do so.
from ..ops._counters import row_offsets, row_seeds
from .philox import gumbel_noise

_NEG_INF = float("-inf")


def _column(value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A scalar, ``[1]`` or ``[rows]`` parameter as a ``[rows or 1, 1]`` tensor for broadcasting."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype).reshape(-1, 1)
    return torch.full((1, 1), value, dtype=dtype, device=device)


def _tempered(logits: torch.Tensor, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, greedy)``: float32 logits divided by the temperature (1 for greedy rows), NaN -> -inf,
    and the ``[rows, 1]`` mask of greedy (temperature 0) rows."""
    x = logits.float()
    x = torch.where(torch.isnan(x), _NEG_INF, x)
    greedy = temperature == 0
    return x / torch.where(greedy, 1.0, temperature), greedy


def _keep_mask(z: torch.Tensor, top_k, top_p, min_p) -> torch.Tensor:
    """Which tokens survive TopK -> TopP -> MinP, as transformers computes them (module docstring)."""
    rows, vocab = z.shape
    device = z.device
    top_k = _column(top_k, torch.int64, device)
    min_p = _column(min_p, torch.float32, device)
    # 1 - top_p rounded to float32 once, from the caller's precision (transformers does this
    # with a Python float; pass float64 top_p tensors to reproduce that exactly per row).
    top_p_dtype = top_p.dtype if isinstance(top_p, torch.Tensor) else torch.float64
    top_p = _column(top_p, top_p_dtype, device)
    removable_mass = (1 - top_p).to(torch.float32)

    # Descending, ties by index: position 0 is the most probable token, lowest index first.
    ranked, order = torch.sort(z, dim=-1, descending=True, stable=True)
    position = torch.arange(vocab, device=device)

    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab).expand(rows, 1)
    kth_value = ranked.gather(-1, k - 1)
    keep = ranked >= kth_value

    # TopP: ascending cumulative probabilities over the top-k survivors.
    ascending = torch.where(keep, ranked, _NEG_INF).flip(-1)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
    remove = (cumulative <= removable_mass) & (position < vocab - 1) & (top_p < 1)
    keep = keep & ~remove.flip(-1)

    # MinP: relative to the most probable survivor, which sits at position 0.
    probs = torch.where(keep, ranked, _NEG_INF).softmax(dim=-1)
    remove = (probs < min_p * probs[:, :1]) & (position > 0)
    keep = keep & ~remove

    return torch.zeros_like(keep).scatter(-1, order, keep)


def filter_logits(logits: torch.Tensor, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> torch.Tensor:
    """The tempered float32 logits with the removed tokens at -inf (``[rows, vocab]``).

    Parameters are Python scalars or ``[1]`` / ``[rows]`` tensors (not validated here;
    ``turbogen.ops.filter_logits`` validates). A temperature-0 row is a point mass: every token but
    the greedy one is -inf, the greedy one keeps its logit.
    """
    z, greedy = _tempered(logits, _column(temperature, torch.float32, logits.device))
    filtered = torch.where(_keep_mask(z, top_k, top_p, min_p), z, _NEG_INF)
    if logits.shape[-1] == 0:
        return filtered
    greedy_token = z.argmax(dim=-1, keepdim=True)
    point_mass = torch.where(torch.arange(z.shape[-1], device=z.device) == greedy_token, z, _NEG_INF)
    return torch.where(greedy, point_mass, filtered)


def sample(logits: torch.Tensor, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
           seed: int | torch.Tensor, offset: int | torch.Tensor = 0, return_logprobs: bool = False):
    """Draw one token per row; see the module docstring for the exact function computed.

    Returns int64 ``[rows]`` token ids (-1 for a row without a finite logit), and with
    ``return_logprobs`` also the float32 log-probability of each token under the filtered,
    tempered distribution (0 for greedy rows, -inf for -1 rows).
    """
    rows, vocab = logits.shape
    device = logits.device
    if vocab == 0:
        tokens = torch.full((rows,), -1, dtype=torch.int64, device=device)
        return (tokens, torch.full((rows,), _NEG_INF, device=device)) if return_logprobs else tokens

    filtered = filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    noise = gumbel_noise(row_seeds(seed, rows, device), row_offsets(offset, rows, device), vocab)
    greedy = _column(temperature, torch.float32, device) == 0
    # Greedy rows hold a point mass, so adding noise cannot move their argmax; skip it for clarity.
    scores = torch.where(greedy, filtered, filtered + noise)
    best, tokens = scores.max(dim=-1)
    found = best > _NEG_INF
    tokens = torch.where(found, tokens, -1)
    if not return_logprobs:
        return tokens
    logprobs = filtered.log_softmax(dim=-1).gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return tokens, torch.where(found, logprobs, _NEG_INF)


__all__ = ["filter_logits", "sample", "row_seeds", "row_offsets"]
