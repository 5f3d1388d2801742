"""Batch generation over tables of rows: the unit that Ray Data (or any local loop) maps over a dataset.

:class:`BatchGenerator` loads a model once, then maps a batch of rows (a dict of columns, or a pandas
``DataFrame``) to the same rows with four columns appended:

- ``generated_text``: the generated continuation, decoded without special tokens (``""`` on error);
- ``generated_token_ids``: the generated token ids (the prompt excluded, the final EOS included; ``[]`` on error);
- ``finish_reason``: ``"stop"`` (the sequence ended on an EOS token or a stop string), ``"length"`` (it ran to
  the length limit) or ``"error"``;
- ``error``: ``""`` for a good row, else what was wrong with it.

A bad row (no prompt, an empty text, a text that encodes to no tokens, a prompt longer than
``max_prompt_tokens``, token ids that are not integers or lie outside the vocabulary, a key that cannot be
hashed) gets ``finish_reason="error"`` and its message; the other rows are generated and nothing is raised,
so one bad row never fails a job. A bad configuration (an invalid generation config, an unknown parameter)
raises in the constructor instead, before any row is read.

Reproducibility: every row is sampled with its own seed, :func:`stable_row_seed` of the generator's ``seed``
and the row's key (the ``key_column`` value, else the prompt itself), passed to :func:`turbogen.generate` as
one seed per prompt. A row's tokens therefore depend only on its prompt, its key and the config: not on which
rows share its micro-batch, how a dataset was split into blocks, or which process ran it.

This module does not import Ray; :mod:`turbogen.integrations.ray` runs it on a Ray cluster.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["OUTPUT_COLUMNS", "BatchGenerator", "stable_row_seed"]

#: The columns :class:`BatchGenerator` appends, in this order.
OUTPUT_COLUMNS = ("generated_text", "generated_token_ids", "finish_reason", "error")

_SEED_BITS = 63


def _key_bytes(key: Any) -> bytes:
    """The canonical bytes of a row key (see :func:`stable_row_seed`)."""
    if isinstance(key, str):
        return b"s" + key.encode("utf-8")
    if isinstance(key, (bytes, bytearray)):
        return b"b" + bytes(key)
    if isinstance(key, (bool, np.bool_)):
        raise TypeError("a row key must be a str, bytes, an integer or a sequence of integers, got a bool")
    if isinstance(key, numbers.Integral):
        return b"i" + str(int(key)).encode("ascii")
    if isinstance(key, (Sequence, np.ndarray)):
        tokens = _as_token_list(key)
        if tokens is not None:
            return b"l" + ",".join(map(str, tokens)).encode("ascii")
    raise TypeError("a row key must be a str, bytes, an integer or a sequence of integers, "
                    f"got {type(key).__name__}")


def stable_row_seed(seed: int, key: Any) -> int:
    """The sampling seed of the row with key ``key`` under the base seed ``seed``: an int in [0, 2**63).

    Definition (stable across processes, machines and Python versions; Python's salted ``hash()`` is not
    used): the key is encoded as bytes, ``b"s" + utf-8`` for a str, ``b"b" + the bytes`` for bytes,
    ``b"i" + its decimal digits`` for an integer (numpy integers included), ``b"l" + the ids' decimal digits
    joined by ","`` for a sequence of integers (a token-id list); then the seed is the first 8 bytes of
    ``sha256(str(seed) + "\\0" + key bytes)`` read as a big-endian unsigned integer, shifted right by one bit.

    Raises:
        TypeError: ``seed`` is not an int, or ``key`` is none of the types above.
        ValueError: ``seed`` is negative.
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    digest = hashlib.sha256(str(int(seed)).encode("ascii") + b"\0" + _key_bytes(key)).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def _as_token_list(value: Any) -> Optional[list[int]]:
    """``value`` as a list of Python ints, or None when it is not a sequence of integers."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
            # An object array (Arrow lists may arrive so) holds Python values: check them one by one.
            if value.ndim != 1 or value.dtype != object:
                return None
        else:
            return value.tolist()
    elif isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Sequence):
        return None
    tokens = []
    for token in value:
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, numbers.Integral):
            return None
        tokens.append(int(token))
    return tokens


def _is_missing(value: Any) -> bool:
    """None, or a missing value as pandas and numpy write it (a float NaN)."""
    return value is None or (isinstance(value, float) and value != value)


def _column_values(column: Any) -> list:
    """The values of one column (numpy array, pyarrow array, pandas Series or list) as a Python list."""
    if hasattr(column, "to_pylist"):  # pyarrow Array / ChunkedArray
        return column.to_pylist()
    return list(column)


def _object_array(values: list) -> np.ndarray:
    """A 1-d object array of ``values``; built element by element so that lists stay elements."""
    array = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        array[index] = value
    return array


class BatchGenerator:
    """Loads a model once; maps a batch of rows to the same rows with the generated columns appended.

    Args:
        model: a local model directory (:func:`turbogen.models.load_model`), or None for turbogen's embedded
            default model (:func:`turbogen.models.load_default_model`).
        generation_config: the generation parameters. None: the model's own generation config. A dict:
            parameters overriding the model's config (``{"max_new_tokens": 32, "do_sample": False}``). A
            :class:`turbogen.GenerationConfig` / ``transformers.GenerationConfig``: that config, whose
            parameters left at their global defaults take the model's values (as in :func:`turbogen.generate`).
            A str or path: a ``generation_config.json`` file, or a directory holding one, used like a config.
            ``num_return_sequences`` must be 1 (one output per row); ``seed`` is set per row (below).
        text_column: the column holding prompt texts, tokenised with the model's tokenizer.
        ids_column: the column holding prompts as token-id lists; where a row has a value there, it is used
            instead of the text.
        key_column: the column whose value keys the row's seed; None: the prompt (its text or ids) is the key,
            so equal prompts get equal samples.
        seed: the base seed; a row's seed is ``stable_row_seed(seed, key)``.
        batch_size: rows per :func:`turbogen.generate` call (left-padded together).
        max_prompt_tokens: the longest prompt accepted, in tokens; longer rows are errors. None: the model's
            maximum positions minus ``max_new_tokens`` (or minus one without it) when the model states them.
        threads: if given, torch's intra-op threads (``torch.set_num_threads``; process-wide).
        decode: whether to decode the generated ids into ``generated_text`` (False: the column is omitted).

    Raises:
        TypeError, ValueError: an argument is invalid, naming it; the generation config is invalid or asks
            for several sequences per row; the model cannot be loaded.
    """

    def __init__(self, model: Optional[str | os.PathLike] = None, generation_config: Any = None, *,
                 text_column: str = "text", ids_column: str = "input_ids", key_column: Optional[str] = None,
                 seed: int = 0, batch_size: int = 16, max_prompt_tokens: Optional[int] = None,
                 threads: Optional[int] = None, decode: bool = True) -> None:
        for name, value in (("text_column", text_column), ("ids_column", ids_column)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        if key_column is not None and (not isinstance(key_column, str) or not key_column):
            raise TypeError(f"key_column must be None or a non-empty str, got {key_column!r}")
        stable_row_seed(seed, "")  # validates seed, naming it
        _check_positive_int("batch_size", batch_size)
        if max_prompt_tokens is not None:
            _check_positive_int("max_prompt_tokens", max_prompt_tokens)
        if threads is not None:
            _check_positive_int("threads", threads)
        if not isinstance(decode, bool):
            raise TypeError(f"decode must be a bool, got {type(decode).__name__}")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"model must be None or a model directory path, got {type(model).__name__}")

        self.text_column, self.ids_column, self.key_column = text_column, ids_column, key_column
        self.seed, self.batch_size, self.decode = int(seed), batch_size, decode
        # The config is read before the model loads: a mistake in it should not wait for the weights.
        given_config = _read_generation_config(generation_config)

        import torch

        from .. import models

        if threads is not None:
            torch.set_num_threads(threads)
        if model is None:
            self.model, self.tokenizer, _ = models.load_default_model()
        else:
            self.model, self.tokenizer = models.load_model(model)
        self.generation_config = _resolve_generation_config(self.model, given_config)
        self.vocab_size = self.model.get_input_embeddings().num_embeddings
        self.max_prompt_tokens = (max_prompt_tokens if max_prompt_tokens is not None
                                  else _default_max_prompt_tokens(self.model, self.generation_config))
        config = self.generation_config
        if batch_size > 1 and config.pad_token_id is None and config.eos_token_id is None:
            raise ValueError("the generation config has neither pad_token_id nor eos_token_id, so prompts of "
                             "different lengths cannot be batched: set pad_token_id, or batch_size=1")
        eos = config.eos_token_id
        self._eos_ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
        self._stop_strings = ([config.stop_strings] if isinstance(config.stop_strings, str)
                              else list(config.stop_strings or ()))

    # -- the public mapping ------------------------------------------------------------------------

    def __call__(self, batch: Any) -> Any:
        """``batch`` with the generated columns appended, of the same kind: a dict of columns (numpy arrays,
        lists or pyarrow arrays; the new columns are numpy object arrays) or a pandas ``DataFrame``. Input
        columns are returned unchanged (an input column named like an output column is replaced)."""
        if isinstance(batch, Mapping):
            columns = {name: _column_values(values) for name, values in batch.items()}
            count = len(next(iter(columns.values()))) if columns else 0
            rows = [{name: values[index] for name, values in columns.items()} for index in range(count)]
            results = self._generate(rows)
            output = dict(batch)
            for name in self._output_columns():
                output[name] = _object_array([result[name] for result in results])
            return output
        if _is_dataframe(batch):
            rows = batch.to_dict("records")
            results = self._generate(rows)
            output = batch.copy()
            for name in self._output_columns():
                output[name] = [result[name] for result in results]
            return output
        raise TypeError(f"batch must be a dict of columns or a pandas DataFrame, got {type(batch).__name__}")

    def generate_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Each row (a mapping of column to value) as a dict, its fields followed by the generated columns.

        The local loop over a dataset: mapping its rows here in any grouping gives the same tokens as
        ``__call__`` over any split of it into batches.
        """
        rows = list(rows)
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(f"rows[{index}] must be a mapping of column to value, got {type(row).__name__}")
        return [{**row, **result} for row, result in zip(rows, self._generate(rows))]

    # -- internals ---------------------------------------------------------------------------------

    def _output_columns(self) -> tuple[str, ...]:
        return OUTPUT_COLUMNS if self.decode else tuple(name for name in OUTPUT_COLUMNS if name != "generated_text")

    def _generate(self, rows: list[Mapping[str, Any]]) -> list[dict]:
        """The output columns of each row, in order."""
        results: list[Optional[dict]] = [None] * len(rows)
        pending: list[tuple[int, list[int], int]] = []  # (row index, prompt ids, seed)
        for index, row in enumerate(rows):
            try:
                pending.append((index, *self._prepare(row)))
            except _BadRow as problem:
                results[index] = self._error(str(problem))
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            try:
                outputs = self._run([ids for _, ids, _ in chunk], [seed for _, _, seed in chunk])
            except (ValueError, RuntimeError) as failure:
                if len(chunk) == 1:
                    outputs = [self._error(f"generation failed: {failure}")]
                else:
                    # Find the row at fault: alone, each row gives the tokens it would have given in the batch.
                    outputs = []
                    for _, ids, seed in chunk:
                        try:
                            outputs.extend(self._run([ids], [seed]))
                        except (ValueError, RuntimeError) as row_failure:
                            outputs.append(self._error(f"generation failed: {row_failure}"))
            for (index, _, _), output in zip(chunk, outputs):
                results[index] = output
        return results

    def _prepare(self, row: Mapping[str, Any]) -> tuple[list[int], int]:
        """The row's prompt ids and seed; raises _BadRow saying what is wrong with the row."""
        ids_value, text_value = row.get(self.ids_column), row.get(self.text_column)
        if not _is_missing(ids_value):
            ids = _as_token_list(ids_value)
            if ids is None:
                raise _BadRow(f"'{self.ids_column}' must be a list of integer token ids, "
                              f"got {_describe(ids_value)}")
            if not ids:
                raise _BadRow(f"'{self.ids_column}' is empty: give at least one token id")
            outside = [token for token in ids if not 0 <= token < self.vocab_size]
            if outside:
                raise _BadRow(f"'{self.ids_column}' holds token ids outside the vocabulary "
                              f"[0, {self.vocab_size}): {outside[:5]}")
            prompt_key: Any = ids
        elif not _is_missing(text_value):
            if not isinstance(text_value, str):
                raise _BadRow(f"'{self.text_column}' must be a str, got {_describe(text_value)}")
            if not text_value.strip():
                raise _BadRow(f"'{self.text_column}' is empty: give some text")
            ids = list(self.tokenizer(text_value)["input_ids"])
            if not ids:
                raise _BadRow(f"'{self.text_column}' encodes to no tokens")
            prompt_key = text_value
        else:
            raise _BadRow(f"the row has no prompt: neither '{self.text_column}' nor '{self.ids_column}' is set")
        if self.max_prompt_tokens is not None and len(ids) > self.max_prompt_tokens:
            raise _BadRow(f"the prompt has {len(ids)} tokens, over max_prompt_tokens={self.max_prompt_tokens}")
        if self.key_column is None:
            key = prompt_key
        else:
            key = row.get(self.key_column)
            if _is_missing(key):
                raise _BadRow(f"the row has no key: '{self.key_column}' is not set")
        try:
            return ids, stable_row_seed(self.seed, key)
        except TypeError as problem:
            raise _BadRow(f"'{self.key_column}': {problem}") from None

    def _run(self, prompts: list[list[int]], seeds: list[int]) -> list[dict]:
        """One generate() call over ``prompts`` (left-padded by generate) and the rows' output columns."""
        from ..generate import generate

        output = generate(self.model, prompts, generation_config=self.generation_config, seed=seeds,
                          use_model_defaults=False)
        width = max(len(ids) for ids in prompts)
        return [self._finish(row[width:].tolist()) for row in output]

    def _finish(self, generated: list[int]) -> dict:
        """The output columns of one generated sequence (padding after its end removed)."""
        stop = next((position for position, token in enumerate(generated) if token in self._eos_ids), None)
        if stop is not None:
            generated, reason = generated[:stop + 1], "stop"
        else:
            reason = "length"
            if self._stop_strings:
                text = self.tokenizer.decode(generated, skip_special_tokens=True)
                if any(stop_string in text for stop_string in self._stop_strings):
                    # A row ended by a stop string is padded to the batch's width: drop the padding.
                    pad = self.generation_config.pad_token_id
                    while generated and generated[-1] == pad:
                        generated.pop()
                    reason = "stop"
        result = {"generated_token_ids": generated, "finish_reason": reason, "error": ""}
        if self.decode:
            result["generated_text"] = self.tokenizer.decode(generated, skip_special_tokens=True)
        return {name: result[name] for name in self._output_columns()}

    def _error(self, message: str) -> dict:
        result = {"generated_text": "", "generated_token_ids": [], "finish_reason": "error", "error": message}
        return {name: result[name] for name in self._output_columns()}


