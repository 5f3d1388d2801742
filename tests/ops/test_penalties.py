"""turbogen.ops.apply_penalties and PenaltyState: the reference against transformers' processor and the
history it summarises, every backend against the reference bit for bit, the penalties fused into the
sampler, and the state's verbs against the state rebuilt from the history."""

from __future__ import annotations

import pytest
import torch

from turbogen import ops, ref
from turbogen.ops import PenaltyState
from turbogen.processors import functional

from conftest import NO_PROMPT_IGNORE_LENGTH_IN_4_45, backend_params, device_for, skip_on_transformers_4_45
from tolerances import assert_bit_exact

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _logits(rows, vocab, dtype=torch.float32, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator) * 3
    logits[:, ::7] = -logits[:, ::7].abs()  # negative logits take the other branch of the repetition penalty
    return logits.to(device=device, dtype=dtype)


def _history(rows, length, vocab, seed=0):
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed + 1))


def _expected(logits, history, repetition, presence, frequency, seen_from, generated_from):
    """The penalties computed from the history itself, as the processors compute them."""
    out = functional.repetition_penalty(history[:, seen_from:], logits, repetition)
    return functional.presence_frequency_penalty(history, out, presence, frequency, generated_from)


# --- the reference ----------------------------------------------------------------------------------

@pytest.mark.transformers
@pytest.mark.parametrize("penalty,ignore", [(1.3, None), (0.7, None), pytest.param(
    2.0, 9, marks=skip_on_transformers_4_45(NO_PROMPT_IGNORE_LENGTH_IN_4_45))], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_is_transformers_repetition_penalty(dtype, penalty, ignore):
    transformers = pytest.importorskip("transformers")
    processor_class = transformers.RepetitionPenaltyLogitsProcessor
    logits, history = _logits(4, 97, dtype), _history(4, 40, 97)
    processor = processor_class(penalty=penalty, prompt_ignore_length=ignore) if ignore else processor_class(penalty)
    expected = processor(history, logits.clone())
    state = PenaltyState(history, 97, seen_from=ignore or 0)
    assert_bit_exact(ops.apply_penalties(logits, state, repetition_penalty=penalty, backend="ref"), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reference_is_the_processors_presence_and_frequency(dtype):
    logits, history = _logits(4, 97, dtype), _history(4, 40, 97)
    state = PenaltyState(history, 97, seen_from=3, generated_from=16)
    repetition = torch.tensor([1.0, 1.2, 0.8, 3.0])
    out = ops.apply_penalties(logits, state, repetition_penalty=repetition, presence_penalty=0.4,
                              frequency_penalty=-0.3, backend="ref")
    expected = _expected(logits, history, repetition, 0.4, -0.3, 3, 16)
    assert_bit_exact(out, expected)
    assert out.dtype == dtype and out.is_contiguous()


# --- every backend against the reference ------------------------------------------------------------

def _state(rows, vocab, device, seed=0, length=30, rollback=0):
    history = _history(rows, length, vocab, seed)
    state = PenaltyState(history[:, :length // 2].to(device), vocab, seen_from=2, generated_from=length // 2)
    state.accept(history[:, length // 2:].to(device))
    if rollback:
        state.rollback(torch.arange(rows, device=device), torch.full((rows,), rollback, device=device))
    return state


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 31), (3, 32), (5, 33), (4, 1000)])
def test_backends_match_reference(backend, dtype, rows, vocab):
    device = device_for(backend)
    logits = _logits(rows, vocab, dtype, seed=vocab, device=device)
    # A rollback leaves mask bits of forgotten tokens set: the kernels must still follow the counts.
    state = _state(rows, vocab, device, seed=vocab, rollback=3)
    parameters = [dict(repetition_penalty=1.4), dict(presence_penalty=0.5, frequency_penalty=0.25),
                  dict(repetition_penalty=torch.linspace(0.5, 2.0, rows, device=device),
                       presence_penalty=torch.linspace(-1.0, 1.0, rows, device=device), frequency_penalty=0.3)]
    for kwargs in parameters:
        expected = ops.apply_penalties(logits, state, backend="ref", **kwargs)
        assert_bit_exact(ops.apply_penalties(logits, state, backend=backend, **kwargs), expected)
        in_place = logits.clone()
        assert ops.apply_penalties(in_place, state, out=in_place, backend=backend, **kwargs) is in_place
        assert_bit_exact(in_place, expected)


@pytest.mark.parametrize("backend", backend_params())
def test_non_finite_logits_and_empty_batch(backend):
    device = device_for(backend)
    logits = _logits(2, 64, device=device)
    history = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]], device=device)
    logits[0, 0], logits[0, 1], logits[0, 2] = float("nan"), float("inf"), float("-inf")
    state = PenaltyState(history, 64, seen_from=0, generated_from=2)
    kwargs = dict(repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=0.5)
    assert_bit_exact(ops.apply_penalties(logits, state, backend=backend, **kwargs),
                     ops.apply_penalties(logits, state, backend="ref", **kwargs))
    empty = PenaltyState(torch.empty(0, 3, dtype=torch.long, device=device), 64)
    assert ops.apply_penalties(torch.empty(0, 64, device=device), empty, repetition_penalty=1.2,
                               backend=backend).shape == (0, 64)


