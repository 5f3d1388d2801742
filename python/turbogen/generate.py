"""``turbogen.generate``: transformers v4.57's ``generate()`` for decoder-only causal LMs and encoder-decoder
models (T5, BART, Whisper-style speech, vision encoder-decoders, ...), built for speed.

What is reproduced exactly (same tokens as transformers for greedy search and beam search, same scores):
the resolution of the generation config (call arguments over a given config over the model's defaults over
global defaults, with the rule that model defaults only fill values the user left at the global default),
input and attention-mask preparation, ``max_length``/``max_new_tokens``/``min_length``/``min_new_tokens``,
logits processors, stopping criteria, padding of finished rows, beam search with its early-stopping rules,
and the model calls themselves (same inputs, positions, cache and ``logits_to_keep``, hence the same
numbers). Multinomial sampling uses turbogen's counter-based sampler instead of ``torch.multinomial`` (same
distribution, reproducible draws: see "Sampling" below).

This module is the facade: it resolves the call (:mod:`turbogen.generation.prepare`), picks the loop
(:mod:`turbogen.generation.decode` for greedy search and sampling, :mod:`turbogen.generation.speculative` for
them with drafts, :mod:`turbogen.generation.beam_search` for the beam methods), all driving the model through a
:class:`~turbogen.generation.runner.ModelRunner`,
and packages the output. Where the model runs on an accelerator and nothing user-supplied could observe
it, the "all rows finished" flag is read ``FINISH_CHECK_LAG`` steps late (per device type) and the extra
steps are discarded, leaving results identical. Only the last position's logits are computed when the
model supports ``logits_to_keep``.

Encoder-decoder models (``model.config.is_encoder_decoder``: text-to-text such as T5 and BART, speech-to-text,
vision-to-text): the encoder runs once (unless ``encoder_outputs`` are given), on the tensor named by the encoder's
main input (``input_ids``, ``input_features``, ``pixel_values``..., given as ``inputs`` or by name; a text encoder
also takes ``inputs_embeds`` instead of ids) and its attention mask (for token ids inferred from padding when not
given, otherwise ones, as 4.57 does); the batch size is that tensor's. Generation then runs on the decoder, whose
prompt is ``decoder_input_ids`` (or an ``input_ids`` keyword when the encoder reads something else) with
``decoder_start_token_id`` (an int, or one per prompt) put in front unless some row starts with it (never for
Whisper and Donut models, as in 4.57), else that start token; the output's sequences are the decoder's. Each
decoder call passes what the model's ``prepare_inputs_for_generation`` would (encoder outputs, encoder mask,
``decoder_*`` inputs), over an ``EncoderDecoderCache`` (``DynamicCache`` pairs, or transformers' ``StaticCache``
pairs for ``cache_implementation="static"``): under 4.57, for a model using the generic preparation without
``decoder_attention_mask``, built directly per step; otherwise through that preparation. Beam reorders skip the
cross-attention cache when its rows of each input are bitwise equal (checked). ``encoder_repetition_penalty`` /
``encoder_no_repeat_ngram_size`` read the encoder's token ids (refused without them). For speech models such as
Whisper the reference is transformers' generic ``GenerationMixin.generate``: ``WhisperForConditionalGeneration``'s
own ``generate`` (language and task tokens, timestamps, long-form audio) is not reproduced. ``decoder_inputs_embeds``
raise ``ValueError`` (4.57 fails there too). Not supported (``UnsupportedByTurbogen``): ``past_key_values``,
``prefill_chunk_size``, other cache kinds, speculative decoding, contrastive search.

KV cache (decoder-only): transformers' ``DynamicCache`` by default; ``cache_implementation="static"`` builds turbogen's
:class:`~turbogen.cache.StaticKVCache` for ``batch * max(num_beams, num_return_sequences)`` rows and
``max_length - 1`` positions (the last token is never fed back; a compiled call: the capacity bucket below),
written in place by ``cache_position``; the
other names of transformers 4.57 build transformers' own caches as it does (:func:`turbogen.cache.make_cache`). Results are those of the dynamic cache. The static cache exists for
``torch.compile`` and CUDA graphs: run eagerly, transformers' models rebuild an explicit mask over every
cache slot at each step, which costs more than the dynamic cache's growth.

Compilation (:mod:`turbogen.generation.compiled`), transformers 4.57's rules: never with ``disable_compile``; only
over turbogen's static cache (``cache_implementation="static"``, or an empty ``StaticKVCache`` as
``past_key_values``); on CUDA always, on other devices when a ``compile_config`` is given (transformers needs its
private ``_compile_all_devices`` there, also honoured). ``compile_config``'s ``backend``, ``mode``, ``options``,
``fullgraph`` and ``dynamic`` are passed to ``torch.compile``. What compiles:

==================================================  ==========================================================
call                                                compiled
==================================================  ==========================================================
greedy / sampling whose processors are the          the whole decode step (:class:`turbogen.DecodeStep`: model
sampler's filters, the penalties on repeated        call, penalties, n-gram ban, fused sampling, padding,
tokens and the n-gram ban, stopping on length /     sequence write, stop flags), one graph, no host sync; the
time / EOS, no streamer, nothing recorded           prefill eager
other greedy / sampling (processors reading the     the model call alone, with fixed-shape inputs
history, user code per step, recorded outputs);     (transformers' behaviour)
beam search and beam sampling
speculative decoding; encoder-decoder models;       eager
models with their own input preparation
==================================================  ==========================================================

A compiled call's static cache has a bucketed capacity (the next power of two ``>= max(64, max_length - 1)``) and
is kept on the model with the compiled step, so later calls with the same rows and bucket never recompile
(whatever the prompt length, ``max_new_tokens`` or sampling values); its ``past_key_values`` is that shared
cache. Results equal the eager run's (greedy token for token, sampling the same draws for the same seed).

Speculative decoding (assisted generation: ``assistant_model``, also with ``tokenizer`` + ``assistant_tokenizer``
for another vocabulary, ``prompt_lookup_num_tokens``, ``assistant_early_exit``), for decoder-only greedy search and
sampling at any batch size: drafts (:mod:`turbogen.generation.candidates`) are verified several at a time and the
output is identical to the same call without them, also when sampling with the same seed (coupled verification:
:func:`turbogen.ops.verify`). The target runs over a ``DynamicCache`` keeping every layer whole (as transformers
does for assisted generation) or turbogen's static cache (``cache_implementation="static"``, which transformers
refuses here); other cache kinds, encoder-decoder models, models with their own ``prepare_inputs_for_generation``,
``output_attentions`` / ``output_hidden_states``, ``inputs_embeds``, user ``position_ids`` and classifier-free
guidance are refused (``UnsupportedByTurbogen``). README.md's "Speculative decoding" has the details.

Sampling: every sequence has its own 64-bit seed, ``seed + row`` where ``seed`` is
``generation_config.seed`` or, if that is ``None``, one number drawn from torch's global RNG per call
(so ``torch.manual_seed`` makes runs reproducible); or, with a list ``seed`` (one per prompt), ``seed[p] + j``
for sequence ``j`` of prompt ``p``, so that a prompt's samples do not depend on the batch it is in. The draw for a sequence's ``n``-th generated token uses
offset ``n`` (:func:`turbogen.ops.sample`, docs/design.md's determinism contract). The temperature / top-k /
top-p / min-p filters are applied by the sampler from per-row parameters (the config's), unless the scores
are recorded (``output_scores``: they are the warpers' output) or a warper, watermark or normalisation must
follow them. Scores that cannot be sampled (NaN, +inf, a row without a finite score) raise
:class:`~turbogen.generation.batch_state.NonFiniteScoresError` (a ``RuntimeError``), as transformers does.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch

from . import _transformers_compat as _compat
from .generation.batch_state import BatchState
from .generation.beam_search import run_beam_search
from .generation.candidates import build_candidates
from .config import GenerationMode
from .generation.constrained_beam import constrained_beam_from_call
from .generation.contrastive import contrastive_from_call
from .generation.dola import dola_from_call
from .generation.custom_generate import CustomGeneratePlan, custom_generate_plan, run_custom_decoding
from .generation.custom_generate import extra_arguments as extra_custom_arguments
from .generation.group_beam import group_beam_from_call
from .generation.synced_gpus import PeerSync, SyncedRunner, check_synced_gpus
from .errors import UnsupportedByTurbogen
from .generation.compiled import (DecodeStep, compile_decision, shared_decode_step, shared_model_call,
                                  whole_step_refusal)
from .generation.decode import FINISH_CHECK_LAG, run_decode_step, run_greedy_or_sample
from .generation.packed_head import packed_heads
from .generation.prepare import PreparedCall, prepare_call
from .generation.record import Record
from .generation.runner import DirectRunner, ModelRunner, make_runner
from .generation.speculative import can_advance_ragged, run_speculative
from .generation.transition_scores import compute_transition_scores
from .processors.build import sampler_filter_params
from .outputs import (GenerateBeamDecoderOnlyOutput, GenerateBeamEncoderDecoderOutput, GenerateDecoderOnlyOutput,
                      GenerateEncoderDecoderOutput)

__all__ = ["FINISH_CHECK_LAG", "compute_transition_scores", "generate"]


def generate(
    model: Any,
    inputs: Optional[Union[torch.Tensor, Sequence[Sequence[int]]]] = None,
    generation_config: Any = None,
    logits_processor: Optional[Sequence[Any]] = None,
    stopping_criteria: Optional[Sequence[Any]] = None,
    prefix_allowed_tokens_fn: Optional[Callable[[int, torch.Tensor], list[int]]] = None,
    streamer: Any = None,
    tokenizer: Any = None,
    **kwargs: Any,
):
    """Generate token sequences with a decoder-only causal LM or an encoder-decoder model, like transformers'
    ``model.generate``.

    Args:
        model: a transformers causal LM (Llama, GPT-2, Qwen2, Mistral, ...) or text encoder-decoder (T5, BART,
            ...: see "Encoder-decoder models" in the module docstring), or any module with the same ``forward``
            keyword interface and a ``config``.
        inputs: the prompt, ``LongTensor [batch, length]`` (left-padded when rows differ in length), or a list
            of token-id lists, which are left-padded with ``pad_token_id``. ``None``: ``input_ids=`` from
            ``kwargs``, else a single ``bos_token_id``.
        generation_config: a :class:`turbogen.GenerationConfig`, a ``transformers.GenerationConfig`` or a dict;
            ``None`` uses the model's ``generation_config``. Model-specific defaults fill every parameter
            left at its global default. These are transformers 4.57's rules, also with transformers 5 installed:
            a 5.x config's unset (``None``) parameters count as left at their global defaults.
        logits_processor: extra processors, merged with those the config defines (a custom processor of the
            same type as a built-in one replaces it).
        stopping_criteria: extra stopping criteria, merged the same way.
        prefix_allowed_tokens_fn: ``fn(batch_id, input_ids) -> allowed token ids`` constraining every step.
        streamer: receives the prompt, then each new token (``put``), then ``end()``; greedy and sampling only.
        tokenizer: needed for ``stop_strings`` and ``token_healing=True`` (the prompt's last token regenerated
            as transformers 4.57's ``heal_tokens`` does: :mod:`turbogen.generation.token_healing`).
        **kwargs: generation parameters overriding the config (``max_new_tokens=...``, ``do_sample=...``,
            ``prefill_chunk_size=...``: the prompt prefilled in chunks, greedy search and sampling) and model
            inputs (``input_ids``, ``attention_mask``, ``past_key_values``, ``inputs_embeds``: the first step
            feeds these embeddings and the output holds only the new tokens unless ``input_ids`` are given too;
            ``position_ids``: the prompt's positions, the last one reused by later steps as transformers 4.57
            does; ``negative_prompt_ids``, ``negative_prompt_attention_mask``, any other ``forward`` argument),
            plus ``use_model_defaults``; ``custom_generate`` (a callable decoding loop, a local directory with
            ``custom_generate/generate.py``, or the Hub repository of a strategy 4.57 moved there, which runs
            natively: :mod:`turbogen.generation.custom_generate`; other Hub ids are refused) and
            ``synced_gpus=True`` (every rank of the torch.distributed group keeps calling the model until all
            have finished; greedy search, sampling, beam search, DoLa: :mod:`turbogen.generation.synced_gpus`).

    Returns:
        ``LongTensor [batch * num_return_sequences, length]`` (prompt included; an encoder-decoder's decoder
        sequences), or with ``return_dict_in_generate=True`` a :class:`~turbogen.outputs.GenerateDecoderOnlyOutput`
        (greedy, sampling) or :class:`~turbogen.outputs.GenerateBeamDecoderOnlyOutput` (beam methods); for an
        encoder-decoder, :class:`~turbogen.outputs.GenerateEncoderDecoderOutput` or
        :class:`~turbogen.outputs.GenerateBeamEncoderDecoderOutput` (with encoder, decoder and cross attentions
        and hidden states when asked for).

    Raises:
        ValueError: for invalid or conflicting arguments, naming them.
        turbogen.UnsupportedByTurbogen: (a ``ValueError``) for valid calls turbogen does not implement (the
            encoder-decoder cases listed above, ``custom_generate`` from the Hub, the speculative cases listed
            in "Speculative decoding", ...); a
            model patched with :func:`turbogen.patch` runs those with its original ``generate`` instead.
        turbogen.NonFiniteScoresError: (a ``RuntimeError``) when sampling meets scores it cannot sample from.
    """
    user_cache = kwargs.get("past_key_values") is not None
    custom = CustomGeneratePlan()
    if kwargs.get("custom_generate") is not None:
        custom = custom_generate_plan(kwargs.pop("custom_generate"))
        kwargs.pop("trust_remote_code", None)  # turbogen runs no remote code
        if custom.whole_call is not None:
            return custom.whole_call(model=model, **_custom_generate_arguments(
                inputs, generation_config, logits_processor, stopping_criteria, prefix_allowed_tokens_fn, streamer,
                tokenizer, kwargs))
    else:
        kwargs.pop("custom_generate", None)
    extra = extra_custom_arguments(custom.decoding_loop, kwargs) if custom.decoding_loop is not None else None
    with torch.no_grad():
        call = prepare_call(model, inputs, generation_config, logits_processor, stopping_criteria,
                            prefix_allowed_tokens_fn, streamer, tokenizer, kwargs,
                            sampler_may_filter=extra is None)
        if extra is not None:
            result = run_custom_decoding(custom.decoding_loop, model, call, extra, streamer)
            if call.config.return_legacy_cache is True and hasattr(getattr(result, "past_key_values", None),
                                                                   "to_legacy_cache"):
                result.past_key_values = result.past_key_values.to_legacy_cache()
            return result
        record = Record(call.config, encoder_decoder=call.encoder_outputs is not None)
        mode = call.config.get_generation_mode()
        custom.check_mode(mode)  # a strategy 4.57 moved to the Hub runs natively: the parameters must select it
        peers = _synced_peers(call, mode)
        # transformers 4.45.2's strategies (4.57 moved them to the Hub), each in its own module; each streams the
        # prompt itself.
        if mode == GenerationMode.CONTRASTIVE_SEARCH:
            result = contrastive_from_call(model, call, record, streamer)
            return _legacy_cache_if_asked(call, _decoder_only_output(call, result.past_key_values, record,
                                                                     result.sequences), user_cache)
        if mode in (GenerationMode.GROUP_BEAM_SEARCH, GenerationMode.CONSTRAINED_BEAM_SEARCH) and streamer is not None:
            raise ValueError("`streamer` cannot be used with beam search (as in transformers 4.45): set `num_beams=1`.")
        if mode == GenerationMode.GROUP_BEAM_SEARCH:
            with packed_heads(model):
                return _legacy_cache_if_asked(call, group_beam_from_call(model, call, record), user_cache)
        if mode == GenerationMode.CONSTRAINED_BEAM_SEARCH:
            with packed_heads(model):
                return _legacy_cache_if_asked(call, constrained_beam_from_call(model, call, record), user_cache)
        if mode == GenerationMode.DOLA_GENERATION:
            result = dola_from_call(model, call, record, streamer, peers)
            return _legacy_cache_if_asked(call, _decoder_only_output(call, result.past_key_values, record,
                                                                     result.sequences), user_cache)
        speculation = call.speculation
        user_code_per_step = (bool(logits_processor) or prefix_allowed_tokens_fn is not None
                              or streamer is not None)
        if not call.is_beam and speculation is None and peers is None:
            step = _compiled_step(model, call, record, user_code_per_step)
            if step is not None:
                batch = BatchState.from_config(call.config, call.input_ids.shape[0], call.input_ids.device,
                                               call.sampler_filters)
                sequences = run_decode_step(step, call.input_ids, call.model_kwargs.get("attention_mask"),
                                            call.processors, call.stopping, batch, call.tokens.pad)
                result = _decoder_only_output(call, step.cache, record, sequences)
                return _legacy_cache_if_asked(call, result, user_cache)
        # Speculation feeds drafts past a row's end: the runner has room for them.
        runner = make_runner(model, call.input_ids, call.model_kwargs, call.cache, call.config.use_cache,
                             call.max_length + (speculation.headroom if speculation is not None else 0), record)
        if peers is not None:
            runner = SyncedRunner(runner, peers)
        # Only now, when nothing can be refused any more (a patched model falls back on a refusal, and its
        # original generate streams the prompt itself).
        if streamer is not None:
            streamer.put(call.input_ids.cpu())
        if call.is_beam:
            result = _beam_search(call, runner, record)
        elif speculation is not None:
            result = _speculative(call, runner, record, streamer)
        else:
            result = _greedy_or_sample(call, runner, record, streamer,
                                       deferrable=call.stopping.rows_are_pure and not user_code_per_step)
        if peers is not None:  # the other ranks may still be generating: keep their forwards company
            peers.drain(lambda: model(input_ids=call.input_ids[:, -1:], use_cache=False))
    return _legacy_cache_if_asked(call, result, user_cache)


def _synced_peers(call: PreparedCall, mode: GenerationMode) -> Optional[PeerSync]:
    """The group vote of ``synced_gpus=True`` (None without it); refuses the loops it is not wired into."""
    if not call.synced_gpus:
        return None
    check_synced_gpus()
    served = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE, GenerationMode.BEAM_SEARCH,
              GenerationMode.BEAM_SAMPLE, GenerationMode.DOLA_GENERATION)
    if mode not in served or call.encoder_outputs is not None:
        what = "an encoder-decoder model" if call.encoder_outputs is not None else mode.value
        raise UnsupportedByTurbogen(f"`synced_gpus=True` with {what} is not supported by turbogen.generate "
                                    "(greedy search, sampling, beam search and DoLa of decoder-only models are).",
                                    reason=f"synced_gpus with {what}")
    return PeerSync(call.input_ids.device)


# The named arguments of transformers 4.57's generate() that a `custom_generate` directory's generate() receives
# (besides `model` and the other keyword arguments), in its order.
_CUSTOM_GENERATE_NAMED = ("synced_gpus", "assistant_model", "negative_prompt_ids", "negative_prompt_attention_mask",
                          "use_model_defaults")


def _custom_generate_arguments(inputs, generation_config, logits_processor, stopping_criteria,
                               prefix_allowed_tokens_fn, streamer, tokenizer, kwargs: dict) -> dict:
    """Every argument of this call, as transformers 4.57 hands them to a ``custom_generate`` directory's
    ``generate``: its named parameters (``None`` when not given), then the keyword arguments."""
    arguments = dict(inputs=inputs, generation_config=generation_config, logits_processor=logits_processor,
                     stopping_criteria=stopping_criteria, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)
    rest = dict(kwargs)
    for name in _CUSTOM_GENERATE_NAMED[:2]:
        arguments[name] = rest.pop(name, None)
    arguments["streamer"] = streamer
    for name in _CUSTOM_GENERATE_NAMED[2:]:
        arguments[name] = rest.pop(name, None)
    if tokenizer is not None:
        rest["tokenizer"] = tokenizer
    arguments.update(rest)
    return arguments


def _legacy_cache_if_asked(call: PreparedCall, result: Any, user_cache: bool = False) -> Any:
    """``return_legacy_cache``; under transformers 4.45 also its default conversion of a generate-made
    ``DynamicCache`` (``_compat.returns_legacy_cache``)."""
    if isinstance(result, (GenerateDecoderOnlyOutput, GenerateBeamDecoderOnlyOutput)) and \
            _compat.returns_legacy_cache(call.config.return_legacy_cache, user_cache, result.past_key_values):
        result.past_key_values = _compat.legacy_cache(result.past_key_values)
    elif isinstance(result, (GenerateEncoderDecoderOutput, GenerateBeamEncoderDecoderOutput)) and \
            call.config.return_legacy_cache is True and hasattr(result.past_key_values, "to_legacy_cache"):
        # 4.57 converts an EncoderDecoderCache too: per layer, self-attention keys and values, then cross-attention's.
        result.past_key_values = result.past_key_values.to_legacy_cache()
    return result


def _records_steps(record: Record) -> bool:
    return record.wants_scores or record.wants_logits or record.wants_attentions or record.wants_hidden_states


def _compiled_step(model: Any, call: PreparedCall, record: Record, user_code_per_step: bool) -> Optional[DecodeStep]:
    """The compiled :class:`~turbogen.DecodeStep` that runs this greedy/sampling call whole, or None (the call
    runs through a runner: eagerly, or with the model call alone compiled). User processors, a prefix function and
    streamers run per step: never inside the compiled step."""
    cache = call.cache
    compile_config = compile_decision(call.config, cache, call.input_ids.device) if cache is not None else None
    if compile_config is None or user_code_per_step or _records_steps(record):
        return None
    if whole_step_refusal(model, call.processors, call.stopping, call.model_kwargs, call.config) is not None:
        return None
    if cache.batch_size != call.input_ids.shape[0] or cache.max_cache_len < call.max_length - 1:
        return None
    if int(cache.get_seq_length()) != 0:  # a given cache already holding positions: the runner continues it
        return None
    return shared_decode_step(model, cache, bool(call.config.do_sample), compile_config)


def _greedy_or_sample(call: PreparedCall, runner: ModelRunner, record: Record, streamer: Any, deferrable: bool):
    config = call.config
    # The whole step cannot compile (see `_compiled_step`): the model call alone may, as in transformers.
    _compile_model_call(call, runner)
    batch = BatchState.from_config(config, call.input_ids.shape[0], call.input_ids.device, call.sampler_filters)
    sequences = run_greedy_or_sample(runner, call.input_ids, batch, call.processors, call.stopping, record,
                                     call.tokens.pad, call.max_length, streamer, deferrable)
    return _decoder_only_output(call, runner.past_key_values, record, sequences)


def _decoder_only_output(call: PreparedCall, past_key_values: Any, record: Record, sequences: torch.Tensor):
    """The sequences, or with ``return_dict_in_generate`` the non-beam output class."""
    config = call.config
    if not config.return_dict_in_generate:
        return sequences
    output_class = GenerateEncoderDecoderOutput if call.encoder_outputs is not None else GenerateDecoderOnlyOutput
    return output_class(
        sequences=sequences,
        scores=record.collected_scores,
        logits=record.collected_logits,
        **_attention_fields(call, record),
        past_key_values=past_key_values,
    )


def _speculative(call: PreparedCall, runner: ModelRunner, record: Record, streamer: Any):
    config = call.config
    rows = call.input_ids.shape[0]
    batch = BatchState.from_config(config, rows, call.input_ids.device, call.sampler_filters)
    filters = call.sampler_filters or sampler_filter_params(config)
    candidates = build_candidates(call.speculation, call.input_ids, call.model_kwargs.get("attention_mask"),
                                  call.max_length, call.tokens.eos, batch.seeds, filters)
    # The returned `past_key_values` (return_dict_in_generate) is laid out as plain decoding leaves it only
    # when the rows advanced together (ragged rows leave masked holes in the cache).
    models = (getattr(runner, "model", None), call.speculation.assistant_model)
    ragged = not config.return_dict_in_generate and can_advance_ragged(
        runner, call.processors, call.stopping, record, streamer, rows, models=models)
    # The target's verification and the draft's forwards compare with plain decoding within float tolerance
    # anyway (a k + 1 position product rounds differently from a one-position one): the faster head serves both.
    with packed_heads(*models):
        sequences = run_speculative(runner, call.input_ids, batch, call.processors, call.stopping, record,
                                    call.tokens.pad, call.max_length, streamer, candidates, ragged=ragged,
                                    draft_limit=call.speculation.draft_limit)
    return _decoder_only_output(call, runner.past_key_values, record, sequences)


def _compile_model_call(call: PreparedCall, runner: ModelRunner) -> None:
    """Compile the runner's one-token model calls when this call compiles (the model call alone, as in
    transformers: the loop around it stays eager)."""
    cache = runner.past_key_values
    compile_config = compile_decision(call.config, cache, call.input_ids.device) if cache is not None else None
    if compile_config is not None and isinstance(runner, DirectRunner):
        runner.compile_decode(shared_model_call(runner.model, cache, compile_config))


def _beam_search(call: PreparedCall, runner: ModelRunner, record: Record):
    config = call.config
    _compile_model_call(call, runner)
    state = run_beam_search(runner, call.input_ids, config, call.processors, call.stopping, record, call.tokens,
                            call.max_length)
    sequences, sequence_scores, beam_indices = state.result(config.num_return_sequences)
    # transformers 4.45: a hypothesis that ended early is followed by EOS then padding (4.57: its EOS repeated).
    sequences = _compat.beam_sequences_as_installed(sequences, beam_indices, call.prompt_length, call.tokens.pad,
                                                    call.tokens.eos)
    if not config.return_dict_in_generate:
        return sequences
    output_class = (GenerateBeamEncoderDecoderOutput if call.encoder_outputs is not None
                    else GenerateBeamDecoderOnlyOutput)
    return output_class(
        sequences=sequences,
        sequences_scores=sequence_scores if config.output_scores else None,
        scores=record.collected_scores,
        logits=record.collected_logits,
        # (4.45: as wide as the sequences, and only with output_scores)
        beam_indices=_compat.beam_indices_as_installed(beam_indices, sequences.shape[1], bool(config.output_scores)),
        **_attention_fields(call, record),
        past_key_values=runner.past_key_values,
    )


def _attention_fields(call: PreparedCall, record: Record) -> dict:
    """The recorded attentions and hidden states, under a decoder-only output's field names or, with an
    encoder, an encoder-decoder output's (the encoder's as well as the decoder's)."""
    encoder = call.encoder_outputs
    if encoder is None:
        return {"attentions": record.attentions, "hidden_states": record.hidden_states}
    return {
        "encoder_attentions": encoder.get("attentions") if record.wants_attentions else None,
        "encoder_hidden_states": encoder.get("hidden_states") if record.wants_hidden_states else None,
        "decoder_attentions": record.attentions,
        "cross_attentions": record.cross_attentions,
        "decoder_hidden_states": record.hidden_states,
    }
