"""``token_healing=True`` against transformers' own ``heal_tokens`` / ``generate(token_healing=True)`` (4.57 is the
spec; 5.x heals the same way), on the tiny models and the in-process tokenizer."""

from __future__ import annotations

import pytest
import torch

import transformers

import turbogen
from turbogen.generation.token_healing import VocabTrie, heal_tokens
from tiny_models import tiny_model, tiny_tokenizer
from tiny_models import tiny_model_environment  # noqa: F401  (a fixture, applied by pytestmark)

pytestmark = pytest.mark.usefixtures("tiny_model_environment")

IS_4_45 = transformers.__version__.startswith("4.45.")
not_on_4_45 = pytest.mark.skipif(
    IS_4_45, reason="transformers 4.45's heal_tokens biases token strings instead of ids and fails; "
                    "turbogen follows 4.57")

PROMPTS = {
    "partial_word": ["the quick bro"],
    "partial_word_2": ["hello wor"],
    "batch": ["a stopwa", "the end is ne"],  # left-padded, healed row by row
    "single_token": ["stop"],
    "nothing_to_heal": ["the lazy dog."],
}


@not_on_4_45
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("case", PROMPTS)
def test_token_healing_matches_transformers(kind, case):
    model, tokenizer = tiny_model(kind), tiny_tokenizer()
    encoded = tokenizer(PROMPTS[case], return_tensors="pt", padding=True)
    expected_prompt = model.heal_tokens(encoded.input_ids.clone(), tokenizer)
    assert torch.equal(heal_tokens(model, encoded.input_ids.clone(), tokenizer), expected_prompt)
    arguments = dict(attention_mask=encoded.attention_mask, token_healing=True, tokenizer=tokenizer,
                     max_new_tokens=4, do_sample=False)
    expected = model.generate(encoded.input_ids, **arguments)
    assert torch.equal(turbogen.generate(model, encoded.input_ids, **arguments), expected)


@not_on_4_45
def test_some_prompts_are_really_healed():
    # the cases above must exercise healing, not only its no-op path
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    ids = tokenizer(PROMPTS["partial_word"], return_tensors="pt").input_ids
    assert not torch.equal(heal_tokens(model, ids.clone(), tokenizer), ids)


def test_token_healing_needs_a_tokenizer():
    ids = tiny_tokenizer()(["hello wor"], return_tensors="pt").input_ids
    with pytest.raises(ValueError, match="tokenizer"):
        turbogen.generate(tiny_model("llama"), ids, token_healing=True, max_new_tokens=2)


def test_vocab_trie_extensions():
    trie = VocabTrie({"app": 0, "apple": 1, "application": 2, "b": 3})
    assert trie.extensions("app") == ["app", "apple", "application"]
    assert trie.extensions("appl") == ["apple", "application"]
    # the walk stops at the first character without a branch (transformers' ExtensionsTrie does the same)
    assert trie.extensions("bz") == ["bz"]
    assert trie.extensions("") == ["app", "apple", "application", "b"]


@not_on_4_45
def test_vocab_trie_equals_transformers_extensions_trie():
    trie_class = None
    for module in ("transformers.tokenization_utils", "transformers.tokenization_python"):
        try:
            trie_class = getattr(__import__(module, fromlist=["ExtensionsTrie"]), "ExtensionsTrie")
            break
        except (ImportError, AttributeError):
            continue
    if trie_class is None:
        pytest.skip(f"transformers {transformers.__version__} has no ExtensionsTrie")
    vocab = tiny_tokenizer().get_vocab()
    theirs, ours = trie_class(vocab), VocabTrie(vocab)
    for prefix in ["▁st", "▁the", "x", "▁", "stopw", "▁hello▁", ""]:
        assert ours.extensions(prefix) == theirs.extensions(prefix), prefix
