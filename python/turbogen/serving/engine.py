"""``turbogen.Engine``: continuous batching over the paged KV cache (issue 10).

Requests arrive at any time (:meth:`Engine.add_request`) and each :meth:`Engine.step` runs ONE model forward over
every scheduled request's new tokens packed side by side (``[1, total_tokens]``: decode tokens and prefill chunks
mixed, :func:`turbogen.attention.paged_forward` over ``"turbogen_paged"``), then chooses the next token of every
request whose pending tokens were all fed (:mod:`turbogen.serving.selection`), and frees what finished. The
scheduler (:mod:`turbogen.serving.scheduler`) admits requests while blocks last, chunks long prompts under
``max_batched_tokens``, and preempts by recomputation when blocks run out.

Exactness: a request's tokens are those of ``turbogen.generate(model, [prompt], generation_config, **kwargs)`` run
alone (greedy search: the same tokens, logits equal up to the summation order of the paged kernel and, on CPUs,
of the LM head's packed product, :class:`~turbogen.generation.packed_head.PackedHead`; sampling: the same tokens for
the same seed), whatever arrived before or after it, whatever it was batched with, however its prompt was chunked
and however often it was preempted: the request is resolved as ``generate`` resolves that call
(:func:`~turbogen.serving.request.prepare_request`), its logits are processed by its own stages, and its n-th
sampled token uses offset n.

Bad input fails only the request concerned: :meth:`Engine.add_request` raises ``ValueError`` naming the argument
(an empty or malformed prompt, token ids outside the vocabulary, a request the cache could never hold, an invalid
config; :class:`~turbogen.errors.UnsupportedByTurbogen` for what the Engine does not run), and what is found
later (a logits processor raising, scores that cannot be sampled, a failing forward) finishes the request(s)
concerned with ``finish_reason="error"`` and a message, while the Engine serves the others.

Threads: an Engine is driven from one thread (``add_request`` / ``step`` / ``stream``), or runs its loop in a
background thread (:meth:`Engine.start`, or ``with Engine(...) as engine``) where any thread may
:meth:`~Engine.submit` requests (a :class:`RequestHandle` to wait on or iterate) and abort them;
:meth:`Engine.shutdown` stops the loop, finishing what was left with ``finish_reason="aborted"``, so no caller waits
forever.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Hashable, Iterator, Optional

import torch

from .. import _transformers_compat as _compat
from ..attention import PagedBatch, attention_configs, paged_forward, register_paged_attention, switched_to_paged
from ..cache._shape import shape_from_config
from ..cache.paged import PagedKVCache, index_tensor
from ..generation.packed_head import packed_heads
from ..generation.paged_runner import paged_refusal
from ..generation.prepare import forward_parameters
from .background import BackgroundLoop
from .request import FinishReason, PreparedRequest, Request, RequestOutput, RequestStatus, prepare_request
from .scheduler import Scheduler
from .selection import SamplerCache, select_tokens

__all__ = ["DEFAULT_KV_CACHE_BYTES", "Engine", "blocks_for_budget", "kv_bytes_per_token"]

#: The cache's size when neither ``num_blocks`` nor ``kv_cache_bytes`` is given (at most; less when
#: ``max_num_seqs`` sequences of the model's full length need less).
DEFAULT_KV_CACHE_BYTES = 256 * 2**20
# The longest sequence the default sizing plans for, when the model's config names none.
_DEFAULT_MAX_MODEL_LEN = 4096


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    return value


def _model_dtype_and_device(model: Any) -> tuple:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype, parameter.device
    return torch.float32, torch.device("cpu")


def _kv_layout(model: Any) -> tuple:
    """``(layers, kv_heads, head_dim, dtype, device)`` of the model's KV cache."""
    shape = shape_from_config(model.config)
    dtype, device = _model_dtype_and_device(model)
    return shape["num_layers"], shape["num_kv_heads"], shape["head_dim"], dtype, device


