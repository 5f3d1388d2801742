"""``GenerationConfig``: the parameters of a ``generate()`` call, mirroring transformers v4.57.

The class reproduces ``transformers.GenerationConfig`` (v4.57): the same parameters with the same
defaults, the same validation outcomes (what raises, what only warns), the same
``generation_config.json`` format, and the same loading/saving API, so that a file written by
either library loads in the other with equal values. On top of that it carries the parameters
inference pipelines need and transformers lacks: ``seed``, ``presence_penalty`` and
``frequency_penalty`` (see ``TURBOGEN_PARAMETERS``).

The parameters themselves (names, defaults, documentation, per-value checks) are declared in
``parameters.py``; this module builds the class around that table and holds the transformers
mirrored API (``from_pretrained``, ``save_pretrained``, ``to_dict``, ``update``, ...).

transformers is an optional dependency: this package never imports it. ``as_generation_config``
converts a ``transformers.GenerationConfig`` (v4.57 or v5) by values when one is given (transformers
is then already imported by whoever built it).

Differences from transformers, all deliberate:

- Problems that transformers logs as warnings (``logger.warning_once`` plus an info-level detail
  message) are reported here as one ``UserWarning`` via ``warnings.warn`` whose message lists
  every flagged field with its explanation.
- ``to_dict()`` returns plain, JSON-ready data (``watermarking_config`` as a dict rather than a
  watermarking config object); the JSON written is the same.
- Loading is local only (there is no network): ``from_pretrained`` takes a directory or a JSON
  file path, and Hub download options raise a ``TypeError`` instead of being silently ignored.
- Value types transformers would only trip over while comparing (``max_new_tokens="5"``) raise a
  ``TypeError`` naming the field rather than Python's bare comparison error.
- A ``watermarking_config`` dict with ``ngram_len`` or ``keys`` becomes a
  ``SynthIDTextWatermarkingConfig`` (transformers makes every dict a ``WatermarkingConfig`` and so
  cannot load back a saved SynthID config); any other dict is a ``WatermarkingConfig``, as there.
- ``save_pretrained`` returns the path it wrote; ``push_to_hub=True`` raises
  :class:`~turbogen.UnsupportedByTurbogen` (nothing is uploaded: no hub is reachable offline).
- No ``_original_object_hash`` is recorded (transformers uses it to detect edits of a config
  derived from a model config, for a deprecated code path of its ``generate``).

Kept as transformers behaves, although its docstrings say otherwise: ``from_pretrained`` and
``from_dict`` keep overrides that are not parameters as attributes (so ``unused_kwargs`` is empty
unless ``_from_model_config`` is set), and ``return_legacy_cache`` defaults to ``None``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from copy import deepcopy
from pathlib import Path
from typing import Any

from ._support import transformers_class, warn
from .mode import GenerationMode, generation_mode
from .parameters import DEFAULTS, PARAMETERS_BY_NAME, parameters_docstring
from .validation import OUTPUT_FLAGS, check_values, find_ignored_or_suspicious_flags
from .watermarking import BaseWatermarkingConfig

__all__ = ["GENERATION_CONFIG_NAME", "MIRRORED_TRANSFORMERS_VERSION", "GenerationConfig", "as_generation_config"]

GENERATION_CONFIG_NAME = "generation_config.json"

# The transformers release whose generation_config.json format and semantics this module
# reproduces. It is written as `transformers_version` in the files we save (transformers stamps
# its own version the same way); transformers reads it back to decide, among other things,
# whether a model's generation defaults predate v4.50.
MIRRORED_TRANSFORMERS_VERSION = "4.57.6"

# Bookkeeping fields: stored, but ignored by `==`, `hash` and `repr`.
_METADATA_DEFAULTS = {
    "_from_model_config": False,
    "_commit_hash": None,
    "transformers_version": MIRRORED_TRANSFORMERS_VERSION,
}
_METADATA_FIELDS = ("_from_model_config", "_commit_hash", "_original_object_hash", "transformers_version")
_NOT_SERIALIZED = ("_commit_hash", "_original_object_hash", "compile_config")
# transformers' `from_pretrained` download options, which have no meaning for local files.
_HUB_DOWNLOAD_OPTIONS = (
    "cache_dir",
    "force_download",
    "proxies",
    "resume_download",
    "token",
    "use_auth_token",
    "revision",
)

_CLASS_SUMMARY = """Parameters of a ``generate()`` call; the same parameters and defaults as transformers v4.57.

    ``GenerationConfig(**kwargs)`` takes any of the parameters below. A keyword that is not a
    parameter is kept as an extra attribute (model-specific keys in ``generation_config.json``,
    as transformers does), except when ``_from_model_config=True``, where extras are dropped.
    The result is validated (see ``validate``): inconsistent values raise ``ValueError``,
    suspicious ones emit a ``UserWarning``.

    The decoding method follows from the parameters (``get_generation_mode``): greedy search
    (``num_beams=1, do_sample=False``), multinomial sampling (``num_beams=1, do_sample=True``),
    beam search (``num_beams>1, do_sample=False``), beam sampling (``num_beams>1, do_sample=True``);
    assisted decoding when ``generate`` gets an assistant model or ``prompt_lookup_num_tokens`` is set.

    The parameters, by group (each entry is ``name (type, default): meaning``; generated from
    ``parameters.PARAMETERS``):

