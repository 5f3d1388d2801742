"""``turbogen demo``: the embedded model writes with greedy search, sampling and beam search (streamed as
it comes), then greedy search runs again with speculative decoding (prompt lookup, and the embedded draft model
drafting for the embedded model): the same text, with its speed and the target model calls it took; then
turbogen's speed is measured next to transformers' generate() and the bare forward loop.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .common import (
    RANDOM_WEIGHTS_NOTE,
    LoadedModel,
    add_model_argument,
    encode_prompts,
    format_table,
    help_text,
    load_model,
    positive_int,
    seed_int,
    speed_table,
)
from .progress import ProgressBar


@dataclasses.dataclass(frozen=True)
class Showcase:
    """One generation of the demo: a decoding method on a prompt."""

    title: str
    prompt: str
    settings: dict

    @property
    def is_beam_search(self) -> bool:
        return self.settings.get("num_beams", 1) > 1


# Prompts in the voice of the embedded model's training text (Jane Austen's novels). The repetition
# penalty keeps a model this small from looping under the deterministic methods.
SHOWCASES = (
    Showcase("greedy search", "It is a truth universally acknowledged",
             dict(do_sample=False, repetition_penalty=1.3)),
    Showcase("sampling", "Mr. Darcy",
             dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.1)),
    Showcase("beam search", "Elizabeth",
             dict(do_sample=False, num_beams=4, num_return_sequences=2, repetition_penalty=1.3)),
)


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """How much the demo does: tokens per showcase, and the speed measurement's length and repeats."""

    max_new_tokens: int = 48
    bench_new_tokens: int = 32
    repeats: int = 2
    seed: int = 0


QUICK_PLAN = DemoPlan(max_new_tokens=8, bench_new_tokens=8, repeats=1)

# Speculative decoding is shown on plain greedy search (what it speeds up most; the output is the same as without
# it), on the first showcase's prompt. Prompt lookup drafts this many tokens per step.
SPECULATION_SETTINGS = dict(do_sample=False)
PROMPT_LOOKUP_TOKENS = 3


