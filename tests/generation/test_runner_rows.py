"""``DirectRunner`` with per-row lengths (speculative decoding at batch > 1): after ``crop(lengths [rows])`` with
different values, ``verify`` / ``decode`` feed each row at its own positions.

The oracle: after every call, each row's logits equal those of feeding that row alone, from scratch, without
a cache or padding (tests/tolerances.py's cross-compilation tolerance: the batch, the masked holes and the
padding reorder the sums). Random sequences of verify (k = 0..4) / per-row crop / decode on a left-padded batch
of four rows and on an unpadded batch, over transformers' ``DynamicCache``, turbogen's ``StaticKVCache``,
transformers' ``StaticCache`` and no cache; the compaction of the holes is forced and checked; bad lengths and
caches that cannot crop are refused. Tiny random-weight Llama and GPT-2.
"""

from __future__ import annotations

import random

import pytest
import torch

from conftest import (CACHE_API_IN_4_45, GPT2_LEGACY_CACHE_IN_4_45, STATIC_CACHES_IN_4_45, skip_here_on_transformers_4_45,
                      skip_on_transformers_4_45)
from tiny_models import MODEL_KINDS, encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_close_across_compilations
from turbogen import GenerationConfig
from turbogen import _transformers_compat as _compat
from turbogen.cache import StaticKVCache
from turbogen.generation.record import Record
from turbogen.generation.runner import DirectRunner, make_runner

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

PADDED_PROMPTS = ["the quick brown fox", "stop", "hello world again", "once upon a"]
CACHES = ("dynamic", "static", "transformers_static", "none")


def _prompt(padded: bool):
    if padded:
        return encode_batch(PADDED_PROMPTS)
    ids = torch.randint(4, 150, (3, 5), generator=torch.Generator().manual_seed(7))
    return ids, torch.ones_like(ids)


def _cache(kind: str, model, rows: int, max_length: int):
    from transformers import DynamicCache, StaticCache

    skip_here_on_transformers_4_45(STATIC_CACHES_IN_4_45, when=kind == "static")
    skip_here_on_transformers_4_45(CACHE_API_IN_4_45, when=kind == "transformers_static")
    if kind == "dynamic":
        return DynamicCache()
    if kind == "static":  # as generate() sizes it: the last token is never fed
        return StaticKVCache(model.config, batch_size=rows, max_cache_len=max_length - 1)
    if kind == "transformers_static":
        return StaticCache(config=model.config, max_cache_len=max_length - 1)
    return None


class _Rows:
    """A runner and, per row, the sequence it was fed (``(token, is_real)`` per position, padding included)."""

    def __init__(self, kind: str, cache: str, padded: bool, max_length: int):
        skip_here_on_transformers_4_45(GPT2_LEGACY_CACHE_IN_4_45, when=kind == "gpt2")
        self.model = tiny_model(kind)
        input_ids, attention_mask = _prompt(padded)
        self.rows, self.prompt_length = input_ids.shape
        self.max_length = max_length
        self.runner = make_runner(self.model, input_ids, {"attention_mask": attention_mask},
                                  _cache(cache, self.model, self.rows, max_length), use_cache=cache != "none",
                                  max_length=max_length, record=Record(GenerationConfig()))
        assert isinstance(self.runner, DirectRunner)
        self.fed = [[(int(token), bool(real)) for token, real in zip(ids, mask)]
                    for ids, mask in zip(input_ids, attention_mask)]
        self.compactions = 0
        compact = self.runner._compact

        def counting_compact():
            self.compactions += 1
            compact()

        self.runner._compact = counting_compact
        self._generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            logits = self.runner.prefill(input_ids)
        self._check(logits[:, None], 1)

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.fed]

    def _tokens(self, count: int) -> torch.Tensor:
        return torch.randint(4, self.model.config.vocab_size, (self.rows, count), generator=self._generator)

    def verify(self, k: int) -> None:
        tokens = self._tokens(k + 1)
        with torch.no_grad():
            logits = self.runner.verify(tokens)
        assert logits.shape == (self.rows, k + 1, self.model.config.vocab_size)
        self._append(tokens)
        self._check(logits, k + 1)

    def decode(self) -> None:
        tokens = self._tokens(1)
        with torch.no_grad():
            logits = self.runner.decode(tokens[:, 0])
        assert logits.shape == (self.rows, self.model.config.vocab_size)
        self._append(tokens)
        self._check(logits[:, None], 1)

    def crop(self, lengths) -> None:
        self.runner.crop(lengths)
        lengths = lengths.tolist() if isinstance(lengths, torch.Tensor) else [lengths] * self.rows
        self.fed = [row[:length] for row, length in zip(self.fed, lengths)]
        self._check_lengths()

    def _append(self, tokens: torch.Tensor) -> None:
        for row, new in zip(self.fed, tokens.tolist()):
            row.extend((token, True) for token in new)
        self._check_lengths()

    def _check_lengths(self) -> None:
        assert self.runner.fed_lengths.tolist() == self.lengths
        assert self.runner.fed_lengths.dtype == torch.int64
        assert self.runner.fed_length == max(self.lengths)
        cache = self.runner.past_key_values
        if isinstance(cache, StaticKVCache) or type(cache).__name__ == "StaticCache":
            assert int(cache.get_seq_length()) <= self.max_length - 1

    def reorder(self, index: list[int]) -> None:
        self.runner.reorder(torch.tensor(index))
        self.fed = [list(self.fed[source]) for source in index]
        self._check_lengths()

    def _check(self, logits: torch.Tensor, count: int) -> None:
        _assert_rows_alone(self.model, [[token for token, real in fed if real] for fed in self.fed], logits, count)


