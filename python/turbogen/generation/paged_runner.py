"""``PagedRunner``: ``generate(..., cache_implementation="paged")`` over turbogen's paged KV cache (issue 10).

The decode loops (greedy search, sampling, beam search) drive it like any
:class:`~turbogen.generation.runner.ModelRunner`; underneath, every model call is one packed forward
(:func:`turbogen.attention.paged_forward`): the rows' new tokens side by side in one ``[1, total_tokens]`` row,
the model's attention switched to ``"turbogen_paged"`` (:func:`turbogen.attention.register_paged_attention`) for
the duration of that forward only, and restored afterwards even when it raises, so the model is never left
switched between calls. Each row of the batch is one sequence of the cache
(:class:`~turbogen.cache.paged.PagedKVCache`, built by :func:`turbogen.cache.make_cache` for ``"paged"``).

* Left padding never enters the cache: the prefill feeds each row's real tokens only (the prompt mask's ones,
  which must follow its zeros), at positions ``0, 1, ...`` (transformers' ``cumsum(mask) - 1`` for those
  tokens), and each later token at the row's next position. The loops still count sequence positions of the
  padded sequences (``fed_length``); row ``r``'s cache holds ``fed_length - padding[r]`` tokens.
* :meth:`PagedRunner.reorder` (beam search) moves no key or value: each new row becomes a fork of its parent's
  sequence (:meth:`~turbogen.cache.paged.BlockAllocator.fork`: the same blocks, one more reference each) and
  the old sequences are freed. A partly filled last block that rows then share is copied on write, once per
  extra sharer, by the next step's ``append_slots`` (the only bytes ever copied).
* :meth:`PagedRunner.crop` truncates the sequences (never into the prompt).

Refused with :class:`~turbogen.errors.UnsupportedByTurbogen` (each naming the option): encoder-decoders, models
whose attention does not go through transformers' attention interface, models with their own
``prepare_inputs_for_generation``, ``output_attentions`` / ``output_hidden_states``, ``inputs_embeds``,
``position_ids``, ``token_type_ids``, any other model input, and masks that are not left padding.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional, Union

import torch

from .. import _transformers_compat as _compat
from ..attention import PagedBatch, attention_configs, paged_forward, register_paged_attention, switched_to_paged
from ..cache.paged import PagedKVCache
from ..errors import UnsupportedByTurbogen
from .prepare import forward_parameters, is_encoder_decoder
from .record import Record

__all__ = ["PAGED_BLOCK_SIZE", "PagedRunner", "new_paged_cache", "paged_refusal"]

#: Slots per block of the cache ``generate`` builds for ``cache_implementation="paged"``.
PAGED_BLOCK_SIZE = 16

# Model inputs the runner derives itself (the mask gives the padding) or that carry no information here.
_HANDLED_KWARGS = ("attention_mask", "use_cache")
# Output flags that are fine while off.
_OFF_FLAGS = ("output_attentions", "output_hidden_states")


def _refuse(what: str, reason: str) -> UnsupportedByTurbogen:
    return UnsupportedByTurbogen(f'cache_implementation="paged" does not support {what}.',
                                 reason=f"cache_implementation='paged' with {reason}")


def paged_refusal(model: Any) -> Optional[UnsupportedByTurbogen]:
    """The refusal for a ``model`` the paged runner cannot run, or None."""
    if is_encoder_decoder(model):
        return _refuse("encoder-decoder models", "an encoder-decoder model")
    if not getattr(model, "_supports_attention_backend", False):
        return _refuse(f"{type(model).__name__}, whose attention does not go through transformers' attention "
                       "interface", "a model outside the attention interface")
    if _compat.prepares_own_inputs(model):
        return _refuse(f"models with their own `prepare_inputs_for_generation` ({type(model).__name__})",
                       "a model's own prepare_inputs_for_generation")
    return None


def new_paged_cache(model: Any, rows: int, max_cache_len: int, dtype: torch.dtype, device: Union[str, torch.device],
                    block_size: int = PAGED_BLOCK_SIZE) -> PagedKVCache:
    """The :class:`PagedKVCache` for one ``generate`` call: ``rows * ceil(max_cache_len / block_size)`` blocks,
    enough for every row at its longest (forks share blocks, and a copy on write only replaces a shared block),
    of the model's layers, key/value heads and head size (:func:`turbogen.cache._shape.shape_from_config`), in
    ``dtype`` on ``device``."""
    from ..cache._shape import shape_from_config

    refusal = paged_refusal(model)
    if refusal is not None:
        raise refusal
    shape = shape_from_config(model.config)
    blocks_per_row = -(-max_cache_len // block_size)
    return PagedKVCache(shape["num_layers"], rows * blocks_per_row, block_size, shape["num_kv_heads"],
                        shape["head_dim"], dtype=dtype, device=device, max_blocks_per_seq=blocks_per_row)


class PagedRunner:
    """A :class:`~turbogen.generation.runner.ModelRunner` over a :class:`PagedKVCache` (see the module
    docstring). ``past_key_values`` is the cache; its sequences are this runner's rows (ids private to it)."""

    can_crop = True

    def __init__(self, model: Any, input_ids: torch.Tensor, model_kwargs: dict, cache: PagedKVCache,
                 use_cache: bool, max_length: int, record: Record):
        refusal = paged_refusal(model)
        if refusal is not None:
            raise refusal
        if not use_cache:
            raise _refuse("`use_cache=False`", "use_cache=False")
        if record.wants_attentions or record.wants_hidden_states:
            raise _refuse("`output_attentions` / `output_hidden_states`", "output_attentions or output_hidden_states")
        for name, value in model_kwargs.items():
            if name in _HANDLED_KWARGS or (name in _OFF_FLAGS and not value) or value is None:
                continue
            if name in _OFF_FLAGS:
                raise _refuse(f"`{name}`", name)
            raise _refuse(f"the model input `{name}`", name)
        if not isinstance(cache, PagedKVCache):
            raise TypeError(f"PagedRunner needs a PagedKVCache, got {type(cache).__name__}")
        self.model = model
        self.record = record
        self.past_key_values = cache
        self.max_length = max_length
        self.rows, self.prompt_length = input_ids.shape
        self._device = input_ids.device
        self.fed_length = 0
        self._padding = self._left_padding(model_kwargs.get("attention_mask"), self.rows, self.prompt_length)
        keep = _compat.logits_to_keep_name(forward_parameters(model))
        self._logits_to_keep = keep
        # This call's sequence ids: (generation, row); a reorder moves to the next generation.
        self._ids = itertools.count()
        self._seqs: list = []
        self._configs = attention_configs(model)
        register_paged_attention()

    @staticmethod
    def _left_padding(mask: Optional[torch.Tensor], rows: int, length: int) -> list[int]:
        """Each row's count of padding positions; the mask must be zeros then ones, with a one in every row."""
        if mask is None:
            return [0] * rows
        held = mask != 0
        padding = (~held).sum(1)
        expected = torch.arange(length, device=mask.device)[None, :] >= padding[:, None]
        if not torch.equal(held, expected):
            raise _refuse("an attention mask other than left padding (zeros, then ones)", "a non-left-padded mask")
        padding = padding.tolist()
        if any(count == length for count in padding):
            raise ValueError('cache_implementation="paged": a row of the prompt is all padding (its attention mask '
                             "has no one)")
        return padding

    # --- the model call ------------------------------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, counts: list[int], last_only: bool) -> torch.Tensor:
        """One packed forward of every row's new ``tokens`` (``counts[r]`` of row ``r``, in row order): float32
        logits of each row's last token (``[rows, vocab]``), or of every token (``[total, vocab]``)."""
        batch = PagedBatch.prepare(self.past_key_values, self._seqs, counts)
        kwargs = {}
        # Each row's last token, where rows feed more than one (one token per row: every token is the last).
        last = (batch.cu_seqlens_q[1:] - 1).to(torch.int64) if last_only and any(n != 1 for n in counts) else None
        if last is not None and self._logits_to_keep is not None:
            kwargs[self._logits_to_keep] = last
            last = None  # the model computed only those
        with switched_to_paged(self._configs):
            logits = paged_forward(self.model, tokens.to(self.past_key_values.device), batch, **kwargs)
        if last is not None:
            logits = logits[last]
        return logits.to(device=self._device, dtype=torch.float32).contiguous()

    # --- the ModelRunner protocol --------------------------------------------------------------------------

    @property
    def fed_lengths(self) -> torch.Tensor:
        """``[rows]`` int64: the sequence positions fed per row (padding included)."""
        if not self._seqs:
            return torch.full((self.rows,), self.fed_length, dtype=torch.int64, device=self._device)
        lengths = [self.past_key_values.allocator.length(seq) + pad for seq, pad in zip(self._seqs, self._padding)]
        return torch.tensor(lengths, dtype=torch.int64, device=self._device)

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self._seqs:
            raise ValueError("the prompt was already fed to this runner")
        if tuple(input_ids.shape) != (self.rows, self.prompt_length):
            raise ValueError(f"`input_ids` must be the prompt [{self.rows}, {self.prompt_length}], "
                             f"got {tuple(input_ids.shape)}")
        generation = next(self._ids)
        self._seqs = [(generation, row) for row in range(self.rows)]
        cache = self.past_key_values
        for seq in self._seqs:
            cache.add_sequence(seq)
        counts = [self.prompt_length - pad for pad in self._padding]
        tokens = torch.cat([input_ids[row, pad:] for row, pad in enumerate(self._padding)])
        try:
            logits = self._forward(tokens, counts, last_only=True)
        except BaseException:
            for seq in self._seqs:
                cache.free(seq)
            self._seqs = []
            raise
        self.fed_length = self.prompt_length
        return logits

    def _check_room(self, count: int) -> None:
        if self.fed_length + count > self.max_length:
            raise ValueError(f"cannot feed position {self.fed_length + count - 1}: this runner was built for "
                             f"sequences of at most {self.max_length} tokens")

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape != (self.rows,):
            raise ValueError(f"`tokens` must have shape [{self.rows}], got {tuple(tokens.shape)}")
        self._check_room(1)
        logits = self._forward(tokens, [1] * self.rows, last_only=True)
        self.fed_length += 1
        return logits

    def verify(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.shape[0] != self.rows:
            raise ValueError(f"`tokens` must have shape [{self.rows}, k + 1], got {tuple(tokens.shape)}")
        count = tokens.shape[1]
        self._check_room(count)
        logits = self._forward(tokens.reshape(-1), [count] * self.rows, last_only=False)
        self.fed_length += count
        return logits.reshape(self.rows, count, -1)

    def reorder(self, index: torch.Tensor) -> None:
        """Row ``r`` becomes a fork of row ``index[r]``'s sequence (its blocks, one more reference each); the old
        sequences are freed. No key or value is copied here."""
        sources = index.tolist()
        if len(sources) != self.rows or not all(0 <= s < self.rows for s in sources):
            raise ValueError(f"`index` must hold one source row in [0, {self.rows}) per row, got {sources}")
        if sources == list(range(self.rows)) or not self._seqs:
            return
        cache = self.past_key_values
        generation = next(self._ids)
        new = [(generation, row) for row in range(self.rows)]
        for row, source in enumerate(sources):
            cache.fork(self._seqs[source], new[row])
        for seq in self._seqs:
            cache.free(seq)
        self._seqs = new
        self._padding = [self._padding[source] for source in sources]

    def crop(self, lengths: Union[int, torch.Tensor]) -> None:
        """Forget the fed positions from ``lengths`` on (an int, or ``[rows]`` integers: rows may then differ;
        :meth:`decode` feeds every row at its own next position). The prompt is kept: a length below it raises
        ``ValueError``."""
        from .runner import _crop_lengths

        fed = self.fed_lengths.tolist()
        lengths = _crop_lengths(lengths, fed)
        if any(length < self.prompt_length for length in lengths):
            raise ValueError(f'cache_implementation="paged" cannot crop into the prompt ({self.prompt_length} '
                             f"positions), got lengths {lengths}")
        for seq, pad, length in zip(self._seqs, self._padding, lengths):
            self.past_key_values.truncate(seq, length - pad)
        self.fed_length = max(lengths)

    def release(self) -> None:
        """Free every sequence of this runner (the cache's blocks return to its allocator)."""
        for seq in self._seqs:
            self.past_key_values.free(seq)
        self._seqs = []