# --- the penalties fused into the sampler -------------------------------------------------------------

@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("vocab", [300, 5000])  # 5000 with top_k=5: the CPU sampler's small-top-k path
def test_fused_sampling_equals_sampling_the_penalised_logits(backend, dtype, vocab):
    if backend == "triton" and vocab > 300:
        pytest.skip("interpreter time: Triton's kernels are the same at every vocabulary size")
    device = device_for(backend)
    rows = 6
    # Peaked logits, so the penalties move the draws: the history's tokens are the likely ones.
    history = _history(rows, 24, vocab, seed=5).to(device)
    logits = _logits(rows, vocab, dtype, seed=5, device=device).float()
    logits.scatter_add_(1, history, torch.full(history.shape, 6.0, device=device))
    logits = logits.to(dtype)
    state = PenaltyState(history[:, :12], vocab, seen_from=0, generated_from=12)
    state.accept(history[:, 12:])
    state.mask[:, -1] |= -(1 << 31)  # a stale bit past the vocabulary (in the last word) is ignored
    penalties = dict(repetition_penalty=torch.linspace(1.1, 2.5, rows, device=device), presence_penalty=0.7,
                     frequency_penalty=0.2)
    penalised = ops.apply_penalties(logits, state, backend="ref", **penalties)
    moved = False
    for filters in (dict(), dict(temperature=0.0), dict(temperature=0.7, top_k=5),
                    dict(temperature=1.3, top_p=0.8, min_p=0.05), dict(top_k=40, top_p=0.95)):
        seed = torch.arange(rows, device=device) + 11
        fused = ops.sample(logits, seed=seed, offset=3, return_logprobs=True, penalty_state=state, backend=backend,
                           **filters, **penalties)
        separate = ops.sample(penalised, seed=seed, offset=3, return_logprobs=True, backend=backend, **filters)
        assert torch.equal(fused[0], separate[0])
        assert_bit_exact(fused[1], separate[1])
        moved |= not torch.equal(fused[0], ops.sample(logits, seed=seed, offset=3, backend=backend, **filters))
        assert_bit_exact(ops.filter_logits(logits, penalty_state=state, backend=backend, **filters, **penalties),
                         ops.filter_logits(penalised, backend=backend, **filters))
    assert moved, "the penalties never changed a draw: the test would not see them ignored"


def test_sampler_takes_prepared_penalty_tensors():
    rows, vocab = 3, 50
    state = _state(rows, vocab, "cpu")
    logits = _logits(rows, vocab)
    sampler = ops.Sampler(rows, "cpu", temperature=0.9, seed=4, backend="ref")
    tensors = state.tensors(repetition_penalty=1.7)
    assert torch.equal(sampler(logits, 2, penalties=tensors),
                       sampler(ops.apply_penalties(logits, state, repetition_penalty=1.7, backend="ref"), 2))
    with pytest.raises(TypeError, match="penalties must be"):
        sampler(logits, 2, penalties=state)
    with pytest.raises(ValueError, match="need a penalty_state"):
        ops.sample(logits, seed=1, repetition_penalty=1.2)


# --- the state's verbs --------------------------------------------------------------------------------

def _rebuilt(history_rows, lengths, vocab, seen_from, generated_from):
    """The counts of each row's live history, rebuilt from scratch."""
    seen = torch.zeros(len(history_rows), vocab, dtype=torch.int32)
    generated = torch.zeros_like(seen)
    for row, (tokens, length) in enumerate(zip(history_rows, lengths)):
        for position in range(length):
            seen[row, tokens[position]] += position >= seen_from[row]
            generated[row, tokens[position]] += position >= generated_from[row]
    return seen, generated


def _unpack(mask, vocab):
    bits = (mask.long().unsqueeze(-1) >> torch.arange(32)) & 1
    return bits.reshape(mask.shape[0], -1)[:, :vocab].bool()