class _BadRow(Exception):
    """A row that cannot be generated; the message says why and becomes its ``error``."""


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _is_dataframe(batch: Any) -> bool:
    # Checked by name: pandas is only imported if the caller already uses it.
    return any(cls.__module__.startswith("pandas") and cls.__name__ == "DataFrame" for cls in type(batch).__mro__)


def _read_generation_config(generation_config: Any) -> Any:
    """The user's config read into a GenerationConfig, or the dict of overrides kept (checked) as is."""
    from ..config import GenerationConfig, as_generation_config
    from ..config.parameters import PARAMETERS_BY_NAME

    if generation_config is None:
        return None
    if isinstance(generation_config, (str, os.PathLike)):
        return GenerationConfig.from_pretrained(generation_config)
    if isinstance(generation_config, Mapping):
        unknown = sorted(str(name) for name in generation_config if name not in PARAMETERS_BY_NAME)
        if unknown:
            raise ValueError(f"generation_config has unknown parameters: {', '.join(unknown)}")
        return dict(generation_config)
    return as_generation_config(generation_config).copy()


def _resolve_generation_config(model: Any, given: Any):
    """The complete config every generate() call runs with (then with ``use_model_defaults=False``)."""
    from ..config import as_generation_config
    from ..generation.prepare import resolve_generation_config

    if isinstance(given, dict):
        config = as_generation_config(model.generation_config).copy()
        config.update(**given)
    else:
        config, _ = resolve_generation_config(model, given, None, {})
    config.validate()
    if config.num_return_sequences != 1:
        raise ValueError("generation_config.num_return_sequences must be 1: a BatchGenerator writes one "
                         f"sequence per row, got {config.num_return_sequences}")
    return config


def _default_max_prompt_tokens(model: Any, config: Any) -> Optional[int]:
    """The model's maximum positions minus the tokens to generate, or None when the model does not say."""
    from ..generation.prepare import text_config

    max_positions = getattr(text_config(model), "max_position_embeddings", None)
    if max_positions is None:
        return None
    limit = max_positions - (config.max_new_tokens or 1)
    if limit < 1:
        raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the model's "
                         f"{max_positions} positions")
    return limit
