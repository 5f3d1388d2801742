"""Speculative decoding in turbogen.generate (prompt lookup, an assistant model, early exit): the output must be
plain generate()'s with the same arguments, token for token, for greedy search and for sampling (coupled
verification, same seed), at batch 1 and for a left-padded batch of 8 prompts of different lengths, with logits
processors, stop strings, EOS inside accepted runs, streamers, recorded scores and the static cache; at batch 1
it must also equal transformers 4.57's assisted generation. The oracle is always a run without speculation (or
transformers'). Drafts only decide the speed; tests of the loop's mechanics use oracle drafts (the plain
output's next tokens: everything is accepted, so stops land inside accepted runs) and wrong drafts (everything
is rejected)."""

from __future__ import annotations

import functools
import importlib

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

import turbogen
from conftest import (GPT2_LEGACY_CACHE_IN_4_45, STATIC_CACHES_IN_4_45,
                      skip_here_on_transformers_4_45, skip_on_transformers_4_45)
from tiny_models import EOS_ID, PAD_ID, encode_batch, tiny_model, tiny_tokenizer, vocab_size
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from tolerances import assert_close_across_compilations
from turbogen.errors import UnsupportedByTurbogen
from turbogen.generate import generate
from turbogen.generation.candidates import (AssistantCandidates, DraftSchedule, HEURISTIC_DRAFT_LIMIT,
                                            PromptLookupCandidates, WidthGovernor)

pytestmark = pytest.mark.usefixtures("tiny_model_environment")
# The module (``turbogen.generate`` the attribute is the function).
turbogen_generate = importlib.import_module("turbogen.generate")

# Texts that repeat themselves, so that prompt lookup finds drafts and a stop string can fall inside them.
SINGLE = ["the quick brown fox jumps over the lazy dog. the quick brown fox jumps"]
PADDED = [
    "the quick brown fox jumps over the lazy dog. the quick brown",
    "stop",
    "hello world, hello tokens, hello",
    "once upon a time there was a small model",
    "a stopwatch stopped at the bus stop; nonstop traffic",
    "it liked beams",
    "the end is near, the end is",
    "hello",
]
BATCHES = {"single": SINGLE, "padded8": PADDED}
NEW_TOKENS = 16


@functools.lru_cache(maxsize=None)
def small_assistant():
    """A smaller tiny Llama (one layer, half the width) with the target's vocabulary, other random weights."""
    return tiny_model("llama", seed=1, num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                      num_attention_heads=2, num_key_value_heads=1)


def strategy_kwargs(strategy: str) -> dict:
    if strategy == "prompt_lookup":
        return {"prompt_lookup_num_tokens": 4}
    if strategy == "prompt_lookup_heuristic":  # turbogen's adaptive draft counts for prompt lookup
        return {"prompt_lookup_num_tokens": 4, "num_assistant_tokens_schedule": "heuristic"}
    if strategy == "assistant":
        return {"assistant_model": small_assistant(), "num_assistant_tokens": 4}
    if strategy == "early_exit":
        return {"assistant_early_exit": 1, "num_assistant_tokens": 3}
    if strategy == "self":
        return {"assistant_model": tiny_model("llama"), "num_assistant_tokens": 4}
    raise ValueError(strategy)


STRATEGIES = ("prompt_lookup", "prompt_lookup_heuristic", "assistant", "early_exit", "self")


def _prompt(batch: str):
    return encode_batch(BATCHES[batch])


@pytest.fixture(params=["aligned", "ragged"])
def advance(request, monkeypatch):
    """Run the loop with rows advancing together (aligned) or each by its own run (ragged, where the runner
    has per-row lengths; at batch 1 both are the same)."""
    if request.param == "aligned":
        monkeypatch.setattr(turbogen_generate, "can_advance_ragged", lambda *args, **kwargs: False)
    return request.param


