"""Universal assisted generation: draft tokens from an assistant model with ANOTHER tokenizer (another vocabulary).

transformers 4.57 calls this "universal assisted decoding" (``generate(..., assistant_model=draft,
tokenizer=target_tokenizer, assistant_tokenizer=draft_tokenizer)``; greedy search uses its
``AssistedCandidateGeneratorDifferentTokenizers``). The two models share no token ids, only text, so every step
goes through text twice:

1. target -> assistant: the row's target tokens are decoded to text and the text is encoded with the assistant's
   tokenizer (special tokens added, as transformers does: a BOS-prepending tokenizer starts the assistant's sequence
   the way its prompts start). Incrementally: only the text after an anchor (a word boundary both tokenizations
   share, kept at most ``4 * target_lookbehind`` target tokens behind the end) is decoded and re-encoded each step,
   which gives the whole text's encoding (:class:`_RowText`). The assistant's KV cache keeps the longest prefix of
   what it was fed that the new encoding still starts with; only the rest is fed again. So drafts the target
   rejected, and a tail whose tokenization changed with the new text (a word the target extended, a character
   completed by its last byte), are forgotten and re-fed: the re-alignment.
2. the assistant drafts greedily (argmax of its own logits) up to ``num_assistant_tokens`` tokens with its own
   :class:`~turbogen.generation.runner.DirectRunner` over a ``DynamicCache``, stopping early after its end-of-sequence
   token or, as transformers' ``ConfidenceCriteria``, after a token whose probability is below
   ``assistant_confidence_threshold``.
3. assistant -> target: the text the drafts add (decoded after the last ``assistant_lookbehind`` assistant tokens, so
   a tokenizer that drops the first token's leading space or completes a character across the boundary decodes it
   as it reads in context) is re-encoded for the target after the text of its last ``target_lookbehind`` tokens, and
   only the target tokens that continue the target's own (already generated, fixed) tokens are kept: every returned
   draft row decodes, appended to the row's tokens, to a prefix of the assistant's text. Where the target's last
   token and the draft text would merge into one token in the target's tokenization (the target ended a word the
   draft continues), the rest of the merged token is encoded on its own. An assistant end-of-sequence draft becomes
   the target's end-of-sequence token when every draft before it converted.

The verification keeps the output identical to plain greedy decoding whatever the drafts are: this module only
decides how often they are right.

Differences from transformers 4.57, all in the drafts only (never in the output): the alignment is exact text
alignment (common prefixes of token ids and of text) instead of transformers' longest-common-diagonal heuristic
over token windows, which appends the re-encoded draft tokens after the target's last token even when the target's
tokenization of the boundary differs (drafts that cannot be accepted); decoding uses
``clean_up_tokenization_spaces=False`` (transformers passes ``True``, which changes the text, e.g. ``" ."`` into
``"."``); the assistant stops at its own end-of-sequence ids (transformers gives it the target's ids, meaningful only
where the vocabularies agree on them) and its drafts are not passed through the target's logits processors (which
index the target's vocabulary); at most ``max_drafts`` target drafts per row are returned, and none past the row's
``max_length``. With ``do_sample=True`` transformers switches to universal speculative decoding (vocabulary
intersection, a pruned assistant head); here the drafts stay the assistant's argmax, and coupled verification keeps the
output identical to plain sampling.

Any batch size: each row has its own assistant runner, cache and text (the rows' texts, hence their assistant
sequences, have different lengths), drafted one row after the other (a batch costs the sum of its rows' assistant
passes). Each step's conversions touch a bounded window of tokens (the text after the anchor, the last
``lookbehind`` tokens), not the whole sequence.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .. import _transformers_compat as _compat
from ..errors import UnsupportedByTurbogen
from .prepare import is_encoder_decoder
from .record import Record

__all__ = ["UniversalAssistantCandidates", "continuation_ids", "decode_text", "draft_text"]

#: transformers' schedules for ``num_assistant_tokens``.
_SCHEDULES = ("constant", "heuristic", "heuristic_transient")
#: Decoding that keeps the text exact: no special tokens, no clean-up of spaces before punctuation.
_DECODE_KWARGS = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
#: What a byte-level decoder renders for an incomplete UTF-8 character (the rest of it is in later tokens).
_REPLACEMENT_CHARACTER = "\ufffd"


def decode_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """The text of ``ids``: special tokens skipped, spaces left exactly as the tokens hold them."""
    return tokenizer.decode(list(ids), **_DECODE_KWARGS)


def _encode(tokenizer: Any, text: str, add_special_tokens: bool) -> list:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _common_prefix_length(first: Sequence[int], second: Sequence[int], chunk: int = 256) -> int:
    """The length of the longest common prefix of two lists (whole chunks compared natively, then one by one)."""
    length = min(len(first), len(second))
    start = 0
    while start < length and first[start:start + chunk] == second[start:start + chunk]:
        start += chunk
    for index in range(start, min(start + chunk, length)):
        if first[index] != second[index]:
            return index
    return length


def _context(tokenizer: Any, ids: Sequence[int], lookbehind: int) -> tuple[list, str]:
    """The last ``lookbehind`` (at least 1) of ``ids`` and their text, widened to earlier ids while the text starts
    inside a character (a byte-level token holding the end of a UTF-8 sequence decodes to a replacement character)."""
    start = max(0, len(ids) - max(1, int(lookbehind)))
    context = list(ids[start:])
    text = decode_text(tokenizer, context)
    while start > 0 and text.startswith(_REPLACEMENT_CHARACTER):
        start -= 1
        context = list(ids[start:])
        text = decode_text(tokenizer, context)
    return context, text


def draft_text(tokenizer: Any, ids: Sequence[int], drafts: Sequence[int], *, lookbehind: int) -> str:
    """The text ``drafts`` add after ``ids`` (tokens of ``tokenizer``): ``decode(context + drafts)`` past the text of
    ``context``, the last ``lookbehind`` (at least 1) ids (more where they start inside a character), so that a
    first-token rule of the decoder (a dropped leading space) applies to the context, not to the drafts. An incomplete
    character at the end (a byte-level token holding only the start of a UTF-8 sequence) is left out; "" when decoding
    the context with the drafts changes the context's text."""
    if not drafts:
        return ""
    context, context_text = _context(tokenizer, ids, lookbehind)
    text = decode_text(tokenizer, context + list(drafts))
    if not text.startswith(context_text):
        return ""
    return text[len(context_text):].rstrip(_REPLACEMENT_CHARACTER)


