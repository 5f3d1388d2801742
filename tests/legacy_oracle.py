"""What the tests of the strategies transformers 4.57 moved to the Hub share: their oracle is transformers 4.45.2.

Such a strategy (contrastive search, diverse and constrained beam search, DoLa) is compared with 4.45.2 in two ways:

* live, only in the transformers 4.45.2 environment (``.venv-hf445``): the tests marked :func:`live_oracle` run
  4.45.2's own ``generate`` next to turbogen's and are skipped elsewhere, with the reason;
* stored, in every environment: :func:`stored_oracle` reads what ``scripts/make_*_oracle.py`` wrote under 4.45.2
  into ``tests/generation/data/``.

The models are the in-process tiny models of ``tests/generation/data/contrastive_models.py`` (loaded with
:func:`data_module`, built once per ``(kind, num_layers)`` by :func:`oracle_model`). A test module using this
imports the fixture :func:`quiet_transformers` and sets ``pytestmark = oracle_test_marks()``, which applies it to
every test (pytest finds a fixture of a plain module only where it is imported). The beam strategies' tests share
:func:`beam_call`, :func:`applicable_stored_case` and :func:`assert_same_beams_as_stored` too.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import types

import pytest
import torch

import transformers

from tolerances import assert_close_across_compilations, assert_same_generation

DATA = pathlib.Path(__file__).parent / "generation" / "data"

#: True in the transformers 4.45 environment, where the live oracle runs.
IS_4_45 = transformers.__version__.startswith("4.45.")


def stored_oracle(filename: str) -> dict:
    """The stored oracle ``tests/generation/data/<filename>`` (a json file written under 4.45.2), parsed."""
    return json.loads((DATA / filename).read_text())


def data_module(name: str) -> types.ModuleType:
    """The module ``tests/generation/data/<name>.py`` (``"contrastive_models"``, ``"beam_strategies_cases"``),
    loaded from its file (the data folder is no package); each call loads it anew."""
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def live_oracle(strategy_description: str) -> pytest.MarkDecorator:
    """The mark of a test that runs transformers 4.45.2's own ``strategy_description`` (e.g. ``"contrastive
    search"``): skipped, with that reason, in any other transformers version."""
    return pytest.mark.skipif(
        not IS_4_45, reason=f"the live oracle is transformers 4.45.2's {strategy_description}; this is "
                            f"{transformers.__version__} (run in .venv-hf445); the stored oracle tests run here")


_MODELS: dict[tuple[str, int], object] = {}


def oracle_model(kind: str, num_layers: int = 2):
    """The tiny ``kind`` model of ``contrastive_models.py`` with ``num_layers`` layers, built on first use and
    shared by every later call with the same arguments (tests must not modify it)."""
    if (kind, num_layers) not in _MODELS:
        _MODELS[kind, num_layers] = _contrastive_models().build_model(kind, num_layers=num_layers)
    return _MODELS[kind, num_layers]


_CONTRASTIVE_MODELS: list[types.ModuleType] = []


def _contrastive_models() -> types.ModuleType:
    if not _CONTRASTIVE_MODELS:
        _CONTRASTIVE_MODELS.append(data_module("contrastive_models"))
    return _CONTRASTIVE_MODELS[0]


@pytest.fixture
def quiet_transformers():
    """transformers' logging at error level for the test (4.45.2 warns about arguments the oracle passes on
    purpose), restored afterwards."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


def oracle_test_marks() -> list[pytest.MarkDecorator]:
    """The ``pytestmark`` of an oracle test module: :func:`quiet_transformers` around every test, and transformers'
    "GenerationConfig has flags" warning (about the flags the cases set for other strategies) ignored."""
    return [pytest.mark.usefixtures("quiet_transformers"),
            pytest.mark.filterwarnings("ignore:GenerationConfig has flags:UserWarning")]


# ------------------------------------------------------------------------------------------------------------
# The beam strategies' stored oracle (data/beam_strategies_oracle_4_45_2.json)
# ------------------------------------------------------------------------------------------------------------


def beam_call(prompt: str, arguments: dict, **extra) -> dict:
    """The keyword arguments of a ``generate`` call on ``contrastive_models.prompts(prompt)``: greedy
    (``do_sample=False``), dict output with scores, the models' pad and EOS ids, then ``arguments`` and ``extra``
    (which override those)."""
    models = _contrastive_models()
    input_ids, attention_mask = models.prompts(prompt)
    call = dict(input_ids=input_ids, attention_mask=attention_mask, pad_token_id=models.PAD_ID, do_sample=False,
                return_dict_in_generate=True, output_scores=True, eos_token_id=models.EOS_ID)
    call.update(arguments)
    call.update(extra)
    return call


def applicable_stored_case(oracle_cases: dict, name: str, kind: str, prompt: str, arguments: dict) -> dict:
    """The stored case ``name`` of ``oracle_cases``, after checking it was written for these ``arguments`` (else
    the oracle needs regenerating); skips the test, saying why, where this transformers' plain greedy output on the
    ``kind`` model differs from the stored one (it computes the model itself differently)."""
    stored = oracle_cases[name]
    assert stored["arguments"] == json.loads(json.dumps(arguments)), "regenerate the oracle: the case changed"
    models = _contrastive_models()
    input_ids, attention_mask = models.prompts(prompt)
    greedy = oracle_model(kind).generate(input_ids, attention_mask=attention_mask, do_sample=False,
                                         max_new_tokens=arguments["max_new_tokens"], pad_token_id=models.PAD_ID,
                                         eos_token_id=models.EOS_ID)
    if greedy.tolist() != stored["greedy"]:
        pytest.skip(f"transformers {transformers.__version__} computes the tiny {kind} differently from 4.45.2 "
                    "(greedy output differs): the stored tokens do not apply")
    return stored


def assert_same_beams(got, expected) -> None:
    """Two beam ``generate`` dict outputs (turbogen's, the live oracle's) have the same sequences and
    ``beam_indices``, and their ``sequences_scores``, scores and logits agree within the policy of
    :func:`tolerances.assert_close_across_compilations`: turbogen computes these strategies' LM head through a
    packed oneDNN product on CPUs (``turbogen.generation.packed_head``), which sums in another order than BLAS."""
    beams = expected.beam_indices is not None
    assert (got.beam_indices is None) == (not beams)
    assert_same_generation(expected, got, beams=beams, assert_same_floats=assert_close_across_compilations)
    if not beams:
        assert_close_across_compilations(got.sequences_scores, expected.sequences_scores)


def assert_same_beams_as_stored(out, stored: dict) -> None:
    """``out`` (a beam ``generate``'s dict output) has the stored sequences and ``beam_indices``, and its
    ``sequences_scores`` equal the stored ones within the policy of
    :func:`tolerances.assert_close_across_compilations`, under 4.45 too: the stored numbers were computed on another
    host, whose BLAS may round the same model differently."""
    assert out.sequences.tolist() == stored["sequences"]
    expected_scores = torch.tensor([float.fromhex(v) for v in stored["sequences_scores"]])
    assert_close_across_compilations(out.sequences_scores, expected_scores)
    assert (None if out.beam_indices is None else out.beam_indices.tolist()) == stored["beam_indices"]