# ----------------------------------------------------------------------------------------------------------
# Greedy search and sampling: identical to plain generate()
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_greedy_speculation_equals_plain_greedy(strategy, batch, advance):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    expected = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    actual = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                      **strategy_kwargs(strategy))
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("sampling", [
    {"temperature": 0.8, "top_k": 20, "top_p": 0.9},
    {"repetition_penalty": 1.3, "temperature": 1.2},
], ids=["filters", "repetition_penalty"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("strategy", ["prompt_lookup", "assistant"])
def test_coupled_sampling_equals_plain_sampling(strategy, batch, sampling, advance):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    common = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=True, seed=1234, **sampling)
    expected = generate(model, input_ids, **common)
    actual = generate(model, input_ids, **common, **strategy_kwargs(strategy))
    assert torch.equal(actual, expected)


def test_sampling_assistant_drafts_with_the_targets_seeds_are_accepted_by_a_twin():
    """An assistant that is the target, drawing with the target's seeds and offsets, proposes exactly the tokens
    the target draws: coupled verification accepts (nearly) all of them."""
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    counts = _acceptance(model, input_ids, attention_mask, assistant_model=model, num_assistant_tokens=4,
                         do_sample=True, seed=7, temperature=0.9, max_new_tokens=NEW_TOKENS)
    proposed, accepted = counts
    assert proposed > 0 and accepted >= 0.9 * proposed


def _acceptance(model, input_ids, attention_mask, **kwargs):
    """(drafts proposed, drafts accepted) over one generate call with an assistant."""
    totals = [0, 0]
    original = AssistantCandidates.accepted

    def spy(self, accepted, lengths):
        totals[0] += int(self._proposed.sum())
        totals[1] += int(torch.minimum(accepted.cpu(), self._proposed).sum())
        return original(self, accepted, lengths)

    with pytest.MonkeyPatch.context() as patcher:
        patcher.setattr(AssistantCandidates, "accepted", spy)
        generate(model, input_ids, attention_mask=attention_mask, **kwargs)
    return totals


@pytest.mark.parametrize("batch", BATCHES)
def test_self_speculation_accepts_every_draft(batch):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    proposed, accepted = _acceptance(model, input_ids, attention_mask, assistant_model=model,
                                     num_assistant_tokens=5, assistant_confidence_threshold=0.0,
                                     do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None)
    assert proposed > 0
    assert accepted == proposed


def test_max_length_is_exact_whatever_the_draft_length():
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    for new_tokens in (1, 2, 5, 9):
        out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens, do_sample=False,
                       eos_token_id=None, assistant_model=model, num_assistant_tokens=8)
        assert out.shape == (1, input_ids.shape[1] + new_tokens)


# ----------------------------------------------------------------------------------------------------------
# Against transformers' assisted generation (batch 1)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["prompt_lookup", "assistant", "early_exit"])
def test_equals_transformers_assisted_generation_at_batch_1(strategy):
    skip_here_on_transformers_4_45("its generate has no `assistant_early_exit`", when=strategy == "early_exit")
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    if strategy == "prompt_lookup":
        kwargs["prompt_lookup_num_tokens"] = 4
    elif strategy == "assistant":
        kwargs["assistant_model"] = small_assistant()
    else:
        kwargs["assistant_early_exit"] = 1
    expected = model.generate(input_ids, **kwargs)
    actual = generate(model, input_ids, **kwargs)
    assert torch.equal(actual, expected)


# ----------------------------------------------------------------------------------------------------------
# The loop's mechanics, with oracle and wrong drafts
# ----------------------------------------------------------------------------------------------------------


class _ScriptedDrafts:
    """Drafts read from ``expected`` (plain decoding's output): its next ``k`` tokens (all accepted), or those
    tokens plus one modulo the vocabulary (all rejected)."""

    def __init__(self, expected: torch.Tensor, k: int, wrong: bool = False):
        self.expected = expected
        self.max_drafts = self.draft_limit = k
        self.wrong = wrong
        self.accepted_counts = []

    def propose(self, sequences, lengths, active):
        rows = sequences.shape[0]
        drafts = torch.full((rows, self.max_drafts), -1, dtype=torch.long)
        for row in range(rows):
            start = int(lengths[row])
            future = self.expected[row, start:start + self.max_drafts]
            if self.wrong:
                future = (future + 1) % vocab_size()
            if bool(active[row]):
                drafts[row, :future.shape[0]] = future
        return drafts

    def accepted(self, accepted, lengths):
        self.accepted_counts.append(accepted.clone())