@dataclasses.dataclass(frozen=True)
class SpeculationRun:
    """One greedy generation of the speculation showcase, best of the plan's repeats."""

    method: str
    tokens: list  # the generated token ids
    seconds: float
    target_forwards: int  # calls of the target model (prefill included)

    @property
    def tokens_per_second(self) -> float:
        return len(self.tokens) / self.seconds


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("demo", help="generate with the embedded model and compare speeds",
                                 description=help_text(__doc__))
    add_model_argument(parser)
    parser.add_argument("--quick", action="store_true", help="a few tokens only (a smoke test, seconds)")
    parser.add_argument("--max-new-tokens", type=positive_int, metavar="N",
                        help=f"tokens per generation (default {DemoPlan.max_new_tokens}, "
                             f"--quick {QUICK_PLAN.max_new_tokens})")
    parser.add_argument("--seed", type=seed_int, default=DemoPlan.seed, metavar="S",
                        help="seed of the sampling demo (default %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    plan = QUICK_PLAN if args.quick else DemoPlan()
    plan = dataclasses.replace(plan, seed=args.seed, max_new_tokens=args.max_new_tokens or plan.max_new_tokens)
    loaded = load_model(args.model)
    run_demo(loaded, plan, draft=_load_draft(loaded) if args.model is None else None)
    return 0


def _load_draft(loaded: LoadedModel) -> Any:
    """The embedded draft model for the embedded model ``loaded``, or None when either runs with random weights
    (the draft then pairs with nothing worth showing)."""
    from .. import models

    if not loaded.is_trained or not models.default_draft_is_trained():
        return None
    with ProgressBar("loading the embedded draft model"):
        draft, _, _ = models.load_default_draft_model(dtype=loaded.model.dtype)
    return draft


def run_demo(loaded: LoadedModel, plan: DemoPlan = DemoPlan(), draft: Any = None) -> None:
    """Prints the model summary, the showcases, the speculative decoding showcase (prompt lookup, and ``draft``
    as the assistant model when given) and the speed table for ``loaded`` to stdout."""
    print(f"model: {loaded.source} ({loaded.summary()})")
    if not loaded.is_trained:
        print(RANDOM_WEIGHTS_NOTE)
    for showcase in SHOWCASES:
        print(f"\n== {showcase.title}: {_describe(showcase.settings)} ==")
        _run_showcase(loaded, showcase, plan)
    print(f"\n== speculative decoding: greedy search, {plan.max_new_tokens} new tokens ==")
    print(_show_speculation(loaded, plan, draft))
    print()
    print(_measure_speed(loaded, plan))


def _describe(settings: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in settings.items())


def _run_showcase(loaded: LoadedModel, showcase: Showcase, plan: DemoPlan) -> None:
    from ..config import GenerationConfig
    from ..generate import generate
    from ..streamers import TextStreamer

    input_ids, attention_mask = encode_prompts(loaded.tokenizer, [showcase.prompt])
    config = GenerationConfig(**showcase.settings, max_new_tokens=plan.max_new_tokens, seed=plan.seed)
    call = dict(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                use_model_defaults=False)
    if not showcase.is_beam_search:
        streamer = TextStreamer(loaded.tokenizer, skip_special_tokens=True)
        generate(loaded.model, streamer=streamer, **call)
        return
    # Beam search only knows its best sequences at the end, so there is nothing to stream.
    with ProgressBar(showcase.title):
        output = generate(loaded.model, **call)
    for rank, text in enumerate(loaded.tokenizer.batch_decode(output, skip_special_tokens=True), start=1):
        label = f"beam {rank}: "
        # Continuation lines are indented under the first, so each beam reads as one block.
        print(label + text.replace("\n", "\n" + " " * len(label)))


def _show_speculation(loaded: LoadedModel, plan: DemoPlan, draft: Any) -> str:
    """Greedy search on the first showcase's prompt, plainly, with prompt lookup and with ``draft`` drafting
    (when given): the text (the same for all, which is checked), then each method's speed and target model calls.
    """
    import time

    import torch

    from ..config import GenerationConfig
    from ..generate import generate

    input_ids, attention_mask = encode_prompts(loaded.tokenizer, [SHOWCASES[0].prompt])
    config = GenerationConfig(**SPECULATION_SETTINGS, max_new_tokens=plan.max_new_tokens)
    methods = [("plain greedy search", {}),
               (f"prompt lookup, {PROMPT_LOOKUP_TOKENS} drafts per step",
                dict(prompt_lookup_num_tokens=PROMPT_LOOKUP_TOKENS))]
    if draft is not None:
        drafts = draft.generation_config.num_assistant_tokens
        methods.append((f"draft model ({draft.config.num_hidden_layers} layer), {drafts} drafts per step",
                        dict(assistant_model=draft)))
    forwards = [0]
    hook = loaded.model.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    runs: list[SpeculationRun] = []
    try:
        with ProgressBar("speculative decoding", total=len(methods) * (plan.repeats + 1)) as progress:
            best: dict[str, SpeculationRun] = {}
            # A first, untimed round: a method's first call pays one-time costs (kernels for new shapes).
            # Then the methods take turns, so that a busy moment of the machine hits each alike.
            for round_number in range(plan.repeats + 1):
                for method, arguments in methods:
                    forwards[0] = 0
                    started = time.perf_counter()
                    with torch.inference_mode():
                        output = generate(loaded.model, input_ids=input_ids, attention_mask=attention_mask,
                                          generation_config=config, use_model_defaults=False, **arguments)
                    run = SpeculationRun(method, output[0, input_ids.shape[1]:].tolist(),
                                         time.perf_counter() - started, forwards[0])
                    if round_number > 0 and (method not in best or run.seconds < best[method].seconds):
                        best[method] = run
                    progress.advance()
            runs = [best[method] for method, _ in methods]
    finally:
        hook.remove()
    plain = runs[0]
    rows = [[run.method, f"{run.tokens_per_second:.0f}", f"{run.tokens_per_second / plain.tokens_per_second:.2f}x",
             run.target_forwards, f"{len(run.tokens) / max(1, run.target_forwards):.2f}",
             "yes" if run.tokens == plain.tokens else "NO"] for run in runs]
    text = loaded.tokenizer.decode(input_ids[0].tolist() + plain.tokens, skip_special_tokens=True)
    table = format_table(["method", "tok/s", "speedup", "target calls", "tokens/call", "same tokens"], rows,
                         align="lrrrrl")
    explanation = (f"Best of {plan.repeats} after a warm-up run. A draft of several tokens costs one target model "
                   "call to verify; every accepted draft is a token gained, and the target's own token follows the "
                   "accepted ones, so the output is exactly plain greedy search's.")
    return f"{text}\n\n{table}\n\n{explanation}"


def _measure_speed(loaded: LoadedModel, plan: DemoPlan) -> str:
    """The speed table, measured on the first showcase's prompt, one row per decoding method."""
    from .benchmark import RUNNERS, SETTINGS, compare

    input_ids, attention_mask = encode_prompts(loaded.tokenizer, [SHOWCASES[0].prompt])
    measurements: list[Any] = []
    with ProgressBar("measuring speed", total=len(SETTINGS) * len(RUNNERS)) as progress:
        for mode in SETTINGS:
            measurements += compare(loaded.model, input_ids, attention_mask, mode, plan.bench_new_tokens,
                                    plan.repeats, on_measurement=lambda _: progress.advance())
    explanation = (f"Generated tokens per second, best of {plan.repeats}, {plan.bench_new_tokens} new tokens, "
                   f"the same settings for every runner ({_settings_legend(SETTINGS)}).\n"
                   "forward: the bare model forward loop (prefill, then one forward and an argmax per token), "
                   "the floor any generate() pays.\n"
                   "Ratios above 1x against transformers mean turbogen is faster; against forward, "
                   "the shortfall from 1x is generate()'s overhead. The runners take turns; ratios are of "
                   "the fastest rounds, and in parentheses of the median rounds.")
    return f"{speed_table(measurements)}\n\n{explanation}"


def _settings_legend(settings: dict) -> str:
    return "; ".join(f"{mode}: {_describe(values)}" for mode, values in settings.items())