def _piece_ids(tokenizer: Any, context: list, context_text: str, piece: str) -> list:
    """Tokens spelling ``piece`` right after the ``context`` ids (text ``context_text``), for the rest of a token that
    the continuation's encoding merged across the end of the context: the piece encoded on its own where that spells
    it (byte-level tokenizers), else the tokenizer model's own tokens for the raw piece (a sentencepiece-style
    tokenizer gives a piece encoded on its own a leading-space marker, wrong inside a word); else the former."""
    encoded = _encode(tokenizer, piece, add_special_tokens=False)
    if decode_text(tokenizer, context + encoded) == context_text + piece:
        return encoded
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    if model is not None and hasattr(model, "tokenize"):
        try:
            raw = [token.id for token in model.tokenize(piece)]
        except Exception:  # noqa: BLE001  (a model that cannot take raw text: keep the plain encoding)
            raw = None
        if raw and decode_text(tokenizer, context + raw) == context_text + piece:
            return raw
    return encoded


def continuation_ids(tokenizer: Any, ids: Sequence[int], continuation: str, *, lookbehind: int) -> tuple[list, bool]:
    """Tokens of ``tokenizer`` that continue ``ids`` (its tokens, fixed) with the text ``continuation``.

    The text of the last ``lookbehind`` (at least 1) ids (more where they start inside a character) is encoded with
    ``continuation`` (no special tokens added); the tokens past the context are the candidates: directly when the
    encoding starts with the context's own ids, else from the first token boundary where the encoding's text equals
    the context's; where a token of the encoding straddles the end of the context (the context's last token and the
    continuation merge), the straddling token's part in the continuation is encoded on its own (:func:`_piece_ids`)
    and the encoding's later tokens follow. The candidates are then cut to the longest prefix whose text, decoded
    after the context ids, is a prefix of ``context + continuation``.

    Returns ``(tokens, complete)``: ``complete`` when the tokens spell all of ``continuation``.
    """
    if not continuation:
        return [], True
    context, context_text = _context(tokenizer, ids, lookbehind)
    wanted = context_text + continuation
    encoded = _encode(tokenizer, wanted, add_special_tokens=False)
    candidates: Optional[list] = None
    if context and encoded[:len(context)] == context:
        candidates = encoded[len(context):]
    else:
        for boundary in range(len(encoded) + 1):
            # (A boundary inside a multi-byte character decodes to a replacement character: no straddle there.)
            text = decode_text(tokenizer, encoded[:boundary])
            if text == context_text:
                candidates = encoded[boundary:]
                break
            if (len(text) > len(context_text) and text.startswith(context_text)
                    and not text.endswith(_REPLACEMENT_CHARACTER)):
                # encoded[boundary - 1] straddles the end of the context: its part in the continuation on its own.
                candidates = _piece_ids(tokenizer, context, text[:len(context_text)], text[len(context_text):])
                candidates += encoded[boundary:]
                break
    if not candidates:
        return [], False
    # Keep the longest prefix that spells a prefix of the continuation after the context's own tokens.
    for count in range(len(candidates), 0, -1):
        text = decode_text(tokenizer, context + candidates[:count])
        if wanted.startswith(text) and len(text) > len(context_text):
            return candidates[:count], count == len(candidates) and text == wanted
    return [], False


