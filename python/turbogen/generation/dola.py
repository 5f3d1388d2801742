"""DoLa decoding (``dola_layers``: "Decoding by Contrasting Layers"), natively.

transformers 4.45.2's ``GenerationMixin._dola_decoding`` is the oracle (4.57 moved the strategy to a Hub
repository): the same tokens, scores, logits, hidden states, attentions and cache for greedy search; sampling
draws with turbogen's own sampler (the seed contract of :mod:`turbogen.generate`), the same draws its plain
sampling would make from the same processed scores. One step:

1. one forward of the new token(s) with every layer's hidden states; the *mature* logits are the model's own
   (its last layer, through its final norm and head), the *premature* logits of each candidate layer ``l`` are
   the output embeddings (``lm_head``) applied to hidden state ``l`` of the last position (no final norm);
2. with one candidate layer it is the premature layer; with several, the one whose next-token distribution is
   furthest from the mature one by Jensen-Shannon divergence, averaged over the batch (one layer for all rows,
   as 4.45.2 chooses);
3. *relative-top filter*: in log-softmax space, every token more than ``log(0.1)`` below the mature maximum
   gets ``-inf`` (mature) and ``-1e-3`` (premature); the step's logits are mature minus premature;
4. the logits processors turn them into scores; the token is their argmax (greedy) or a draw (sampling).

The candidate layers (``N`` = the model's number of layers; layer 0 is the embeddings' output, skipped when the
output embeddings are tied to them, where it would be an identity: the start is 2, or 1 for a 2-layer model):
``"low"`` = every second layer from the start up to ``N // 2`` (up to 20 when ``N > 40``), ``"high"`` = every
second layer from ``N // 2`` (from ``N - 20`` when ``N > 40``) below ``N``; a list = its entries below ``N``.
transformers recommends ``repetition_penalty=1.2`` with DoLa; it is an ordinary processor here.

The model is called directly as contrastive search calls it (:class:`~turbogen.generation.contrastive.ModelCaller`:
the inputs transformers' ``prepare_inputs_for_generation`` builds, every hidden state, logits of the last
position), over a ``DynamicCache`` or the legacy tuples of a model that only returns those (GPT-2 under 4.45);
``use_cache=False`` feeds the whole sequence every step.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .. import _transformers_compat as _compat
from ..errors import UnsupportedByTurbogen
from ..processors.stages import LogitsStages
from ..stopping import StoppingPlan
from .batch_state import BatchState, raise_non_finite_scores
from .contrastive import ModelCaller
from .record import Record
from .synced_gpus import PeerSync

__all__ = ["DolaResult", "dola_candidate_layers", "dola_contrast_logits", "dola_from_call", "relative_top_filter",
           "run_dola"]

# The relative-top filter's threshold, below the mature log-probability maximum, and the premature log-probability
# given to the filtered tokens (so that mature - premature stays -inf there).
RELATIVE_TOP = 0.1
PREMATURE_FILTER_VALUE = -1e-3


class DolaResult:
    """What :func:`run_dola` returns: the ``[rows, length]`` sequences (prompt included) and the cache (``None``
    without one)."""

    def __init__(self, sequences: torch.Tensor, past_key_values: Any):
        self.sequences = sequences
        self.past_key_values = past_key_values


def dola_candidate_layers(dola_layers: Union[str, Sequence[int]], num_layers: int, tied_embeddings: bool) -> list[int]:
    """The premature layers DoLa contrasts with the last one (see the module docstring).

    Raises:
        ValueError: ``dola_layers`` is neither ``"low"``, ``"high"`` nor a list of ints.
    """
    if not tied_embeddings:
        start = 0
    elif num_layers > 2:
        start = 2
    elif num_layers == 2:
        start = 1
    else:
        start = 0
    middle = num_layers // 2
    if isinstance(dola_layers, str) and dola_layers == "low":
        if start == middle:
            return [start]
        return list(range(start, middle, 2)) if num_layers <= 40 else list(range(start, 20, 2))
    if isinstance(dola_layers, str) and dola_layers == "high":
        return list(range(middle, num_layers, 2)) if num_layers <= 40 else list(range(num_layers - 20, num_layers, 2))
    if isinstance(dola_layers, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool)
                                                      for i in dola_layers):
        return [i for i in dola_layers if i < num_layers]
    raise ValueError(f"`dola_layers` must be 'low', 'high' or a list of integers, got {dola_layers!r}.")


def relative_top_filter(mature: torch.Tensor, premature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-softmax of ``mature`` and ``premature`` logits (``[rows, vocab]``) where every token whose mature
    log-probability is below ``max + log(RELATIVE_TOP)`` gets ``-inf`` (mature) and ``PREMATURE_FILTER_VALUE``
    (premature)."""
    mature_logprobs = mature.log_softmax(dim=-1)
    premature_logprobs = premature.log_softmax(dim=-1)
    best = mature_logprobs.max(dim=-1).values
    # min(best, best + log(0.1)) is best + log(0.1); written as the comparison of the two, which keeps the
    # rounding of the sum exactly as it is computed.
    threshold = torch.minimum(best, best + math.log(RELATIVE_TOP)).unsqueeze(-1)
    below = mature_logprobs < threshold
    premature_logprobs[below] = PREMATURE_FILTER_VALUE
    mature_logprobs[below] = -float("inf")
    return mature_logprobs, premature_logprobs


