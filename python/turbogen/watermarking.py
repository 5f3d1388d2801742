"""Watermark detectors, transformers v4.57's classes with the same outputs: ``WatermarkDetector`` for the
green-list watermark (``WatermarkingConfig``) and ``SynthIDTextWatermarkDetector`` with its Bayesian detector
model (``BayesianDetectorModel``, ``BayesianDetectorConfig``) for SynthID Text.

``BayesianDetectorModel`` here is a plain ``torch.nn.Module`` with transformers' parameter names, so
``load_state_dict`` takes the weights of transformers' model (``BayesianDetectorModel.from_transformers``), and
``from_pretrained`` / ``save_pretrained`` read and write transformers' directory format (``config.json`` +
``model.safetensors``; local only). ``SynthIDTextWatermarkDetector`` also accepts transformers' model itself, and
either library's SynthID logits processor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from .config.watermarking import WatermarkingConfig
from .processors.base import ArgumentTypeError
from .processors.synthid import context_repetition_mask, eos_token_mask, ngram_g_values
from .processors.watermark import WatermarkLogitsProcessor

__all__ = [
    "BayesianDetectorConfig",
    "BayesianDetectorModel",
    "BayesianDetectorWatermarkedLikelihood",
    "BayesianWatermarkDetectorModelOutput",
    "SynthIDTextWatermarkDetector",
    "WatermarkDetector",
    "WatermarkDetectorOutput",
]


# ---------------------------------------------------------------------------------------------------------
# Green list


@dataclasses.dataclass
class WatermarkDetectorOutput:
    """What :class:`WatermarkDetector` finds, one entry per row (NumPy arrays).

    Fields: ``num_tokens_scored``, ``num_green_tokens``, ``green_fraction``, ``z_score`` (standard deviations
    of the green count above the count expected of unwatermarked text), ``p_value``, ``prediction``
    (``z_score > z_threshold``) and ``confidence`` (``1 - p_value``).
    """

    num_tokens_scored: Optional[np.ndarray] = None
    num_green_tokens: Optional[np.ndarray] = None
    green_fraction: Optional[np.ndarray] = None
    z_score: Optional[np.ndarray] = None
    p_value: Optional[np.ndarray] = None
    prediction: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None


class WatermarkDetector:
    """Detects green-list watermarked text (transformers v4.57's ``WatermarkDetector``, same outputs).

    Each token after the first ``context_width`` (``context_width - 1`` with ``"selfhash"``) is scored
    green or not by the green list the watermark used at its position; the z-score of the green count
    against ``greenlist_ratio`` decides. Green lists are computed once per distinct seeding context (each
    needs its own seeded ``torch.randperm``), the counting is vectorised.

    Args:
        model_config: the model's configuration (``vocab_size``, ``bos_token_id``, and for an encoder-decoder
            model ``decoder_start_token_id``).
        device: the device the text was generated on (its generator draws the green lists).
        watermarking_config: the ``WatermarkingConfig`` (turbogen's or transformers') or dict used to generate.
        ignore_repeated_ngrams: count each distinct n-gram once. transformers 4.57 documents this but counts
            every n-gram anyway (it tells them apart by tensor identity); here it does what it says, as
            transformers 5 does. With ``False`` (the default) the outputs are 4.57's.
        max_cache_size: accepted for transformers' signature (the green lists are computed once per call).
    """

    def __init__(self, model_config: Any, device: Union[str, torch.device], watermarking_config: Any,
                 ignore_repeated_ngrams: bool = False, max_cache_size: int = 128):
        if isinstance(watermarking_config, Mapping):
            options = dict(watermarking_config)
        elif hasattr(watermarking_config, "seeding_scheme") and hasattr(watermarking_config, "to_dict"):
            options = dict(watermarking_config.to_dict())
        else:
            raise ArgumentTypeError(
                "`watermarking_config` has to be a WatermarkingConfig or a dict of its fields, but is "
                f"{type(watermarking_config).__name__}"
            )
        config = WatermarkingConfig.from_dict(options)
        config.validate()
        if not isinstance(ignore_repeated_ngrams, bool):
            raise ArgumentTypeError(f"`ignore_repeated_ngrams` has to be a bool, but is {ignore_repeated_ngrams!r}")
        is_encoder_decoder = getattr(model_config, "is_encoder_decoder", False)
        self.bos_token_id = (model_config.decoder_start_token_id if is_encoder_decoder
                             else getattr(model_config, "bos_token_id", None))
        self.greenlist_ratio = config.greenlist_ratio
        self.ignore_repeated_ngrams = ignore_repeated_ngrams
        self.processor = WatermarkLogitsProcessor(vocab_size=model_config.vocab_size, device=device,
                                                  **config.to_dict())

    def _green_flags(self, ngrams: torch.Tensor) -> torch.Tensor:
        """``[n]`` bool: whether the last token of each n-gram (``[n, width]``) is in the green list its
        prefix seeds (the whole n-gram with ``"selfhash"``)."""
        selfhash = self.processor.seeding_scheme == "selfhash"
        prefixes = ngrams if selfhash else ngrams[:, :-1]
        seeding = prefixes[:, -self.processor.context_width:]
        distinct, which = torch.unique(seeding, dim=0, return_inverse=True)
        green = torch.zeros((distinct.shape[0], self.processor.vocab_size), dtype=torch.bool)
        for index, context in enumerate(distinct):  # one seeded permutation per distinct context
            green[index, self.processor._get_greenlist_ids(context).cpu()] = True
        targets = ngrams[:, -1].cpu()
        in_vocab = targets < self.processor.vocab_size
        flags = torch.zeros(targets.shape[0], dtype=torch.bool)
        flags[in_vocab] = green[which.cpu()[in_vocab], targets[in_vocab]]
        return flags

    def _score_ngrams_in_passage(self, input_ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        batch, length = input_ids.shape
        width = self.processor.context_width + (0 if self.processor.seeding_scheme == "selfhash" else 1)
        ngrams = input_ids.unfold(1, width, 1)  # [batch, n, width]
        flags = self._green_flags(ngrams.reshape(-1, width)).reshape(batch, -1)
        scored = np.zeros(batch)
        green = np.zeros(batch)
        if self.ignore_repeated_ngrams:
            for row in range(batch):
                distinct, first = _first_occurrences(ngrams[row])
                scored[row] = distinct
                green[row] = float(flags[row][first].sum())
        else:
            scored[:] = ngrams.shape[1]
            green[:] = flags.sum(dim=1).double().numpy()
        return scored, green

    def _compute_z_score(self, green_token_count: np.ndarray, total_num_tokens: np.ndarray) -> np.ndarray:
        expected = self.greenlist_ratio
        return (green_token_count - expected * total_num_tokens) / np.sqrt(
            total_num_tokens * expected * (1 - expected))

    def _compute_pval(self, x, loc=0, scale=1):
        """transformers 4.57's approximation of the upper tail of the standard normal distribution."""
        z = (x - loc) / scale
        return 1 - (0.5 * (1 + np.sign(z) * (1 - np.exp(-2 * z**2 / np.pi))))

    def __call__(self, input_ids: torch.LongTensor, z_threshold: float = 3.0,
                 return_dict: bool = False) -> Union[WatermarkDetectorOutput, np.ndarray]:
        """The predictions (``z_score > z_threshold``) for the rows of ``input_ids`` (``[batch, length]``;
        better without the prompt), or the whole :class:`WatermarkDetectorOutput` with ``return_dict``.
        A leading BOS (judged on the first row) is dropped from every row."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("`input_ids` has to be a [batch, length] tensor of token ids")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ArgumentTypeError(f"`input_ids` has to hold integer token ids, but has dtype {input_ids.dtype}")
        if input_ids.shape[1] and self.bos_token_id is not None and input_ids[0, 0] == self.bos_token_id:
            input_ids = input_ids[:, 1:]
        if input_ids.shape[-1] - self.processor.context_width < 1:
            raise ValueError(
                f"`input_ids` must have at least 1 token to score after the first {self.processor.context_width} "
                "tokens the seeding scheme needs (min_prefix_len)"
            )
        scored, green = self._score_ngrams_in_passage(input_ids.long())
        z_score = self._compute_z_score(green, scored)
        prediction = z_score > z_threshold
        if not return_dict:
            return prediction
        p_value = self._compute_pval(z_score)
        return WatermarkDetectorOutput(num_tokens_scored=scored, num_green_tokens=green,
                                       green_fraction=green / scored, z_score=z_score, p_value=p_value,
                                       prediction=prediction, confidence=1 - p_value)


def _first_occurrences(ngrams: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(the number of distinct rows of ``ngrams``, the index of the first occurrence of each)."""
    distinct, which = torch.unique(ngrams, dim=0, return_inverse=True)
    positions = torch.arange(which.shape[0])
    first = torch.full((distinct.shape[0],), which.shape[0], dtype=torch.long)
    first = first.scatter_reduce(0, which.cpu(), positions, reduce="amin")
    return distinct.shape[0], first


