"""Models for demos and examples: the embedded default model and loading of local checkpoints.

turbogen ships one small causal language model inside the package, under
``turbogen/assets/default_model/``: a 4-layer Llama-architecture model that the project trains
itself (``scripts/train_default_model.py``) on Jane Austen's six completed novels, with its own
byte-level BPE tokenizer. It loads offline, so ``turbogen demo`` prints readable (if
Regency-flavoured) English on a machine that has never reached a model hub.

Next to it ships its draft, ``turbogen/assets/draft_model/``: the same architecture cut to one layer,
distilled from the default model (``scripts/train_default_model.py --draft``) and sharing its
tokenizer, for speculative decoding (``generate(..., assistant_model=draft)``,
``turbogen generate --assistant default``). It drafts tokens at a fraction of the target's cost per
step; the target's verification keeps the output identical to plain decoding.

The architecture, the tokenizer recipe and the sampling defaults are defined here once and used
both by the training script and by the random-weights fallback, so that the two cannot drift.

Everything here needs the ``hf`` extra (``transformers``, ``tokenizers``, ``safetensors``).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import pathlib
from collections.abc import Iterable, Iterator

import torch

from .. import _transformers_compat as _compat

try:
    import tokenizers
    import transformers
except ImportError as error:  # pragma: no cover - exercised only without the hf extra
    raise ImportError(
        "turbogen.models needs transformers and tokenizers: pip install 'turbogen[hf]'"
    ) from error

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "build_byte_level_tokenizer",
    "default_generation_config",
    "default_draft_config",
    "default_draft_generation_config",
    "default_draft_is_trained",
    "default_draft_path",
    "default_model_config",
    "default_model_is_trained",
    "default_model_path",
    "load_default_draft_model",
    "load_default_model",
    "load_draft_model",
    "load_model",
]

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
# Order fixes the ids: <pad> = 0, <s> = 1, </s> = 2, then the 256 byte symbols, then merges.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)

MAX_POSITION_EMBEDDINGS = 512

# The files without which the shipped directory is not a usable model.
_REQUIRED_ASSET_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# The draft has no tokenizer files: it uses the default model's.
_REQUIRED_DRAFT_FILES = ("config.json", "model.safetensors")
# Any of these in a model directory means it has a tokenizer of its own.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# The draft's speculation settings (its generation_config.json, which is where transformers' assisted
# generation reads them from the assistant): drafts per verification and the confidence below which
# the draft stops early. Chosen by measurement (assets/draft_model/README.md).
DRAFT_NUM_ASSISTANT_TOKENS = 6
DRAFT_CONFIDENCE_THRESHOLD = 0.0


def _asset_path(name: str, what: str) -> pathlib.Path:
    resource = importlib.resources.files("turbogen") / "assets" / name
    if not isinstance(resource, pathlib.Path):
        # e.g. a zipped install: transformers can only load from real directories.
        raise RuntimeError(
            f"turbogen's package files are not on the filesystem ({resource!r}); "
            f"the {what} needs a regular (wheel or editable) install"
        )
    return resource


def default_model_path() -> pathlib.Path:
    """Return the directory of the embedded default model inside the installed package.

    Resolved with :mod:`importlib.resources`, so it is right for a wheel install and for an
    editable install alike. The directory may be missing or incomplete in a source checkout
    whose assets were removed; :func:`load_default_model` handles that case.
    """
    return _asset_path("default_model", "default model")


def default_draft_path() -> pathlib.Path:
    """Return the directory of the embedded draft model (config, generation config and weights; no
    tokenizer files, since the draft uses the default model's tokenizer) inside the installed package.

    Resolved as :func:`default_model_path`; :func:`load_default_draft_model` handles a missing or
    incomplete directory.
    """
    return _asset_path("draft_model", "default draft model")


def default_model_config(vocab_size: int) -> transformers.LlamaConfig:
    """Return the architecture of the default model for a tokenizer of ``vocab_size`` tokens.

    Hidden size 256, 4 layers, 8 attention heads sharing 4 key/value heads (grouped-query
    attention, as in Llama 2/3), SwiGLU MLP of width 688, RoPE, 512 positions and input/output
    embeddings tied (which keeps the checkpoint small: the vocabulary matrix is stored once).
    The special-token ids follow :data:`SPECIAL_TOKENS`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
    )


