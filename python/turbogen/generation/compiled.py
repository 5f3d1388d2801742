"""The compiled decode step: :class:`DecodeStep` (public as ``turbogen.DecodeStep``) and when
:func:`turbogen.generate` compiles.

A decode step of greedy search or multinomial sampling, over turbogen's
:class:`~turbogen.cache.StaticKVCache`, touching only buffers allocated once: the model call at a device
``cache_position`` with a full-capacity ``[rows, capacity]`` attention mask and per-row ``[rows, 1]``
positions advanced in place, the logits stages (those that keep their own state and do not read the history),
the argmax or the fused sampler (:class:`turbogen.ops.Sampler`, per-row seeds and device Philox offsets), the
padding of finished rows, the write of the token into the ``[rows, capacity + 1]`` sequences buffer at a
device position, the stages' ``accept`` and the unfinished flags. No host synchronisation and no shape
change from one step to the next, so the step compiles with ``torch.compile(fullgraph=True, dynamic=False)``
into one graph that serves every step and every prompt length that fits the cache, and it can be captured in
a CUDA graph (``with torch.cuda.graph(g): step()``; every ``g.replay()`` then draws fresh tokens).

When ``generate`` compiles (transformers 4.57's rules, one documented difference): never with
``disable_compile=True``; only over turbogen's static cache (``cache_implementation="static"``, or a
:class:`~turbogen.cache.StaticKVCache` given as ``past_key_values``, empty); on CUDA always, elsewhere only when
the call (or the generation config) gives a ``compile_config`` (transformers needs the private
``CompileConfig._compile_all_devices = True`` there, which is honoured too). See :func:`compile_decision`.
"""

from __future__ import annotations

import math
import types
from typing import Any, Callable, Optional

import torch

from .. import _transformers_compat as _compat
from ..cache.static import StaticKVCache
from ..config import CompileConfig, as_generation_config
from ..processors.stages import LogitsStages, history_readers
from ..stopping import EosTokenCriteria, StoppingPlan, is_same_criterion_kind
from .batch_state import BatchState
from .compile_passes import DECODE_MATMUL_PASS
from .prepare import forward_parameters, is_encoder_decoder

__all__ = ["DecodeStep", "capacity_bucket", "compile_decision", "compile_kwargs", "whole_step_refusal"]

#: The smallest cache capacity :func:`capacity_bucket` gives.
MIN_CAPACITY_BUCKET = 64
#: The attribute holding a model's shared caches (``model.<this>``, a dict) and a cache's compiled callables.
_STORE_ATTRIBUTE = "_turbogen_compiled"


def capacity_bucket(max_length: int) -> int:
    """The static cache capacity a compiled ``generate`` builds for sequences of at most ``max_length`` tokens:
    the next power of two ``>= max(64, max_length - 1)`` (64, 128, 256, ...), so other prompt lengths and
    ``max_new_tokens`` within one bucket reuse the compiled graph."""
    need = max(MIN_CAPACITY_BUCKET, int(max_length) - 1)
    return 1 << math.ceil(math.log2(need))


def compile_decision(config: Any, cache: Any, device: torch.device) -> Optional[CompileConfig]:
    """The :class:`~turbogen.CompileConfig` to compile with, or None when ``generate`` runs eagerly.

    transformers 4.57's rules: never with ``disable_compile``; only with a compileable cache (here: turbogen's
    :class:`~turbogen.cache.StaticKVCache`, or ``cache_implementation="static"`` before it is built, ``cache``
    None); on CUDA always, on any other device when ``compile_config`` is given (turbogen's documented
    difference) or has ``_compile_all_devices`` set (transformers' private switch)."""
    if config.disable_compile:
        return None
    if cache is None:
        if config.cache_implementation != "static":
            return None
    elif type(cache) is not StaticKVCache:
        return None
    given = config.compile_config
    if torch.device(device).type == "cuda" or given is not None:
        return given if given is not None else CompileConfig(fullgraph=True, dynamic=False)
    return None


