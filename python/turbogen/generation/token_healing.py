"""``token_healing=True``: the prompt's last token replaced by the most likely token it is a prefix of, as
transformers 4.57's ``GenerationMixin.heal_tokens`` does (the spec, quirks included).

A prompt cut inside a word ends with a token the model rarely saw there (``"http"`` instead of ``"https"``);
healing regenerates that last token with the alternatives that extend it favoured. The steps, per call:

1. the prompts are decoded (special tokens skipped), stripped of surrounding whitespace and encoded again as one
   padded batch; the BOS token becomes the pad token (healing is not conditioned on it);
2. each row's last token is decoded to text, its spaces written as the tokenizer's space token (the first
   character of the token ``tokenizer`` maps ``" "`` to, when it maps it to anything), and looked up in a trie of
   the vocabulary: the *extensions* are the vocabulary entries below the deepest trie node the text reaches
   (walking stops at the first character without a branch, as transformers' ``ExtensionsTrie`` does);
3. rows that are all padding, or with a single alternative, are kept; otherwise the row without its last token
   (with BOS back in the last place when the row held a single token) is generated one token further by
   ``generate`` with ``max_new_tokens=1``, the tokenizer's ``pad_token_id`` and a ``sequence_bias`` of +10 for
   each extension and +11 for the original token (a slight preference limits over-eager healing).

The healed prompt replaces the prompt; the attention mask stays the one made for the original prompt (as in
transformers), so a healed prompt of another length is refused (``UnsupportedByTurbogen``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch

from ..errors import UnsupportedByTurbogen

__all__ = ["VocabTrie", "heal_tokens"]

# The bias given to the extensions of the last token, and the extra bias of the original token.
EXTENSION_BIAS = 10.0
ORIGINAL_TOKEN_EXTRA_BIAS = 1.0


class VocabTrie:
    """A character trie of token strings, answering "which tokens extend this text" (:meth:`extensions`)."""

    _END = ""  # the key marking that a token ends at a node (no character is empty)

    def __init__(self, tokens: Iterable[str]):
        self._root: dict = {}
        for token in tokens:
            if not token:
                continue
            node = self._root
            for char in token:
                node = node.setdefault(char, {})
            node[self._END] = True

    def extensions(self, prefix: str) -> list[str]:
        """``prefix`` followed by every continuation stored below the deepest node ``prefix`` reaches (the walk
        stops at the first character the trie has no branch for), in insertion order, depth first; a token
        ending at that node itself gives ``prefix``."""
        node = self._root
        for char in prefix:
            if char not in node:
                break
            node = node[char]
        return [prefix + rest for rest in self._continuations(node)]

    def _continuations(self, node: dict) -> list[str]:
        found = [self._END] if self._END in node else []
        for char, child in node.items():
            if char != self._END:
                found.extend(char + rest for rest in self._continuations(child))
        return found


def _space_token(tokenizer: Any) -> Optional[str]:
    """What a space is written as in the tokenizer's tokens, or None when it maps ``" "`` to nothing."""
    space_id = tokenizer.convert_tokens_to_ids(" ")
    if space_id is None:
        return None
    return tokenizer.convert_ids_to_tokens(space_id)[0]


def heal_tokens(model: Any, input_ids: torch.Tensor, tokenizer: Any,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The healed prompt ``[rows, length']`` of ``input_ids`` (``[rows, length]``; see the module docstring).

    Args:
        model: the decoder-only model that regenerates the last tokens (through :func:`turbogen.generate`).
        tokenizer: the model's tokenizer (a transformers tokenizer: ``batch_decode``, ``decode``, ``__call__``,
            ``get_vocab``, ``convert_tokens_to_ids``, ``convert_ids_to_tokens``, ``bos_token_id``,
            ``pad_token_id``).
        attention_mask: the mask made for ``input_ids``; generation keeps it, so the healed prompt must have its
            length.

    Raises:
        ValueError: no ``tokenizer``, or a tokenizer without a pad token.
        UnsupportedByTurbogen: the healed prompt's length differs from ``attention_mask``'s.
    """
    from ..generate import generate  # the facade calls this module: imported when used
    from ..config import GenerationConfig

    if tokenizer is None:
        raise ValueError("When generating with token healing, you must pass the model's tokenizer to the "
                         "`tokenizer` argument of `generate`.")
    bos_id, pad_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("token healing needs a tokenizer with a pad token (`tokenizer.pad_token_id` is None).")
    trie = VocabTrie(tokenizer.get_vocab())
    device = input_ids.device
    texts = [text.strip() for text in tokenizer.batch_decode(input_ids, skip_special_tokens=True)]
    healed = tokenizer(texts, return_tensors="pt", padding=True).input_ids.to(device)
    if bos_id is not None:
        healed = torch.where(healed == bos_id, pad_id, healed)
    if healed.numel() == 0:
        return _checked_length(healed, attention_mask)

    last_ids = healed[:, -1].tolist()
    space = _space_token(tokenizer)
    for row, last_id in enumerate(last_ids):
        row_ids = healed[row]
        if bool((row_ids == pad_id).all()):
            continue  # an empty prompt
        last_text = tokenizer.decode(last_id)
        if space is not None:
            last_text = last_text.replace(" ", space)
        bias = {(tokenizer.convert_tokens_to_ids(text),): EXTENSION_BIAS for text in trie.extensions(last_text)}
        if len(bias) == 1:
            continue  # nothing to heal with
        # KeyError when the last token is not among its own extensions, as in transformers.
        bias[(last_id,)] += ORIGINAL_TOKEN_EXTRA_BIAS
        trimmed = row_ids[:-1]
        if trimmed.numel() == 0:
            continue
        if int((row_ids != pad_id).sum()) == 1:  # a single token: regenerate it after BOS
            trimmed[-1] = bos_id
        config = GenerationConfig(max_new_tokens=1, pad_token_id=pad_id, sequence_bias=bias)
        healed[row] = generate(model, trimmed.unsqueeze(0), generation_config=config)[0]
    return _checked_length(healed, attention_mask)


def _checked_length(healed: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    if attention_mask is not None and attention_mask.shape[-1] != healed.shape[-1]:
        raise UnsupportedByTurbogen(
            f"token healing re-encoded the prompt to {healed.shape[-1]} tokens, but its attention mask has "
            f"{attention_mask.shape[-1]}: transformers keeps the original mask there; turbogen does not follow.",
            reason="token_healing changing the prompt length")
    return healed
