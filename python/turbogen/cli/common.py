"""Pieces shared by the ``turbogen`` subcommands: checked argument types, model loading, prompt encoding.

Only the standard library is imported at module level (the command must start fast and ``turbogen info``
must work without transformers); torch, transformers and turbogen's models load inside the functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
from typing import Any, Callable, Optional, Sequence

from .progress import ProgressBar


def bounded(convert: Callable[[str], float], low: Optional[float] = None, high: Optional[float] = None, *,
            low_open: bool = False, high_open: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses with ``convert`` (``int`` or ``float``) and requires the value to
    lie between ``low`` and ``high`` (either may be None: unbounded; ``*_open``: that end excluded).

    A bad value becomes an argparse usage error (exit status 2) naming the option and the allowed range,
    e.g. ``argument --top-p: must be in (0, 1], got 2``.
    """
    kind = "an integer" if convert is int else "a number"

    def show(bound: Optional[float]) -> str:
        return str(bound) if convert is int else f"{bound:g}"

    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {show(low)}"
    elif high is not None:
        allowed = f"{'<' if high_open else '<='} {show(high)}"
    else:
        allowed = "finite"

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite, got {text}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
seed_int = bounded(int, 0, 2**64, high_open=True)
positive_float = bounded(float, 0, low_open=True)


def help_text(docstring: str) -> str:
    """A subcommand module's docstring as its ``--help`` description: reST literal markup removed."""
    return docstring.replace("``", "").strip()


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="a local transformers causal LM directory (config.json, weights, tokenizer files); "
                             "default: turbogen's embedded model")


@dataclasses.dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str  # what was loaded, for messages: "the embedded default model" or the directory
    is_trained: bool  # False for the embedded model's random-weights fallback

    def summary(self) -> str:
        """One line: architecture, size and vocabulary, e.g. ``llama: 4 layers, hidden 256, ...``."""
        config = self.model.config
        parameters = sum(parameter.numel() for parameter in self.model.parameters())
        size = f"{parameters / 1e6:.1f}M" if parameters >= 1e6 else f"{parameters / 1e3:.0f}K"
        return (f"{config.model_type}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
                f"vocabulary {config.vocab_size}, {size} parameters, {self.model.dtype}")


def load_model(directory: Optional[str]) -> LoadedModel:
    """Loads ``directory`` (:func:`turbogen.models.load_model`), or the embedded default model when None,
    behind a progress line. Raises ValueError naming the directory if it is not a model directory."""
    from .. import models

    source = "the embedded default model" if directory is None else directory
    with ProgressBar(f"loading {source}"):
        if directory is None:
            model, tokenizer, is_trained = models.load_default_model()
        else:
            (model, tokenizer), is_trained = models.load_model(directory), True
    return LoadedModel(model, tokenizer, source, is_trained)


def load_generation_config(directory: Optional[str]):
    """The generation config :func:`load_model` gives the model in ``directory`` (None: the embedded default
    model), read without loading the weights: for a run whose model loads elsewhere (Ray actors).

    As transformers does: the directory's ``generation_config.json``, else one derived from its
    ``config.json``. Raises ValueError naming ``directory`` if it is not a model directory.
    """
    import transformers

    from .. import models

    if directory is None:
        shipped = models.default_model_path() / "generation_config.json"
        if not shipped.is_file():  # the random-weights fallback carries the same defaults
            return models.default_generation_config()
        return transformers.GenerationConfig.from_pretrained(shipped.parent, local_files_only=True)
    path = pathlib.Path(directory)
    if not path.is_dir():
        raise ValueError(f"model path {directory!r} is not a directory")
    if not (path / "config.json").is_file():
        raise ValueError(f"model path {directory!r} has no config.json: not a transformers model directory")
    if (path / "generation_config.json").is_file():
        return transformers.GenerationConfig.from_pretrained(path, local_files_only=True)
    return transformers.GenerationConfig.from_model_config(
        transformers.AutoConfig.from_pretrained(path, local_files_only=True))


RANDOM_WEIGHTS_NOTE = ("note: the embedded model's trained weights are not in this install, so it runs with "
                       "random weights (same architecture): its text is noise, its speed is the same.")


def encode_prompts(tokenizer: Any, prompts: Sequence[str]):
    """``(input_ids, attention_mask)`` for ``prompts``, left-padded as decoder-only batching requires.

    Only these two tensors are returned: a tokenizer may add others (``token_type_ids``) that a causal LM's
    forward does not take. Raises ValueError if a prompt encodes to no tokens.
    """
    if len(prompts) > 1:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    encoded = tokenizer(list(prompts), return_tensors="pt", padding=len(prompts) > 1)
    input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    empty = [index for index, length in enumerate(attention_mask.sum(-1).tolist()) if length == 0]
    if input_ids.shape[1] == 0 or empty:
        raise ValueError(f"prompt {(empty or [0])[0] + 1} encodes to no tokens: give some text")
    return input_ids, attention_mask


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    """A plain-text table, columns two spaces apart. ``align`` has one letter per column, ``l`` (left) or
    ``r`` (right); by default the first column is left-aligned and the others, numbers, right-aligned."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align must have one 'l' or 'r' per column ({len(header)}), got {align!r}")
    widths = [max(len(str(row[column])) for row in (header, *rows)) for column in range(len(header))]

    def line(cells: Sequence[Any]) -> str:
        return "  ".join(str(cell).ljust(width) if side == "l" else str(cell).rjust(width)
                         for cell, width, side in zip(cells, widths, align)).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *map(line, rows)])


def speed_table(measurements: Sequence[Any]) -> str:
    """Tokens per second of each runner per (mode, batch), with turbogen's ratios to transformers and to
    the bare forward loop (the floor), from :func:`turbogen.cli.benchmark.compare` measurements: of the fastest
    rounds, and in parentheses of the median rounds (steadier on a shared machine)."""
    from .benchmark import RUNNERS, speedups

    rates: dict[tuple[str, int], dict[str, Any]] = {}
    for measurement in measurements:
        rates.setdefault((measurement.mode, measurement.batch), {})[measurement.runner] = measurement
    header = ["mode", "batch", "rows", *(f"{runner} tok/s" for runner in RUNNERS),
              "turbogen/transformers", "turbogen/forward"]

    def ratio_text(best: Optional[float], median: Optional[float]) -> str:
        if best is None:
            return "-"
        return f"{best:.2f}x" if median is None else f"{best:.2f}x (median {median:.2f}x)"

    rows = []
    for speedup in speedups(measurements):
        by_runner = rates[(speedup.mode, speedup.batch)]
        some = next(iter(by_runner.values()))
        rows.append([speedup.mode, speedup.batch, some.rows,
                     *(f"{by_runner[runner].tokens_per_second:.0f}" if runner in by_runner else "-"
                       for runner in RUNNERS),
                     ratio_text(speedup.vs_transformers, speedup.vs_transformers_median),
                     ratio_text(speedup.vs_forward, speedup.vs_forward_median)])
    return format_table(header, rows)
