"""``custom_generate``: transformers 4.57's custom generation methods, without the Hub.

What ``generate(model, ..., custom_generate=X)`` does, by the kind of ``X`` (:func:`custom_generate_plan`):

* a transformers Hub repository of a strategy 4.57 moved out of the library
  (:data:`NATIVE_STRATEGY_REPOSITORIES`: DoLa, contrastive search, group beam search, constrained beam search):
  turbogen runs its native implementation of that strategy (no download, no ``trust_remote_code``); the
  generation parameters must select that strategy (``dola_layers``, ``penalty_alpha`` + ``top_k``, ...);
* a local directory holding ``custom_generate/generate.py``: that file's ``generate(model, **arguments)`` replaces
  the whole call and receives every argument of ``generate`` (``inputs``, ``generation_config``,
  ``logits_processor``, ``stopping_criteria``, ``prefix_allowed_tokens_fn``, ``synced_gpus``, ``assistant_model``,
  ``streamer``, ``negative_prompt_ids``, ``negative_prompt_attention_mask``, ``use_model_defaults``, then the other
  keyword arguments), as 4.57 passes them; a ``custom_generate/requirements.txt`` is checked first;
* another string (a Hub repository id): refused with :class:`~turbogen.errors.UnsupportedByTurbogen` (turbogen
  downloads nothing; a model patched by :func:`turbogen.patch` then runs its own ``generate``);
* a callable: the decoding loop. turbogen prepares the call as usual, sends the prompt to ``streamer``, and returns
  ``X(model, input_ids, logits_processor=..., stopping_criteria=..., generation_config=..., **extra,
  **model_kwargs)`` (:func:`run_custom_decoding`): the expanded prompt, the processors (the sampling warpers
  included), the stopping criteria, the resolved config (with ``_pad_token_tensor``, ``_eos_token_tensor`` and
  ``_bos_token_tensor``), the keyword arguments of the call that ``X`` declares beyond those of transformers'
  ``_sample``, and the model inputs (``attention_mask``, ``past_key_values``: the prepared cache, ``use_cache``,
  ``logits_to_keep=1`` where ``forward`` takes it, any other input given).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import UnsupportedByTurbogen

__all__ = ["NATIVE_STRATEGY_REPOSITORIES", "SAMPLE_LOOP_PARAMETERS", "CustomGeneratePlan", "custom_generate_plan",
           "extra_arguments", "load_local_custom_generate", "run_custom_decoding"]

#: The Hub repositories transformers 4.57 loads for the strategies it moved out of the library, and the
#: generation mode (``GenerationMode`` value) turbogen runs natively for each.
NATIVE_STRATEGY_REPOSITORIES = {
    "transformers-community/dola": "dola_generation",
    "transformers-community/contrastive-search": "contrastive_search",
    "transformers-community/group-beam-search": "group_beam_search",
    "transformers-community/constrained-beam-search": "constrained_beam_search",
}

#: The parameters of transformers 4.57's ``GenerationMixin._sample``: a callable's other parameters are taken from
#: the call's keyword arguments.
SAMPLE_LOOP_PARAMETERS = frozenset({"self", "input_ids", "logits_processor", "stopping_criteria", "generation_config",
                                    "synced_gpus", "streamer", "model_kwargs"})


@dataclass(frozen=True)
class CustomGeneratePlan:
    """How :func:`turbogen.generate` serves one ``custom_generate`` value (:func:`custom_generate_plan`): exactly one
    field is set."""

    #: A local directory's ``generate(model, **arguments)``: it replaces the whole call.
    whole_call: Optional[Callable] = None
    #: A callable decoding loop, run on the prepared call (:func:`run_custom_decoding`).
    decoding_loop: Optional[Callable] = None
    #: A repository of :data:`NATIVE_STRATEGY_REPOSITORIES`: turbogen's own implementation of its strategy runs.
    native_repository: Optional[str] = None

    def check_mode(self, mode: Any) -> None:
        """Raise ValueError when a native repository's strategy is not the one the generation parameters select."""
        if self.native_repository is None:
            return
        wanted = NATIVE_STRATEGY_REPOSITORIES[self.native_repository]
        selected = getattr(mode, "value", mode)
        if selected != wanted:
            raise ValueError(f"`custom_generate={self.native_repository!r}` runs {wanted.replace('_', ' ')}, but the "
                             f"generation parameters select {selected}: set that strategy's parameters (e.g. "
                             "`dola_layers`, `penalty_alpha` with `top_k`, `num_beam_groups`, `force_words_ids` / "
                             "`constraints`).")