def _jensen_shannon_per_layer(mature: torch.Tensor, premature: torch.Tensor) -> torch.Tensor:
    """``[layers]``: the Jensen-Shannon divergence of each premature distribution (``premature``:
    ``[layers, rows, vocab]`` logits) from the mature one (``[rows, vocab]``), averaged over the vocabulary (as
    4.45.2's element-wise mean) and then over the rows."""
    mature_probs = F.softmax(mature, dim=-1)
    premature_probs = F.softmax(premature, dim=-1)
    middle = 0.5 * (mature_probs[None, :, :] + premature_probs)
    to_mature = F.kl_div(F.log_softmax(mature, dim=-1)[None, :, :], middle, reduction="none").mean(-1)
    to_premature = F.kl_div(F.log_softmax(premature, dim=-1), middle, reduction="none").mean(-1)
    return (0.5 * (to_mature + to_premature)).mean(-1)


def dola_contrast_logits(mature: torch.Tensor, premature_by_layer: dict[int, torch.Tensor],
                         layers: Sequence[int]) -> torch.Tensor:
    """The DoLa logits of one step (``[rows, vocab]``): ``mature`` contrasted with the premature layer (the only
    candidate, or the candidate of largest Jensen-Shannon divergence), relative-top filtered."""
    if len(layers) == 1:
        chosen = layers[0]
    else:
        divergences = _jensen_shannon_per_layer(mature, torch.stack([premature_by_layer[i] for i in layers]))
        chosen = layers[int(divergences.argmax())]
    mature_logprobs, premature_logprobs = relative_top_filter(mature, premature_by_layer[chosen])
    return mature_logprobs - premature_logprobs