def _with_scripted_drafts(monkeypatch, expected, k=6, wrong=False):
    drafts = _ScriptedDrafts(expected, k, wrong)
    monkeypatch.setattr(turbogen_generate, "build_candidates", lambda *args, **kwargs: drafts)
    return drafts


SCRIPTED = {"oracle": False, "wrong": True}


@pytest.mark.parametrize("scripted", SCRIPTED)
@pytest.mark.parametrize("batch", BATCHES)
def test_eos_inside_accepted_runs_cuts_rows_where_plain_decoding_does(batch, scripted, advance, monkeypatch):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    greedy = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                      eos_token_id=None)
    new = greedy[:, input_ids.shape[1]:]
    # Rows stop at different steps, in the middle of an accepted run of 6.
    eos = sorted({int(new[row, (3 + 2 * row) % NEW_TOKENS]) for row in range(new.shape[0])} | {EOS_ID})
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
                  pad_token_id=PAD_ID)
    expected = generate(model, input_ids, **kwargs)
    prompt_length = input_ids.shape[1]
    assert expected.shape[1] < prompt_length + NEW_TOKENS or (expected[:, prompt_length:] == PAD_ID).any()
    drafts = _with_scripted_drafts(monkeypatch, expected, wrong=SCRIPTED[scripted])
    actual = generate(model, input_ids, prompt_lookup_num_tokens=6, **kwargs)
    assert torch.equal(actual, expected)
    total = int(sum(int(a.sum()) for a in drafts.accepted_counts))
    assert (total == 0) if SCRIPTED[scripted] else (total > 0)


@pytest.mark.parametrize("batch", BATCHES)
def test_stop_strings_inside_accepted_runs(batch, advance, monkeypatch):
    model = tiny_model("llama")
    tokenizer = tiny_tokenizer()
    input_ids, attention_mask = _prompt(batch)
    greedy = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                      eos_token_id=None)
    # A stop string taken from the middle of row 0's output: it ends inside an accepted run.
    text = tokenizer.decode(greedy[0, input_ids.shape[1] + 4: input_ids.shape[1] + 6]).strip()
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, stop_strings=[text],
                  tokenizer=tokenizer)
    expected = generate(model, input_ids, **kwargs)
    assert expected.shape[1] < input_ids.shape[1] + NEW_TOKENS or batch != "single"
    _with_scripted_drafts(monkeypatch, expected)
    assert torch.equal(generate(model, input_ids, prompt_lookup_num_tokens=6, **kwargs), expected)


@pytest.mark.parametrize("batch", BATCHES)
def test_sampling_with_oracle_drafts_and_eos(batch, advance, monkeypatch):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=True, seed=99, top_k=30,
                  eos_token_id=[EOS_ID, 7, 11, 23], pad_token_id=PAD_ID)
    expected = generate(model, input_ids, **kwargs)
    _with_scripted_drafts(monkeypatch, expected)
    assert torch.equal(generate(model, input_ids, prompt_lookup_num_tokens=6, **kwargs), expected)


class _HistoryReadingProcessor:
    """A user processor reading the whole history: penalises the token after the row's last token's id parity."""

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        banned = (input_ids[:, -1] * 7 + input_ids.shape[1]) % scores.shape[1]
        scores[torch.arange(scores.shape[0]), banned] = -float("inf")
        return scores


@pytest.mark.parametrize("processors", [
    {"no_repeat_ngram_size": 2},
    {"repetition_penalty": 1.5, "min_new_tokens": 6},
    {"bad_words_ids": [[9], [12, 13]], "logits_processor": [_HistoryReadingProcessor()]},
], ids=["ngram", "penalty_min_tokens", "bad_words_user"])
@pytest.mark.parametrize("batch", BATCHES)
def test_logits_processors_accept_and_roll_back(batch, processors, monkeypatch):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    processors = dict(processors)
    user = processors.pop("logits_processor", None)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, **processors)
    expected = generate(model, input_ids, logits_processor=user, **kwargs)
    for strategy in ("prompt_lookup", "assistant"):
        actual = generate(model, input_ids, logits_processor=user, **kwargs, **strategy_kwargs(strategy))
        assert torch.equal(actual, expected), strategy
    # Wrong drafts: the stages accept every one, then roll all back.
    _with_scripted_drafts(monkeypatch, expected, wrong=True)
    assert torch.equal(generate(model, input_ids, logits_processor=user, prompt_lookup_num_tokens=6, **kwargs),
                       expected)