def custom_generate_plan(custom_generate: Any) -> CustomGeneratePlan:
    """How to serve ``custom_generate`` (see the module docstring).

    Raises:
        TypeError: neither a string, a path nor a callable.
        UnsupportedByTurbogen: a Hub repository id (nothing is downloaded).
        OSError: a local directory without ``custom_generate/generate.py`` (as transformers).
        ImportError: requirements of ``custom_generate/requirements.txt`` that are not installed.
    """
    if isinstance(custom_generate, os.PathLike):
        custom_generate = os.fspath(custom_generate)
    if isinstance(custom_generate, str):
        if custom_generate in NATIVE_STRATEGY_REPOSITORIES:
            return CustomGeneratePlan(native_repository=custom_generate)
        if os.path.isdir(custom_generate):
            return CustomGeneratePlan(whole_call=load_local_custom_generate(custom_generate))
        raise UnsupportedByTurbogen(
            f"`custom_generate={custom_generate!r}` is neither a local directory nor a strategy turbogen runs natively "
            f"({', '.join(sorted(NATIVE_STRATEGY_REPOSITORIES))}); turbogen does not download code from the Hub: "
            "download the repository (e.g. `huggingface_hub.snapshot_download`) and pass its local directory.",
            reason="custom_generate from the Hub")
    if callable(custom_generate):
        return CustomGeneratePlan(decoding_loop=custom_generate)
    raise TypeError(f"`custom_generate` must be a string (a local directory or a repository id) or a callable, "
                    f"got {type(custom_generate).__name__}.")


def load_local_custom_generate(directory: str) -> Callable:
    """The ``generate`` function of ``directory/custom_generate/generate.py`` (imported as a package, so the file's
    relative imports of its siblings work), after checking ``custom_generate/requirements.txt``."""
    folder = os.path.join(directory, "custom_generate")
    path = os.path.join(folder, "generate.py")
    if not os.path.isfile(path):
        raise OSError(f"`{directory}` does not contain a `custom_generate` subdirectory with a `generate.py` file, "
                      "can't load the custom generate function.")
    _check_requirements(os.path.join(folder, "requirements.txt"))
    digest = hashlib.sha256(os.path.abspath(path).encode() + open(path, "rb").read()).hexdigest()[:16]
    name = f"turbogen_custom_generate_{digest}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=[folder])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    function = getattr(module, "generate", None)
    if not callable(function):
        raise OSError(f"`{path}` does not define a `generate` function.")
    return function


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*(.*)$")


def _check_requirements(path: str) -> None:
    """Raise ImportError naming every requirement of ``path`` (one per line, ``#`` comments) that is not installed
    or whose installed version does not satisfy its specifier."""
    if not os.path.isfile(path):
        return
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    failed = []
    with open(path) as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            match = _REQUIREMENT.match(line)
            package, specifier = match.group(1).split("[", 1)[0], match.group(2).strip()
            try:
                installed = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                failed.append(f"{line} (installed: None)")
                continue
            if specifier and Version(installed) not in SpecifierSet(specifier):
                failed.append(f"{line} (installed: {installed})")
    if failed:
        raise ImportError(f"Missing requirements in {path}:\n" + "\n".join(failed))


def extra_arguments(function: Callable, kwargs: dict) -> dict:
    """The keyword arguments (popped from ``kwargs``) that ``function`` declares beyond transformers' ``_sample``."""
    declared = set(inspect.signature(function).parameters) - SAMPLE_LOOP_PARAMETERS
    return {name: kwargs.pop(name) for name in list(declared) if name in kwargs}


def run_custom_decoding(function: Callable, model: Any, call: Any, extra: dict, streamer: Any = None) -> Any:
    """Call the decoding loop ``function`` on a prepared call (see the module docstring); returns what it
    returns."""
    from ..stopping import StoppingCriteriaList

    config = call.config.copy() if hasattr(call.config, "copy") else call.config
    config._pad_token_tensor = call.tokens.pad
    config._eos_token_tensor = call.tokens.eos
    config._bos_token_tensor = call.tokens.bos
    model_kwargs = dict(call.model_kwargs)
    model_kwargs["past_key_values"] = call.cache
    model_kwargs["use_cache"] = call.config.use_cache is not False
    if "logits_to_keep" in inspect.signature(model.forward).parameters and "logits_to_keep" not in model_kwargs:
        model_kwargs["logits_to_keep"] = 1
    stopping = call.stopping
    criteria = stopping.length_criteria + stopping.time_criteria + stopping.row_criteria
    if streamer is not None:
        streamer.put(call.input_ids.cpu())
    return function(model, call.input_ids, logits_processor=call.processors,
                    stopping_criteria=StoppingCriteriaList(criteria), generation_config=config,
                    **extra, **model_kwargs)