def _boundary_at(tokenizer: Any, context: list, context_text: str, ids: Sequence[int], spelled: str) -> Optional[int]:
    """The ``i`` where ``ids[:i]`` (continuing the ``context`` ids, whose text is ``context_text``) spells exactly
    ``spelled`` after the context, or None: a binary search on the text's length (it grows with the tokens)."""
    position = len(spelled)
    low, high = 1, len(ids)
    while low <= high:
        middle = (low + high) // 2
        text = decode_text(tokenizer, context + list(ids[:middle]))
        if not text.startswith(context_text):
            return None
        length = len(text) - len(context_text)
        if length == position:
            return middle if text[len(context_text):] == spelled else None
        if length < position:
            low = middle + 1
        else:
            high = middle - 1
    return None


class _RowText:
    """One row's target -> assistant conversion, incremental: the assistant's sequence is the assistant tokens of a
    fixed text prefix (the anchor) followed by the encoding of the text after it, re-encoded at every step. The anchor
    sits where both tokenizations end a token right before a space (where byte-level and sentencepiece-style
    pre-tokenizers split words, so the anchored encoding is the whole text's) and moves forward once more than
    ``4 * target_lookbehind`` target tokens follow it, to within ``target_lookbehind`` tokens of the end: each step
    converts a bounded window, not the whole sequence. Where the text after the anchor does not convert exactly (an
    assistant vocabulary missing characters), the whole text is encoded, as without an anchor."""

    def __init__(self, target_tokenizer: Any, assistant_tokenizer: Any, target_lookbehind: int,
                 assistant_lookbehind: int):
        self.target_tokenizer = target_tokenizer
        self.assistant_tokenizer = assistant_tokenizer
        self.target_lookbehind = target_lookbehind
        self.assistant_lookbehind = assistant_lookbehind
        self.anchor_target = 0  # target tokens before the anchor (0: no anchor, the whole text is encoded)
        self.anchor_assistant = 0  # assistant tokens before it
        self.anchor_ids: list = []  # those assistant tokens
        self._retry_at = 0  # the target length before which the anchor does not try to move again

    def assistant_ids(self, target_ids: list) -> list:
        """The assistant's sequence for ``target_ids`` (the row's tokens, which only grow between calls)."""
        if self.anchor_target:
            tail = self._tail(target_ids)
            if tail is not None:
                ids = self.anchor_ids + tail
                self._move_anchor(target_ids, ids)
                return ids
            # The tail does not convert exactly (or the text before the anchor changed): the whole text again.
            self.anchor_target = self.anchor_assistant = 0
            self.anchor_ids = []
        text = decode_text(self.target_tokenizer, target_ids)
        ids = _encode(self.assistant_tokenizer, text, add_special_tokens=True)
        self._move_anchor(target_ids, ids)
        return ids

    def _tail(self, target_ids: list) -> Optional[list]:
        """The assistant tokens of the text after the anchor, or None where the anchor no longer holds."""
        context, context_text = _context(self.target_tokenizer, target_ids[:self.anchor_target], self.target_lookbehind)
        text = decode_text(self.target_tokenizer, context + target_ids[self.anchor_target:])
        if not text.startswith(context_text):
            return None
        tail_text = text[len(context_text):]
        if not tail_text:
            return []
        tokens, complete = continuation_ids(self.assistant_tokenizer, self.anchor_ids, tail_text,
                                            lookbehind=self.assistant_lookbehind)
        return tokens if complete else None

    def _move_anchor(self, target_ids: list, ids: list) -> None:
        """Move the anchor forward when more than ``4 * target_lookbehind`` target tokens follow it: to the latest
        target token boundary at least ``target_lookbehind`` tokens before the end (among the last ``3 *
        target_lookbehind`` such boundaries) that the assistant's tokens ``ids`` share and that a space follows. A
        failed attempt is retried ``2 * target_lookbehind`` tokens later."""
        lookbehind = self.target_lookbehind
        last = len(target_ids) - lookbehind - self.anchor_target  # the latest boundary, counted from the anchor
        if last <= 3 * lookbehind or len(target_ids) < self._retry_at:
            return
        self._retry_at = len(target_ids) + 2 * lookbehind
        target_context, target_text = _context(self.target_tokenizer, target_ids[:self.anchor_target], lookbehind)
        tail = target_ids[self.anchor_target:]
        text = decode_text(self.target_tokenizer, target_context + tail)
        if not text.startswith(target_text):
            return
        text = text[len(target_text):]
        assistant_context, assistant_text = _context(self.assistant_tokenizer, ids[:self.anchor_assistant],
                                                     self.assistant_lookbehind)
        assistant_tail = ids[self.anchor_assistant:]
        for index in range(last, max(1, last - 3 * lookbehind) - 1, -1):
            spelled = decode_text(self.target_tokenizer, target_context + tail[:index])
            if not spelled.startswith(target_text) or spelled.endswith(_REPLACEMENT_CHARACTER):
                continue
            position = len(spelled) - len(target_text)
            if position >= len(text) or text[position] != " ":
                continue
            assistant_index = _boundary_at(self.assistant_tokenizer, assistant_context, assistant_text,
                                           assistant_tail, text[:position])
            if assistant_index is None:
                continue
            self.anchor_target += index
            self.anchor_assistant += assistant_index
            self.anchor_ids = ids[:self.anchor_assistant]
            self._retry_at = 0
            return


