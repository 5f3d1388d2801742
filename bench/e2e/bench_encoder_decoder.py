"""Encoder-decoder generate(): turbogen vs transformers vs the bare encoder + decoder forward loop, on a tiny T5.

    python bench/e2e/bench_encoder_decoder.py                       # greedy and beam, batch 1 and 8, 2 threads
    python bench/e2e/bench_encoder_decoder.py --threads=1 --rounds=9 greedy:8 beam:1

The issue's target: turbogen at least 0.9x the bare forward loop and faster than transformers' generate().
The model is a T5 (``T5ForConditionalGeneration``, relu feed-forward as the original T5) with random weights:
vocabulary 32000, d_model 256, d_kv 32, d_ff 1024, 4 encoder + 4 decoder layers, 8 heads; encoder inputs of 16
random tokens (all-ones mask), 64 new tokens, no EOS (every row generates all 64). Modes and runner plumbing
are ``turbogen bench``'s (:mod:`turbogen.cli.benchmark`): greedy search, beam search with 4 beams, one explicit
generation config for both generate() runners. The runners take turns round by round (7 rounds by default,
after one untimed warm-up each), in an order rotated every round, so that none always runs right after the same
other one (:func:`interleaved_round_seconds`). The floor here is the encoder
once, then one decoder forward per token over an ``EncoderDecoderCache`` and an argmax; for beam search it
runs over ``batch * num_beams`` rows (the encoder on ``batch`` rows, its output repeated per beam, as
generate() does), so all three do equal model work. Rates are new tokens x decoded rows / s, for the best and
the median round. Ratios are turbogen's rate over the others': of their best rounds, and the median over the
rounds of the ratio within each round (runners of one round ran back to back, under about the same load: on a
shared machine, whose load drifts from round to round, this is the steadier figure).

Before timing, turbogen's and transformers' sequences are compared (and, for greedy search, the floor's).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from turbogen.cli import benchmark as e2e

VOCAB_SIZE = 32000
D_MODEL = 256
D_FF = 1024
NUM_LAYERS = 4
NUM_HEADS = 8
PROMPT_LENGTH = 16
NEW_TOKENS = 64
DEFAULT_CASES = (("greedy", 1), ("greedy", 8), ("beam", 1), ("beam", 8))


def build_t5(seed: int = 0):
    """The tiny T5 in eval mode, float32. The large init range (as tests/generation/test_encoder_decoder.py's)
    makes tokens vary from step to step, so the equality check means something; speed does not depend on it."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=VOCAB_SIZE, d_model=D_MODEL, d_kv=D_MODEL // NUM_HEADS, d_ff=D_FF,
                      num_layers=NUM_LAYERS, num_decoder_layers=NUM_LAYERS, num_heads=NUM_HEADS, dropout_rate=0.0,
                      initializer_factor=8.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
    return model.eval()


@torch.inference_mode()
def encoder_decoder_loop(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int,
                         rows_per_prompt: int = 1) -> torch.Tensor:
    """The floor: the encoder once, then one decoder forward per token over an EncoderDecoderCache and an argmax,
    on ``rows_per_prompt`` rows per prompt; returns the generated tokens, (rows, new_tokens)."""
    from transformers import DynamicCache, EncoderDecoderCache
    from transformers.modeling_outputs import BaseModelOutput

    hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if rows_per_prompt > 1:
        hidden = hidden.repeat_interleave(rows_per_prompt, dim=0)
        attention_mask = attention_mask.repeat_interleave(rows_per_prompt, dim=0)
    encoder_outputs = BaseModelOutput(last_hidden_state=hidden)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    token = torch.full((hidden.shape[0], 1), model.config.decoder_start_token_id, dtype=torch.long)
    tokens = []
    for _ in range(new_tokens):
        out = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask, decoder_input_ids=token,
                    past_key_values=cache, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


def runner_calls(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str, new_tokens: int):
    """One zero-argument callable per runner (forward, turbogen, transformers), as ``turbogen bench``'s
    :func:`~turbogen.cli.benchmark.runner_calls` but with the encoder-decoder floor."""
    from turbogen.generate import generate

    config = e2e.generation_config(model, mode, new_tokens)
    # The explicit config replaces the model's defaults, so the decoder start token must be in it.
    config.decoder_start_token_id = model.config.decoder_start_token_id
    common = dict(input_ids=input_ids, attention_mask=attention_mask, generation_config=config, eos_token_id=None)
    rows_per_prompt = e2e.decoded_rows(mode, 1)
    calls = {
        "forward": lambda: encoder_decoder_loop(model, input_ids, attention_mask, new_tokens, rows_per_prompt),
        "turbogen": e2e._with_model_defaults(model, config, lambda: generate(model, seed=0, **common)),
        "transformers": e2e._with_model_defaults(model, config, lambda: model.generate(**common)),
    }
    return {runner: e2e._in_inference_mode(call) for runner, call in calls.items()}


def check_sequences(calls, mode: str) -> bool:
    """Prints whether turbogen's and transformers' sequences are equal (and, for greedy, the floor's tokens);
    returns the turbogen/transformers verdict."""
    ours, theirs = calls["turbogen"](), calls["transformers"]()
    same = ours.shape == theirs.shape and torch.equal(ours, theirs)
    line = f"  sequences turbogen == transformers: {same} {tuple(ours.shape)}"
    if mode == "greedy":
        floor = calls["forward"]()
        line += f"; == forward loop's tokens: {torch.equal(ours[:, 1:], floor)}"
    print(line, flush=True)
    return same


def interleaved_round_seconds(calls: dict, rounds: int) -> dict[str, list[float]]:
    """Wall-clock seconds of ``rounds`` timed calls of each of ``calls``, after one untimed warm-up call each.
    Round ``r`` runs the calls in their order rotated by ``r`` places; ``[runner][r]`` is round ``r``'s time."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    for fn in calls.values():
        fn()
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def paired_median_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of turbogen's rate over another runner's in the same round (``theirs / ours``
    seconds)."""
    return statistics.median(other / mine for mine, other in zip(ours, theirs, strict=True))


def main(argv: list[str]) -> int:
    options = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in argv if arg.startswith("--")}
    unknown = set(options) - {"--threads", "--rounds"}
    if unknown:
        raise SystemExit(f"unknown options {sorted(unknown)}")
    torch.set_num_threads(int(options.get("--threads", 2)))
    rounds = int(options.get("--rounds", 7))
    args = [arg for arg in argv if not arg.startswith("--")]
    cases = [(mode, int(batch)) for mode, batch in (arg.split(":") for arg in args)] if args else DEFAULT_CASES
    model = build_t5()
    print(f"tiny T5 (vocab {VOCAB_SIZE}, d_model {D_MODEL}, d_ff {D_FF}, {NUM_LAYERS}+{NUM_LAYERS} layers, "
          f"{NUM_HEADS} heads), {PROMPT_LENGTH}-token encoder inputs, {NEW_TOKENS} new tokens, no EOS; "
          f"{torch.get_num_threads()} torch thread(s), {rounds} rounds taken in turns (rotated order)", flush=True)
    rows_out, all_same = [], True
    for mode, batch in cases:
        input_ids, attention_mask = e2e.bench_prompt(batch, PROMPT_LENGTH, VOCAB_SIZE)
        calls = runner_calls(model, input_ids, attention_mask, mode, NEW_TOKENS)
        print(f"{mode} B={batch}:", flush=True)
        all_same &= check_sequences(calls, mode)
        seconds = interleaved_round_seconds(calls, rounds)
        rows = e2e.decoded_rows(mode, batch)
        rate = {}
        for runner in e2e.RUNNERS:
            times = seconds[runner]
            rate[runner] = (rows * NEW_TOKENS / min(times), rows * NEW_TOKENS / statistics.median(times))
            print(f"  {runner:12s} best {rate[runner][0]:8.0f} tok/s   median {rate[runner][1]:8.0f} tok/s   "
                  "rounds (s) " + " ".join(f"{t:.3f}" for t in times), flush=True)
        ratios = [(rate["turbogen"][0] / rate[other][0], paired_median_ratio(seconds["turbogen"], seconds[other]))
                  for other in ("forward", "transformers")]
        rows_out.append(f"| {mode} | {batch} | {rows} | "
                        + " | ".join(f"{rate[runner][0]:.0f} ({rate[runner][1]:.0f})" for runner in e2e.RUNNERS)
                        + " | " + " | ".join(f"{best:.2f} ({median:.2f})" for best, median in ratios) + " |")
    print("\n| mode | batch | rows | forward tok/s | turbogen tok/s | transformers tok/s | turbogen/forward | "
          "turbogen/transformers |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows_out))
    print("\ntok/s: best round (median round); ratios: of the best rounds (median of the per-round ratios); "
          "sequences equal everywhere:", all_same)
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
