"""``turbogen generate``: generate text from prompts with any local causal LM and print it.

The generation parameters are the model's ``generation_config.json`` (or ``--config FILE`` instead),
overridden by the flags given on the command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import (
    RANDOM_WEIGHTS_NOTE,
    add_model_argument,
    bounded,
    encode_prompts,
    help_text,
    load_model,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from .progress import ProgressBar

# Used when neither the flags nor the config set a length: transformers' default (max_length=20, prompt
# included) is too short to be useful and fails outright for prompts of 20 tokens or more.
DEFAULT_MAX_NEW_TOKENS = 64

# The flags that are generation parameters (argparse destination == GenerationConfig field).
GENERATION_FLAGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
                    "repetition_penalty", "num_beams", "num_return_sequences", "seed")
# Those that only matter when sampling.
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate", help="generate text from prompts and print it", description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                        help="the text to continue; repeat the flag for a batch of prompts")
    add_model_argument(parser)
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="generation parameters from this generation_config.json (or a directory holding "
                             "one) instead of the model's")
    parameters = parser.add_argument_group("generation parameters (default: the config's values)")
    parameters.add_argument("--max-new-tokens", type=positive_int, metavar="N",
                            help=f"tokens to generate (if the config sets no length: {DEFAULT_MAX_NEW_TOKENS})")
    parameters.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                            help="sample instead of greedy / beam search")
    parameters.add_argument("--temperature", type=positive_float, metavar="T", help="> 0")
    parameters.add_argument("--top-k", type=non_negative_int, metavar="K", help="0: off")
    parameters.add_argument("--top-p", type=bounded(float, 0, 1, low_open=True), metavar="P", help="in (0, 1]")
    parameters.add_argument("--min-p", type=bounded(float, 0, 1), metavar="P", help="in [0, 1]")
    parameters.add_argument("--repetition-penalty", type=positive_float, metavar="X", help="1: off")
    parameters.add_argument("--num-beams", type=positive_int, metavar="N", help="> 1: beam search")
    parameters.add_argument("--num-return-sequences", type=positive_int, metavar="N",
                            help="sequences per prompt (sampling, or at most --num-beams)")
    parameters.add_argument("--seed", type=seed_int, metavar="S",
                            help="base seed of the sampling noise: the same seed gives the same text")
    parser.add_argument("--stream", action="store_true",
                        help="print the text as it is generated (one prompt, one sequence, no beam search)")
    parser.set_defaults(handler=run)


def resolve_generation_config(args: argparse.Namespace, base: Any):
    """The config ``generate`` runs with: ``base`` (the ``--config`` file's or the model's), then the flags.

    When ``--no-do-sample`` is given, the sampling parameters that were only inherited (the default model
    ships temperature/top-k/top-p for sampling) are reset, since greedy and beam search ignore them;
    ones given as flags are kept, so that validation still warns about them.
    """
    from ..config import GenerationConfig, as_generation_config

    config = as_generation_config(base).copy()
    overrides = {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name) is not None}
    if overrides.get("do_sample") is False:
        neutral = GenerationConfig()
        overrides.update({name: getattr(neutral, name) for name in SAMPLING_FLAGS if name not in overrides})
    length_is_default = config.max_new_tokens is None and config.max_length == GenerationConfig().max_length
    if "max_new_tokens" not in overrides and length_is_default:
        overrides["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
    config.update(**overrides)
    return config


def run(args: argparse.Namespace) -> int:
    from ..config import GenerationConfig
    from ..generate import generate
    from ..streamers import TextStreamer

    # The config file is read first: a mistake in it should not wait for the model to load.
    config_file = GenerationConfig.from_pretrained(args.config) if args.config is not None else None
    loaded = load_model(args.model)
    if not loaded.is_trained:
        print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    config = resolve_generation_config(args, config_file or loaded.model.generation_config)
    if args.stream and (len(args.prompt) > 1 or max(config.num_beams, config.num_return_sequences) > 1):
        raise ValueError("--stream prints one sequence: give one --prompt, and no --num-beams or "
                         "--num-return-sequences above 1")
    input_ids, attention_mask = encode_prompts(loaded.tokenizer, args.prompt)
    call = dict(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                use_model_defaults=False)
    if args.stream:
        # The streamer prints the prompt too, so a streamed run prints what a plain run prints.
        generate(loaded.model, streamer=TextStreamer(loaded.tokenizer, skip_special_tokens=True), **call)
        return 0
    with ProgressBar("generating"):
        output = generate(loaded.model, **call)
    texts = loaded.tokenizer.batch_decode(output, skip_special_tokens=True)
    print("\n".join(label_sequences(texts, num_prompts=len(args.prompt))))
    return 0


def label_sequences(texts: list[str], num_prompts: int) -> list[str]:
    """``texts`` (prompt-major, as generate returns them) as printed: alone as is, several headed
    ``[prompt p, sequence s]``."""
    if len(texts) == 1:
        return texts
    per_prompt = len(texts) // num_prompts
    return [f"[prompt {index // per_prompt + 1}, sequence {index % per_prompt + 1}]\n{text}"
            for index, text in enumerate(texts)]