def default_draft_config(vocab_size: int) -> transformers.LlamaConfig:
    """Return the architecture of the default model's draft for a tokenizer of ``vocab_size`` tokens.

    :func:`default_model_config` with ONE layer instead of four: the same hidden size, heads and
    tied embeddings, so training can start from the target's own embeddings, first layer and final
    norm. On a CPU, a forward step of a model this small costs mostly per-layer overhead, so one
    layer is what makes a draft step several times cheaper than a target step.
    """
    config = default_model_config(vocab_size)
    config.num_hidden_layers = 1
    return config


def default_draft_generation_config() -> transformers.GenerationConfig:
    """Return the generation config shipped with the draft: the default model's, plus the speculation
    settings that transformers' assisted generation reads from the assistant's config
    (``num_assistant_tokens``, a constant schedule, ``assistant_confidence_threshold``)."""
    config = default_generation_config()
    config.num_assistant_tokens = DRAFT_NUM_ASSISTANT_TOKENS
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = DRAFT_CONFIDENCE_THRESHOLD
    return config


def default_generation_config() -> transformers.GenerationConfig:
    """Return the sampling defaults shipped with the default model.

    Moderate temperature with top-k/top-p truncation and a mild repetition penalty: a model this
    small loops quickly under greedy decoding, and plain sampling at temperature 1 wanders.
    """
    return transformers.GenerationConfig(
        do_sample=True,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        repetition_penalty=1.1,
        max_new_tokens=64,
        pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
        bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN),
        eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
    )


def build_byte_level_tokenizer(
    texts: Iterable[str] = (), vocab_size: int = 2048
) -> transformers.PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    The vocabulary is the special tokens (:data:`SPECIAL_TOKENS`), the 256 byte symbols, then up
    to ``vocab_size - 259`` merges learned from ``texts`` (fewer when the texts are too small to
    supply them; with no texts the tokenizer is purely byte-level). Any string round-trips
    exactly: ``decode(encode(s), skip_special_tokens=True) == s``. Encoding prepends
    :data:`BOS_TOKEN`, as Llama tokenizers do, so a prompt starts the way the training windows did.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not a single string")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    byte_alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    minimum_size = len(SPECIAL_TOKENS) + len(byte_alphabet)
    if vocab_size < minimum_size:
        raise ValueError(f"vocab_size must be at least {minimum_size} (specials + bytes), got {vocab_size}")

    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    # add_prefix_space=False keeps decoding exact: no space appears that the text did not have.
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=byte_alphabet,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MAX_POSITION_EMBEDDINGS,
        clean_up_tokenization_spaces=False,
        # Llama takes no token_type_ids; returning them would make generate() reject the inputs.
        model_input_names=["input_ids", "attention_mask"],
    )