# ---------------------------------------------------------------------------------------------------------
# SynthID Text


class BayesianDetectorConfig:
    """The settings of a :class:`BayesianDetectorModel` (transformers' ``BayesianDetectorConfig`` fields).

    Args:
        watermarking_depth: the number of tournament layers (the length of the watermarking ``keys``).
        base_rate: the prior probability that a text is watermarked.
    """

    def __init__(self, watermarking_depth: Optional[int] = None, base_rate: float = 0.5, **kwargs: Any):
        self.watermarking_depth = watermarking_depth
        self.base_rate = base_rate
        self.model_name = kwargs.pop("model_name", None)
        self.watermarking_config = kwargs.pop("watermarking_config", None)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def set_detector_information(self, model_name: Any, watermarking_config: Any) -> None:
        self.model_name = model_name
        self.watermarking_config = watermarking_config

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, config_dict: Mapping[str, Any]) -> "BayesianDetectorConfig":
        """From a ``config.json``'s content (transformers' bookkeeping keys are dropped)."""
        options = {key: value for key, value in config_dict.items() if key not in _CONFIG_BOOKKEEPING}
        return cls(**options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


# Keys transformers writes in every config.json that describe the file, not the detector.
_CONFIG_BOOKKEEPING = ("architectures", "dtype", "torch_dtype", "transformers_version", "model_type")
_CONFIG_FILE = "config.json"
_WEIGHTS_FILE = "model.safetensors"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError as error:  # pragma: no cover - safetensors comes with the `hf` extra
        raise ImportError("saving and loading a BayesianDetectorModel needs safetensors "
                          "(pip install 'turbogen[hf]')") from error
    return safetensors.torch


@dataclasses.dataclass
class BayesianWatermarkDetectorModelOutput:
    """``posterior_probabilities``: P(watermarked | g-values) per row; ``loss`` when labels were given."""

    loss: Optional[torch.Tensor] = None
    posterior_probabilities: Optional[torch.Tensor] = None


class BayesianDetectorWatermarkedLikelihood(nn.Module):
    """P(g-values | watermarked) for 0/1 g-values: a logistic model of whether each tournament match had two
    distinct tokens, fed with the g-values of the layers below it."""

    def __init__(self, watermarking_depth: int):
        super().__init__()
        self.watermarking_depth = watermarking_depth
        self.beta = nn.Parameter(-2.5 + 0.001 * torch.randn(1, 1, watermarking_depth))
        self.delta = nn.Parameter(0.001 * torch.randn(1, 1, watermarking_depth, watermarking_depth))

    def _compute_latents(self, g_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(one distinct token), P(two distinct tokens)) per row, position and layer."""
        depth = self.watermarking_depth
        # Layer l sees the g-values of the layers before it (strictly lower triangle).
        features = torch.tril(g_values.unsqueeze(-2).expand(*g_values.shape[:-1], depth, depth), diagonal=-1)
        logits = (self.delta[..., None, :] @ features.to(self.delta.dtype)[..., None])[..., 0, 0] + self.beta
        p_two = torch.sigmoid(logits)
        return 1 - p_two, p_two

    def forward(self, g_values: torch.Tensor) -> torch.Tensor:
        p_one, p_two = self._compute_latents(g_values)
        return 0.5 * ((g_values + 0.5) * p_two + p_one)


class BayesianDetectorModel(nn.Module):
    """The Bayesian SynthID detector: ``sigmoid`` of the prior log-odds plus the summed log-likelihood ratios
    of the masked g-values (transformers' ``BayesianDetectorModel``, same parameters and outputs).

    A plain ``nn.Module``: train it with any torch loop (``forward`` gives the loss with ``labels``), load
    transformers' weights with :meth:`from_transformers` or ``load_state_dict``.
    """

    def __init__(self, config: Any):
        super().__init__()
        depth = getattr(config, "watermarking_depth", None)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"`watermarking_depth` has to be a positive integer, but is {depth!r}")
        self.config = config
        self.watermarking_depth = depth
        self.base_rate = config.base_rate
        self.likelihood_model_watermarked = BayesianDetectorWatermarkedLikelihood(watermarking_depth=depth)
        self.prior = nn.Parameter(torch.tensor([float(self.base_rate)]))

    @classmethod
    def from_transformers(cls, model: nn.Module) -> "BayesianDetectorModel":
        """A copy of transformers' ``BayesianDetectorModel`` (configuration and weights)."""
        theirs = model.config
        config = BayesianDetectorConfig(watermarking_depth=theirs.watermarking_depth, base_rate=theirs.base_rate,
                                        model_name=getattr(theirs, "model_name", None),
                                        watermarking_config=getattr(theirs, "watermarking_config", None))
        ours = cls(config)
        ours.load_state_dict(model.state_dict())
        return ours.to(next(model.parameters()).device)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike]) -> "BayesianDetectorModel":
        """Loads a detector saved by :meth:`save_pretrained` or by transformers' ``save_pretrained`` (a local
        directory holding ``config.json`` and ``model.safetensors``; nothing is downloaded)."""
        directory = Path(directory)
        if not (directory / _CONFIG_FILE).is_file() or not (directory / _WEIGHTS_FILE).is_file():
            raise FileNotFoundError(f"{str(directory)!r} must be a local directory holding {_CONFIG_FILE} and "
                                    f"{_WEIGHTS_FILE}")
        config = BayesianDetectorConfig.from_dict(json.loads((directory / _CONFIG_FILE).read_text(encoding="utf-8")))
        model = cls(config)
        model.load_state_dict(_safetensors().load_file(str(directory / _WEIGHTS_FILE)))
        return model

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Writes ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed), in the
        format transformers' ``BayesianDetectorModel.from_pretrained`` reads. Returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"architectures": ["BayesianDetectorModel"], **self.config.to_dict()}
        (directory / _CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        weights = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        _safetensors().save_file(weights, str(directory / _WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @staticmethod
    def _compute_posterior(likelihoods_watermarked: torch.Tensor, likelihoods_unwatermarked: torch.Tensor,
                           mask: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        mask = mask.unsqueeze(-1)
        prior = torch.clamp(prior, min=1e-5, max=1 - 1e-5)
        log_odds = (torch.log(torch.clamp(likelihoods_watermarked, min=1e-30, max=float("inf")))
                    - torch.log(torch.clamp(likelihoods_unwatermarked, min=1e-30, max=float("inf"))))
        # Summed over positions and layers, per row.
        likelihood_surprisal = torch.einsum("i...->i", log_odds * mask)
        prior_surprisal = torch.log(prior) - torch.log(1 - prior)
        return torch.sigmoid(prior_surprisal + likelihood_surprisal)

    def forward(self, g_values: torch.Tensor, mask: torch.Tensor, labels: Optional[torch.Tensor] = None,
                loss_batch_weight=1, return_dict: bool = False):
        """P(watermarked | g-values) per row (``[batch]``), from ``g_values`` (``[batch, length, depth]``, 0/1)
        and ``mask`` (``[batch, length]``, which positions count). Returns ``(posterior,)`` or
        ``(posterior, loss)`` with ``labels``; a :class:`BayesianWatermarkDetectorModelOutput` with
        ``return_dict``."""
        likelihoods_watermarked = self.likelihood_model_watermarked(g_values)
        likelihoods_unwatermarked = 0.5 * torch.ones_like(g_values)
        out = self._compute_posterior(likelihoods_watermarked, likelihoods_unwatermarked, mask, self.prior)
        loss = None
        if labels is not None:
            penalty = torch.sum(self.likelihood_model_watermarked.delta ** 2) * loss_batch_weight
            loss = nn.functional.binary_cross_entropy(torch.clamp(out, 1e-5, 1 - 1e-5), labels) + penalty
        if not return_dict:
            return (out,) if loss is None else (out, loss)
        return BayesianWatermarkDetectorModelOutput(loss=loss, posterior_probabilities=out)


def _synthid_parameters(logits_processor: Any) -> tuple[int, torch.Tensor, torch.Tensor, int]:
    """(ngram_len, keys, sampling table, context_history_size) of turbogen's or transformers' SynthID
    processor."""
    names = ("ngram_len", "keys", "sampling_table", "context_history_size")
    missing = [name for name in names if not hasattr(logits_processor, name)]
    if missing:
        raise ArgumentTypeError(
            "`logits_processor` has to be a SynthIDTextWatermarkLogitsProcessor (turbogen's or transformers'), "
            f"but {type(logits_processor).__name__} lacks {missing}"
        )
    return tuple(getattr(logits_processor, name) for name in names)


class SynthIDTextWatermarkDetector:
    """Scores SynthID Text (transformers v4.57's ``SynthIDTextWatermarkDetector``, same outputs): the g-values
    of the text's n-grams, masked where the context repeats or after the first EOS, go through the detector.

    Args:
        detector_module: a trained :class:`BayesianDetectorModel` (turbogen's or transformers'), or any module
            called as ``detector_module(g_values, mask)``.
        logits_processor: the ``SynthIDTextWatermarkLogitsProcessor`` (turbogen's or transformers') of the
            watermark.
        tokenizer: anything with an ``eos_token_id``.
    """

    def __init__(self, detector_module: Any, logits_processor: Any, tokenizer: Any):
        if not callable(detector_module):
            raise ArgumentTypeError(f"`detector_module` has to be callable, but is {type(detector_module).__name__}")
        _synthid_parameters(logits_processor)
        if not hasattr(tokenizer, "eos_token_id"):
            raise ArgumentTypeError(f"`tokenizer` has to have an `eos_token_id`, but is {type(tokenizer).__name__}")
        self.detector_module = detector_module
        self.logits_processor = logits_processor
        self.tokenizer = tokenizer

    def masks_and_g_values(self, tokenized_outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask ``[batch, n]``, g-values ``[batch, n, depth]``) of the ``n = length - ngram_len + 1`` n-grams."""
        ngram_len, keys, table, history = _synthid_parameters(self.logits_processor)
        if not isinstance(tokenized_outputs, torch.Tensor) or tokenized_outputs.dim() != 2:
            raise ValueError("`tokenized_outputs` has to be a [batch, length] tensor of token ids")
        if tokenized_outputs.dtype.is_floating_point or tokenized_outputs.dtype == torch.bool:
            raise ArgumentTypeError(
                f"`tokenized_outputs` has to hold integer token ids, but has dtype {tokenized_outputs.dtype}")
        if tokenized_outputs.shape[1] < ngram_len:
            raise ValueError(f"`tokenized_outputs` has to hold at least ngram_len={ngram_len} tokens per row, but "
                             f"holds {tokenized_outputs.shape[1]}")
        ids = tokenized_outputs.long()
        device = ids.device
        not_after_eos = eos_token_mask(ids, self.tokenizer.eos_token_id)[:, ngram_len - 1:]
        mask = context_repetition_mask(ids, ngram_len, history) * not_after_eos
        g_values = ngram_g_values(ids, ngram_len, keys.to(device), table.to(device))
        return mask, g_values

    def __call__(self, tokenized_outputs: torch.Tensor):
        """The detector module's output for ``tokenized_outputs`` (``[batch, length]``)."""
        mask, g_values = self.masks_and_g_values(tokenized_outputs)
        return self.detector_module(g_values, mask)
