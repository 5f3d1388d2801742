"""``turbogen demo``: the embedded model writes with greedy search, sampling and beam search (streamed as
it comes), then turbogen's speed is measured next to transformers' generate() and the bare forward loop.
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
    run_demo(load_model(args.model), plan)
    return 0


def run_demo(loaded: LoadedModel, plan: DemoPlan = DemoPlan()) -> None:
    """Prints the model summary, the showcases and the speed table for ``loaded`` to stdout."""
    print(f"model: {loaded.source} ({loaded.summary()})")
    if not loaded.is_trained:
        print(RANDOM_WEIGHTS_NOTE)
    for showcase in SHOWCASES:
        print(f"\n== {showcase.title}: {_describe(showcase.settings)} ==")
        _run_showcase(loaded, showcase, plan)
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
