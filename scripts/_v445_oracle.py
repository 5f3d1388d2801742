"""What the scripts writing a stored transformers 4.45.2 oracle share (make_contrastive_oracle.py,
make_dola_oracle.py, make_beam_strategies_oracle.py): the version check, the data modules of
tests/generation/data/, the tiny models built once, the oracle's ``generate`` with its greedy guard, and the
json file.

A script's ``main`` is::

    transformers, (models, ...) = oracle_environment("contrastive_models", ...)  # None: not 4.45, say so, exit 1
    cases = max_scores_cases(models, CASES)  # or its own loop over ModelCache and generate_with_greedy_guard
    write_oracle(output_path(OUTPUT, argv), transformers, cases)

(:func:`max_scores_oracle_main` is that whole ``main`` for a greedy strategy's max-scores oracle.)
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
import types

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "generation" / "data"


def oracle_environment(*data_modules: str):
    """Steps: refuse (message on stderr, return None) unless transformers is 4.45.x, the oracle; set its logging to
    errors; put tests/generation/data on ``sys.path`` and import the ``data_modules`` named; one torch thread.
    Returns ``(transformers, [module, ...])`` in the order named."""
    import transformers

    if not transformers.__version__.startswith("4.45."):
        print(f"needs transformers 4.45.x (the oracle), found {transformers.__version__}", file=sys.stderr)
        return None
    transformers.logging.set_verbosity_error()
    sys.path.insert(0, str(DATA))
    modules = [importlib.import_module(name) for name in data_modules]
    torch.set_num_threads(1)
    return transformers, modules


class ModelCache:
    """``cache(kind)``: ``models.build_model(kind, **build_arguments)``, built on the first call for ``kind``."""

    def __init__(self, models: types.ModuleType, **build_arguments):
        self._models, self._build_arguments, self._built = models, build_arguments, {}

    def __call__(self, kind: str):
        if kind not in self._built:
            self._built[kind] = self._models.build_model(kind, **self._build_arguments)
        return self._built[kind]


def generate_with_greedy_guard(model, models: types.ModuleType, prompt: str, arguments: dict, max_new_tokens: int):
    """transformers' ``generate`` for the case (``do_sample=False``, ``return_dict_in_generate``, ``output_scores``,
    the models' pad id and, unless ``arguments`` sets it, their EOS id) on ``models.prompts(prompt)``, and the plain
    greedy sequences of the same prompt with ``max_new_tokens`` (the guard: an environment whose greedy output
    differs computes the model itself differently). Returns ``(output, greedy sequences)``; call under no_grad."""
    input_ids, attention_mask = models.prompts(prompt)
    call = dict(dict(eos_token_id=models.EOS_ID), **arguments)
    out = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, return_dict_in_generate=True,
                         output_scores=True, pad_token_id=models.PAD_ID, **call)
    greedy = model.generate(input_ids, attention_mask=attention_mask, do_sample=False, max_new_tokens=max_new_tokens,
                            pad_token_id=models.PAD_ID, eos_token_id=models.EOS_ID)
    return out, greedy


def max_scores(scores) -> list[list[float]]:
    """Each step's largest processed score per row, rounded to 6 decimals."""
    return [[round(float(v), 6) for v in step.max(dim=-1).values] for step in scores]


def max_scores_cases(models: types.ModuleType, cases, num_layers: int | None = None) -> dict:
    """The stored cases of a greedy strategy (contrastive search, DoLa): for each ``(name, kind, prompt, arguments)``
    of ``cases``, on the ``kind`` model (``num_layers`` layers, or ``build_model``'s default where None):
    ``{name: {"kind", "prompt", ["num_layers",] "arguments", "sequences", "max_scores", "greedy"}}``."""
    model_of_kind = ModelCache(models) if num_layers is None else ModelCache(models, num_layers=num_layers)
    stored = {}
    with torch.no_grad():
        for name, kind, prompt, arguments in cases:
            out, greedy = generate_with_greedy_guard(model_of_kind(kind), models, prompt, arguments,
                                                     arguments["max_new_tokens"])
            layers = {} if num_layers is None else {"num_layers": num_layers}
            stored[name] = {
                "kind": kind, "prompt": prompt, **layers, "arguments": arguments,
                "sequences": out.sequences.tolist(),
                "max_scores": max_scores(out.scores),
                "greedy": greedy.tolist(),
            }
    return stored


def max_scores_oracle_main(default_output: pathlib.Path, argv=None, cases=None, num_layers: int | None = None) -> int:
    """The ``main`` of a greedy strategy's script: in the 4.45 environment (else exit status 1), write
    :func:`max_scores_cases` of ``cases`` (default: ``contrastive_models.CASES``) with ``num_layers`` to the
    ``--output`` of ``argv`` (default ``default_output``). Returns the exit status."""
    output = output_path(default_output, argv)
    environment = oracle_environment("contrastive_models")
    if environment is None:
        return 1
    transformers, (models,) = environment
    write_oracle(output, transformers, max_scores_cases(models, models.CASES if cases is None else cases, num_layers))
    return 0


def write_oracle(output: pathlib.Path, transformers: types.ModuleType, cases: dict) -> None:
    """Write ``{"transformers", "torch", "cases"}`` to ``output`` (indented json, newline-terminated) and say so."""
    output.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                                  "cases": cases}, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {_shown(output)}")


def _shown(path: pathlib.Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def output_path(default: pathlib.Path, argv=None) -> pathlib.Path:
    """The json to write: ``--output PATH`` on the command line (e.g. a temporary file, to compare with the
    committed one), else ``default``."""
    import argparse

    parser = argparse.ArgumentParser(description="regenerate a stored transformers 4.45.2 oracle")
    parser.add_argument("--output", type=pathlib.Path, default=default, help=f"default: {_shown(default)}")
    return parser.parse_args(argv).output
