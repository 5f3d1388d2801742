"""turbogen's generate outputs are instances of transformers' own output classes, with transformers' keys.

Code written against transformers type-checks ``generate()``'s result (``isinstance(out,
GenerateDecoderOnlyOutput)``, 4.57's ``GreedySearchDecoderOnlyOutput`` aliases, ``ModelOutput``) and reads it as a
mapping; these tests run the same call through both and compare the classes and the key order.
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
import transformers.generation.utils as hf_utils
from transformers.utils import ModelOutput

import turbogen
from tiny_models import encode_batch, tiny_model
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)
from turbogen.generate import generate
from turbogen.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

PROMPTS = ["the quick brown fox", "stop"]

# The 4.57 aliases of each class (5.x removed them); each is the class itself there.
NON_BEAM_ALIASES = ("GreedySearchDecoderOnlyOutput", "SampleDecoderOnlyOutput", "ContrastiveSearchDecoderOnlyOutput")
BEAM_ALIASES = ("BeamSearchDecoderOnlyOutput", "BeamSampleDecoderOnlyOutput")

CALLS = {
    "greedy": (dict(do_sample=False), False),
    "sample": (dict(do_sample=True, top_k=5), False),
    "beam": (dict(num_beams=3, do_sample=False), True),
    "beam_sample": (dict(num_beams=2, do_sample=True, num_return_sequences=2), True),
}

RECORDING = {
    "plain": {},
    "scores": dict(output_scores=True),
    "scores_logits": dict(output_scores=True, output_logits=True),
    "no_cache": dict(output_scores=True, use_cache=False),
}


def _aliases(names):
    return [getattr(hf_utils, name) for name in names if hasattr(hf_utils, name)]


def test_turbogen_classes_subclass_transformers_classes():
    assert issubclass(GenerateDecoderOnlyOutput, hf_utils.GenerateDecoderOnlyOutput)
    assert issubclass(GenerateBeamDecoderOnlyOutput, hf_utils.GenerateBeamDecoderOnlyOutput)
    assert turbogen.GenerateDecoderOnlyOutput is GenerateDecoderOnlyOutput


@pytest.mark.parametrize("recording", list(RECORDING), ids=list(RECORDING))
@pytest.mark.parametrize("call", list(CALLS), ids=list(CALLS))
def test_output_is_transformers_class_with_transformers_keys(call, recording):
    options, beams = CALLS[call]
    model = tiny_model("llama")
    input_ids, attention_mask = encode_batch(PROMPTS)
    kwargs = dict(max_new_tokens=4, return_dict_in_generate=True, **options, **RECORDING[recording])
    torch.manual_seed(0)
    expected = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    torch.manual_seed(0)
    actual = generate(model, input_ids, attention_mask=attention_mask, **kwargs)

    hf_class = hf_utils.GenerateBeamDecoderOnlyOutput if beams else hf_utils.GenerateDecoderOnlyOutput
    assert type(expected) is hf_class
    assert isinstance(actual, hf_class) and isinstance(actual, ModelOutput)
    for alias in _aliases(BEAM_ALIASES if beams else NON_BEAM_ALIASES):
        assert isinstance(actual, alias), alias
    other = hf_utils.GenerateDecoderOnlyOutput if beams else hf_utils.GenerateBeamDecoderOnlyOutput
    assert not isinstance(actual, other)

    assert list(actual.keys()) == list(expected.keys())
    assert len(actual.to_tuple()) == len(expected.to_tuple())
    assert actual.sequences.shape == expected.sequences.shape
    if not options["do_sample"]:  # turbogen's sampler draws its own random stream, so only search is token-exact
        assert torch.equal(actual[0], expected[0]) and torch.equal(actual["sequences"], expected["sequences"])


def test_output_mapping_behaves_like_model_output():
    model = tiny_model("gpt2")
    input_ids, attention_mask = encode_batch(PROMPTS)
    out = generate(model, input_ids, attention_mask=attention_mask, max_new_tokens=3, return_dict_in_generate=True,
                   output_scores=True)
    assert list(out) == ["sequences", "scores", "past_key_values"]
    assert dict(out.items()).keys() == {"sequences", "scores", "past_key_values"}
    assert "logits" not in out and out.logits is None
    with pytest.raises(KeyError):
        out["logits"]
    restored = pickle.loads(pickle.dumps(out))
    assert type(restored) is GenerateDecoderOnlyOutput and torch.equal(restored.sequences, out.sequences)


def test_without_transformers_the_classes_are_standalone_with_the_same_fields():
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['transformers'] = None\n"
        "import dataclasses, pickle, torch, turbogen\n"
        "cls = turbogen.GenerateBeamDecoderOnlyOutput\n"
        "out = cls(sequences=torch.ones(1, 2, dtype=torch.long), beam_indices=torch.zeros(1, 1, dtype=torch.long))\n"
        "print([f.name for f in dataclasses.fields(cls)], list(out.keys()), len(out.to_tuple()),\n"
        "      type(pickle.loads(pickle.dumps(out))).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    fields = [field.name for field in dataclasses.fields(hf_utils.GenerateBeamDecoderOnlyOutput)]
    assert result.stdout.strip() == f"{fields} ['sequences', 'beam_indices'] 2 GenerateBeamDecoderOnlyOutput"