def _assert_rows_alone(model, sequences: list[list[int]], logits: torch.Tensor, count: int) -> None:
    """Row ``r``'s ``[count, vocab]`` logits equal the last ``count`` positions of ``sequences[r]`` (its real
    tokens) fed alone, without a cache."""
    for row, real in enumerate(sequences):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([real]), use_cache=False).logits[0, -count:].float()
        assert_close_across_compilations(logits[row], alone)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_random_verify_crop_decode_match_each_row_alone(kind, cache, padded):
    """A random sequence of speculative steps (verify with k = 0..4, then mostly each row keeping its fed token and
    a random number of the drafts), decode steps and deep crops (into the prompt too, sometimes to one common
    length): after every call each row's logits are those of the row alone."""
    max_length = 24
    state = _Rows(kind, cache, padded, max_length)
    rng = random.Random(f"{kind}-{cache}-{padded}")
    operations = set()
    for _ in range(30):
        room = max_length - 1 - max(state.lengths)
        draw = rng.random()
        if room >= 1 and draw < 0.6:
            k = rng.randint(0, min(4, room - 1))
            before = state.lengths
            state.verify(k)
            operations.add("verify")
            if rng.random() < 0.8:
                state.crop(torch.tensor([length + rng.randint(1, k + 1) for length in before]))
                operations.add("crop")
        elif room >= 1 and draw < 0.75:
            state.decode()
            operations.add("decode")
        else:
            low = state.prompt_length - 2
            if rng.random() < 0.2:  # one common length
                lengths = torch.full((state.rows,), rng.randint(low, min(state.lengths)))
            else:
                lengths = torch.tensor([rng.randint(min(low, length), length) for length in state.lengths])
            state.crop(lengths)
            operations.add("crop")
    assert operations == {"verify", "crop", "decode"}
    if cache in ("static", "transformers_static"):
        assert state.compactions > 0, "the sequence should fill the static cache with holes"


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_holes_are_compacted_rarely_and_rows_stay_exact(kind, cache):
    """Speculative steps where each row in turn accepts every draft and the others none: every row gets holes
    where the others advanced, so the slots grow about twice as fast as the longest row; the runner compacts
    (per-row gather of the kept slots) now and then, never at every step, and each row's logits stay its own."""
    max_length = 48
    state = _Rows(kind, cache, True, max_length)
    k = 4
    steps = 0
    while max(state.lengths) + k + 1 <= max_length - 1:
        accepting = steps % state.rows
        state.verify(k)
        # Like the speculative loop: row r keeps its fed token and its accepted drafts.
        accepted = torch.tensor([k if row == accepting else 0 for row in range(state.rows)])
        state.crop(torch.tensor(state.lengths) - k + accepted)
        steps += 1
    state.decode()
    assert state.compactions >= 1, "holes should have been compacted"
    assert state.compactions <= steps // 3, f"{state.compactions} compactions in {steps} steps"
    if cache == "dynamic":
        assert state.runner.past_key_values.get_seq_length() <= 2 * max(state.lengths) + k + 1


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_rows_even_out_and_the_common_path_returns(cache):
    """Equal lengths keep the common path (an unpadded DynamicCache is called without a mask); per-row lengths
    pass the mask; once every row is cropped to one length before its holes the runner is back to common
    lengths (no mask again for the unpadded DynamicCache)."""
    state = _Rows("llama", cache, False, 24)
    masks = []
    model = state.runner.model

    def recording(**kwargs):
        masks.append(kwargs.get("attention_mask") is not None)
        return model(**kwargs)

    state.runner.model = recording
    state.verify(3)
    state.crop(torch.full((state.rows,), state.prompt_length + 2))  # common: the cache is cut
    state.decode()
    assert state.runner._row_lengths is None
    base = state.lengths[0]
    state.verify(4)
    state.crop(torch.tensor([base + 1, base + 3, base + 5][:state.rows]))
    assert state.runner._row_lengths is not None
    state.decode()
    state.verify(2)
    state.crop(torch.full((state.rows,), base + 1))  # before every hole: even again
    assert state.runner._row_lengths is None
    state.decode()
    expected_mask = cache != "dynamic"
    assert masks == [expected_mask] * 3 + [True, True] + [expected_mask], masks  # from the first verify on