def compile_kwargs(compile_config: Optional[CompileConfig], device: Optional[torch.device] = None) -> dict:
    """``torch.compile``'s keyword arguments for ``compile_config`` (None: turbogen's defaults, ``fullgraph=True,
    dynamic=False``, inductor) on ``device``. Every field passes through; ``dynamic=None`` becomes False (shapes
    never change here, and a change then shows as a recompilation), and ``mode`` is left out when ``options`` are
    given (``torch.compile`` takes one of the two).

    On a CPU with inductor, turbogen's graph pass joins the options
    (:class:`~turbogen.generation.compile_passes.DecodeMatmulPass`: a decode step's float32 products of a few rows
    as inductor loops instead of BLAS calls); ``mode`` is then given as the options it stands for
    (``torch._inductor.list_mode_options``), and options that set ``post_grad_custom_post_pass`` themselves keep
    their value."""
    if compile_config is None:
        compile_config = CompileConfig(fullgraph=True, dynamic=False)
    kwargs = {"backend": compile_config.backend, "fullgraph": bool(compile_config.fullgraph),
              "dynamic": False if compile_config.dynamic is None else compile_config.dynamic}
    options = compile_config.options
    mode = compile_config.mode
    on_cpu = device is not None and torch.device(device).type == "cpu"
    if on_cpu and compile_config.backend == "inductor" and "post_grad_custom_post_pass" not in (options or {}):
        from torch._inductor import list_mode_options

        options = dict(options) if options is not None else (dict(list_mode_options(mode)) if mode else {})
        options["post_grad_custom_post_pass"] = DECODE_MATMUL_PASS
    if options is not None:
        kwargs["options"] = options
    elif mode is not None:
        kwargs["mode"] = mode
    return kwargs


def fresh_function(function: Callable) -> Callable:
    """A copy of ``function`` with a code object of its own: dynamo keeps its compiled graphs (and counts its
    ``recompile_limit``) per code object, so each compiled step gets its own budget and never evicts another's."""
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__ = function.__kwdefaults__
    return copy


def compiled_store(owner: Any) -> dict:
    """The dict on ``owner`` (created on first use) holding what the compiled path keeps with it: on a model, its
    shared static caches; on a cache, the compiled callables made for it (they live and die with the cache)."""
    store = owner.__dict__.get(_STORE_ATTRIBUTE)
    if store is None:
        store = {}
        owner.__dict__[_STORE_ATTRIBUTE] = store
    return store


def _model_refusal(model: Any) -> Optional[str]:
    if is_encoder_decoder(model):
        return "encoder-decoder models"
    if _compat.prepares_own_inputs(model):
        return f"models with their own `prepare_inputs_for_generation` ({type(model).__name__})"
    return None


def _row_eos(stopping: StoppingPlan) -> tuple[bool, Optional[torch.Tensor]]:
    """``(pure, eos)``: whether every per-row criterion is an :class:`~turbogen.EosTokenCriteria` (then the step
    judges them on the device), and their token ids together (None without any)."""
    ids = []
    for criterion in stopping.row_criteria:
        if not is_same_criterion_kind(criterion, EosTokenCriteria):
            return False, None
        ids.append(torch.as_tensor(criterion.eos_token_id).reshape(-1).long())
    return True, (torch.cat(ids) if ids else None)


def whole_step_refusal(model: Any, processors: Any, stopping: StoppingPlan, model_kwargs: dict,
                       config: Any) -> Optional[str]:
    """Why the whole greedy/sampling step cannot be one :class:`DecodeStep` for this call (None: it can)."""
    refusal = _model_refusal(model)
    if refusal is not None:
        return refusal
    if config.num_beams > 1:
        return "beam search"
    extra = sorted(name for name, value in model_kwargs.items() if name != "attention_mask" and value is not None)
    if extra:
        return f"model inputs other than `attention_mask` ({', '.join(extra)})"
    readers = history_readers(processors or ())
    if readers:
        return f"logits processors that read the history ({', '.join(readers)})"
    pure, _ = _row_eos(stopping)
    if not pure:
        return "stopping criteria other than max_length / max_time / eos_token_id"
    return None