class _Recorder(BaseStreamer):
    def __init__(self):
        self.calls = []
        self.ended = 0

    def put(self, value):
        self.calls.append(value.clone())

    def end(self):
        self.ended += 1


@pytest.mark.parametrize("batch", BATCHES)
def test_streamer_sees_plain_decodings_puts(batch):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    plain, speculative = _Recorder(), _Recorder()
    expected = generate(model, input_ids, streamer=plain, **kwargs)
    actual = generate(model, input_ids, streamer=speculative, prompt_lookup_num_tokens=4, **kwargs)
    assert torch.equal(actual, expected)
    assert speculative.ended == plain.ended == 1
    assert len(speculative.calls) == len(plain.calls)
    for got, want in zip(speculative.calls, plain.calls):
        assert torch.equal(got, want)


@pytest.mark.parametrize("do_sample", [False, True], ids=["greedy", "sample"])
@pytest.mark.parametrize("batch", BATCHES)
def test_output_scores_and_logits_equal_plain(batch, do_sample):
    """Recorded per step as plain decoding records them (finished rows included: the rows advance together
    whenever scores are recorded). The logits of a multi-position verification pass may differ from one-position
    passes in the last float bits."""
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=do_sample, seed=5,
                  return_dict_in_generate=True, output_scores=True, output_logits=True,
                  eos_token_id=[EOS_ID, 17], pad_token_id=PAD_ID, **({"temperature": 0.7} if do_sample else {}))
    expected = generate(model, input_ids, **kwargs)
    actual = generate(model, input_ids, assistant_model=small_assistant(), num_assistant_tokens=3, **kwargs)
    assert torch.equal(actual.sequences, expected.sequences)
    assert len(actual.scores) == len(expected.scores) == len(actual.logits) == len(expected.logits)
    for name in ("scores", "logits"):
        for got, want in zip(getattr(actual, name), getattr(expected, name)):
            finite = torch.isfinite(want)
            assert torch.equal(finite, torch.isfinite(got))
            assert_close_across_compilations(got[finite], want[finite])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("strategy", ["prompt_lookup", "assistant"])
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_static_cache(strategy, batch):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                  eos_token_id=[EOS_ID, 17], pad_token_id=PAD_ID)
    expected = generate(model, input_ids, **kwargs)
    actual = generate(model, input_ids, cache_implementation="static", **kwargs, **strategy_kwargs(strategy))
    assert torch.equal(actual, expected)


def test_num_return_sequences_rows_sample_independently():
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=True, seed=3,
                  num_return_sequences=3)
    expected = generate(model, input_ids, **kwargs)
    assert torch.equal(generate(model, input_ids, prompt_lookup_num_tokens=3, **kwargs), expected)


# ----------------------------------------------------------------------------------------------------------
# Candidate generators and the schedule
# ----------------------------------------------------------------------------------------------------------


def test_prompt_lookup_follows_transformers_rules():
    ids = torch.tensor([[5, 6, 7, 8, 9, 5, 6, 2, 7, 5, 6]])
    lookup = PromptLookupCandidates(num_output_tokens=3, max_matching_ngram_size=2, max_length=100,
                                    eos_token_ids=torch.tensor([2]))
    # The bigram (5, 6) first occurs at 0: drafts 7, 8, 9.
    drafts = lookup.propose(ids, torch.tensor([11]), torch.tensor([True]))
    assert drafts.tolist() == [[7, 8, 9]]
    # The bigram (9, 5) occurs only as the suffix itself; the unigram (5,) first occurs at 0: drafts 6, 7, 8.
    drafts = lookup.propose(ids[:, :6], torch.tensor([6]), torch.tensor([True]))
    assert drafts.tolist() == [[6, 7, 8]]
    # Drafts stop before the first EOS of the continuation.
    assert lookup.propose(torch.tensor([[4, 7, 2, 9, 4]]), torch.tensor([5]), torch.tensor([True])).tolist() == [[7]]
    # A continuation starting with EOS gives no drafts (transformers does not search further).
    ids_eos = torch.tensor([[4, 2, 3, 4]])
    assert lookup.propose(ids_eos, torch.tensor([4]), torch.tensor([True])).shape[1] == 0
    # Room before max_length, and finished rows get nothing.
    short = PromptLookupCandidates(num_output_tokens=3, max_matching_ngram_size=2, max_length=13)
    assert short.propose(ids, torch.tensor([11]), torch.tensor([True])).tolist() == [[7]]
    assert lookup.propose(ids, torch.tensor([11]), torch.tensor([False])).shape[1] == 0