@pytest.mark.parametrize("cache", CACHES)
def test_crop_into_the_prompt_of_padded_rows(cache):
    """Rows cropped into their prompt (one down to its padding only) then fed again: new tokens are real."""
    state = _Rows("gpt2", cache, True, 24)
    state.verify(2)
    state.crop(torch.tensor([2, state.prompt_length - 1, state.prompt_length + 1, 1]))
    state.verify(3)
    state.crop(1)
    state.decode()
    state.verify(1)


@pytest.mark.parametrize("lengths, message", [
    (lambda fed: torch.tensor([fed, fed + 1, fed, fed]), "row 1"),
    (lambda fed: torch.tensor([fed, -1, fed, fed]), "row 1"),
    (lambda fed: fed + 1, "row 0"),
    (lambda fed: -2, "row 0"),
    (lambda fed: torch.tensor([fed, fed]), "shape"),
    (lambda fed: torch.full((4, 1), fed), "shape"),
    (lambda fed: torch.full((4,), float(fed)), "dtype"),
    (lambda fed: torch.ones(4, dtype=torch.bool), "dtype"),
    (lambda fed: float(fed), "float"),
], ids=["longer_than_fed", "negative", "int_longer", "int_negative", "too_few_rows", "two_dims", "float", "bool",
        "python_float"])
def test_bad_lengths_are_refused_naming_lengths(lengths, message):
    state = _Rows("llama", "dynamic", True, 24)
    state.verify(2)
    fed = state.lengths[0]
    with pytest.raises(ValueError, match="`lengths`") as raised:
        state.runner.crop(lengths(fed))
    assert message in str(raised.value)
    assert state.runner.fed_lengths.tolist() == state.lengths  # nothing changed
    state.decode()


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_a_sliding_window_cache_refuses_per_row_crops():
    from transformers import DynamicCache

    model = tiny_model("mistral")
    input_ids, attention_mask = encode_batch(PADDED_PROMPTS)
    runner = make_runner(model, input_ids, {"attention_mask": attention_mask}, DynamicCache(config=model.config),
                         use_cache=True, max_length=24, record=Record(GenerationConfig()))
    with torch.no_grad():
        runner.prefill(input_ids)
        runner.verify(torch.full((4, 3), 5))
    assert not runner.can_crop
    with pytest.raises(ValueError, match="cannot be cropped"):
        runner.crop(torch.arange(4) + input_ids.shape[1])


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_reorder_moves_ragged_rows_whole(cache):
    """Beam-style reorders of ragged rows carry each row's lengths, holes and positions with it."""
    state = _Rows("llama", cache, True, 24)
    state.verify(3)
    state.crop(torch.tensor(state.lengths) - torch.tensor([0, 3, 1, 2]))
    state.reorder([2, 0, 0, 3])
    state.verify(2)
    state.crop(torch.tensor(state.lengths) - torch.tensor([2, 0, 1, 2]))
    state.decode()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_prompt_given_as_embeddings(cache):
    """``inputs_embeds`` without ids: the model's positions run the embeddings' length ahead of the sequence's,
    which per-row lengths count (from 0); the rows still match feeding their ids alone."""
    skip_here_on_transformers_4_45(STATIC_CACHES_IN_4_45, when=cache == "static")
    from transformers import DynamicCache

    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PADDED_PROMPTS)
    rows, embedded = input_ids.shape
    max_length = 12
    with torch.no_grad():
        embeds = model.get_input_embeddings()(input_ids)
    kv = (DynamicCache() if cache == "dynamic"
          else StaticKVCache(model.config, batch_size=rows, max_cache_len=embedded + max_length - 1))
    runner = make_runner(model, input_ids[:, :0], {"inputs_embeds": embeds, "attention_mask": attention_mask}, kv,
                         use_cache=True, max_length=max_length, record=Record(GenerationConfig()))
    sequences = [[int(token) for token, real in zip(ids, mask) if real] for ids, mask in zip(input_ids, attention_mask)]
    new = [[] for _ in range(rows)]
    generator = torch.Generator().manual_seed(3)

    def feed(k: int) -> None:
        tokens = torch.randint(4, model.config.vocab_size, (rows, k + 1), generator=generator)
        with torch.no_grad():
            logits = runner.verify(tokens)
        for row, row_tokens in enumerate(tokens.tolist()):
            new[row].extend(row_tokens)
        assert runner.fed_lengths.tolist() == [len(row) for row in new]
        _assert_rows_alone(model, [prompt + row for prompt, row in zip(sequences, new)], logits, k + 1)

    with torch.no_grad():
        runner.prefill(input_ids[:, :0])
    feed(3)
    for step, lengths in enumerate(([1, 3, 0, 2], [2, 5, 1, 4], [0, 1, 0, 0])):
        runner.crop(torch.tensor(lengths))
        new = [row[:length] for row, length in zip(new, lengths)]
        feed(step + 1)


