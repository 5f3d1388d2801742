"""``turbogen.generate_batch``: many prompts through one :class:`~turbogen.serving.engine.Engine`, results in input
order, with a progress bar."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, Sequence

import torch

from .engine import Engine, blocks_for_budget
from .request import FinishReason, RequestOutput, prepare_request

__all__ = ["BatchResults", "PER_REQUEST_PARAMETERS", "generate_batch"]


class _PlainProgress:
    """A minimal stderr progress bar (when tqdm is not installed): ``done/total`` and tokens/s, at most 10
    redraws a second."""

    def __init__(self, total: int, description: str):
        self.total, self.description = total, description
        self.count, self.tokens = 0, 0
        self.started = self._drawn = time.perf_counter()
        self._draw(force=True)

    def update(self, finished: int, tokens: int) -> None:
        self.count += finished
        self.tokens += tokens
        self._draw(force=self.count == self.total)

    def _draw(self, force: bool) -> None:
        now = time.perf_counter()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        width = 30
        filled = width * self.count // max(self.total, 1)
        rate = self.tokens / max(now - self.started, 1e-9)
        sys.stderr.write(f"\r{self.description}: [{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} "
                         f"requests, {rate:.1f} tokens/s")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class _TqdmProgress:
    def __init__(self, tqdm, total: int, description: str):
        self.bar = tqdm(total=total, desc=description, unit="req")
        self.tokens = 0
        self.started = time.perf_counter()

    def update(self, finished: int, tokens: int) -> None:
        self.tokens += tokens
        if finished:
            self.bar.update(finished)
        self.bar.set_postfix_str(f"{self.tokens / max(time.perf_counter() - self.started, 1e-9):.1f} tokens/s",
                                 refresh=False)

    def close(self) -> None:
        self.bar.close()


class _NoProgress:
    def update(self, finished: int, tokens: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, total: int):
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _PlainProgress(total, "generate_batch")
    return _TqdmProgress(tqdm, total, "generate_batch")


def _configs(generation_config: Any, count: int) -> list:
    if isinstance(generation_config, (list, tuple)):
        if len(generation_config) != count:
            raise ValueError(f"`generation_config` is a list of {len(generation_config)} configs for {count} inputs: "
                             f"give one config, or one per input")
        return list(generation_config)
    return [generation_config] * count


def _prompts(inputs: Any) -> list:
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() != 2:
            raise ValueError(f"`inputs` must be a list of token-id lists or a 2-D tensor, got shape "
                             f"{tuple(inputs.shape)}")
        return [row for row in inputs]
    if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__iter__"):
        raise ValueError(f"`inputs` must be a list of prompts (token-id lists), got {type(inputs).__name__}")
    return list(inputs)


#: Generation parameters ``generate_batch`` also takes as a list of one value per prompt.
PER_REQUEST_PARAMETERS = ("max_new_tokens", "max_length", "min_new_tokens", "min_length", "do_sample", "seed",
                          "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                          "frequency_penalty")


class BatchResults(list):
    """The outputs of :func:`generate_batch`, in input order (a list), with the Engine's figures in ``kv_stats``."""

    def __init__(self, outputs, kv_stats: Optional[dict] = None):
        super().__init__(outputs)
        self.kv_stats = kv_stats or {}


def _per_request_kwargs(kwargs: dict, count: int) -> list:
    """One kwargs dict per prompt: lists of :data:`PER_REQUEST_PARAMETERS` split, everything else shared."""
    split = {}
    for name in PER_REQUEST_PARAMETERS:
        value = kwargs.get(name)
        if isinstance(value, (list, tuple)):
            if len(value) != count:
                raise ValueError(f"`{name}` is a list of {len(value)} values for {count} inputs: give one value, "
                                 f"or one per input")
            split[name] = list(value)
    shared = {name: value for name, value in kwargs.items() if name not in split}
    return [{**shared, **{name: values[index] for name, values in split.items()}} for index in range(count)]


