"""``turbogen generate``: generate text from prompts with any local causal LM and print it, or run a
JSONL file of prompts through it.

The generation parameters are the model's ``generation_config.json`` (or ``--config FILE`` instead),
overridden by the flags given on the command line.

With ``--input FILE --output FILE``, each input line (blank lines are skipped) is a JSON object holding
its prompt under ``text`` (or ``--text-field``), or as token ids under ``input_ids`` (used first). Each
output line is that object with ``generated_text``, ``generated_token_ids``, ``finish_reason`` (stop,
length or error) and ``error`` added, in input order; ``--output -`` writes them to standard output. A
malformed line stops the run before anything is generated, naming the line; a row whose prompt cannot be
used (empty, longer than ``--max-prompt-tokens`` or the model's positions) is written with finish_reason
error and the reason, and counted in a warning. Each row's sampling seed derives from ``--seed`` and the
row's key (its prompt, or ``--key-field``), not from its place in the file, so a row's result does not
depend on how the rows are batched or spread: ``--ray N`` runs them on N Ray actors on a local Ray
cluster (the machine's cores shared among them) and writes the same file.

Speculative decoding (greedy search and sampling; the output is the same as without it, only faster when
the drafts are often right): ``--prompt-lookup N`` drafts up to N tokens per step by finding the last few
tokens earlier in the prompt and text (good when the output repeats the input); ``--assistant default``
drafts with the embedded model's one-layer draft model (only with the embedded model: it shares its
tokenizer), ``--assistant DIR`` with a smaller model from a local directory, the number of drafts per
step being the assistant's ``num_assistant_tokens``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from .common import (
    RANDOM_WEIGHTS_NOTE,
    add_model_argument,
    bounded,
    encode_prompts,
    help_text,
    load_generation_config,
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
# Rows per generate() call (and per Ray batch) with --input.
DEFAULT_BATCH_SIZE = 16
# The flags that only mean something with --input.
FILE_FLAGS = ("output", "ray", "batch_size", "text_field", "key_field", "max_prompt_tokens")
# --assistant's value naming the embedded model's draft.
DEFAULT_ASSISTANT = "default"

# The flags that are generation parameters (argparse destination == GenerationConfig field).
GENERATION_FLAGS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
                    "repetition_penalty", "num_beams", "num_return_sequences", "seed", "prompt_lookup_num_tokens")
# Those that only matter when sampling.
SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "generate", help="generate text from prompts and print it", description=help_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", metavar="TEXT",
                         help="the text to continue; repeat the flag for a batch of prompts")
    prompts.add_argument("--input", metavar="FILE",
                         help="prompts from a JSONL file, one JSON object per line (see below); needs --output")
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
    speculation = parser.add_argument_group("speculative decoding (same output, fewer target model steps)")
    speculative = speculation.add_mutually_exclusive_group()
    speculative.add_argument("--prompt-lookup", type=positive_int, metavar="N", dest="prompt_lookup_num_tokens",
                             help="draft up to N tokens per step by prompt lookup (n-gram matches in the prompt "
                                  "and text so far)")
    speculative.add_argument("--assistant", metavar="default|DIR", default=None,
                             help="draft with an assistant model: 'default' for the embedded model's draft (with "
                                  "the embedded model), or a local model directory")
    parser.add_argument("--stream", action="store_true",
                        help="print the text as it is generated (one prompt, one sequence, no beam search)")
    files = parser.add_argument_group("with --input")
    files.add_argument("--output", metavar="FILE",
                       help="where to write the results, one JSON object per input row; '-': standard output")
    files.add_argument("--ray", type=positive_int, metavar="N",
                       help="generate on a local Ray cluster with N actors (needs turbogen[ray]); "
                            "default: in this process")
    files.add_argument("--batch-size", type=positive_int, metavar="B",
                       help=f"rows per generate() call, and per Ray batch (default: {DEFAULT_BATCH_SIZE})")
    files.add_argument("--text-field", metavar="NAME",
                       help="the field holding each row's prompt (default: text)")
    files.add_argument("--key-field", metavar="NAME",
                       help="the field whose value seeds each row's sampling (default: the prompt)")
    files.add_argument("--max-prompt-tokens", type=positive_int, metavar="N",
                       help="longer prompts become error rows (default: no limit beyond the model's)")
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
    if args.input is not None:
        return run_file(args)
    misplaced = [name for name in FILE_FLAGS if getattr(args, name) is not None]
    if misplaced:
        raise ValueError(f"--{misplaced[0].replace('_', '-')} goes with --input, not --prompt")
    from ..config import GenerationConfig
    from ..generate import generate
    from ..streamers import TextStreamer

    # The config file and the assistant's path are checked first: a mistake should not wait for the model to load.
    config_file = GenerationConfig.from_pretrained(args.config) if args.config is not None else None
    check_assistant_argument(args.assistant, args.model)
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
    if args.assistant is not None:
        call.update(load_assistant(args.assistant, loaded))
    if args.stream:
        # The streamer prints the prompt too, so a streamed run prints what a plain run prints.
        generate(loaded.model, streamer=TextStreamer(loaded.tokenizer, skip_special_tokens=True), **call)
        return 0
    with ProgressBar("generating"):
        output = generate(loaded.model, **call)
    texts = loaded.tokenizer.batch_decode(output, skip_special_tokens=True)
    print("\n".join(label_sequences(texts, num_prompts=len(args.prompt))))
    return 0


def check_assistant_argument(assistant: str | None, model: str | None) -> None:
    """Raises ValueError naming ``--assistant`` if its value cannot be an assistant for ``--model``: the embedded
    draft with another model, or a path that is not a model directory (checked before anything loads)."""
    import pathlib

    if assistant is None:
        return
    if assistant == DEFAULT_ASSISTANT:
        if model is not None:
            raise ValueError(f"--assistant {DEFAULT_ASSISTANT} is the embedded model's draft and shares its tokenizer: "
                             "it goes without --model; give --assistant DIR with a draft model for this one")
        return
    path = pathlib.Path(assistant)
    if not path.is_dir():
        raise ValueError(f"--assistant {assistant!r}: not {DEFAULT_ASSISTANT!r} and not a model directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"--assistant {assistant!r} has no config.json: not a transformers model directory")


def load_assistant(assistant: str, target: Any) -> dict:
    """The ``generate()`` arguments that draft with ``assistant`` (``"default"`` or a directory) for the loaded
    ``target``: ``assistant_model``, plus ``tokenizer`` and ``assistant_tokenizer`` when the assistant's own
    tokenizer differs from the target's (universal assisted generation, greedy only).

    An assistant directory without tokenizer files must have the target's vocabulary size: it is taken to share
    the target's tokenizer. Raises ValueError naming ``--assistant`` otherwise.
    """
    from .. import models

    if assistant == DEFAULT_ASSISTANT:
        with ProgressBar("loading the embedded draft model"):
            draft, _, is_trained = models.load_default_draft_model(dtype=target.model.dtype)
        if not is_trained:
            print("note: the embedded draft model's trained weights are not in this install: it drafts with random "
                  "weights (the output is the same, only the speed suffers).", file=sys.stderr)
        return dict(assistant_model=draft)
    with ProgressBar(f"loading the assistant {assistant}"):
        draft, assistant_tokenizer = models.load_draft_model(assistant, dtype=target.model.dtype)
    if assistant_tokenizer is not None and assistant_tokenizer.get_vocab() != target.tokenizer.get_vocab():
        return dict(assistant_model=draft, tokenizer=target.tokenizer, assistant_tokenizer=assistant_tokenizer)
    target_vocab, draft_vocab = target.model.config.vocab_size, draft.config.vocab_size
    if assistant_tokenizer is None and draft_vocab != target_vocab:
        raise ValueError(f"--assistant {assistant!r}: its vocabulary ({draft_vocab} tokens) is not the model's "
                         f"({target_vocab}) and it has no tokenizer files to translate between them")
    return dict(assistant_model=draft)


def label_sequences(texts: list[str], num_prompts: int) -> list[str]:
    """``texts`` (prompt-major, as generate returns them) as printed: alone as is, several headed
    ``[prompt p, sequence s]``."""
    if len(texts) == 1:
        return texts
    per_prompt = len(texts) // num_prompts
    return [f"[prompt {index // per_prompt + 1}, sequence {index % per_prompt + 1}]\n{text}"
            for index, text in enumerate(texts)]


def run_file(args: argparse.Namespace) -> int:
    """``--input``: every row of the file through the model, the results written in input order.

    Everything that can be checked cheaply (the flags, the config file, every input line, the output
    path, the model directory) is checked before the model loads or Ray starts.
    """
    from .. import models
    from ..config import GenerationConfig
    from ..config.parameters import PARAMETERS_BY_NAME
    from . import jsonl

    if args.output is None:
        raise ValueError("--input needs --output FILE (--output - writes to standard output)")
    if args.stream:
        raise ValueError("--stream prints one prompt's text as it is generated: not with --input")
    if args.assistant is not None:
        raise ValueError("--assistant goes with --prompt, not --input (--prompt-lookup works with both)")
    config_file = GenerationConfig.from_pretrained(args.config) if args.config is not None else None
    data = jsonl.read_rows(args.input, text_field=args.text_field or "text", key_field=args.key_field)
    config = resolve_generation_config(args, config_file or load_generation_config(args.model))
    if config.num_return_sequences > 1:
        raise ValueError("--input writes one result per row: --num-return-sequences must be 1")
    config.validate()  # here, where its error is one line, not in a Ray actor
    # Rows are seeded from this base and their keys (BatchGenerator); the config's own seed would be ignored.
    if isinstance(config.seed, (list, tuple)):
        raise ValueError("--input seeds each row from --seed and the row's key: the config's seed must be one "
                         "integer, not a list")
    base_seed = config.seed if config.seed is not None else 0
    config.seed = None
    batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    # Every parameter, as a dict: BatchGenerator takes a dict as overrides of the model's config, whereas a
    # config object would get the model's values back wherever it holds a global default (do_sample=False).
    parameters = {name: getattr(config, name) for name in PARAMETERS_BY_NAME}
    generator_kwargs = dict(model=args.model, generation_config=parameters, text_column=data.text_field,
                            ids_column=jsonl.IDS_FIELD, key_column=data.key_field, seed=base_seed,
                            batch_size=batch_size, max_prompt_tokens=args.max_prompt_tokens)
    rows = len(data.rows)
    if args.model is None and not models.default_model_is_trained():
        print(RANDOM_WEIGHTS_NOTE, file=sys.stderr)
    with jsonl.open_output(args.output) as stream:
        writer = jsonl.InOrderWriter(stream, data.rows)
        if args.ray is None:
            from ..integrations.batch import BatchGenerator

            with ProgressBar(f"loading {'the embedded default model' if args.model is None else args.model}"):
                generator = BatchGenerator(**generator_kwargs)
            with ProgressBar("generating", total=rows) as progress:
                jsonl.generate_locally(generator, data.requests, batch_size, _writing(writer, progress))
        else:
            with jsonl.local_ray_cluster(args.ray):
                with ProgressBar(f"generating on {args.ray} Ray actor{'s' if args.ray > 1 else ''}",
                                 total=rows) as progress:
                    jsonl.generate_with_ray(data.requests, actors=args.ray, on_batch=_writing(writer, progress),
                                            **generator_kwargs)
        if not writer.complete:
            raise RuntimeError(f"generation returned {writer.written} of {rows} rows")
    if writer.errors:
        warnings.warn(f"{writer.errors} of {rows} rows failed: written with finish_reason \"error\" and the "
                      f"reason in \"error\"")
    return 0


def _writing(writer: Any, progress: ProgressBar):
    """The callback of a finished batch: its rows to ``writer`` (in input order), then the bar advanced."""
    def write(numbers, results) -> None:
        writer.put_batch(numbers, results)
        progress.advance(len(results))

    return write
