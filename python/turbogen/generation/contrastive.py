"""Contrastive search (``penalty_alpha > 0`` with ``top_k > 1`` and ``do_sample=False``), natively.

transformers 4.45.2's ``GenerationMixin._contrastive_search`` is the oracle (4.57 moved the strategy to a Hub
repository): the same tokens, scores, logits, hidden states, attentions and returned cache. One step:

1. the logits of the next position (the selected candidate's, from the previous step; the prompt's last
   position at the start) go through the logits processors; their softmax gives the ``top_k`` candidates and
   their probabilities (the *model confidence*);
2. every candidate is fed to the model, all ``top_k`` of a row in one forward over the row's cache repeated
   ``top_k`` times (the batched default), or one candidate at a time over the row's cache (``low_memory``);
3. the *degeneration penalty* of a candidate is the largest cosine similarity between its last hidden state and
   the last hidden states of the row's context (padding excluded); the candidate maximising
   ``(1 - alpha) * confidence - alpha * penalty`` is chosen;
4. the chosen candidate's cache, hidden state and logits are kept: its logits are the next step's, so each
   step costs one forward (``low_memory``: ``top_k + 1`` forwards of one row each).

Only the chosen candidates' logits are ever read, so the candidates' forward skips the LM head (a forward
pre-hook hands it zero positions) and the head then runs on the ``rows`` chosen last hidden states instead of
``rows * top_k``: on a model with a wide vocabulary the head is most of a small model's forward. This applies when
the model's logits are its output embeddings applied to its last hidden state, nothing after (checked on the
prompt's logits, and refused for configs that scale or cap logits after the head: :class:`ChosenRowsHead`);
other models compute every candidate's logits. On CPUs that head is a oneDNN product over a packed copy of its
weight where it applies (:class:`~turbogen.generation.packed_head.PackedHead`: 2.6x BLAS's at one row, 3.5x at
eight for the tiny Llama's head). Both round differently from the whole head's BLAS product (another summation
order), so scores and logits equal 4.45.2's within float tolerance, the tokens exactly. The hook lives
on the model's head module for the duration of each candidate forward: another thread calling the same model
object during a contrastive search would get empty logits.

The model is called directly with a transformers cache (a ``DynamicCache``, or the legacy tuples of a model that
only returns those, such as GPT-2 under 4.45): contrastive search needs the model's hidden states and a cache it
can repeat and select rows of, which turbogen's :class:`~turbogen.generation.runner.ModelRunner` does not
expose. The inputs are those transformers' ``prepare_inputs_for_generation`` builds for these models
(positions from the attention mask, ``cache_position``, logits of the last position only), so each forward
computes exactly what the oracle's computes.

``low_memory`` with a batch of several rows: 4.45.2 stacks the candidates' outputs candidate-major while it ranks
them row-major, and then feeds ``rows * rows`` tokens for the chosen ones, so it fails (or ranks another row's
candidates); turbogen ranks each row's own candidates, giving the batched default's tokens. With one row both
orders agree, and the tokens are 4.45.2's.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from typing import Any, Optional

import torch

from .. import _transformers_compat as _compat
from ..errors import UnsupportedByTurbogen
from ..processors.stages import LogitsStages
from ..stopping import StoppingPlan
from .packed_head import PackedHead
from .record import Record

__all__ = ["ChosenRowsHead", "ContrastiveResult", "ModelCaller", "contrastive_from_call", "contrastive_ranking",
           "run_contrastive_search"]


class ContrastiveResult:
    """What :func:`run_contrastive_search` returns: the ``[rows, length]`` sequences (prompt included) and the
    cache as 4.45.2 returns it (without the last token's entry; ``None`` if the model keeps no cache)."""

    def __init__(self, sequences: torch.Tensor, past_key_values: Any):
        self.sequences = sequences
        self.past_key_values = past_key_values


def contrastive_ranking(context_hidden: torch.Tensor, next_hidden: torch.Tensor, top_k_probs: torch.Tensor,
                        context_mask: torch.Tensor, alpha: float, top_k: int) -> torch.Tensor:
    """The index (in ``0 .. top_k - 1``) of the chosen candidate of every row: 4.45.2's ``_ranking_fast``.

    Args:
        context_hidden: ``[rows * top_k, context, hidden]``, each row's context repeated per candidate.
        next_hidden: ``[rows * top_k, 1, hidden]``, the candidates' last hidden states, row-major.
        top_k_probs: ``[rows, top_k]``, the candidates' probabilities.
        context_mask: ``[rows * top_k, context]``, 0 at padding (never similar), 1 elsewhere.
    """
    norm_context = context_hidden / context_hidden.norm(dim=2, keepdim=True)
    norm_next = next_hidden / next_hidden.norm(dim=2, keepdim=True)
    cosine = torch.matmul(norm_context, norm_next.transpose(1, 2)).squeeze(-1)  # [rows * top_k, context]
    mask = context_mask.to(dtype=cosine.dtype)
    cosine = cosine + (1 - mask) * torch.finfo(cosine.dtype).min
    penalty, _ = torch.max(cosine, dim=-1)
    score = (1.0 - alpha) * top_k_probs.view(-1) - alpha * penalty
    return torch.stack(torch.split(score, top_k)).max(dim=-1)[1]


def _normalized(hidden: torch.Tensor) -> torch.Tensor:
    """Each vector of ``hidden`` (``[..., hidden]``) divided by its norm."""
    return hidden / hidden.norm(dim=-1, keepdim=True)


def _rank_candidates(norm_context: torch.Tensor, next_hidden: torch.Tensor, top_k_probs: torch.Tensor,
                     context_mask: torch.Tensor, alpha: float, top_k: int) -> torch.Tensor:
    """:func:`contrastive_ranking` from each row's context normalised once (``norm_context``: ``[rows, context,
    hidden]``, kept from step to step: a position's vector never changes) and its ``[rows, context]`` mask, without
    repeating either per candidate: the same operations on the same values (the cosines are the same batched
    matrix products, broadcast over the candidates), hence the same choice."""
    rows, _, hidden = norm_context.shape
    norm_next = _normalized(next_hidden)  # [rows * top_k, 1, hidden]
    cosine = torch.matmul(norm_context.unsqueeze(1), norm_next.reshape(rows, top_k, hidden, 1)).squeeze(-1)
    mask = context_mask.to(dtype=cosine.dtype)
    cosine = cosine + ((1 - mask) * torch.finfo(cosine.dtype).min).unsqueeze(1)  # [rows, top_k, context]
    penalty = cosine.max(dim=-1).values
    score = (1.0 - alpha) * top_k_probs - alpha * penalty
    return score.max(dim=-1)[1]


# --------------------------------------------------------------------------------------------------------
# The cache: a transformers Cache (updated in place by the model) or legacy tuples (returned anew)
# --------------------------------------------------------------------------------------------------------


def _is_cache_object(past: Any) -> bool:
    return past is not None and not isinstance(past, (tuple, list))


def _repeat_rows(past: Any, times: int) -> Any:
    if _is_cache_object(past):
        _compat.cache_batch_repeat_interleave(past, times)
        return past
    return tuple(tuple(item.repeat_interleave(times, dim=0) for item in layer) for layer in past)


def _select_rows(past: Any, index: torch.Tensor) -> Any:
    if _is_cache_object(past):
        _compat.cache_batch_select_indices(past, index)
        return past
    return tuple(tuple(item[index, ...] for item in layer) for layer in past)


def _keep_chosen_candidate(past: Any, chosen: torch.Tensor, rows: int, top_k: int) -> Any:
    """In a cache of ``rows * top_k`` rows (each row's ``top_k`` copies side by side) whose last position holds each
    copy's own candidate, write the chosen candidate's last position (flat row ``chosen[r]``) into every copy of
    row ``r``, in place: the copies are then equal again, and equal to the chosen row (what selecting that row
    and repeating it would give, without copying the whole cache twice)."""

    def overwrite(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dim() == 4 and tensor.shape[0] == rows * top_k:
            newest = tensor[chosen, :, -1:, :]  # [rows, heads, 1, head_dim]
            tensor.unflatten(0, (rows, top_k))[:, :, :, -1:, :] = newest[:, None]
        return tensor

    if _is_cache_object(past):
        _compat.replace_dynamic_cache_tensors(past, overwrite)
        return past
    return tuple(tuple(overwrite(item) for item in layer) for layer in past)


def _drop_last_position(past: Any, length: int) -> Any:
    """``past`` (``length`` positions) without its last one."""
    if _is_cache_object(past):
        _compat.crop_cache(past, length - 1, current=length)
        return past
    return tuple(tuple(item[..., :-1, :] for item in layer) for layer in past)


# Config attributes of models that transform the head's output (scale or cap the logits) inside ``forward``:
# their logits are not the head applied to the last hidden state. (A check on the prompt's logits cannot tell a
# cap from the identity where logits are small.)
_LOGIT_TRANSFORMS = {"final_logit_softcapping": None, "logit_scale": 1.0, "logits_scaling": 1.0}


class ChosenRowsHead:
    """The LM head of a model whose logits are ``head(last hidden state)``, run on the chosen candidates only (see
    the module docstring): :meth:`skipped` makes a forward skip it, :meth:`__call__` computes the logits of given
    last hidden states."""

    def __init__(self, head: torch.nn.Module):
        self._head = head
        self._product = PackedHead.for_module(head) or head

    @classmethod
    def for_model(cls, model: Any, prompt_outputs: Any) -> Optional["ChosenRowsHead"]:
        """The model's head when its prompt logits (``prompt_outputs``, with hidden states) are the head applied to
        the last hidden state, else None."""
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        if any(getattr(config, name, neutral) not in (None, neutral) for name, neutral in _LOGIT_TRANSFORMS.items()):
            return None
        try:
            head = model.get_output_embeddings()
        except (AttributeError, NotImplementedError):
            return None
        logits, hidden = prompt_outputs.logits, prompt_outputs.hidden_states
        if not isinstance(head, torch.nn.Module) or hidden is None or logits is None or logits.dim() != 3:
            return None
        last_hidden = hidden[-1]
        if last_hidden.dim() != 3:
            return None
        recomputed = head(last_hidden[:, -1:, :])
        expected = logits[:, -1:, :]
        if recomputed.shape != expected.shape or recomputed.dtype != expected.dtype:
            return None
        scale = float(expected.abs().max()) if expected.numel() else 0.0
        if not torch.allclose(recomputed, expected, rtol=1e-5, atol=1e-6 * max(scale, 1.0)):
            return None
        return cls(head)

    @contextlib.contextmanager
    def skipped(self):
        """Within: every call of the head gets zero positions (``[rows, 0, hidden]``), so the model's logits come
        out ``[rows, 0, vocab]`` at no cost."""

        def no_positions(module, args):
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 3:
                return (args[0][:, :0, :],) + tuple(args[1:])
            return None

        handle = self._head.register_forward_pre_hook(no_positions)
        try:
            yield
        finally:
            handle.remove()

    def __call__(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """``[rows, vocab]`` float32 logits of ``last_hidden`` (``[rows, 1, hidden]``)."""
        return self._product(last_hidden)[:, -1, :].float()


# --------------------------------------------------------------------------------------------------------
# The model call
# --------------------------------------------------------------------------------------------------------


class ModelCaller:
    """Calls a decoder-only model as transformers' decoding loop does after ``prepare_inputs_for_generation``:
    positions from the attention mask (``cumsum - 1``, 1 at padding), ``cache_position`` and logits of the last
    position only where ``forward`` takes them, hidden states always."""

    def __init__(self, model: Any, output_attentions: bool, model_kwargs: dict, strategy: str):
        """``model_kwargs``: the call's other model inputs (flags only: tensors and ``prefill_chunk_size`` are
        refused, naming ``strategy``)."""
        self.model = model
        parameters = inspect.signature(model.forward).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self.takes = lambda name: name in parameters or (takes_any and name == "cache_position")
        self.output_attentions = output_attentions
        self.extra = {}
        for name in ("num_logits_to_keep", "logits_to_keep"):
            if name in parameters:
                self.extra[name] = 1
        ignored = {"attention_mask", "past_key_values", "use_cache", "cache_position", "position_ids",
                   "output_attentions", "output_hidden_states", "return_dict", "num_logits_to_keep",
                   "logits_to_keep"}
        for name, value in model_kwargs.items():
            if name in ignored or value is None:
                continue
            if name in ("prefill_chunk_size", "inputs_embeds"):
                raise UnsupportedByTurbogen(f"{strategy} with `{name}` is not supported by turbogen.generate.",
                                            reason=f"{strategy} with `{name}`")
            if isinstance(value, torch.Tensor):
                raise UnsupportedByTurbogen(f"{strategy} with the model input `{name}` is not supported by "
                                            "turbogen.generate.", reason=f"{strategy} with `{name}`")
            self.extra[name] = value

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: Any, cached: int,
                 hidden_states: bool = True, attentions: Optional[bool] = None) -> Any:
        """One forward of ``input_ids`` (``[rows, new]``) after ``cached`` positions of ``past``;
        ``attention_mask`` covers the cached and the new positions."""
        new = input_ids.shape[1]
        arguments = dict(self.extra)
        arguments.update(input_ids=input_ids, past_key_values=past, use_cache=True, return_dict=True,
                         output_hidden_states=hidden_states,
                         output_attentions=self.output_attentions if attentions is None else attentions)
        if self.takes("attention_mask"):
            arguments["attention_mask"] = attention_mask
        if self.takes("position_ids"):
            positions = _compat.position_ids_from_attention_mask(attention_mask)
            arguments["position_ids"] = positions[:, -new:].clone(memory_format=torch.contiguous_format)
        if self.takes("cache_position"):
            arguments["cache_position"] = torch.arange(cached, cached + new, device=input_ids.device)
        return self.model(**arguments)


def _stack_candidate_outputs(outputs: list, rows: int, top_k: int) -> types.SimpleNamespace:
    """The per-candidate outputs of the sequential mode (``top_k`` outputs of ``rows`` rows each) as one output
    of ``rows * top_k`` rows, row-major (the batched mode's layout)."""

    def interleave(tensors):
        stacked = torch.stack(list(tensors), dim=1)  # [rows, top_k, ...]
        return stacked.reshape(rows * top_k, *stacked.shape[2:])

    logits = interleave(o.logits for o in outputs)
    hidden = tuple(interleave(layer) for layer in zip(*(o.hidden_states for o in outputs)))
    attentions = None
    if outputs[0].attentions is not None:
        attentions = tuple(interleave(layer) for layer in zip(*(o.attentions for o in outputs)))
    return types.SimpleNamespace(logits=logits, hidden_states=hidden, attentions=attentions)



def run_contrastive_search(model: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                           past_key_values: Any, processors: Any, stopping: StoppingPlan, record: Record,
                           pad_token: Optional[torch.Tensor], penalty_alpha: float, top_k: int,
                           low_memory: bool = False, streamer: Any = None,
                           model_kwargs: Optional[dict] = None, return_dict: bool = False) -> ContrastiveResult:
    """Contrastive search from ``input_ids`` (``[rows, prompt_length]``, left-padded) until ``stopping`` ends it.

    Args:
        model: a decoder-only transformers causal LM.
        attention_mask: ``[rows, prompt_length]`` (``None``: no padding).
        past_key_values: an empty transformers ``DynamicCache``, or ``None`` (the model makes its own cache:
            a ``DynamicCache``, or legacy tuples).
        processors: the logits processors (4.45.2 applies no warper: ``top_k`` selects the candidates).
        stopping: the stopping criteria; finished rows get ``pad_token`` when a criterion has an
            ``eos_token_id``.
        record: collects the scores, logits, attentions and hidden states ``return_dict_in_generate`` asks for.
        penalty_alpha: the weight of the degeneration penalty (``0 < penalty_alpha``).
        top_k: candidates per step (``> 1``).
        low_memory: feed the candidates one at a time (``top_k + 1`` forwards of ``rows`` rows a step) instead
            of ``top_k`` at once.
        model_kwargs: other model inputs (non-tensor flags only); tensors are refused.
        return_dict: the cache is returned (``return_dict_in_generate``): its last position is dropped, as
            4.45.2 does then (and only then).

    Returns:
        a :class:`ContrastiveResult`.
    """
    if _compat.is_encoder_decoder_model(model):
        raise UnsupportedByTurbogen("contrastive search is not supported for encoder-decoder models by "
                                    "turbogen.generate.", reason="contrastive search with an encoder-decoder model")
    if past_key_values is not None and (not _compat.is_dynamic_cache(past_key_values)
                                        or int(past_key_values.get_seq_length()) != 0):
        raise UnsupportedByTurbogen("contrastive search needs an empty DynamicCache (the default cache): "
                                    f"got {type(past_key_values).__name__}.",
                                    reason="contrastive search with another cache")
    if low_memory and past_key_values is not None and not _compat.can_crop_cache(past_key_values):
        raise UnsupportedByTurbogen("contrastive search with `low_memory=True` needs a cache it can crop back "
                                    "after each candidate (a sliding-window cache cannot once its window is full).",
                                    reason="low_memory contrastive search with an uncroppable cache")
    rows, prompt_length = input_ids.shape
    device = input_ids.device
    if stopping.pads_finished_rows and pad_token is None:
        raise ValueError("Finished rows must be padded but neither `pad_token_id` nor `eos_token_id` is set.")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attention_mask = attention_mask.long()
    call = ModelCaller(model, record.wants_attentions, model_kwargs or {}, "contrastive search")
    stages = LogitsStages.from_processors(list(processors), input_ids) if processors else None
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    context_mask = attention_mask
    sequences = input_ids

    # The prompt: its last hidden states are the first context, its last logits the first candidates'.
    outputs = call(sequences, attention_mask, past_key_values, cached=0)
    past = outputs.past_key_values
    if past is None:
        raise ValueError(f"{type(model).__name__} does not support caching and therefore can't be used for "
                         "contrastive search.")
    norm_context = _normalized(outputs.hidden_states[-1])
    next_logits = outputs.logits[:, -1, :].clone().float()
    head = ChosenRowsHead.for_model(model, outputs)
    skipping_head = head.skipped if head is not None else contextlib.nullcontext
    step_outputs = outputs
    del outputs
    if not low_memory:
        # The batched mode keeps every row's cache repeated per candidate for the whole run: after a step only the
        # newest position differs between the copies, and `_keep_chosen_candidate` makes them equal again. (4.45.2
        # repeats the cache before each step's candidate forward and selects the chosen rows after it: two
        # copies of the whole cache a step, for the same values.)
        past = _repeat_rows(past, top_k)
        candidate_mask = attention_mask.repeat_interleave(top_k, dim=0)
    while True:
        length = sequences.shape[1]
        mask_with_candidate = torch.cat([attention_mask, attention_mask.new_ones((rows, 1))], dim=-1)
        scores = stages.apply(sequences, next_logits) if stages is not None else next_logits
        probs = torch.nn.functional.softmax(scores, dim=-1)
        top_k_probs, top_k_ids = torch.topk(probs, dim=-1, k=top_k)
        record.logits(next_logits)
        record.scores(scores)
        record.model_outputs(step_outputs)
        del step_outputs

        if low_memory:
            each = []
            for i in range(top_k):
                with skipping_head():
                    output = call(top_k_ids[:, i].view(-1, 1), mask_with_candidate, past, cached=length)
                if _is_cache_object(past):
                    _drop_last_position(past, length + 1)
                each.append(output)
            outputs = _stack_candidate_outputs(each, rows, top_k)
            del each
        else:
            candidate_mask = torch.cat([candidate_mask, candidate_mask.new_ones((rows * top_k, 1))], dim=-1)
            with skipping_head():
                outputs = call(top_k_ids.view(-1, 1), candidate_mask, past, cached=length)

        next_hidden = outputs.hidden_states[-1]
        selected = _rank_candidates(norm_context, next_hidden, top_k_probs, context_mask, penalty_alpha, top_k)
        context_mask = mask_with_candidate
        selected = selected.to("cpu")
        tokens = top_k_ids[range(rows), selected]
        chosen_rows = selected + torch.arange(rows) * top_k  # flat indices into the rows * top_k candidates
        norm_context = torch.cat([norm_context, _normalized(next_hidden[chosen_rows])], dim=1)
        layers_hidden = None
        if record.wants_hidden_states:
            layers_hidden = tuple(layer[chosen_rows] for layer in outputs.hidden_states)
        layers_attentions = None
        if record.wants_attentions and outputs.attentions is not None:
            layers_attentions = tuple(layer[chosen_rows] for layer in outputs.attentions)
        if low_memory:
            with skipping_head():  # (its logits are the chosen candidate's, already known)
                rerun = call(tokens.view(-1, 1), mask_with_candidate, past, cached=length, hidden_states=False,
                             attentions=False)
            past = rerun.past_key_values
            del rerun
        else:
            past = _keep_chosen_candidate(outputs.past_key_values, chosen_rows, rows, top_k)
        if outputs.logits.shape[1] == 0:  # the head was skipped: run it on the chosen candidates only
            next_logits = head(next_hidden[chosen_rows])
        else:
            next_logits = outputs.logits[chosen_rows, -1, :].float()
        step_outputs = types.SimpleNamespace(hidden_states=layers_hidden, attentions=layers_attentions or None)
        del outputs

        tokens = tokens.to(device)
        if stopping.pads_finished_rows:
            tokens = torch.where(unfinished, tokens, pad_token.to(device))
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        attention_mask = mask_with_candidate
        if stages is not None:
            stages.accept(tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())
        done = stopping.rows_done(sequences, record.collected_scores)
        if done is not None:
            unfinished = unfinished & ~done
        if stopping.stops_all(sequences.shape[1]) or not bool(unfinished.any()):
            break
    if streamer is not None:
        streamer.end()
    if return_dict:
        if not low_memory:  # one copy of each row's (equal) copies
            past = _select_rows(past, torch.arange(rows, device=device) * top_k)
        # The cache holds the last token too (looked ahead); 4.45.2 returns it as the other loops leave it.
        past = _drop_last_position(past, sequences.shape[1])
    return ContrastiveResult(sequences, past)


def contrastive_from_call(model: Any, call: Any, record: Record, streamer: Any = None) -> ContrastiveResult:
    """Contrastive search for a resolved :func:`turbogen.generate` call (a
    :class:`~turbogen.generation.prepare.PreparedCall` whose mode is contrastive search): the sequences and the
    cache as 4.45.2 returns them; scores, logits, attentions and hidden states go to ``record``, and
    :func:`turbogen.generate` packages the output."""
    config = call.config
    if call.encoder_outputs is not None:
        raise UnsupportedByTurbogen("contrastive search is not supported for encoder-decoder models by "
                                    "turbogen.generate.", reason="contrastive search with an encoder-decoder model")
    if config.use_cache is False:
        raise ValueError("Contrastive search requires `use_cache=True`")
    model_kwargs = dict(call.model_kwargs)
    attention_mask = model_kwargs.pop("attention_mask", None)
    if model_kwargs.get("inputs_embeds") is not None:
        raise UnsupportedByTurbogen("contrastive search from `inputs_embeds` is not supported by turbogen.generate.",
                                    reason="contrastive search with inputs_embeds")
    if streamer is not None:
        streamer.put(call.input_ids.cpu())
    result = run_contrastive_search(
        model, call.input_ids, attention_mask, call.cache, call.processors, call.stopping, record, call.tokens.pad,
        penalty_alpha=float(config.penalty_alpha), top_k=int(config.top_k), low_memory=bool(config.low_memory),
        streamer=streamer, model_kwargs=model_kwargs, return_dict=bool(config.return_dict_in_generate))
    return result