class _RowAssistant:
    """One row's assistant: a batch-1 :class:`DirectRunner` over its own ``DynamicCache`` and the ids it was fed."""

    def __init__(self, model: Any, width: int, vocab_size: Optional[int]):
        self.model = model
        self.width = width
        self.vocab_size = vocab_size  # ids at or above it (tokens the tokenizer added) have no embedding
        self.runner = None
        self.fed: list = []  # the assistant ids whose keys and values the cache holds, in order

    def _logits_after(self, ids: list) -> Optional[torch.Tensor]:
        """Feed what the cache lacks of ``ids`` (the longest common prefix with what it holds is kept, at least the
        last id is fed); the ``[vocab]`` logits after the last id. None, feeding nothing, where an id to feed is
        outside the model's vocabulary."""
        from transformers import DynamicCache

        from .runner import DirectRunner

        device = self.model.device
        keep = 0 if self.runner is None else min(_common_prefix_length(self.fed, ids), len(ids) - 1)
        if self.vocab_size is not None and max(ids[keep:]) >= self.vocab_size:
            return None
        if self.runner is None:
            config = _plain_config()
            self.runner = DirectRunner(self.model, torch.tensor([ids], device=device), {}, DynamicCache(), True,
                                       self.width, Record(config))
            logits = self.runner.prefill(torch.tensor([ids], device=device))[0]
            self.fed = list(ids)
            return logits
        if keep < len(self.fed):
            self.runner.crop(keep)
            del self.fed[keep:]
        logits = self.runner.verify(torch.tensor([ids[keep:]], device=device))[0, -1]
        self.fed.extend(ids[keep:])
        return logits

    def draft(self, ids: list, count: int, eos_ids: frozenset, confidence_threshold: float) -> list:
        """Up to ``count`` greedy tokens after ``ids`` (the assistant's whole sequence): stops after an end-of-sequence
        token or a token whose probability is below ``confidence_threshold``."""
        count = min(count, self.width - len(ids))
        if count <= 0 or not ids:
            return []
        logits = self._logits_after(ids)
        if logits is None:
            return []
        drafts = []
        while True:
            token = int(torch.argmax(logits))
            drafts.append(token)
            if token in eos_ids or len(drafts) == count:
                break
            if confidence_threshold > 0 and float(torch.softmax(logits.float(), dim=-1)[token]) < confidence_threshold:
                break
            logits = self.runner.decode(torch.tensor([token], device=logits.device))[0]
            self.fed.append(token)
        return drafts


