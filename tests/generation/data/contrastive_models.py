"""The tiny models and prompts of the contrastive-search oracle (tests/generation/test_contrastive.py and
scripts/make_contrastive_oracle.py): built in-process with weights that do not depend on how a transformers
release initialises a model (each parameter is drawn from its own generator, seeded by its name), so transformers
4.45.2, 4.57 and 5.x all build the same model, and prompts given as token ids (no tokenizer, whose training could
differ between tokenizers releases)."""

from __future__ import annotations

import zlib

import torch

VOCAB_SIZE = 64
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
KINDS = ("llama", "gpt2")
SEED = 1234


def build_model(kind: str, num_layers: int = 2):
    """The tiny ``kind`` model (``"llama"`` or ``"gpt2"``) with ``num_layers`` layers, eval mode, float32, eager
    attention (the attention weights of ``output_attentions`` exist in every version)."""
    import transformers

    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    if kind == "llama":
        config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          **common)
        model_class = transformers.LlamaForCausalLM
    elif kind == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=num_layers, n_head=4, n_positions=64, resid_pdrop=0.0,
                                         embd_pdrop=0.0, attn_pdrop=0.0, **common)
        model_class = transformers.GPT2LMHeadModel
    else:
        raise ValueError(kind)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = model_class(config)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            generator = torch.Generator().manual_seed(SEED + zlib.crc32(name.encode()))
            values = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if name.endswith("bias"):
                values = values * 0.1
            elif "norm" in name or ".ln_" in name or name.startswith("transformer.ln_f"):
                values = 1.0 + 0.1 * values
            else:
                values = values * 0.5
            parameter.copy_(values)
    return model.eval()


def prompts(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``: ``"single"`` one row, ``"padded"`` two rows, the second left-padded."""
    if case == "single":
        ids = torch.tensor([[BOS_ID, 17, 33, 5, 41, 9, 28]])
        return ids, torch.ones_like(ids)
    if case == "padded":
        ids = torch.tensor([[BOS_ID, 17, 33, 5, 41, 9, 28], [PAD_ID, PAD_ID, PAD_ID, BOS_ID, 50, 12, 7]])
        return ids, (ids != PAD_ID).long()
    raise ValueError(case)


#: The oracle's cases: (name, kind, prompt, generation arguments). `eos_token_id=EOS_ID` everywhere, so
#: finished rows are padded when a row draws it.
CASES = []
for _kind in KINDS:
    for _prompt in ("single", "padded"):
        CASES.append((f"{_kind}-{_prompt}", _kind, _prompt, dict(penalty_alpha=0.6, top_k=4, max_new_tokens=12)))
        CASES.append((f"{_kind}-{_prompt}-k2-alpha0.3-rep", _kind, _prompt,
                      dict(penalty_alpha=0.3, top_k=2, max_new_tokens=10, repetition_penalty=1.3)))
    CASES.append((f"{_kind}-single-low_memory", _kind, "single",
                  dict(penalty_alpha=0.6, top_k=4, max_new_tokens=12, low_memory=True)))