@pytest.mark.parametrize("native", [True, False], ids=["native-accept", "torch-accept"])
def test_state_follows_a_random_stream_of_verbs(native, monkeypatch):
    if native and not ops.available_backends()["cpu"]:
        pytest.skip("no compiled extension")
    if not native:
        monkeypatch.setattr(PenaltyState, "accept", lambda self, tokens: self._accept_with_torch(
            tokens.reshape(self.rows, -1).long()))
    generator = torch.Generator().manual_seed(0)
    rows, vocab, window = 4, 70, 6
    prompt = torch.randint(0, vocab, (rows, 5), generator=generator)
    state = PenaltyState(prompt, vocab, seen_from=2, generated_from=torch.tensor([5, 5, 4, 0]),
                         rollback_window=window)
    history = [row.tolist() for row in prompt]
    seen_from, generated_from = [2] * rows, [5, 5, 4, 0]
    for step in range(60):
        action = step % 5
        if action in (0, 1, 2):
            n = int(torch.randint(1, 4, (), generator=generator))
            tokens = torch.randint(0, vocab, (rows, n), generator=generator)
            tokens[:, -1] = tokens[:, 0]  # repeated tokens within one accept
            state.accept(tokens)
            for row in range(rows):
                history[row] += tokens[row].tolist()
        elif action == 3:
            n = torch.minimum(state.retained, torch.randint(0, window + 1, (rows,), generator=generator))
            picked = torch.tensor([0, 2, 3])
            state.rollback(picked, n[picked])
            for row, back in zip(picked.tolist(), n[picked].tolist()):
                history[row] = history[row][:len(history[row]) - back]
        else:
            index = torch.randint(0, rows, (rows,), generator=generator)
            state.reorder(index)
            history = [list(history[i]) for i in index.tolist()]
            seen_from = [seen_from[i] for i in index.tolist()]
            generated_from = [generated_from[i] for i in index.tolist()]
            if step % 10 == 4:
                new_prompt = torch.randint(0, vocab, (1, 3), generator=generator)
                state.reset(torch.tensor([1]), new_prompt, generated_from=3)
                history[1], generated_from[1] = new_prompt[0].tolist(), 3
        lengths = [len(h) for h in history]
        seen, generated = _rebuilt(history, lengths, vocab, seen_from, generated_from)
        assert state.lengths.tolist() == lengths
        assert torch.equal(state.seen, seen) and torch.equal(state.generated, generated)
        present = _unpack(state.mask, vocab)
        assert bool(((seen > 0) | (generated > 0)).le(present).all()), "the mask must cover every counted token"


def test_native_and_torch_accept_agree():
    if not ops.available_backends()["cpu"]:
        pytest.skip("no compiled extension")
    prompt = _history(3, 9, 40)
    native, torch_side = (PenaltyState(prompt, 40, seen_from=4, generated_from=9, rollback_window=4) for _ in range(2))
    for n in (1, 3, 7, 1):
        tokens = _history(3, n, 40, seed=n)
        native.accept(tokens)
        torch_side._accept_with_torch(tokens)
        for name in ("mask", "seen", "generated", "lengths", "recent", "retained"):
            assert torch.equal(getattr(native, name), getattr(torch_side, name)), name


def test_bad_arguments_are_refused():
    state = PenaltyState(_history(2, 5, 30), 30)
    with pytest.raises(ValueError, match="tokens"):
        state.accept(torch.tensor([[3], [30]]))
    with pytest.raises(ValueError, match="tokens"):
        state.accept(torch.tensor([[3], [-1]]))
    assert state.lengths.tolist() == [5, 5]  # nothing was written
    with pytest.raises(ValueError, match="rows"):
        state.accept(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="n must be in"):
        state.rollback(torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="logits must have shape"):
        ops.apply_penalties(torch.zeros(2, 31), state, repetition_penalty=1.2)
    with pytest.raises(ValueError, match="repetition_penalty"):
        ops.apply_penalties(torch.zeros(2, 30), state, repetition_penalty=0.0)
    with pytest.raises(ValueError, match="generated_from=None"):
        ops.apply_penalties(torch.zeros(2, 30), state, presence_penalty=0.5)
    with pytest.raises(ValueError, match="prompt_ids"):
        PenaltyState(torch.tensor([[1, 40]]), 30)
    with pytest.raises(TypeError, match="state must be"):
        ops.apply_penalties(torch.zeros(2, 30), object())
    with pytest.raises(ValueError, match="out must be"):
        ops.apply_penalties(torch.zeros(2, 30), state, out=torch.zeros(2, 30, dtype=torch.float16))


def test_the_state_never_writes_into_the_callers_starts():
    history = torch.randint(0, 50, (3, 6))
    seen_from = torch.tensor([0, 2, 4])
    state = ops.PenaltyState(history, 50, seen_from=seen_from, generated_from=seen_from)
    state.reorder(torch.tensor([2, 2, 0]))
    state.reset(torch.tensor([1]), history[1:2], seen_from=5)
    assert seen_from.tolist() == [0, 2, 4]
    assert state.seen_from.tolist() == [4, 5, 0]
    assert state.generated_from.tolist() == [4, 4, 0]


def test_pack_token_bits_sets_bit_31_and_the_last_partial_word():
    from turbogen.ops.penalties import pack_token_bits

    present = torch.zeros(1, 70, dtype=torch.bool)
    present[0, [0, 31, 32, 69]] = True
    words = pack_token_bits(present)
    assert words.dtype == torch.int32 and words.shape == (1, 3)
    assert words.tolist() == [[1 - 2 ** 31, 1, 1 << 5]]
    assert torch.equal(_unpack(words, 70), present)