class DecodeStep:
    """One greedy-search or sampling decode step over turbogen's static cache, on buffers it owns: compileable
    with ``fullgraph=True`` and capturable in a CUDA graph.

    ``step = DecodeStep(model, cache, generation_config)``; ``tokens = step.prefill(input_ids,
    attention_mask)`` runs the prompt eagerly (rows must equal the cache's; left padding as for ``generate``),
    fills the cache and returns the first new tokens; each ``step()`` then feeds :attr:`tokens`, writes the next
    ones into :attr:`tokens` (the same tensor, in place) and into :attr:`sequences`, and advances the positions,
    the Philox offsets and the :attr:`unfinished` flags on the device: no host synchronisation, no allocation the
    caller sees, the same shapes at every step. :meth:`compile` compiles the step (one graph for every step and
    every prompt that fits the cache). The tokens are those of ``turbogen.generate`` with the same arguments
    (greedy search: token for token; sampling: the same draws for the same ``seed``).

    The generation config (``None``: the model's) gives the decoding: ``do_sample`` and the sampler's
    temperature / top-k / top-p / min-p, ``seed``, the penalties on repeated tokens (``repetition_penalty``,
    ``presence_penalty``, ``frequency_penalty``), ``no_repeat_ngram_size``, ``eos_token_id`` and
    ``pad_token_id``; other logits processors
    read the history at every step, which a fixed-shape step cannot give them (``ValueError``). Finished rows
    (an EOS drawn) get the pad token, as in ``generate``; :attr:`unfinished` says which rows still run and
    :attr:`flags` holds ``unfinished.any()`` (and, sampling, whether every score so far could be sampled). Length
    limits (``max_new_tokens``) are the caller's: every ``step()`` decodes one more token, until the cache is
    full (then ``step()`` raises ``ValueError``).

    CUDA graphs: after :meth:`prefill` (and one warm-up ``step()`` on a side stream, as torch recommends),
    ``with torch.cuda.graph(g): step()`` records one step; ``g.replay()`` then decodes the next token each time
    (seeds, offsets and positions are device tensors). :attr:`length` counts the ``step()`` calls (the captured
    one too, though capturing runs nothing), not the replays: the caller counts those.

    Args:
        model: a decoder-only transformers causal LM using transformers' generic input preparation.
        cache: a :class:`~turbogen.cache.StaticKVCache` whose ``batch_size`` is the rows decoded together
            (prompts times ``num_return_sequences``) and whose ``max_cache_len`` bounds prompt plus new tokens
            minus one.
        generation_config: a :class:`turbogen.GenerationConfig`, a transformers one or a dict; ``None``: the
            model's.

    Raises:
        ValueError: ``cache`` is not a ``StaticKVCache``, or the model or the config asks for something a
            whole step cannot do (beam search, a processor reading the history, an encoder-decoder model...).
    """

    def __init__(self, model: Any, cache: Any, generation_config: Any = None):
        if type(cache) is not StaticKVCache:
            raise ValueError(f"`cache` must be a turbogen.cache.StaticKVCache (fixed shapes and addresses), got "
                             f"{type(cache).__name__}")
        if not callable(model) or not hasattr(model, "config"):
            raise ValueError(f"`model` must be a transformers causal LM, got {type(model).__name__}")
        refusal = _model_refusal(model)
        if refusal is not None:
            raise ValueError(f"`model`: a DecodeStep does not support {refusal}")
        config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
        self.config = as_generation_config(config) if config is not None else None
        self.model = model
        self.cache = cache
        self.rows = cache.batch_size
        self.capacity = cache.max_cache_len
        device = cache.device
        self.device = device
        parameters = forward_parameters(model)
        self._takes_cache_position = "cache_position" in parameters
        self._takes_positions = "position_ids" in parameters
        self._keeps_logits = _compat.logits_to_keep_name(parameters)  # the name, or None (4.45: num_logits_to_keep)
        rows, capacity = self.rows, self.capacity
        #: ``[rows]`` int64: the last tokens chosen (fed by the next step, overwritten by it).
        self.tokens = torch.zeros(rows, dtype=torch.int64, device=device)
        #: ``[rows, capacity + 1]`` int64: prompt then new tokens (valid up to :attr:`length`).
        self.sequences = torch.zeros(rows, capacity + 1, dtype=torch.int64, device=device)
        #: ``[rows]`` bool: rows that have not finished.
        self.unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        #: ``[1]`` int64: the cache position the next step feeds (its token is written one after it).
        self.cache_position = torch.zeros(1, dtype=torch.int64, device=device)
        #: ``[rows, 1]`` int64: each row's position id for the next step.
        self.positions = torch.zeros(rows, 1, dtype=torch.int64, device=device)
        #: ``[rows, capacity]``: the attention mask of every step (prompt mask, then ones).
        self.mask = torch.ones(rows, capacity, dtype=torch.int64, device=device)
        #: host int: tokens in :attr:`sequences` (prompt included), counted by :meth:`prefill` and ``step()``.
        self.length = 0
        self.prompt_length = 0
        self._cached = 0  # positions the cache holds, as the host knows them
        self._batch: Optional[BatchState] = None
        self._sampler = None
        self._stages: Optional[LogitsStages] = None
        self._scoring: Optional[LogitsStages] = None
        self._fused = None
        self._eos: Optional[torch.Tensor] = None
        self._pad: Optional[torch.Tensor] = None
        #: ``[1]`` (greedy) or ``[2]`` (sampling) bool: any row unfinished; every score so far finite.
        self.flags = torch.ones(1, dtype=torch.bool, device=device)
        self._step_function: Callable[[], None] = self._step
        self.compiled = False
        self._ready = False

    # --- setup ----------------------------------------------------------------------------------------------

    @property
    def samples(self) -> bool:
        return self._batch is not None and self._batch.samples

    def prefill(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Start decoding ``input_ids`` (``[rows, prompt_length]``, left-padded; ``attention_mask`` as for
        ``generate``, inferred from the pad token when not given): the cache is emptied and filled with the
        prompt (an eager model call), the buffers are reset, and the first new token of every row is chosen.
        Returns :attr:`tokens`.

        Raises:
            ValueError: ``input_ids`` is not ``[cache.batch_size, n]`` with ``1 <= n <= cache.max_cache_len``,
                or the generation config asks for what a decode step cannot do.
        """
        from .prepare import prepare_call

        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"`input_ids` must be a LongTensor [rows, prompt_length], got {got}")
        kwargs = {"past_key_values": self.cache}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        with torch.no_grad():
            call = prepare_call(self.model, input_ids, self.config, None, None, None, None, None, kwargs)
        if call.is_beam or call.speculation is not None:
            raise ValueError("`generation_config`: a DecodeStep decodes greedy search or sampling, not beam search "
                             "or speculative decoding")
        model_kwargs = dict(call.model_kwargs)
        refusal = whole_step_refusal(self.model, call.processors, call.stopping, model_kwargs, call.config)
        if refusal is not None:
            raise ValueError(f"`generation_config`: a DecodeStep does not support {refusal}")
        batch = BatchState.from_config(call.config, call.input_ids.shape[0], self.device, call.sampler_filters)
        return self.start(call.input_ids, model_kwargs.get("attention_mask"), call.processors, call.stopping,
                          batch, call.tokens.pad)

    def start(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], processors: Any,
              stopping: StoppingPlan, batch: BatchState, pad_token: Optional[torch.Tensor]) -> torch.Tensor:
        """:meth:`prefill` from a resolved call (what ``generate`` uses): rows expanded, ``processors`` the logits
        processors (without the sampler's filters), ``batch`` the per-row state (its values are copied into the
        step's own buffers, which keep their addresses from call to call)."""
        rows, prompt_length = input_ids.shape
        if rows != self.rows:
            raise ValueError(f"`input_ids` has {rows} rows (with num_return_sequences) but the cache holds "
                             f"{self.rows}")
        if not 1 <= prompt_length <= self.capacity:
            raise ValueError(f"`input_ids` has {prompt_length} positions; the cache holds 1..{self.capacity}")
        if input_ids.device != self.device:
            raise ValueError(f"`input_ids` is on {input_ids.device} but the cache is on {self.device}")
        pure, eos = _row_eos(stopping)
        if not pure:
            raise ValueError("`stopping`: a DecodeStep judges only max_length / max_time / eos_token_id")
        if stopping.pads_finished_rows and pad_token is None:
            raise ValueError("Finished rows must be padded but neither `pad_token_id` nor `eos_token_id` is set.")
        self._adopt_batch(batch)
        self._eos = None if eos is None else eos.to(self.device)
        self._pad = pad_token.to(self.device) if stopping.pads_finished_rows else None
        stages = (LogitsStages.from_processors(list(processors), input_ids, max_length=self.capacity + 1)
                  if processors else None)
        self._stages = self._scoring = stages
        self._fused = None
        if stages is not None and self.samples:
            self._scoring, self._fused = stages.split_penalties()
        if self._scoring is not None and len(self._scoring) == 0:
            self._scoring = None

        # The buffers, in place (their addresses are what a compiled or captured step reads).
        if self._cached:
            self.cache.truncate_(0, self._cached)
        self.sequences[:, :prompt_length] = input_ids
        self.sequences[:, prompt_length:] = 0
        self.unfinished.fill_(True)
        self.flags.fill_(True)
        self.mask.fill_(1)
        prompt_mask = None
        if attention_mask is not None:
            prompt_mask = attention_mask.to(self.device)
            self.mask[:, :prompt_length] = prompt_mask
        from .. import _transformers_compat as _compat

        kwargs = {"past_key_values": self.cache, "use_cache": True, "return_dict": True}
        if prompt_mask is not None:
            kwargs["attention_mask"] = prompt_mask
            if self._takes_positions:
                kwargs["position_ids"] = _compat.position_ids_from_attention_mask(prompt_mask)
            self.positions.copy_(prompt_mask.long().sum(-1, keepdim=True))
        else:
            if self._takes_positions:
                kwargs["position_ids"] = torch.arange(prompt_length, device=self.device).expand(rows, -1)
            self.positions.fill_(prompt_length)
        if self._takes_cache_position:
            kwargs["cache_position"] = torch.arange(prompt_length, device=self.device)
        if self._keeps_logits:
            kwargs[self._keeps_logits] = 1
        with torch.no_grad():
            outputs = self.model(input_ids=input_ids, **kwargs)
            logits = _last_logits(outputs.logits)
        self._cached = prompt_length
        self.prompt_length = prompt_length
        self.cache_position.fill_(prompt_length - 1)  # the first token goes right after the prompt
        with torch.no_grad():
            self._choose_and_accept(logits)
        self.length = prompt_length + 1
        self._ready = True
        return self.tokens

    def _adopt_batch(self, batch: BatchState) -> None:
        """Copy ``batch``'s values into the step's own per-row buffers (kept from call to call, so that compiled
        graphs and the sampler keep reading the same tensors)."""
        if batch.unfinished.shape[0] != self.rows:
            raise ValueError(f"`batch` has {batch.unfinished.shape[0]} rows but the cache holds {self.rows}")
        mine = self._batch
        if mine is None or mine.samples != batch.samples:
            fields = {name: (None if value is None else value.to(self.device).clone())
                      for name, value in vars(batch).items()}
            self._batch = BatchState(**fields)
            self._batch.unfinished = self.unfinished
            self._sampler = self._batch.sampler() if self._batch.samples else None
            self.flags = torch.ones(2 if self._batch.samples else 1, dtype=torch.bool, device=self.device)
            return
        for name, value in vars(batch).items():
            if name != "unfinished" and value is not None:
                getattr(mine, name).copy_(value)

    # --- the step -------------------------------------------------------------------------------------------

    def _choose_and_accept(self, logits: torch.Tensor) -> None:
        """From ``[rows, vocab]`` float32 logits: the next tokens, padded, written after :attr:`cache_position`,
        accepted by the stages and judged; :attr:`cache_position` advances."""
        scores = self._scoring.apply(self.sequences, logits) if self._scoring is not None else logits
        batch = self._batch
        if self._sampler is None:
            tokens = torch.argmax(scores, dim=-1)
        else:
            batch.check_scores(scores)
            penalties = self._fused.penalty_tensors(scores) if self._fused is not None else None
            tokens = self._sampler(scores, batch.offsets, penalties=penalties)
            batch.advance()
            tokens = tokens.clamp(min=0)  # a row without a finite score drew -1 (the flag says so)
        if self._pad is not None:
            tokens = torch.where(self.unfinished, tokens, self._pad)
        self.sequences.index_copy_(1, self.cache_position + 1, tokens[:, None])
        if self._stages is not None:
            self._stages.accept(tokens)
        if self._eos is not None:
            self.unfinished.logical_and_(~torch.isin(tokens, self._eos))
        if self._sampler is None:
            self.flags.copy_(self.unfinished.any().reshape(1))
        else:
            self.flags.copy_(torch.stack((self.unfinished.any(), batch.scores_are_finite)))
        self.cache_position.add_(1)
        self.tokens.copy_(tokens)

    def _step(self) -> None:
        """One decode step on the buffers (what :meth:`compile` compiles)."""
        kwargs = {"attention_mask": self.mask, "past_key_values": self.cache, "use_cache": True, "return_dict": True}
        if self._takes_positions:
            kwargs["position_ids"] = self.positions
        if self._takes_cache_position:
            kwargs["cache_position"] = self.cache_position
        if self._keeps_logits:
            kwargs[self._keeps_logits] = 1
        outputs = self.model(input_ids=self.tokens[:, None], **kwargs)
        self.positions.add_(1)
        self._choose_and_accept(_last_logits(outputs.logits))

    def __call__(self) -> torch.Tensor:
        """Decode one more token per row; returns :attr:`tokens` (updated in place).

        Raises:
            ValueError: :meth:`prefill` was not called, or the cache is full.
        """
        if not self._ready:
            raise ValueError("call `prefill(input_ids)` before stepping")
        if self.length > self.capacity:
            raise ValueError(f"the cache is full: it holds {self.capacity} positions and the sequences already "
                             f"have {self.length} tokens; build the cache with a larger max_cache_len")
        with torch.no_grad():
            self._step_function()
        self.length += 1
        self._cached += 1
        return self.tokens

    def compile(self, compile_config: Optional[CompileConfig] = None) -> "DecodeStep":
        """Compile the step with ``torch.compile`` (:func:`compile_kwargs`: by default ``fullgraph=True,
        dynamic=False`` and inductor; a :class:`~turbogen.CompileConfig`'s ``backend``, ``mode``, ``options``,
        ``fullgraph`` and ``dynamic`` otherwise). The compilation itself happens at the next ``step()``. Returns
        ``self``."""
        if compile_config is not None and not isinstance(compile_config, CompileConfig):
            raise ValueError(f"`compile_config` must be a turbogen.CompileConfig, got {type(compile_config).__name__}")
        function = fresh_function(DecodeStep._step)
        self._step_function = torch.compile(types.MethodType(function, self),
                                            **compile_kwargs(compile_config, self.device))
        self.compiled = True
        return self

    def finish(self, length: int) -> None:
        """Keep the first ``length`` tokens of :attr:`sequences` (steps run past the end are forgotten: the cache
        is cut back to ``length - 1`` positions)."""
        if not self.prompt_length < length <= self.length:
            raise ValueError(f"`length` must be in ({self.prompt_length}, {self.length}], got {length}")
        keep = length - 1
        if keep < self._cached:
            self.cache.truncate_(keep, self._cached)
            self._cached = keep
        self.length = length

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(rows={self.rows}, capacity={self.capacity}, "
                f"{'sampling' if self.samples else 'greedy'}, compiled={self.compiled})")


def _last_logits(logits: torch.Tensor) -> torch.Tensor:
    """The last position's logits, ``[rows, vocab]`` float32."""
    last = logits[:, -1, :]
    return last if last.dtype == torch.float32 else last.float()


def shared_static_cache(model: Any, rows: int, capacity: int) -> StaticKVCache:
    """The model's compiled-path static cache of ``rows`` rows and ``capacity`` positions (kept on the model, as
    transformers keeps ``model._cache``: its tensors' addresses are part of the compiled graphs)."""
    from ..cache import make_cache

    parameter = next(iter(model.parameters()))
    key = ("cache", rows, capacity, parameter.dtype, parameter.device)
    store = compiled_store(model)
    cache = store.get(key)
    if cache is None:
        cache = make_cache("static", model, batch_size=rows, max_cache_len=capacity)
        store[key] = cache
    else:  # emptied for the new call (what it held is the last call's, which transformers forgets too)
        cache.truncate_(0, int(cache.get_seq_length()))
    return cache


def _settings(compile_config: Optional[CompileConfig], device: torch.device) -> str:
    return repr(sorted(compile_kwargs(compile_config, device).items(), key=lambda item: item[0]))


def shared_decode_step(model: Any, cache: StaticKVCache, samples: bool,
                       compile_config: Optional[CompileConfig]) -> DecodeStep:
    """The compiled :class:`DecodeStep` of ``model`` over ``cache`` for greedy search or sampling (``samples``)
    and ``compile_config``, made and compiled on first use and kept on the cache (a cache ``generate`` builds is
    kept on the model, one per rows and capacity bucket: :func:`shared_static_cache`)."""
    key = ("step", id(model), samples, _settings(compile_config, cache.device))
    store = compiled_store(cache)
    step = store.get(key)
    if step is None:
        step = store[key] = DecodeStep(model, cache, None).compile(compile_config)
    return step


def _call_model(model: Any, input_ids: torch.Tensor, kwargs: dict) -> Any:
    return model(input_ids=input_ids, return_dict=True, **kwargs)


def shared_model_call(model: Any, cache: StaticKVCache, compile_config: Optional[CompileConfig]) -> Callable:
    """The compiled model call ``(model, input_ids, kwargs) -> outputs`` of ``model`` over ``cache`` for
    ``compile_config`` (what runs when only the model call compiles: transformers' behaviour), made on first use
    and kept on the cache."""
    key = ("model", id(model), _settings(compile_config, cache.device))
    store = compiled_store(cache)
    compiled = store.get(key)
    if compiled is None:
        compiled = store[key] = torch.compile(fresh_function(_call_model),
                                              **compile_kwargs(compile_config, cache.device))
    return compiled