def test_static_cache_truncate_zeroes_the_dropped_slots_only():
    """``StaticKVCache.truncate_`` (the runner's host-read-free crop): slots ``length ... current - 1`` zeroed in
    every layer, the rest untouched, every length set; impossible bounds refused."""
    cache = StaticKVCache(batch_size=2, max_cache_len=8, num_layers=3, num_kv_heads=2, head_dim=4)
    states = torch.randn(2, 2, 6, 4, generator=torch.Generator().manual_seed(0))
    for layer in range(3):
        cache.update(states + layer, states - layer, layer, {"cache_position": torch.arange(6)})
    before = cache.key_cache.clone(), cache.value_cache.clone()
    cache.truncate_(2, 6)
    for storage, old in zip((cache.key_cache, cache.value_cache), before):
        assert torch.equal(storage[:, :, :, :2], old[:, :, :, :2])
        assert not storage[:, :, :, 2:].any()
    assert [cache.get_seq_length(layer) for layer in range(3)] == [2, 2, 2]
    for length, current in ((3, 2), (-1, 2), (2, 9)):
        with pytest.raises(ValueError, match="length"):
            cache.truncate_(length, current)


def test_a_cache_whose_slots_the_runner_cannot_move_refuses_per_row_crops_only():
    """A cache class the runner does not know (here a DynamicCache subclass, which may store rows otherwise)
    still crops to one common length, and refuses different lengths clearly."""
    from transformers import DynamicCache

    class OwnCache(DynamicCache):
        pass

    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PADDED_PROMPTS)
    runner = make_runner(model, input_ids, {"attention_mask": attention_mask}, OwnCache(), use_cache=True,
                         max_length=24, record=Record(GenerationConfig()))
    prompt_length = input_ids.shape[1]
    with torch.no_grad():
        runner.prefill(input_ids)
        runner.verify(torch.full((4, 3), 5))
        runner.crop(torch.full((4,), prompt_length + 1))
        assert runner.past_key_values.get_seq_length() == prompt_length + 1
        with pytest.raises(ValueError, match="`lengths` differ across rows.*common length"):
            runner.crop(torch.tensor([prompt_length, prompt_length + 1, prompt_length, prompt_length]))
    assert runner.fed_lengths.tolist() == [prompt_length + 1] * 4


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_ragged_feeds_pass_their_mask_in_4d_where_the_model_takes_it(kind, cache):
    """Once the rows differ, the runner hands the model the additive ``[rows, 1, queries, keys]`` mask it built
    itself where the model passes a 4-D mask through (transformers >= 4.57's mask utilities), else the 2-D table;
    the logits are each row's alone either way (checked by the helper)."""
    state = _Rows(kind, cache, True, 24)
    masks = []

    def record_mask(module, args, kwargs):
        if kwargs.get("past_key_values") is not None:  # the runner's calls, not the helper's rows fed alone
            masks.append(kwargs.get("attention_mask"))

    handle = state.model.register_forward_pre_hook(record_mask, with_kwargs=True)
    try:
        before = state.lengths
        state.verify(3)
        state.crop(torch.tensor([length + 1 + row % 3 for row, length in enumerate(before)]))
        state.verify(2)
    finally:
        handle.remove()
    mask = masks[-1]
    if _compat.passes_4d_masks_through(state.model):
        keys = max(state.runner._capacity or 0, state.runner._slots)
        assert mask.dim() == 4 and tuple(mask.shape) == (state.rows, 1, 3, keys)
        assert mask.dtype == state.model.dtype
        assert set(mask.unique().tolist()) <= {0.0, torch.finfo(mask.dtype).min}
    else:
        assert mask.dim() == 2