def generate_batch(model: Any, inputs: Sequence[Any], generation_config: Any = None, *, progress_bar: bool = True,
                   block_size: int = 16, num_blocks: Optional[int] = None, max_num_seqs: Optional[int] = None,
                   max_batched_tokens: Optional[int] = None, kv_cache_bytes: Optional[int] = None,
                   tokenizer: Any = None, **kwargs: Any) -> "BatchResults":
    """Generate for every prompt of ``inputs`` with continuous batching; returns one
    :class:`~turbogen.serving.request.RequestOutput` per prompt, in input order (``prompt_ids``,
    ``generated_tokens``, ``finish_reason``).

    Args:
        model: as for :class:`~turbogen.serving.engine.Engine`.
        inputs: the prompts: a list of token-id lists (or 1-D tensors), or a 2-D tensor (every row a whole prompt).
        generation_config: one config for every prompt (a :class:`turbogen.GenerationConfig`, a transformers one
            or a dict; None: the model's), or a list of them, one per prompt.
        progress_bar: show progress on stderr (tqdm when installed, else a plain bar).
        block_size, num_blocks, max_num_seqs, max_batched_tokens, kv_cache_bytes, tokenizer: the Engine's options.
            By default ``num_blocks`` is what all requests need at their longest at once, within the Engine's
            default budget; ``max_num_seqs`` is the number of prompts (at most 256) and ``max_batched_tokens`` 512.
        **kwargs: generation parameters applied to every prompt over its config (``max_new_tokens``,
            ``do_sample``, ``seed``, ...), as :func:`turbogen.generate` takes them. The per-request parameters in
            :data:`PER_REQUEST_PARAMETERS` may also be a list with one value per prompt (``max_new_tokens=[8, 30,
            ...]``; a list ``seed`` is one seed per prompt, as in ``generate``).

    Returns:
        a :class:`BatchResults` (a list of the outputs) whose ``kv_stats`` holds the Engine's
        :meth:`~turbogen.serving.engine.Engine.memory_stats`, ``kv_pool_bytes`` (the cache allocated),
        ``peak_ratio`` (peak bytes of blocks in use / bytes of the tokens held then), and ``num_steps``,
        ``forward_seconds``, ``host_seconds`` (the per-step work around the forwards).

    A prompt that cannot be run (empty, token ids outside the vocabulary, longer than the cache, a malformed
    config) gets a result with ``finish_reason="error"`` and the message in ``error``; the others run.
    """
    prompts = _prompts(inputs)
    configs = _configs(generation_config, len(prompts))
    per_request = _per_request_kwargs(kwargs, len(prompts))
    if max_num_seqs is None:
        max_num_seqs = max(1, min(len(prompts), 256))
    if max_batched_tokens is None:
        max_batched_tokens = 512
    # Resolve every request first: bad ones become error results, and the cache is sized to what they need.
    specs, errors = [], {}
    for index, (prompt, config, request_kwargs) in enumerate(zip(prompts, configs, per_request)):
        try:
            specs.append(prepare_request(model, prompt, config, tokenizer=tokenizer, **request_kwargs))
        except (ValueError, TypeError) as error:  # that prompt's error result; the others run
            specs.append(None)
            errors[index] = f"{type(error).__name__}: {error}"
    if num_blocks is None and kv_cache_bytes is None:
        needs = [-(-spec.max_cached_tokens // block_size) for spec in specs if spec is not None]
        budget = blocks_for_budget(model, block_size, max_num_seqs)
        # All requests at their longest at once, within the default budget (but never below the longest one).
        num_blocks = max(1, min(sum(needs), max(budget, max(needs, default=1))))
    engine = Engine(model, block_size=block_size, num_blocks=num_blocks, max_num_seqs=max_num_seqs,
                    max_batched_tokens=max_batched_tokens, kv_cache_bytes=kv_cache_bytes, tokenizer=tokenizer)
    index_of = {}
    for index, spec in enumerate(specs):
        if spec is None:
            continue
        if spec.max_cached_tokens > engine.capacity:
            errors[index] = (f"`input_ids` ({len(spec.prompt)} tokens) with max_length {spec.max_length} needs up to "
                             f"{spec.max_cached_tokens} cache slots, but the cache holds {engine.capacity}")
            continue
        index_of[engine.add_prepared(spec)] = index
    results: list = [None] * len(prompts)
    for index, message in errors.items():
        prompt = prompts[index]
        try:
            prompt_ids = [int(t) for t in (prompt.tolist() if isinstance(prompt, torch.Tensor) else prompt)]
        except (TypeError, ValueError):
            prompt_ids = []
        results[index] = RequestOutput(request_id=None, prompt_ids=prompt_ids, generated_tokens=[], finished=True,
                                       finish_reason=FinishReason.ERROR.value, error=message)
    progress = _progress(progress_bar, len(prompts))
    try:
        progress.update(len(errors), 0)
        while engine.has_unfinished_requests():
            outputs = engine.step()
            finished = 0
            for output in outputs:
                if output.finished:
                    finished += 1
            progress.update(finished, sum(len(output.new_tokens) for output in outputs))
    finally:
        progress.close()
    for request_id, index in index_of.items():
        results[index] = engine.release(request_id)
    stats = engine.memory_stats()
    stats.update(kv_pool_bytes=stats["num_blocks"] * stats["block_size"] * stats["kv_bytes_per_token"],
                 peak_ratio=stats["peak_kv_bytes"] / stats["token_bytes_at_peak"] if stats["token_bytes_at_peak"]
                 else None,
                 num_steps=engine.num_steps, host_seconds=engine.host_seconds, forward_seconds=engine.forward_seconds)
    return BatchResults(results, kv_stats=stats)