def _plain_config() -> Any:
    from ..config import GenerationConfig

    return GenerationConfig()


def _token_ids(value: Any) -> list:
    """An int, a list of ints or a tensor of ids as a list of ints (``None``: empty)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


class UniversalAssistantCandidates:
    """Greedy drafts from ``assistant_model``, whose tokenizer (``assistant_tokenizer``) differs from the target's
    (``target_tokenizer``): a :class:`~turbogen.generation.candidates.CandidateGenerator` (``max_drafts``,
    ``draft_limit``, :meth:`propose`, :meth:`accepted`, :meth:`finish`). See the module's docstring for the text
    alignment. The drafts are the assistant's argmax whatever the call's decoding: under sampling, coupled
    verification keeps the output identical to plain sampling and accepts a draft wherever the target draws it.

    Args:
        assistant_model: a decoder-only causal LM (transformers' generic input preparation) with its own vocabulary.
        target_tokenizer: the target model's tokenizer (``generate``'s ``tokenizer``); ``assistant_tokenizer`` the
            assistant's.
        prompt_ids: ``[rows, P]`` the target's prompt as prepared (rows expanded, left-padded); ``prompt_mask`` its
            attention mask: positions where it is 0 (padding) are not part of the row's text. ``None``: every prompt
            position is.
        max_length: the longest target sequence, prompt included: a row gets at most ``max_length - length - 1``
            drafts.
        eos_token_ids: the target's end-of-sequence ids (1-D int64 tensor, a list, an int or ``None``): the first is
            drafted where the assistant drafts its own end-of-sequence token.
        num_assistant_tokens, schedule: drafts per step and their schedule (``"constant"``, ``"heuristic"``,
            ``"heuristic_transient"``; :class:`~turbogen.generation.candidates.DraftSchedule`, per row); ``None``:
            ``assistant_config``'s values (transformers' defaults 20 and ``"constant"`` where it lacks them). The
            counts are target drafts; the assistant drafts as many of its own tokens.
        assistant_config: the assistant's generation config (default ``assistant_model.generation_config``):
            ``assistant_lookbehind`` and ``target_lookbehind`` (transformers' defaults 10), the default
            ``assistant_confidence_threshold`` (0.4), its ``eos_token_id`` (with the assistant tokenizer's, where the
            assistant stops drafting), and where :meth:`finish` leaves a ``"heuristic"`` schedule's last count.
        confidence_threshold: a row stops drafting after a draft whose probability under the assistant is below it
            (transformers' ``ConfidenceCriteria``); ``None``: ``assistant_config``'s; 0 switches it off.
        draft_limit: the most drafts of any step (the loop sizes its caches with it); ``None``: the schedule's.
        target_lookbehind, assistant_lookbehind: the context windows (in tokens, at least 1 is used) of the
            conversions; ``None``: ``assistant_config``'s (transformers reads them there), else 10.
    """

    def __init__(self, assistant_model: Any, *, target_tokenizer: Any, assistant_tokenizer: Any,
                 prompt_ids: torch.Tensor, prompt_mask: Optional[torch.Tensor] = None, max_length: int,
                 eos_token_ids: Any = None, num_assistant_tokens: Optional[int] = None,
                 schedule: Optional[str] = None, assistant_config: Any = None,
                 confidence_threshold: Optional[float] = None, draft_limit: Optional[int] = None,
                 target_lookbehind: Optional[int] = None, assistant_lookbehind: Optional[int] = None):
        from .candidates import DraftSchedule

        if assistant_model is None:
            raise ValueError("`assistant_model` must be given for universal assisted generation")
        if assistant_tokenizer is None or target_tokenizer is None:
            raise ValueError("universal assisted generation needs both `tokenizer` (the target model's) and "
                             "`assistant_tokenizer` (the assistant model's)")
        if is_encoder_decoder(assistant_model):
            raise UnsupportedByTurbogen("an encoder-decoder assistant model is not supported with another tokenizer.",
                                        reason="universal assisted generation with an encoder-decoder assistant")
        if _compat.prepares_own_inputs(assistant_model):
            raise UnsupportedByTurbogen(
                f"the assistant model ({type(assistant_model).__name__}) prepares its own inputs for generation: its "
                "cache cannot be cropped to re-align its drafts.",
                reason="universal assisted generation with an assistant preparing its own inputs")
        if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
            raise ValueError("`prompt_ids` must be a tensor [rows, prompt_length]")
        if prompt_mask is not None and tuple(prompt_mask.shape) != tuple(prompt_ids.shape):
            raise ValueError(f"`prompt_mask` must have the shape of `prompt_ids` {tuple(prompt_ids.shape)}, got "
                             f"{tuple(prompt_mask.shape)}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"`max_length` must be a positive int, got {max_length!r}")

        self.assistant_model = assistant_model
        self.assistant_tokenizer = assistant_tokenizer
        self.target_tokenizer = target_tokenizer
        self.max_length = max_length
        if assistant_config is None:
            assistant_config = getattr(assistant_model, "generation_config", None)
        self._assistant_config = assistant_config
        setting = lambda name, default: (default if getattr(assistant_config, name, None) is None  # noqa: E731
                                         else getattr(assistant_config, name))
        if num_assistant_tokens is None:
            num_assistant_tokens = setting("num_assistant_tokens", 20)
        if schedule is None:
            schedule = setting("num_assistant_tokens_schedule", "constant")
        if confidence_threshold is None:
            confidence_threshold = setting("assistant_confidence_threshold", 0.4)
        self.confidence_threshold = float(confidence_threshold or 0.0)
        if assistant_lookbehind is None:
            assistant_lookbehind = setting("assistant_lookbehind", 10)
        if target_lookbehind is None:
            target_lookbehind = setting("target_lookbehind", 10)
        for name, value in (("assistant_lookbehind", assistant_lookbehind), ("target_lookbehind", target_lookbehind)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")
        self.assistant_lookbehind = max(1, assistant_lookbehind)
        self.target_lookbehind = max(1, target_lookbehind)
        self.target_eos = _token_ids(eos_token_ids)
        self.assistant_eos = frozenset(_token_ids(getattr(assistant_tokenizer, "eos_token_id", None))
                                       + _token_ids(getattr(assistant_config, "eos_token_id", None)))

        rows, self.prompt_length = prompt_ids.shape
        self.rows = rows
        self.schedule = DraftSchedule(rows, num_assistant_tokens, schedule, governed=True)
        self.draft_limit = self.schedule.limit if draft_limit is None else min(int(draft_limit), self.schedule.limit)
        mask = None if prompt_mask is None else prompt_mask.to("cpu") != 0
        prompt = prompt_ids.to("cpu")
        self._prompts = [prompt[row][mask[row]].tolist() if mask is not None else prompt[row].tolist()
                         for row in range(rows)]
        # The assistant's sequences may hold more tokens than the target's (a finer vocabulary): its position limit.
        config = assistant_model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        width = getattr(text_config, "max_position_embeddings", None) or 8 * max_length + 64
        vocab_size = getattr(text_config, "vocab_size", None)
        self._assistants = [_RowAssistant(assistant_model, int(width), vocab_size) for _ in range(rows)]
        self._texts = [_RowText(target_tokenizer, assistant_tokenizer, self.target_lookbehind,
                                self.assistant_lookbehind) for _ in range(rows)]
        self._proposed = torch.zeros(rows, dtype=torch.long)  # target drafts proposed per row at the last step
        #: Statistics over the call: target drafts proposed, and accepted.
        self.proposed_total = 0
        self.accepted_total = 0

    @property
    def max_drafts(self) -> int:
        """The most target drafts a row gets from the next :meth:`propose` (the schedule's largest count)."""
        return min(int(self.schedule.counts().max()), self.draft_limit) if self.rows else 0

    def target_ids(self, sequences: torch.Tensor, lengths: Sequence[int], row: int) -> list:
        """Row ``row``'s target tokens without the prompt's padding (``sequences`` on the host)."""
        return self._prompts[row] + sequences[row, self.prompt_length:int(lengths[row])].tolist()

    def assistant_ids(self, target_ids: Sequence[int]) -> list:
        """The assistant's sequence for the target tokens ``target_ids``: their text, encoded with special tokens."""
        text = decode_text(self.target_tokenizer, target_ids)
        return _encode(self.assistant_tokenizer, text, add_special_tokens=True)

    def row_drafts(self, row: int, target_ids: list, count: int) -> list:
        """At most ``count`` target drafts after ``target_ids`` for row ``row`` (the assistant drafts ``count`` of its
        own tokens; its cache follows the row)."""
        if count <= 0:
            return []
        assistant_ids = self._texts[row].assistant_ids(target_ids)
        drafts = self._assistants[row].draft(assistant_ids, count, self.assistant_eos, self.confidence_threshold)
        if not drafts:
            return []
        ends = drafts[-1] in self.assistant_eos
        text = draft_text(self.assistant_tokenizer, assistant_ids, drafts, lookbehind=self.assistant_lookbehind)
        tokens, complete = continuation_ids(self.target_tokenizer, target_ids, text, lookbehind=self.target_lookbehind)
        if ends and complete and self.target_eos:
            tokens = tokens + [self.target_eos[0]]
        return tokens[:count]

    def propose(self, sequences: torch.Tensor, lengths: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Drafts ``[rows, k]`` int64 (``k <= max_drafts``; -1 where a row has fewer; finished rows none) after each
        row's ``sequences[r, :lengths[r]]`` (the left-padded prompt, then the generated tokens)."""
        if sequences.dim() != 2 or sequences.shape[0] != self.rows:
            raise ValueError(f"`sequences` must have shape [{self.rows}, width], got {tuple(sequences.shape)}")
        host_lengths = lengths.to("cpu").tolist()
        room = [self.max_length - length - 1 for length in host_lengths]
        counts = torch.where(active.to("cpu"), self.schedule.counts().clamp(max=self.draft_limit), 0).tolist()
        host_sequences = sequences[:, :max(host_lengths, default=0)].to("cpu")
        per_row = []
        for row in range(self.rows):
            count = min(counts[row], room[row])
            target_ids = self.target_ids(host_sequences, host_lengths, row) if count > 0 else []
            per_row.append(self.row_drafts(row, target_ids, count))
        self._proposed = torch.tensor([len(drafts) for drafts in per_row], dtype=torch.long)
        self.proposed_total += int(self._proposed.sum())
        out = torch.full((self.rows, int(self._proposed.max()) if self.rows else 0), -1, dtype=torch.long)
        for row, drafts in enumerate(per_row):
            if drafts:
                out[row, :len(drafts)] = torch.tensor(drafts, dtype=torch.long)
        return out.to(sequences.device)

    def accepted(self, accepted: torch.Tensor, lengths: torch.Tensor) -> None:
        """After verification: ``accepted[r]`` drafts of row ``r`` were accepted. Moves the schedule; each assistant's
        cache is re-aligned at the next :meth:`propose`, from its row's new text."""
        accepted = torch.minimum(accepted.to("cpu").long(), self._proposed)
        self.accepted_total += int(accepted.sum())
        self.schedule.update(self._proposed, accepted)
        self._proposed = torch.zeros_like(self._proposed)

    def finish(self) -> None:
        """End of the call: transformers' ``"heuristic"`` schedule leaves its last count on the assistant's generation
        config, for the next call."""
        if self.schedule.schedule == "heuristic" and self._assistant_config is not None:
            self._assistant_config.num_assistant_tokens = self.schedule.persistent_value()
