"""End-to-end generate() timing shared by ``turbogen demo``, ``turbogen bench`` and bench/.

Three runners over the same model, prompt and settings, timed side by side:

- ``forward``: the floor. Prefill, then one model forward per new token with a DynamicCache and an
  argmax, nothing else. Everything generate() does beyond this is overhead.
- ``turbogen``: ``turbogen.generate``.
- ``transformers``: the model's own ``generate`` (transformers' GenerationMixin).

Rates are generated tokens per second counted over all sequences (batch * num_return_sequences for
sampling and greedy, batch * num_beams forward rows for beam search: the floor for beam search runs
the same number of rows).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch

SETTINGS = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.1),
    "beam": dict(do_sample=False, num_beams=4),
}


@dataclasses.dataclass
class Measurement:
    runner: str
    mode: str
    batch: int
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.batch * self.new_tokens / self.seconds


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up (allocator, caches, lazy imports)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def forward_loop(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """The floor: prefill + one forward per token, greedy, no processors, no stopping checks."""
    from transformers import DynamicCache

    cache = DynamicCache()
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = attention_mask
    position = position_ids[:, -1:]
    for _ in range(new_tokens - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        position = position + 1
        out = model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache,
                    use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
    return token


def compare(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mode: str, new_tokens: int,
            repeats: int = 3, runners: tuple[str, ...] = ("forward", "turbogen", "transformers"),
            ) -> list[Measurement]:
    """Times each runner on the same inputs and settings; returns one Measurement per runner."""
    import turbogen

    # No EOS: every runner generates exactly `new_tokens` per sequence, whatever the weights.
    settings = dict(SETTINGS[mode], max_new_tokens=new_tokens, eos_token_id=None,
                    pad_token_id=model.generation_config.pad_token_id or 0)
    rows = input_ids.shape[0] * settings.get("num_beams", 1)
    floor_ids = input_ids.repeat_interleave(settings.get("num_beams", 1), dim=0)
    floor_mask = attention_mask.repeat_interleave(settings.get("num_beams", 1), dim=0)
    calls = {
        "forward": lambda: forward_loop(model, floor_ids, floor_mask, new_tokens),
        "turbogen": lambda: turbogen.generate(model, input_ids=input_ids, attention_mask=attention_mask, seed=0,
                                              **settings),
        "transformers": lambda: model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings),
    }
    results = []
    with torch.inference_mode():
        for runner in runners:
            seconds = _best_of(calls[runner], repeats)
            results.append(Measurement(runner, mode, rows, new_tokens, seconds))
    return results


def bench_model(vocab_size: int = 32000, hidden_size: int = 256, num_layers: int = 4, num_heads: int = 8,
                num_kv_heads: int = 4, seed: int = 0):
    """The tiny Llama the end-to-end targets are stated for (random weights: speed does not care)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 4,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         num_key_value_heads=num_kv_heads, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def bench_prompt(batch: int, prompt_len: int = 16, vocab_size: int = 32000, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (batch, prompt_len), generator=generator)
    return input_ids, torch.ones_like(input_ids)