def run_dola(model: Any, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], past_key_values: Any,
             use_cache: bool, layers: Sequence[int], processors: Any, stopping: StoppingPlan, record: Record,
             batch: BatchState, pad_token: Optional[torch.Tensor], streamer: Any = None,
             model_kwargs: Optional[dict] = None, peers: Optional[PeerSync] = None) -> DolaResult:
    """DoLa decoding from ``input_ids`` (``[rows, prompt_length]``, left-padded) until ``stopping`` ends it.

    Args:
        model: a decoder-only transformers causal LM with output embeddings.
        attention_mask: ``[rows, prompt_length]`` (``None``: no padding).
        past_key_values: an empty transformers ``DynamicCache``, or ``None`` (the model makes its own, or none
            without ``use_cache``).
        layers: the candidate premature layers (:func:`dola_candidate_layers`), indices into the hidden states.
        processors: the logits processors (with the sampler's filters left out where ``batch`` applies them).
        batch: the rows' state (:meth:`BatchState.from_config`): greedy search without seeds, else sampling with
            turbogen's sampler at each row's offset.
        pad_token: given to finished rows when a criterion has an ``eos_token_id``.
        model_kwargs: other model inputs (non-tensor flags only).
        peers: ``synced_gpus``: the group vote before each forward, and dummy forwards once this rank is done
            (:mod:`~turbogen.generation.synced_gpus`).
    """
    if _compat.is_encoder_decoder_model(model):
        raise ValueError("DoLa decoding is only available for decoder-only models.")
    if past_key_values is not None and (not _compat.is_dynamic_cache(past_key_values)
                                        or int(past_key_values.get_seq_length()) != 0):
        raise UnsupportedByTurbogen("DoLa decoding needs an empty DynamicCache (the default cache): "
                                    f"got {type(past_key_values).__name__}.", reason="DoLa with another cache")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ValueError("DoLa is not supported for models that don't have output embeddings.")
    rows, _ = input_ids.shape
    device = input_ids.device
    if stopping.pads_finished_rows and pad_token is None:
        raise ValueError("Finished rows must be padded but neither `pad_token_id` nor `eos_token_id` is set.")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    call = ModelCaller(model, record.wants_attentions, model_kwargs or {}, "DoLa decoding")
    stages = LogitsStages.from_processors(list(processors), input_ids) if processors else None
    sampler = batch.sampler() if batch.samples else None
    sequences = input_ids
    past = past_key_values
    fed = 0  # positions already in the cache
    while True:
        if peers is not None:
            peers.all_finished(False)
        if use_cache:
            outputs = call(sequences[:, fed:], attention_mask, past, cached=fed)
            past = outputs.past_key_values
            fed = sequences.shape[1]
        else:
            outputs = call(sequences, attention_mask, None, cached=0)
        mature = outputs.logits[:, -1, :].float()
        premature = {layer: head(outputs.hidden_states[layer][:, -1, :]).to(mature.device) for layer in layers}
        logits = dola_contrast_logits(mature, premature, layers)
        scores = stages.apply(sequences, logits) if stages is not None else logits
        record.scores(scores)
        record.logits(outputs.logits[:, -1, :].float())
        record.model_outputs(outputs)
        del outputs
        if sampler is None:
            tokens = torch.argmax(scores, dim=-1)
        else:
            batch.check_scores(scores)
            if not bool(batch.scores_are_finite):
                raise_non_finite_scores()
            tokens = sampler(scores, batch.offsets)
            batch.advance()
        if stopping.pads_finished_rows:
            tokens = torch.where(batch.unfinished, tokens, pad_token.to(device))
        sequences = torch.cat([sequences, tokens[:, None]], dim=-1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((rows, 1))], dim=-1)
        if stages is not None:
            stages.accept(tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())
        done = stopping.rows_done(sequences, record.collected_scores)
        if done is not None:
            batch.finish(done)
        if stopping.stops_all(sequences.shape[1]) or not bool(batch.unfinished.any()):
            break
    if streamer is not None:
        streamer.end()
    if peers is not None:
        peers.drain(lambda: model(input_ids=input_ids[:, -1:], use_cache=False))
    return DolaResult(sequences, past if use_cache else None)


def dola_from_call(model: Any, call: Any, record: Record, streamer: Any = None,
                   peers: Optional[PeerSync] = None) -> DolaResult:
    """DoLa decoding for a resolved :func:`turbogen.generate` call (a
    :class:`~turbogen.generation.prepare.PreparedCall` whose mode is DoLa): the sequences and the cache as 4.45.2
    returns them; scores, logits, attentions and hidden states go to ``record``, and :func:`turbogen.generate`
    packages the output."""
    config = call.config
    if call.encoder_outputs is not None or _compat.is_encoder_decoder_model(model):
        raise ValueError("DoLa decoding is only available for decoder-only models.")
    if getattr(model, "_is_stateful", False):
        raise ValueError(f"dola decoding is not supported with stateful models, such as {type(model).__name__}")
    model_kwargs = dict(call.model_kwargs)
    attention_mask = model_kwargs.pop("attention_mask", None)
    if model_kwargs.get("inputs_embeds") is not None:
        raise UnsupportedByTurbogen("DoLa decoding from `inputs_embeds` is not supported by turbogen.generate.",
                                    reason="DoLa with inputs_embeds")
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = dola_candidate_layers(config.dola_layers, int(text_config.num_hidden_layers),
                                   bool(getattr(model.config, "tie_word_embeddings", False)))
    rows = call.input_ids.shape[0]
    batch = BatchState.from_config(config, rows, call.input_ids.device, call.sampler_filters)
    if streamer is not None:
        streamer.put(call.input_ids.cpu())
    use_cache = config.use_cache is not False
    result = run_dola(model, call.input_ids, attention_mask, call.cache if use_cache else None, use_cache, layers,
                      call.processors, call.stopping, record, batch, call.tokens.pad, streamer, model_kwargs, peers)
    return result