"""
_CLASS_METADATA_NOTE = """

    Metadata (ignored by ``==``): ``transformers_version``, ``_from_model_config``, ``_commit_hash``.
    """


class GenerationConfig:
    # The parameter list is generated from the table, where each parameter is documented once.
    __doc__ = _CLASS_SUMMARY + parameters_docstring(indent=4) + _CLASS_METADATA_NOTE

    extra_output_flags = OUTPUT_FLAGS

    def __init__(self, **kwargs: Any) -> None:
        for name, default in DEFAULTS.items():
            self._set_parameter(name, kwargs.pop(name, default))
        for name, default in _METADATA_DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        # Extras are dropped for configs built from a model config, which holds many
        # non-generation keys.
        if not self._from_model_config:
            for name, value in kwargs.items():
                self._set_extra(name, value)
        self.validate()

    # -- attribute assignment ------------------------------------------------------------------

    def _set_parameter(self, name: str, value: Any) -> None:
        coerce = PARAMETERS_BY_NAME[name].coerce
        setattr(self, name, value if coerce is None else coerce(value))

    def _set_extra(self, name: str, value: Any) -> None:
        if hasattr(type(self), name):
            raise ValueError(
                f"`{name}` cannot be a generation parameter: it names a GenerationConfig method or attribute"
            )
        setattr(self, name, value)

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Sets the given parameters (and extra attributes already present), then validates.

        Returns:
            The key/value pairs that matched nothing and were not applied.
        """
        unused = {}
        for key, value in kwargs.items():
            if key in DEFAULTS:
                self._set_parameter(key, value)
            elif key in self.__dict__:
                setattr(self, key, value)
            else:
                unused[key] = value
        self.validate()
        return unused

    def copy(self) -> GenerationConfig:
        """A deep copy: nothing (lists, dicts, nested configs) is shared with this instance."""
        return deepcopy(self)

    # -- validation ----------------------------------------------------------------------------

    def validate(self, strict: bool = False) -> None:
        """Checks the values, with transformers v4.57's rules plus range checks of the turbogen additions.

        Each parameter's own check (``parameters.PARAMETERS``) runs first, in table order, then the
        rules relating parameters to each other (``validation.py``). Raises ``ValueError``
        (``TypeError`` for a value of the wrong type) when:
          - ``early_stopping`` is not ``True``, ``False`` or ``"never"``;
          - ``max_new_tokens <= 0``;
          - ``cache_implementation`` is not a known cache;
          - ``compile_config`` is not a ``CompileConfig``;
          - ``watermarking_config`` is not a valid watermarking config;
          - ``num_return_sequences != 1`` with greedy search (``num_beams == 1``, ``do_sample is False``),
            or ``num_return_sequences > num_beams`` with beam search;
          - a ``generate()``-only argument (``streamer``, ``logits_processor``, ...) was stored in the config;
          - ``seed`` is not ``None``, an integer in [0, 2**64) or a non-empty list of such integers;
          - ``presence_penalty`` or ``frequency_penalty`` is outside [-2, 2].

        Warns (``UserWarning``, one per call, listing every flagged field) when:
          - ``pad_token_id`` is negative;
          - a sampling-only flag (``temperature``, ``top_p``, ``min_p``, ``typical_p``, ``top_k``,
            ``epsilon_cutoff``, ``eta_cutoff``) is set while ``do_sample is False``;
          - a beam-only flag (``early_stopping``, ``length_penalty``) is set while ``num_beams == 1``;
          - a cache flag (``cache_implementation``, ``cache_config``, ``return_legacy_cache``) is
            set while ``use_cache is False``;
          - an ``output_*`` flag is ``True`` while ``return_dict_in_generate`` is not.

        Args:
            strict: raise ``ValueError`` for the warned problems too (``save_pretrained`` does).
        """
        check_values(self)
        issues = find_ignored_or_suspicious_flags(self)
        if not issues:
            return
        details = "\n".join(f"- `{name}`: {description}" for name, description in issues.items())
        if strict:
            raise ValueError(f"GenerationConfig is invalid:\n{details}")
        warn(
            "GenerationConfig has flags that will be ignored or may cause errors "
            f"(validate(strict=True) makes this an error):\n{details}"
        )

    def get_generation_mode(self, assistant_model: Any = None) -> GenerationMode:
        """The decoding method these parameters select (transformers v4.57's rules).

        Args:
            assistant_model: the assistant model that will be passed to ``generate``, if any;
                only whether it is ``None`` matters.

        Assisted generation and DoLa extend only greedy search and sampling; when their
        parameters are combined with another method a ``UserWarning`` says they will be ignored.
        """
        return generation_mode(self, assistant_model)

    # -- serialization -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All attributes as JSON-ready data (deep copies), minus ``compile_config`` and ``_commit_hash``.

        ``transformers_version`` is stamped with ``MIRRORED_TRANSFORMERS_VERSION``, the format written.
        """
        output = {key: deepcopy(value) for key, value in self.__dict__.items() if key not in _NOT_SERIALIZED}
        if isinstance(output.get("watermarking_config"), BaseWatermarkingConfig):
            output["watermarking_config"] = output["watermarking_config"].to_dict()
        output["transformers_version"] = MIRRORED_TRANSFORMERS_VERSION
        self.dict_dtype_to_str(output)
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """``to_dict()`` restricted to the values that differ from ``GenerationConfig()``'s.

        Extra attributes and ``transformers_version`` are always included.
        """
        defaults = _default_config_dict()
        return {
            key: value
            for key, value in self.to_dict().items()
            if key not in defaults or key == "transformers_version" or value != defaults[key]
        }

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False) -> str:
        """The configuration as JSON (keys sorted, 2-space indent), as transformers writes it.

        Args:
            use_diff: only the values that differ from the defaults (``to_diff_dict``).
            ignore_metadata: leave out ``transformers_version`` and the ``_``-prefixed bookkeeping fields.

        Dict keys become strings (a ``sequence_bias`` key ``(1, 2)`` is written ``"(1, 2)"``).
        """
        config_dict = self.to_diff_dict() if use_diff else self.to_dict()
        if ignore_metadata:
            for field in _METADATA_FIELDS:
                config_dict.pop(field, None)
        return json.dumps(_json_ready(config_dict), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike, use_diff: bool = True) -> None:
        """Writes ``to_json_string(use_diff)`` to ``json_file_path``."""
        with open(json_file_path, "w", encoding="utf-8") as writer:
            writer.write(self.to_json_string(use_diff=use_diff))

    @staticmethod
    def dict_dtype_to_str(config_dict: dict[str, Any]) -> None:
        """In place, in ``config_dict`` and its nested dicts: a ``dtype`` value such as
        ``torch.float16`` becomes its short name ``"float16"``, so it can be written as JSON."""
        dtype = config_dict.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            config_dict["dtype"] = str(dtype).rpartition(".")[2]
        for value in config_dict.values():
            if isinstance(value, dict):
                GenerationConfig.dict_dtype_to_str(value)

    def save_pretrained(
        self, save_directory: str | os.PathLike, config_file_name: str | os.PathLike | None = None,
        push_to_hub: bool = False, **hub_kwargs: Any,
    ) -> Path:
        """Writes the configuration (only non-default values) to ``save_directory/config_file_name``.

        The directory is created if needed. The configuration is validated with ``strict=True``
        first, so a configuration that would warn is refused (``ValueError``), as in transformers.

        Args:
            save_directory: the directory to write into.
            config_file_name: the file name; defaults to ``"generation_config.json"``.
            push_to_hub: accepted for transformers' signature; ``True`` raises
                :class:`~turbogen.errors.UnsupportedByTurbogen` (a ``ValueError``) before anything is
                written: turbogen works offline and never uploads. Save locally, then upload with
                ``huggingface_hub`` (or transformers' ``GenerationConfig.push_to_hub``).
            hub_kwargs: transformers' upload options (``repo_id``, ``commit_message``, ``token``, ...); as
                they only configure the upload, passing any raises ``TypeError`` naming them.

        Returns:
            The path of the written file.
        """
        if push_to_hub:
            from ..errors import UnsupportedByTurbogen  # here: the config package imports nothing else of turbogen

            raise UnsupportedByTurbogen(
                "GenerationConfig.save_pretrained(push_to_hub=True): turbogen works offline and does not upload to "
                "the Hugging Face Hub; call save_pretrained(save_directory) and upload the directory with "
                "huggingface_hub (or transformers' GenerationConfig.push_to_hub).",
                reason="push_to_hub",
            )
        if hub_kwargs:
            raise TypeError(
                f"save_pretrained() got Hub upload options {sorted(hub_kwargs)}, which turbogen does not support "
                "(it never uploads); remove them"
            )
        try:
            self.validate(strict=True)
        except ValueError as error:
            raise ValueError(f"{error}\nFix these issues to save the configuration.") from error
        directory = Path(save_directory)
        if directory.is_file():
            raise NotADirectoryError(f"save_directory {str(directory)!r} is a file, not a directory")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (config_file_name if config_file_name is not None else GENERATION_CONFIG_NAME)
        self.to_json_file(path, use_diff=True)
        return path

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, config_dict: Mapping[str, Any], **kwargs: Any
    ) -> GenerationConfig | tuple[GenerationConfig, dict]:
        """Builds a configuration from ``config_dict``, with ``kwargs`` taking precedence.

        As in transformers, every key of ``config_dict`` and ``kwargs`` is applied: keys that are
        not parameters become extra attributes (unless ``_from_model_config`` is true).

        Args:
            config_dict: parameters, e.g. the content of a ``generation_config.json``.
            return_unused_kwargs: if true, return ``(config, unused)`` where ``unused`` holds the
                ``kwargs`` that were not applied (only possible with ``_from_model_config``).
        """
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"config_dict must be a mapping, got {type(config_dict).__name__}")
        return_unused_kwargs = kwargs.pop("return_unused_kwargs", False)
        # Telemetry flags of transformers' loaders: accepted and discarded.
        kwargs.pop("_from_auto", None)
        kwargs.pop("_from_pipeline", None)
        if "_commit_hash" in kwargs and "_commit_hash" in config_dict:
            kwargs["_commit_hash"] = config_dict["_commit_hash"]
        config = cls(**{**config_dict, **kwargs})
        if not return_unused_kwargs:
            return config
        return config, {key: value for key, value in kwargs.items() if key not in config.__dict__}

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name: str | os.PathLike,
        config_file_name: str | os.PathLike | None = None,
        return_unused_kwargs: bool = False,
        *,
        subfolder: str | os.PathLike = "",
        **kwargs: Any,
    ) -> GenerationConfig | tuple[GenerationConfig, dict]:
        """Loads a ``generation_config.json`` from a local model directory or a JSON file path.

        Args:
            pretrained_model_name: a directory holding ``config_file_name``, or the path of a
                JSON file. Hub model ids are not downloaded (there is no network): download the
                model first and pass its directory.
            config_file_name: file name inside the directory; defaults to ``"generation_config.json"``.
                Not allowed when ``pretrained_model_name`` is a file.
            return_unused_kwargs: also return the overrides that were not applied (see ``from_dict``).
            subfolder: a subdirectory of ``pretrained_model_name`` to read from.
            **kwargs: parameter overrides, applied over the file's values (``from_dict``).
                ``local_files_only`` is accepted and ignored (loading is always local); the other
                Hub download options of transformers (``revision``, ``token``, ``cache_dir``, ...)
                raise ``TypeError``.

        Raises:
            FileNotFoundError: the path does not exist or the directory has no such file.
            ValueError: the file is not a JSON object, or the values are invalid.
        """
        hub_options = sorted(set(kwargs) & set(_HUB_DOWNLOAD_OPTIONS))
        if hub_options:
            raise TypeError(
                f"{hub_options} are Hugging Face Hub download options; turbogen loads generation configs "
                "from local files only"
            )
        kwargs.pop("local_files_only", None)
        location = Path(pretrained_model_name) / subfolder
        if location.is_file():
            if config_file_name is not None:
                raise ValueError(
                    f"config_file_name={str(config_file_name)!r} was given but pretrained_model_name "
                    f"{str(pretrained_model_name)!r} is already a file"
                )
            config_path = location
        elif location.is_dir():
            config_path = location / (config_file_name if config_file_name is not None else GENERATION_CONFIG_NAME)
            if not config_path.is_file():
                raise FileNotFoundError(f"{str(location)!r} has no {config_path.name} file")
        else:
            raise FileNotFoundError(
                f"{str(location)!r} is neither a local directory nor a JSON file. turbogen does not download "
                "from the Hugging Face Hub: download the model first and pass its local directory."
            )
        config_dict = _read_json_object(config_path)
        return cls.from_dict(config_dict, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_model_config(cls, model_config: Any) -> GenerationConfig:
        """Builds a configuration from the generation parameters held by a model configuration.

        Args:
            model_config: a ``transformers.PretrainedConfig`` (anything with ``to_dict()``) or a
                mapping. Keys that are not generation parameters are dropped, and so are ``None``
                values (the defaults apply). For composite models, parameters still at their
                default are taken from the decoder's configuration (``get_text_config(decoder=True)``).
                If an ``output_*`` flag ends up true, ``return_dict_in_generate`` is set too.
        """
        if isinstance(model_config, Mapping):
            config_dict = dict(model_config)
        elif callable(getattr(model_config, "to_dict", None)):
            config_dict = model_config.to_dict()
        else:
            raise TypeError(
                f"model_config must be a PretrainedConfig-like object with to_dict() or a mapping, "
                f"got {type(model_config).__name__}"
            )
        config_dict.pop("_from_model_config", None)
        config_dict = {key: value for key, value in config_dict.items() if value is not None}
        generation_config = cls.from_dict(config_dict, _from_model_config=True)

        get_text_config = getattr(model_config, "get_text_config", None)
        decoder_config = get_text_config(decoder=True) if callable(get_text_config) else model_config
        if decoder_config is not model_config:
            defaults = GenerationConfig()
            decoder_dict = decoder_config.to_dict()
            for name in generation_config.to_dict():
                is_unset = getattr(generation_config, name) == getattr(defaults, name, None)
                if name in decoder_dict and is_unset:
                    setattr(generation_config, name, decoder_dict[name])

        if generation_config.return_dict_in_generate is False and any(
            getattr(generation_config, flag, False) for flag in generation_config.extra_output_flags
        ):
            generation_config.return_dict_in_generate = True
        return generation_config

    @classmethod
    def _from_attributes(cls, attributes: Mapping[str, Any]) -> GenerationConfig:
        """Rebuilds a configuration from another object's attributes, extras included."""
        attributes = {key: value for key, value in attributes.items() if key != "_original_object_hash"}
        from_model_config = attributes.pop("_from_model_config", False)
        config = cls(**attributes)
        config._from_model_config = from_model_config
        return config

    # -- comparison and display ----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationConfig):
            return NotImplemented
        return (self.to_json_string(use_diff=False, ignore_metadata=True)
                == other.to_json_string(use_diff=False, ignore_metadata=True))

    def __hash__(self) -> int:
        return hash(self.to_json_string(ignore_metadata=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(ignore_metadata=True)}"


def as_generation_config(obj: Any = None) -> GenerationConfig:
    """Normalises what a caller may pass as a generation config into a ``GenerationConfig``.

    Args:
        obj: ``None`` (the defaults), a mapping of parameters, a ``GenerationConfig`` (returned
            as is, not copied), or a ``transformers.GenerationConfig`` (converted by values:
            every attribute, extras included; its watermarking and compile configs become ours).
            transformers 5 leaves unset parameters at ``None``; those take our defaults, which
            are the global defaults 5.x itself resolves them to.
    """
    if obj is None:
        return GenerationConfig()
    if isinstance(obj, GenerationConfig):
        return obj
    if isinstance(obj, Mapping):
        return GenerationConfig.from_dict(obj)
    theirs = transformers_class("GenerationConfig")
    if theirs is not None and isinstance(obj, theirs):
        # Imported here: the compatibility layer needs torch, which this package never imports itself.
        from .._transformers_compat import generation_config_attributes

        return GenerationConfig._from_attributes(generation_config_attributes(obj))
    raise TypeError(
        "generation config must be None, a dict, a turbogen GenerationConfig or a "
        f"transformers.GenerationConfig, got {type(obj).__module__}.{type(obj).__qualname__}"
    )



def _json_ready(obj: Any) -> Any:
    """Dict keys to strings and nested dataclasses to dicts, recursively."""
    if isinstance(obj, dict):
        return {str(key): _json_ready(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_json_ready(item) for item in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _json_ready(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))
    return obj


@functools.lru_cache(maxsize=1)
def _default_config_dict() -> dict[str, Any]:
    """``GenerationConfig().to_dict()``, computed once; callers must not mutate it."""
    return GenerationConfig().to_dict()


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(path)!r} is not a valid JSON file: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, found {type(content).__name__}")
    return content