def load_model(
    path: str | pathlib.Path, dtype: torch.dtype = torch.float32
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load a causal language model and its tokenizer from a local directory, offline.

    ``path`` is a directory as written by ``save_pretrained`` (``config.json``, the weights and
    the tokenizer files). Nothing is downloaded (``local_files_only=True``), no remote code runs
    and nothing is printed (transformers 5 would draw a progress bar over the weights). The model
    is returned in eval mode with parameters of ``dtype``.

    Raises ValueError naming ``path`` if it is not a directory or has no ``config.json``, and
    TypeError/ValueError if ``dtype`` is not a floating-point torch dtype.
    """
    directory = _model_directory(path, dtype)
    with _progress_bars_disabled():
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True,
                                                                     **_compat.from_pretrained_dtype(dtype))
    model.eval()
    return model, tokenizer


def load_draft_model(
    path: str | pathlib.Path, dtype: torch.dtype = torch.float32
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase | None]:
    """Load a draft (assistant) model for speculative decoding from a local directory, offline:
    ``(model, tokenizer)``, the tokenizer being None when the directory has no tokenizer files (a draft
    that shares its target's tokenizer, as the embedded draft does).

    As :func:`load_model` otherwise: nothing downloaded, no remote code, nothing printed, eval mode,
    parameters of ``dtype``; ValueError naming ``path`` if it is not a model directory.
    """
    directory = _model_directory(path, dtype)
    has_tokenizer = any((directory / name).is_file() for name in _TOKENIZER_FILES)
    with _progress_bars_disabled():
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True,
                                                                     **_compat.from_pretrained_dtype(dtype))
        tokenizer = (transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
                     if has_tokenizer else None)
    model.eval()
    return model, tokenizer


def _model_directory(path: object, dtype: object) -> pathlib.Path:
    """``path`` as a model directory (``config.json`` inside), after checking ``path`` and ``dtype``."""
    if not isinstance(path, (str, pathlib.PurePath)):
        raise TypeError(f"path must be a str or pathlib.Path, got {type(path).__name__}")
    _check_float_dtype(dtype)
    directory = pathlib.Path(path)
    if not directory.is_dir():
        raise ValueError(f"model path {str(directory)!r} is not a directory")
    if not (directory / "config.json").is_file():
        raise ValueError(f"model path {str(directory)!r} has no config.json: not a transformers model directory")
    return directory


def default_model_is_trained() -> bool:
    """Whether this install ships the embedded model's trained weights (else :func:`load_default_model`
    falls back to random weights), without loading anything."""
    path = default_model_path()
    return all((path / name).is_file() for name in _REQUIRED_ASSET_FILES)


def load_default_model(
    dtype: torch.dtype = torch.float32,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, bool]:
    """Load the embedded default model: ``(model, tokenizer, is_trained)``.

    Loads the trained model shipped in :func:`default_model_path`, offline. If those assets are
    missing (a stripped build), returns instead a model of the same architecture with random
    weights (seeded, so it is the same model every time; the global RNG is left untouched),
    a purely byte-level tokenizer built in-process, and ``is_trained=False``: its output is
    noise, and callers that show it must say so. The fallback's vocabulary is the tokenizer's
    259 tokens rather than the trained model's, the only way it differs from the shipped config.
    """
    _check_float_dtype(dtype)
    if default_model_is_trained():
        model, tokenizer = load_model(default_model_path(), dtype=dtype)
        return model, tokenizer, True

    tokenizer = build_byte_level_tokenizer(texts=(), vocab_size=len(SPECIAL_TOKENS) + 256)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(default_model_config(vocab_size=len(tokenizer)))
    model.generation_config = default_generation_config()
    model.to(dtype=dtype).eval()
    return model, tokenizer, False


def default_draft_is_trained() -> bool:
    """Whether this install ships the draft's trained weights AND the default model's (whose tokenizer
    the draft uses), without loading anything; else :func:`load_default_draft_model` falls back to
    random weights."""
    path = default_draft_path()
    return default_model_is_trained() and all((path / name).is_file() for name in _REQUIRED_DRAFT_FILES)


def load_default_draft_model(
    dtype: torch.dtype = torch.float32,
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase, bool]:
    """Load the embedded default model's draft: ``(model, tokenizer, is_trained)``.

    The draft (:func:`default_draft_path`, loaded offline, in eval mode, parameters of ``dtype``) is a
    one-layer model of the default model's family (:func:`default_draft_config`) distilled from it; the
    tokenizer returned is the default model's own, which the draft shares (the draft directory holds
    none), so ``generate(target, ..., assistant_model=draft)`` needs no tokenizer at all.

    If the draft's assets are missing (a stripped build), returns, like :func:`load_default_model`, a
    draft of the same architecture with seeded random weights and ``is_trained=False``, over the
    tokenizer that :func:`load_default_model` returns (the trained one, or the byte-level fallback if
    the default model is missing too), so the two still pair: speculation with it stays correct, since
    the target verifies every token, but rarely gains.
    """
    _check_float_dtype(dtype)
    if default_model_is_trained():
        with _progress_bars_disabled():
            tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    else:
        tokenizer = build_byte_level_tokenizer(texts=(), vocab_size=len(SPECIAL_TOKENS) + 256)
    if default_draft_is_trained():
        model, _ = load_draft_model(default_draft_path(), dtype=dtype)
        return model, tokenizer, True

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = transformers.LlamaForCausalLM(default_draft_config(vocab_size=len(tokenizer)))
    model.generation_config = default_draft_generation_config()
    model.to(dtype=dtype).eval()
    return model, tokenizer, False


@contextlib.contextmanager
def _progress_bars_disabled() -> Iterator[None]:
    """transformers' (and the Hub client's) progress bars off inside the block, restored after it."""
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _check_float_dtype(dtype: object) -> None:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