def test_prompt_lookup_skips_left_padding():
    ids = torch.tensor([[0, 0, 0, 4, 0, 0]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    lookup = PromptLookupCandidates(3, 2, 100, prompt_mask=mask)
    # Without the mask the bigram (0, 0) would match the padding.
    drafts = lookup.propose(ids, torch.tensor([6]), torch.tensor([True]))
    assert drafts.tolist() == [[0]]  # the unigram (0,) after the 4: its continuation within the row is 0


def test_heuristic_schedule_grows_shrinks_and_backs_off():
    schedule = DraftSchedule(2, 3, "heuristic")
    schedule.update(torch.tensor([3, 3]), torch.tensor([3, 1]))
    assert schedule.values.tolist() == [5.0, 2.0]
    schedule.update(torch.tensor([5, 2]), torch.tensor([0, 0]))
    assert schedule.values.tolist() == [4.0, 1.0]
    # Row 1 keeps failing with a single draft: it stops drafting for 1, then 2 steps.
    for _ in range(2):
        schedule.update(torch.tensor([4, 1]), torch.tensor([4, 0]))
    assert schedule.counts().tolist()[1] == 0
    schedule.update(torch.tensor([4, 0]), torch.tensor([4, 0]))  # the cool-down step
    assert schedule.counts().tolist()[1] == 1
    for _ in range(2):
        schedule.update(torch.tensor([4, 1]), torch.tensor([4, 0]))
    assert schedule.counts().tolist()[1] == 0
    schedule.update(torch.tensor([4, 0]), torch.tensor([4, 0]))
    assert schedule.counts().tolist()[1] == 0  # a 2-step cool-down now
    schedule.update(torch.tensor([4, 0]), torch.tensor([4, 0]))
    assert schedule.counts().tolist()[1] == 1
    # Full acceptance grows up to the limit.
    for _ in range(40):
        schedule.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    assert schedule.values.tolist() == [float(HEURISTIC_DRAFT_LIMIT)] * 2
    constant = DraftSchedule(1, 4, "constant")
    constant.update(torch.tensor([4]), torch.tensor([0]))
    assert constant.counts().tolist() == [4]


class _FakeClock:
    """A clock the simulated steps advance by their modelled cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _simulate_governor(step_seconds, acceptance: float, limit: int = 8, rows: int = 4, steps: int = 200):
    """The governor's caps over ``steps`` simulated steps: a step verifying ``k`` drafts costs
    ``step_seconds(k)``; each drafted row accepts each draft with probability ``acceptance`` until its first
    rejection (the geometric model)."""
    clock = _FakeClock()
    governor = WidthGovernor(limit, clock=clock)
    generator = torch.Generator().manual_seed(0)
    caps = []
    for _ in range(steps):
        governor.start_step()
        k = governor.cap
        caps.append(k)
        proposed = torch.full((rows,), k, dtype=torch.long)
        hits = torch.rand(rows, max(k, 1), generator=generator) < acceptance
        accepted = torch.where(proposed > 0, hits.long().cumprod(dim=1).sum(dim=1), 0).clamp(max=k)
        clock.now += step_seconds(k)
        governor.observe(proposed, accepted)
    return caps


def test_width_governor_backs_off_where_verification_is_expensive():
    """A large batch on a CPU: every draft position costs as much as the step itself and a third of the drafts
    are accepted, so plain steps (k = 0) are the fastest; outside its probes the governor settles there."""
    caps = _simulate_governor(lambda k: 1.0 + 1.0 * k, acceptance=0.33)
    settled = caps[50:]
    assert sum(1 for k in settled if k == 0) >= 0.9 * len(settled), caps


def test_width_governor_backs_off_where_measured_drafting_is_slower():
    """Only one row of four finds drafts (its first four are right), so a step emits few more tokens than a
    plain one while the width sets its cost: the geometric model, which assumes every row drafts, would keep
    drafting, but the measured tokens per second at its width are below plain steps', so outside its probes
    the governor stays at 0."""
    clock = _FakeClock()
    governor = WidthGovernor(8, clock=clock)
    caps = []
    for _ in range(200):
        governor.start_step()
        k = governor.cap
        caps.append(k)
        proposed = torch.tensor([k, 0, 0, 0])
        accepted = torch.tensor([min(k, 4), 0, 0, 0])
        clock.now += 1.0 + 0.3 * k
        governor.observe(proposed, accepted)
    settled = caps[50:]
    assert sum(1 for k in settled if k == 0) >= 0.9 * len(settled), caps


def test_width_governor_keeps_drafting_where_verification_is_cheap():
    """Batch 1 on a CPU: extra positions are nearly free and most drafts are right, so the governor keeps the
    drafts wide (apart from its probes of width 0)."""
    caps = _simulate_governor(lambda k: 1.0 + 0.01 * k, acceptance=0.9)
    settled = caps[50:]
    assert sum(1 for k in settled if k >= 6) >= 0.9 * len(settled), caps


def test_width_governor_caps_governed_schedules_only():
    governed = DraftSchedule(2, 4, "heuristic", governed=True)
    assert governed.governor is not None
    governed.governor.cap = 1
    assert governed.counts().tolist() == [1, 1]
    assert DraftSchedule(2, 4, "constant", governed=True).governor is None  # "constant" drafts what it is told
    assert DraftSchedule(2, 4, "heuristic").governor is None


def test_heuristic_schedule_backs_off_where_drafts_are_useless(monkeypatch):
    """Wrong drafts every step: the heuristic schedule must fall back to plain steps (no drafts) most of the
    time rather than keep paying for drafts and wide verifications."""
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    proposed = []
    original = AssistantCandidates.propose

    def wrong(self, sequences, lengths, active):
        drafts = original(self, sequences, lengths, active)
        proposed.append(int((drafts >= 0).sum()))
        return torch.where(drafts >= 0, (drafts + 1) % vocab_size(), drafts)

    monkeypatch.setattr(AssistantCandidates, "propose", wrong)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=40, do_sample=False, eos_token_id=None)
    expected = generate(model, input_ids, **kwargs)
    actual = generate(model, input_ids, assistant_model=small_assistant(), num_assistant_tokens=4,
                      num_assistant_tokens_schedule="heuristic_transient", **kwargs)
    assert torch.equal(actual, expected)
    steps_without_drafts = sum(1 for count in proposed if count == 0)
    assert steps_without_drafts >= len(proposed) // 2
    assert sum(proposed) < 4 + 3 + 2 + len(proposed) // 2


def test_heuristic_value_persists_on_the_assistant_config_like_transformers():
    model = tiny_model("llama")
    assistant = tiny_model("llama", fresh=True)  # a twin: all drafts accepted
    input_ids, attention_mask = _prompt("single")
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assistant.generation_config.num_assistant_tokens_schedule = "heuristic_transient"
    assistant.generation_config.num_assistant_tokens = 2
    generate(model, input_ids, assistant_model=assistant, **kwargs)
    assert assistant.generation_config.num_assistant_tokens == 2
    assistant.generation_config.num_assistant_tokens_schedule = "heuristic"
    generate(model, input_ids, assistant_model=assistant, **kwargs)
    assert assistant.generation_config.num_assistant_tokens > 2


# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt_lookup_num_tokens": 0}, "prompt_lookup_num_tokens"),
    ({"prompt_lookup_num_tokens": 3, "max_matching_ngram_size": 0}, "max_matching_ngram_size"),
    ({"assistant_early_exit": 0}, "assistant_early_exit"),
    ({"assistant_model": "self", "num_assistant_tokens": 0}, "num_assistant_tokens"),
    ({"assistant_model": "self", "num_assistant_tokens_schedule": "sometimes"}, "num_assistant_tokens_schedule"),
    ({"assistant_model": "self", "assistant_confidence_threshold": 1.5}, "assistant_confidence_threshold"),
    ({"assistant_model": "self", "assistant_tokenizer": "tokenizer"}, "assistant_tokenizer"),
    ({"assistant_model": "other_vocab"}, "different tokenizers"),
    ({"prompt_lookup_num_tokens": 3, "use_cache": False}, "use_cache"),
    ({"assistant_model": "a model"}, "assistant_model"),
])
def test_bad_arguments_raise_value_errors(kwargs, match):
    model = tiny_model("llama")
    kwargs = dict(kwargs)
    if kwargs.get("assistant_model") == "self":
        kwargs["assistant_model"] = model
    elif kwargs.get("assistant_model") == "other_vocab":
        kwargs["assistant_model"] = tiny_model("llama", vocab_size=vocab_size() + 8)
    if kwargs.get("assistant_tokenizer") == "tokenizer":
        kwargs["assistant_tokenizer"] = tiny_tokenizer()
    input_ids, attention_mask = _prompt("single")
    with pytest.raises(ValueError, match=match):
        generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=4, **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"prompt_lookup_num_tokens": 3, "output_attentions": True, "return_dict_in_generate": True},
    {"prompt_lookup_num_tokens": 3, "cache_implementation": "sliding_window"},
    {"prompt_lookup_num_tokens": 3, "guidance_scale": 1.5},
], ids=["attentions", "cache", "guidance"])
def test_unsupported_combinations_refuse_clearly(kwargs):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    with pytest.raises(UnsupportedByTurbogen, match="speculative decoding"):
        generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=4, **kwargs)


def test_encoder_decoder_models_refuse():
    from transformers import T5Config, T5ForConditionalGeneration

    model = T5ForConditionalGeneration(T5Config(vocab_size=vocab_size(), d_model=16, d_ff=32, num_layers=1,
                                                num_heads=2, d_kv=8, decoder_start_token_id=PAD_ID)).eval()
    with pytest.raises(UnsupportedByTurbogen, match="encoder-decoder"):
        generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=3, prompt_lookup_num_tokens=2)


def test_beam_search_ignores_the_assistant_as_transformers_does():
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("single")
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=6, num_beams=2, do_sample=False)
    expected = generate(model, input_ids, **kwargs)
    with pytest.warns(UserWarning, match="ignored"):
        actual = generate(model, input_ids, prompt_lookup_num_tokens=3, **kwargs)
    assert torch.equal(actual, expected)


def test_patched_model_runs_speculation_in_turbogen(monkeypatch):
    model = tiny_model("llama", fresh=True)
    input_ids, attention_mask = _prompt("single")
    calls = []
    original = turbogen_generate._speculative
    monkeypatch.setattr(turbogen_generate, "_speculative", lambda *a, **k: calls.append(1) or original(*a, **k))
    turbogen.patch(model)
    try:
        out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False,
                             prompt_lookup_num_tokens=3)
    finally:
        turbogen.unpatch(model)
    assert calls == [1]
    assert torch.equal(out, generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=8,
                                     do_sample=False))


def test_ragged_advance_is_chosen_only_where_rows_are_independent():
    from turbogen.generation.record import Record
    from turbogen.generation.speculative import can_advance_ragged
    from turbogen.stopping import EosTokenCriteria, MaxLengthCriteria, StoppingPlan

    class PerRowRunner:
        fed_lengths = torch.zeros(2, dtype=torch.long)

    plain = StoppingPlan([MaxLengthCriteria(10), EosTokenCriteria(EOS_ID)])
    record = Record(turbogen.GenerationConfig())
    assert can_advance_ragged(PerRowRunner(), [], plain, record, None, rows=2)
    assert not can_advance_ragged(PerRowRunner(), [], plain, record, None, rows=1)
    assert not can_advance_ragged(object(), [], plain, record, None, rows=2)
    assert not can_advance_ragged(PerRowRunner(), [], plain, record, _Recorder(), rows=2)
    assert not can_advance_ragged(PerRowRunner(), [_HistoryReadingProcessor()], plain, record, None, rows=2)
    custom = StoppingPlan([MaxLengthCriteria(10), lambda ids, scores: ids[:, -1] == 3])
    assert not can_advance_ragged(PerRowRunner(), [], custom, record, None, rows=2)
    assert can_advance_ragged(PerRowRunner(), [], plain, record, None, rows=2, models=[tiny_model("llama")])
    assert not can_advance_ragged(PerRowRunner(), [], plain, record, None, rows=2, models=[tiny_model("mistral")])


@pytest.mark.parametrize("kind", ["gpt2", "qwen2", "mistral"])
def test_other_architectures(kind, advance):
    """GPT-2 (learned positions), Qwen2, and Mistral with a 4-token sliding window (the speculation cache keeps
    every layer whole so that it can be cropped, as transformers does)."""
    skip_here_on_transformers_4_45(GPT2_LEGACY_CACHE_IN_4_45, when=kind == "gpt2")
    model = tiny_model(kind)
    input_ids, attention_mask = _prompt("padded8")
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False)
    expected = generate(model, input_ids, **kwargs)
    for strategy in ("prompt_lookup", "self"):
        extra = strategy_kwargs(strategy)
        if strategy == "self":
            extra["assistant_model"] = model
        assert torch.equal(generate(model, input_ids, **kwargs, **extra), expected), strategy


class _StopAfterToken:
    """A user criterion (no ``eos_token_id``: finished rows are not padded, as in transformers)."""

    def __init__(self, token):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


@pytest.mark.parametrize("batch", BATCHES)
def test_unpadded_finished_rows_keep_generating_like_plain_decoding(batch, monkeypatch):
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt(batch)
    greedy = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                      eos_token_id=None)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                  stopping_criteria=[_StopAfterToken(int(greedy[0, input_ids.shape[1] + 5]))])
    expected = generate(model, input_ids, **kwargs)
    assert torch.equal(generate(model, input_ids, prompt_lookup_num_tokens=4, **kwargs), expected)
    _with_scripted_drafts(monkeypatch, expected)
    assert torch.equal(generate(model, input_ids, prompt_lookup_num_tokens=6, **kwargs), expected)


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_static_cache_with_growing_drafts_and_ragged_rows():
    """Self-speculation with the heuristic schedule: drafts grow towards the limit, rows stop at different EOS
    steps; the static cache (sized for the drafts' headroom) is compacted by the runner as rows are cropped."""
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("padded8")
    greedy = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=40, do_sample=False,
                      eos_token_id=None)
    new = greedy[:, input_ids.shape[1]:]
    eos = sorted({int(new[row, 10 + 3 * row]) for row in range(new.shape[0])})
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=40, do_sample=False, eos_token_id=eos,
                  pad_token_id=PAD_ID)
    expected = generate(model, input_ids, **kwargs)
    actual = generate(model, input_ids, cache_implementation="static", assistant_model=model, num_assistant_tokens=2,
                      num_assistant_tokens_schedule="heuristic_transient", assistant_confidence_threshold=0.0,
                      **kwargs)
    assert torch.equal(actual, expected)


def test_confidence_threshold_stops_each_rows_draft(monkeypatch):
    """With a threshold no draft reaches (probability 1), every row stops after its first draft."""
    model = tiny_model("llama")
    input_ids, attention_mask = _prompt("padded8")
    drafted = []
    original = AssistantCandidates.propose

    def spy(self, sequences, lengths, active):
        drafts = original(self, sequences, lengths, active)
        drafted.append(int((drafts >= 0).sum(dim=1).max()) if drafts.numel() else 0)
        return drafts

    monkeypatch.setattr(AssistantCandidates, "propose", spy)
    kwargs = dict(attention_mask=attention_mask, max_new_tokens=10, do_sample=False)
    expected = generate(model, input_ids, **kwargs)
    actual = generate(model, input_ids, assistant_model=small_assistant(), num_assistant_tokens=5,
                      assistant_confidence_threshold=1.0, **kwargs)
    assert torch.equal(actual, expected)
    assert drafted and max(drafted) == 1
