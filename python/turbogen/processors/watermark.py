"""Green-list watermarking (Kirchenbauer et al., https://huggingface.co/papers/2306.04634), with
transformers v4.57's seeding and hashing scheme, so that text watermarked here is recognised by
transformers' ``WatermarkDetector`` and vice versa."""

from __future__ import annotations

import logging

import torch

from . import functional
from .base import LogitsProcessor, check_inputs, check_int, check_real, check_vocabulary

logger = logging.getLogger(__name__)

# Size of the random lookup table of the "selfhash" scheme (a prime, as in the reference code).
_HASH_TABLE_SIZE = 1_000_003
# The "selfhash" scheme tries this many of the best candidates; the reference code's choice.
_SELFHASH_CANDIDATES = 40
_SEED_MODULUS = 2**64 - 1
SEEDING_SCHEMES = ("lefthash", "selfhash")


class WatermarkLogitsProcessor(LogitsProcessor):
    """Add ``bias`` to the scores of a pseudo-random "green" subset of the vocabulary.

    For each row, a ``torch.Generator`` on ``device`` is seeded from the last ``context_width``
    tokens and ``hashing_key``, and the green list is the first ``int(vocab_size * greenlist_ratio)``
    entries of ``torch.randperm(vocab_size)`` under that generator:

    - ``"lefthash"``: seed ``hashing_key * last_token`` (the previous token decides the list);
    - ``"selfhash"``: the candidate next token takes part in the seed, through a fixed random table
      ``T`` (a permutation of ``1_000_003`` entries drawn from ``hashing_key``): for a context ``c``
      ending with the candidate, seed ``min_i(hashing_key * (T[c_i] + 1) * (T[c_last] + 1))`` in
      wrapping int64 arithmetic. The 40 highest-scoring candidates (fewer in a smaller vocabulary;
      transformers fails there) are tried, and those in their own green list form the green list.

    Seeds are reduced modulo ``2**64 - 1``. When ``input_ids`` holds fewer than ``context_width``
    tokens the scores are returned unchanged (with a logged warning). The work is per row on the
    host (generator seeding cannot be batched), as in transformers.
    """

    def __init__(self, vocab_size: int, device, greenlist_ratio: float = 0.25, bias: float = 2.0,
                 hashing_key: int = 15485863, seeding_scheme: str = "lefthash", context_width: int = 1):
        if seeding_scheme not in SEEDING_SCHEMES:
            raise ValueError(f"`seeding_scheme` has to be one of {list(SEEDING_SCHEMES)}, but is {seeding_scheme!r}")
        self.vocab_size = check_int(vocab_size, "vocab_size", minimum=1)
        greenlist_ratio = check_real(greenlist_ratio, "greenlist_ratio", low=0.0, high=1.0, low_inclusive=False,
                                     high_inclusive=False)
        self.greenlist_size = int(self.vocab_size * greenlist_ratio)
        self.bias = check_real(bias, "bias")
        self.hash_key = check_int(hashing_key, "hashing_key")
        self.seeding_scheme = seeding_scheme
        self.context_width = check_int(context_width, "context_width", minimum=1)
        self.rng = torch.Generator(device=device)
        self.table_size = _HASH_TABLE_SIZE
        self.fixed_table = None
        if seeding_scheme == "selfhash":
            self.rng.manual_seed(self.hash_key)
            self.fixed_table = torch.randperm(self.table_size, generator=self.rng, device=device)

    def set_seed(self, input_seq: torch.LongTensor) -> None:
        """Seed the generator from the last ``context_width`` tokens of the 1-D ``input_seq``."""
        input_seq = input_seq[-self.context_width:]
        if self.seeding_scheme == "selfhash":
            table = self.fixed_table.to(input_seq.device)
            context_keys = table[input_seq % self.table_size] + 1
            last_key = table[input_seq[-1] % self.table_size] + 1
            # int64 products wrap around, exactly as in transformers.
            seed = (self.hash_key * context_keys * last_key).min().item()
        else:
            seed = self.hash_key * input_seq[-1].item()
        self.rng.manual_seed(seed % _SEED_MODULUS)

    def _get_greenlist_ids(self, input_seq: torch.LongTensor) -> torch.LongTensor:
        self.set_seed(input_seq)
        permutation = torch.randperm(self.vocab_size, device=input_seq.device, generator=self.rng)
        return permutation[: self.greenlist_size]

    def _score_rejection_sampling(self, input_seq: torch.LongTensor, scores: torch.FloatTensor) -> torch.LongTensor:
        """The "selfhash" green list of one row: the best candidates that are in their own green list."""
        candidates = scores.sort(dim=-1, descending=True).indices[:_SELFHASH_CANDIDATES]
        green = []
        for candidate in candidates:
            greenlist = self._get_greenlist_ids(torch.cat([input_seq, candidate.reshape(1)]))
            if bool((greenlist == candidate).any()):
                green.append(int(candidate))
        return torch.tensor(green, dtype=torch.long, device=input_seq.device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_inputs(input_ids, scores)
        check_vocabulary(self.vocab_size - 1, scores, "vocab_size")
        if input_ids.shape[-1] < self.context_width:
            logger.warning(
                "`input_ids` should have at least %d tokens but has %d; the watermark is skipped for this step",
                self.context_width, input_ids.shape[-1],
            )
            return scores
        greenlist = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        for row, input_seq in enumerate(input_ids):
            if self.seeding_scheme == "selfhash":
                green_ids = self._score_rejection_sampling(input_seq, scores[row])
            else:
                green_ids = self._get_greenlist_ids(input_seq)
            greenlist[row, green_ids.to(scores.device)] = True
        return functional.watermark(scores, greenlist, self.bias)