def kv_bytes_per_token(model: Any) -> int:
    """Bytes one token takes in the model's KV cache (every layer, keys and values)."""
    layers, kv_heads, head_dim, dtype, _ = _kv_layout(model)
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def blocks_for_budget(model: Any, block_size: int, max_num_seqs: int, kv_cache_bytes: Optional[int] = None) -> int:
    """The cache blocks an Engine gets without ``num_blocks``: ``kv_cache_bytes`` worth, else enough for
    ``max_num_seqs`` sequences of the model's ``max_position_embeddings`` (at most 4096 tokens), within
    :data:`DEFAULT_KV_CACHE_BYTES`."""
    block_bytes = block_size * kv_bytes_per_token(model)
    if kv_cache_bytes is None:
        max_len = getattr(model.config, "max_position_embeddings", None) or _DEFAULT_MAX_MODEL_LEN
        wanted = max_num_seqs * -(-min(max_len, _DEFAULT_MAX_MODEL_LEN) // block_size)
        return max(1, min(wanted, DEFAULT_KV_CACHE_BYTES // block_bytes))
    _positive(kv_cache_bytes, "kv_cache_bytes")
    if kv_cache_bytes < block_bytes:
        raise ValueError(f"`kv_cache_bytes` = {kv_cache_bytes} cannot hold one block of {block_size} tokens "
                         f"({block_bytes} bytes)")
    return kv_cache_bytes // block_bytes


class Engine(BackgroundLoop):
    """Continuous batching of generation requests over a paged KV cache (see the module docstring).

    Args:
        model: a transformers decoder-only model whose attention goes through transformers' attention interface
            (Llama, Mistral, Qwen2, Gemma 2, GPT-2, ...).
        block_size: slots per cache block.
        num_blocks: cache blocks; by default sized from ``kv_cache_bytes``.
        max_num_seqs: most requests running at once.
        max_batched_tokens: most tokens fed by one forward (prompts longer than what is left are chunked).
        kv_cache_bytes: the cache's budget in bytes, when ``num_blocks`` is not given; by default enough for
            ``max_num_seqs`` sequences of the model's ``max_position_embeddings`` (at most 4096 tokens each), capped at
            :data:`DEFAULT_KV_CACHE_BYTES`.
        tokenizer: the default ``tokenizer`` of the requests (what ``stop_strings`` need).

    A request never holds more than ``num_blocks * block_size`` tokens; longer ones are refused by
    :meth:`add_request`.
    """

    def __init__(self, model: Any, *, block_size: int = 16, num_blocks: Optional[int] = None, max_num_seqs: int = 64,
                 max_batched_tokens: int = 512, kv_cache_bytes: Optional[int] = None, tokenizer: Any = None):
        refusal = paged_refusal(model)
        if refusal is not None:
            raise refusal
        _positive(block_size, "block_size")
        _positive(max_num_seqs, "max_num_seqs")
        _positive(max_batched_tokens, "max_batched_tokens")
        self.model = model
        self.tokenizer = tokenizer
        layers, kv_heads, head_dim, dtype, device = _kv_layout(model)
        self.device = device
        if num_blocks is None:
            num_blocks = blocks_for_budget(model, block_size, max_num_seqs, kv_cache_bytes)
        elif kv_cache_bytes is not None:
            raise ValueError("give `num_blocks` or `kv_cache_bytes`, not both")
        _positive(num_blocks, "num_blocks")
        self.cache = PagedKVCache(layers, num_blocks, block_size, kv_heads, head_dim, dtype=dtype, device=device)
        self.scheduler = Scheduler(self.cache.allocator, max_num_seqs, max_batched_tokens)
        self._configs = attention_configs(model)
        register_paged_attention()
        self._logits_to_keep = _compat.logits_to_keep_name(forward_parameters(model))
        self._requests: dict = {}
        self._ids = itertools.count()
        self._samplers = SamplerCache()
        self._reports: list = []  # outputs of requests finished between steps (aborted, failed), for the next step
        self.reset_memory_stats()
        self.num_steps = 0
        self.host_seconds = 0.0     # per-step work around the forward (scheduling, metadata, token choice)
        self.forward_seconds = 0.0  # the forwards themselves
        self._init_background()

    # --- requests -------------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """The most tokens one request can hold: the whole cache."""
        return self.cache.num_blocks * self.cache.block_size

    def prepare(self, input_ids: Any, generation_config: Any = None, **kwargs: Any) -> PreparedRequest:
        """Resolve a request (:func:`~turbogen.serving.request.prepare_request`) and check it fits this Engine's
        cache; touches no Engine state (safe from any thread)."""
        kwargs.setdefault("tokenizer", self.tokenizer)
        spec = prepare_request(self.model, input_ids, generation_config, **kwargs)
        if spec.device != self.device:
            raise ValueError(f"`input_ids` resolved to {spec.device}, the Engine's cache is on {self.device}")
        if spec.max_cached_tokens > self.capacity:
            raise ValueError(f"`input_ids` ({len(spec.prompt)} tokens) with max_length {spec.max_length} needs up to "
                             f"{spec.max_cached_tokens} cache slots, but this Engine's cache holds {self.capacity} "
                             f"(num_blocks {self.cache.num_blocks} x block_size {self.cache.block_size}): lower "
                             f"`max_new_tokens` or give the Engine more blocks")
        return spec

    def add_request(self, input_ids: Any, generation_config: Any = None, *, request_id: Optional[Hashable] = None,
                    **kwargs: Any) -> Hashable:
        """Queue a request; returns its id (``request_id``, else a new int).

        ``input_ids``: the prompt (a list of token ids, a 1-D or ``[1, n]`` tensor). ``generation_config`` and
        ``kwargs``: as :func:`turbogen.generate` takes them for one prompt (``max_new_tokens``, ``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``seed``, ``eos_token_id``,
        ``stop_strings`` with ``tokenizer``, ``logits_processor``, ``stopping_criteria``, ...).

        Raises ValueError (naming the argument) for a bad request; the Engine is unchanged then.
        """
        spec = self.prepare(input_ids, generation_config, **kwargs)
        return self.add_prepared(spec, request_id=request_id)

    def add_prepared(self, spec: PreparedRequest, *, request_id: Optional[Hashable] = None) -> Hashable:
        """Queue a request resolved by :meth:`prepare`; returns its id."""
        if self._thread is not None:
            return self._submit_prepared(spec, request_id).request_id
        request_id = self._new_id(request_id)
        self._admit(Request(request_id, spec))
        return request_id

    def _new_id(self, request_id: Optional[Hashable]) -> Hashable:
        if request_id is None:
            request_id = next(self._ids)
            while request_id in self._requests:
                request_id = next(self._ids)
            return request_id
        try:
            hash(request_id)
        except TypeError:
            raise ValueError(f"`request_id` must be hashable, got {type(request_id).__name__}") from None
        if request_id in self._requests:
            raise ValueError(f"`request_id` {request_id!r} is already in use")
        return request_id

    def _admit(self, request: Request) -> None:
        self._requests[request.request_id] = request
        self.scheduler.add(request)

    def _request(self, request_id: Hashable) -> Request:
        try:
            return self._requests[request_id]
        except (KeyError, TypeError):
            raise ValueError(f"unknown `request_id` {request_id!r}") from None

    def abort(self, request_id: Hashable) -> None:
        """Stop a request: it finishes with ``finish_reason="aborted"`` (reported by the next :meth:`step`) and its
        blocks are freed. A finished request is left as it is. Unknown ids raise ValueError."""
        if self._thread is not None:
            if request_id not in self._handles:
                raise ValueError(f"unknown `request_id` {request_id!r}")
            self._command(("abort", request_id))
            return
        request = self._request(request_id)
        if not request.finished:
            self._finish(request, FinishReason.ABORTED.value)
            self._reports.append(request)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work()

    def output(self, request_id: Hashable) -> RequestOutput:
        """The request's current state (its tokens so far)."""
        request = self._request(request_id)
        return RequestOutput(request_id=request_id, prompt_ids=list(request.spec.prompt),
                             generated_tokens=request.generated, finished=request.finished,
                             finish_reason=request.finish_reason, error=request.error,
                             logits=list(request.logits) if request.logits is not None else None,
                             scores=list(request.scores) if request.scores is not None else None)

    def release(self, request_id: Hashable) -> RequestOutput:
        """Forget a finished request (an Engine keeps every request until released) and return its output."""
        request = self._request(request_id)
        if not request.finished:
            raise ValueError(f"request {request_id!r} is not finished: abort it first")
        output = self.output(request_id)
        del self._requests[request_id]
        return output

    def _finish(self, request: Request, reason: str, error: Optional[str] = None) -> None:
        self.scheduler.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason
        request.error = error

    # --- the step -------------------------------------------------------------------------------------------

    def step(self) -> list:
        """Run one forward over every scheduled request (see the module docstring) and return the
        :class:`RequestOutput` of each request that got a token or finished since the last step."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            raise RuntimeError("this Engine runs in its background thread: submit() requests, do not step() it")
        with torch.inference_mode():
            return self._step()

    def _step(self) -> list:
        started = time.perf_counter()
        reported = self._reports
        self._reports = []
        plan = self.scheduler.schedule()
        if not plan:
            return [request.output() for request in reported]
        cache = self.cache
        for request in plan.added:
            cache.add_sequence(request.seq_id)
        tokens, producing, keep = [], [], []
        end = 0
        for request, count in zip(plan.requests, plan.counts):
            start = request.num_computed
            tokens += request.tokens[start:start + count]
            end += count
            if start + count == len(request.tokens):  # every pending token fed: the next one is chosen
                producing.append(request)
                keep.append(end - 1)
        batch = PagedBatch.prepare(cache, [r.seq_id for r in plan.requests], plan.counts)
        for request, count in zip(plan.requests, plan.counts):
            request.num_computed += count
        self._track_memory()
        ids = index_tensor(tokens, torch.int64, self.device)
        kwargs = {}
        keep_index = torch.tensor(keep or [end - 1], dtype=torch.long, device=self.device)
        if self._logits_to_keep is not None:
            kwargs[self._logits_to_keep] = keep_index
        before_forward = time.perf_counter()
        try:
            with switched_to_paged(self._configs), packed_heads(self.model):
                logits = paged_forward(self.model, ids, batch, **kwargs)
        except Exception as error:  # noqa: BLE001  (the step's requests fail; the Engine keeps serving the others)
            message = f"the model's forward raised {type(error).__name__}: {error}"
            for request in plan.requests:
                self._finish(request, FinishReason.ERROR.value, message)
            self.forward_seconds += time.perf_counter() - before_forward
            self.host_seconds += before_forward - started
            self.num_steps += 1
            return [request.output() for request in reported + plan.requests]
        after_forward = time.perf_counter()
        if self._logits_to_keep is None:
            logits = logits.index_select(0, keep_index)
        changed = list(reported)
        if producing:
            logits = logits.float()
            selection = select_tokens(producing, logits, self._samplers)
            for row, request in enumerate(producing):
                if selection.errors[row] is not None:
                    self._finish(request, FinishReason.ERROR.value, selection.errors[row])
                    changed.append(request)
                    continue
                if request.logits is not None:
                    request.logits.append(logits[row].clone())
                if request.scores is not None:
                    request.scores.append(selection.scores[row].clone())
                try:
                    reason = request.append(selection.tokens[row], selection.token_tensor[row:row + 1])
                except Exception as error:  # noqa: BLE001  (a user stopping criterion or stage: that request fails)
                    reason, message = FinishReason.ERROR.value, f"{type(error).__name__}: {error}"
                    self._finish(request, reason, f"stopping or accepting the token raised {message}")
                    changed.append(request)
                    continue
                if reason is not None:
                    self._finish(request, reason)
                changed.append(request)
        self.num_steps += 1
        self.forward_seconds += after_forward - before_forward
        self.host_seconds += (before_forward - started) + (time.perf_counter() - after_forward)
        return [request.output() for request in changed]

    # --- driving it -----------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Step until every request finished; returns ``{request_id: RequestOutput}`` of every request held."""
        while self.has_unfinished_requests():
            self.step()
        self._reports = []
        return {request_id: self.output(request_id) for request_id in self._requests}

    def stream(self, request_id: Hashable) -> Iterator[int]:
        """Yield the request's generated tokens as they come, stepping the Engine (every request progresses) until
        the request finishes. Single-thread mode; in background mode iterate its :class:`RequestHandle`."""
        if self._thread is not None:
            raise RuntimeError("this Engine runs in its background thread: iterate the RequestHandle of submit()")
        request = self._request(request_id)
        sent = 0
        while True:
            generated = request.generated
            while sent < len(generated):
                yield generated[sent]
                sent += 1
            if request.finished:
                return
            self.step()

    # --- memory ---------------------------------------------------------------------------------------------

    def _track_memory(self) -> None:
        allocator = self.cache.allocator
        used = allocator.num_used_blocks
        held = sum(request.num_computed for request in self.scheduler.running)
        self._peak_tokens_held = max(self._peak_tokens_held, held)
        if used > self._peak_blocks:
            self._peak_blocks, self._tokens_at_peak = used, held

    def reset_memory_stats(self) -> None:
        self._peak_blocks = 0
        self._tokens_at_peak = 0
        self._peak_tokens_held = 0

    def memory_stats(self) -> dict:
        """KV cache use since the Engine was built (or :meth:`reset_memory_stats`), measured after each step's
        slots were reserved: ``num_blocks``, ``block_size``, ``kv_bytes_per_token`` (all layers, keys and values),
        ``peak_blocks_used`` and ``peak_kv_bytes`` (their bytes), ``tokens_held_at_peak`` and
        ``token_bytes_at_peak`` (the tokens the sequences held then, and their bytes: ``peak_kv_bytes /
        token_bytes_at_peak`` is the blocks' overhead), ``peak_tokens_held``, ``num_preemptions``."""
        per_token = self.cache.bytes_per_token
        return {
            "num_blocks": self.cache.num_blocks,
            "block_size": self.cache.block_size,
            "kv_bytes_per_token": per_token,
            "peak_blocks_used": self._peak_blocks,
            "peak_kv_bytes": self._peak_blocks * self.cache.block_size * per_token,
            "tokens_held_at_peak": self._tokens_at_peak,
            "token_bytes_at_peak": self._tokens_at_peak * per_token,
            "peak_tokens_held": self._peak_tokens_held,
            "num_preemptions": self.scheduler.num_preemptions,
        }
