"""Encoder-decoder generate(): turbogen vs transformers vs the bare encoder + decoder forward loop, on a tiny T5.

    python bench/e2e/bench_encoder_decoder.py                       # greedy and beam, batch 1 and 8, 2 threads
    python bench/e2e/bench_encoder_decoder.py --threads=1 --rounds=5 greedy:8 beam:1

The issue's target: turbogen at least 0.9x the bare forward loop and faster than transformers' generate().
The model is a T5 (``T5ForConditionalGeneration``, relu feed-forward as the original T5) with random weights:
vocabulary 32000, d_model 256, d_kv 32, d_ff 1024, 4 encoder + 4 decoder layers, 8 heads; encoder inputs of 16
random tokens (all-ones mask), 64 new tokens, no EOS (every row generates all 64). Modes and runner plumbing
are ``turbogen bench``'s (:mod:`turbogen.cli.benchmark`): greedy search, beam search with 4 beams, one explicit
generation config for both generate() runners, the runners taking turns round by round
(:func:`~turbogen.cli.benchmark.round_seconds`, one untimed warm-up each). The floor here is the encoder
once, then one decoder forward per token over an ``EncoderDecoderCache`` and an argmax; for beam search it
runs over ``batch * num_beams`` rows (the encoder on ``batch`` rows, its output repeated per beam, as
generate() does), so all three do equal model work. Rates are new tokens x decoded rows / s; ratios are
turbogen's rate over the others', for the best and the median round.

Before timing, turbogen's and transformers' sequences are compared (and, for greedy search, the floor's).
"""

from __future__ import annotations

import statistics
import sys

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


def main(argv: list[str]) -> int:
    options = {arg.split("=", 1)[0]: arg.split("=", 1)[1] for arg in argv if arg.startswith("--")}
    unknown = set(options) - {"--threads", "--rounds"}
    if unknown:
        raise SystemExit(f"unknown options {sorted(unknown)}")
    torch.set_num_threads(int(options.get("--threads", 2)))
    rounds = int(options.get("--rounds", 3))
    args = [arg for arg in argv if not arg.startswith("--")]
    cases = [(mode, int(batch)) for mode, batch in (arg.split(":") for arg in args)] if args else DEFAULT_CASES
    model = build_t5()
    print(f"tiny T5 (vocab {VOCAB_SIZE}, d_model {D_MODEL}, d_ff {D_FF}, {NUM_LAYERS}+{NUM_LAYERS} layers, "
          f"{NUM_HEADS} heads), {PROMPT_LENGTH}-token encoder inputs, {NEW_TOKENS} new tokens, no EOS; "
          f"{torch.get_num_threads()} torch thread(s), {rounds} rounds taken in turns", flush=True)
    measurements, all_same = [], True
    for mode, batch in cases:
        input_ids, attention_mask = e2e.bench_prompt(batch, PROMPT_LENGTH, VOCAB_SIZE)
        calls = runner_calls(model, input_ids, attention_mask, mode, NEW_TOKENS)
        print(f"{mode} B={batch}:", flush=True)
        all_same &= check_sequences(calls, mode)
        seconds = e2e.round_seconds(calls, rounds)
        rows = e2e.decoded_rows(mode, batch)
        for runner, times in seconds.items():
            measurement = e2e.Measurement(runner, mode, batch, rows, NEW_TOKENS, min(times),
                                          statistics.median(times))
            measurements.append(measurement)
            print(f"  {runner:12s} best {measurement.tokens_per_second:8.0f} tok/s   median "
                  f"{measurement.median_tokens_per_second:8.0f} tok/s   rounds (s) "
                  + " ".join(f"{t:.3f}" for t in times), flush=True)
    rate = {(m.mode, m.batch, m.runner): m for m in measurements}
    print("\n| mode | batch | rows | forward tok/s | turbogen tok/s | transformers tok/s | turbogen/forward | "
          "turbogen/transformers |")
    print("|---|---|---|---|---|---|---|---|")
    for s in e2e.speedups(measurements):
        cells = [rate[(s.mode, s.batch, runner)] for runner in e2e.RUNNERS]
        print(f"| {s.mode} | {s.batch} | {cells[0].rows} | "
              + " | ".join(f"{m.tokens_per_second:.0f} ({m.median_tokens_per_second:.0f})" for m in cells)
              + f" | {s.vs_forward:.2f} ({s.vs_forward_median:.2f}) | "
                f"{s.vs_transformers:.2f} ({s.vs_transformers_median:.2f}) |")
    print("\nbest round (median round); sequences equal everywhere:", all_same)
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
