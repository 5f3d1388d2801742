"""Tiny, seeded, random-weight causal LMs and an in-process tokenizer for generation tests.

Nothing here touches the network: models are built from configs with random weights under a fixed seed,
and the tokenizer is a small BPE trained on an in-memory corpus. Builders are cached, so a test session
pays for each object once; tests must therefore not mutate what they get (use ``fresh=True`` when a test
needs to modify the model, e.g. to patch its ``generate``).
"""

from __future__ import annotations

import functools

import pytest
import torch

# Special tokens of the tiny tokenizer; their ids are fixed by their position in this list.
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))

# Small enough to keep every forward pass cheap on a shared 2-core CPU, large enough for a real BPE vocabulary.
TOKENIZER_VOCAB_SIZE = 192
HIDDEN_SIZE = 32
NUM_LAYERS = 2
NUM_HEADS = 4
MAX_POSITIONS = 128
# Far above the usual 0.02: with it, next-token distributions are peaked and greedy/beam outputs vary from step
# to step instead of repeating one near-uniform argmax, which makes parity tests discriminating.
INITIALIZER_RANGE = 0.5

_CORPUS = (
    "the quick brown fox jumps over the lazy dog. stop the fox before it stops again! "
    "a stopwatch stopped at the bus stop; nonstop traffic kept going. "
    "once upon a time there was a small model that generated text one token at a time. "
    "it liked beams, samples and greedy choices; it never liked to stop early. "
    "hello world, hello tokens, hello again. the end is near, the end is here."
)


@functools.lru_cache(maxsize=None)
def tiny_tokenizer():
    """A ~192-token BPE tokenizer (metaspace pre-tokenization, so tokens carry a leading-space marker),
    trained in-process and wrapped in ``PreTrainedTokenizerFast``; pads on the left as decoder-only
    batching requires."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    backend.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
    )


def vocab_size() -> int:
    """The vocabulary size shared by the tiny models and the tiny tokenizer."""
    return len(tiny_tokenizer())


def _seeded_init(build, seed: int):
    """Build a module under a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def _gpt2(seed: int, **overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(**{
        "vocab_size": vocab_size(),
        "n_embd": HIDDEN_SIZE,
        "n_layer": NUM_LAYERS,
        "n_head": NUM_HEADS,
        "n_positions": MAX_POSITIONS,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "initializer_range": INITIALIZER_RANGE,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        **overrides,
    })
    return _seeded_init(lambda: GPT2LMHeadModel(config), seed)


def _llama_like(config_class: str, model_class: str, **defaults):
    """Builder for a Llama-shaped architecture of the tiny size; ``defaults`` are extra config values."""

    def build(seed: int, **overrides):
        import transformers

        config = getattr(transformers, config_class)(**{
            "vocab_size": vocab_size(),
            "hidden_size": HIDDEN_SIZE,
            "intermediate_size": 2 * HIDDEN_SIZE,
            "num_hidden_layers": NUM_LAYERS,
            "num_attention_heads": NUM_HEADS,
            "num_key_value_heads": NUM_HEADS // 2,
            "max_position_embeddings": MAX_POSITIONS,
            "initializer_range": INITIALIZER_RANGE,
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
            **defaults,
            **overrides,
        })
        return _seeded_init(lambda: getattr(transformers, model_class)(config), seed)

    return build


_BUILDERS = {
    "llama": _llama_like("LlamaConfig", "LlamaForCausalLM"),
    "gpt2": _gpt2,
    "qwen2": _llama_like("Qwen2Config", "Qwen2ForCausalLM"),
    # A 4-token sliding window, so the cache's sliding-window layers are exercised by short generations.
    "mistral": _llama_like("MistralConfig", "MistralForCausalLM", sliding_window=4),
    # Gemma-2-style hybrid attention: a 4-token sliding-window layer, then a full-attention layer.
    "gemma2": _llama_like("Gemma2Config", "Gemma2ForCausalLM", sliding_window=4, head_dim=HIDDEN_SIZE // NUM_HEADS,
                          query_pre_attn_scalar=HIDDEN_SIZE // NUM_HEADS,
                          layer_types=["sliding_attention", "full_attention"]),
}
# The two architectures every generation test runs on; the others are for targeted compatibility tests.
MODEL_KINDS = ("llama", "gpt2")


@functools.lru_cache(maxsize=None)
def _cached_model(kind: str, seed: int):
    return _BUILDERS[kind](seed)


def tiny_model(kind: str = "llama", seed: int = 0, fresh: bool = False, **config_overrides):
    """A tiny random-weight causal LM in eval mode: ``kind`` is ``"llama"``, ``"gpt2"``, ``"qwen2"``,
    ``"mistral"`` (with a 4-token sliding window) or ``"gemma2"`` (a 4-token sliding-window layer, then a
    full-attention one).

    The same ``(kind, seed)`` always gives the same weights. Without ``fresh`` or overrides the instance is
    shared across the session (do not mutate it); with either, a new instance is built.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"`kind` must be one of {tuple(_BUILDERS)}, got {kind!r}")
    if fresh or config_overrides:
        return _BUILDERS[kind](seed, **config_overrides)
    return _cached_model(kind, seed)


# Encoder-decoders whose encoder reads something else than token ids (their decoders use the tiny vocabulary).
NUM_MEL_BINS = 8
AUDIO_FRAMES = 32  # Whisper's encoder needs exactly 2 * max_source_positions frames (its convolutions halve them)
IMAGE_SIZE, PATCH_SIZE, IMAGE_CHANNELS = 16, 4, 3


@functools.lru_cache(maxsize=None)
def tiny_whisper(seed: int = 0):
    """A tiny random-weight Whisper-style speech-to-text model (``WhisperForConditionalGeneration``): the encoder
    reads ``input_features`` ``[batch, NUM_MEL_BINS, AUDIO_FRAMES]`` (see :func:`audio_features`), the decoder
    starts from BOS. No suppressed tokens, no forced or language tokens: generic generation only. Shared across
    the session: do not mutate it."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=vocab_size(), num_mel_bins=NUM_MEL_BINS, d_model=HIDDEN_SIZE, encoder_layers=NUM_LAYERS,
        decoder_layers=NUM_LAYERS, encoder_attention_heads=NUM_HEADS, decoder_attention_heads=NUM_HEADS,
        encoder_ffn_dim=2 * HIDDEN_SIZE, decoder_ffn_dim=2 * HIDDEN_SIZE, max_source_positions=AUDIO_FRAMES // 2,
        max_target_positions=MAX_POSITIONS // 2, init_std=0.3, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
        decoder_start_token_id=BOS_ID, suppress_tokens=None, begin_suppress_tokens=None)
    return _seeded_init(lambda: WhisperForConditionalGeneration(config), seed)


def audio_features(batch: int, seed: int = 0) -> torch.Tensor:
    """Random log-mel-like ``input_features`` for :func:`tiny_whisper`, ``[batch, NUM_MEL_BINS, AUDIO_FRAMES]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, NUM_MEL_BINS, AUDIO_FRAMES, generator=generator)


def _cross_attention_gpt2_config():
    """The GPT-2 decoder (with cross-attention, starting from BOS) of the tiny vision and speech encoder-decoders."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=vocab_size(), n_embd=HIDDEN_SIZE, n_layer=NUM_LAYERS, n_head=NUM_HEADS,
                      n_positions=MAX_POSITIONS, add_cross_attention=True, is_decoder=True,
                      initializer_range=INITIALIZER_RANGE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)


@functools.lru_cache(maxsize=None)
def tiny_vision_encoder_decoder(seed: int = 0):
    """A tiny random-weight image-to-text ``VisionEncoderDecoderModel``: a ViT encoder reading ``pixel_values``
    ``[batch, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE]`` (see :func:`images`) and a GPT-2 decoder with
    cross-attention, starting from BOS. Shared across the session: do not mutate it."""
    from transformers import VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    encoder = ViTConfig(hidden_size=HIDDEN_SIZE, num_hidden_layers=NUM_LAYERS, num_attention_heads=NUM_HEADS,
                        intermediate_size=2 * HIDDEN_SIZE, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                        num_channels=IMAGE_CHANNELS, initializer_range=0.3, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    decoder = _cross_attention_gpt2_config()
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS_ID, PAD_ID, EOS_ID
    return _seeded_init(lambda: VisionEncoderDecoderModel(config=config), seed)


def images(batch: int, seed: int = 0) -> torch.Tensor:
    """Random ``pixel_values`` for :func:`tiny_vision_encoder_decoder`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


WAVEFORM_SAMPLES = 400


@functools.lru_cache(maxsize=None)
def tiny_speech_encoder_decoder(seed: int = 0):
    """A tiny random-weight ``SpeechEncoderDecoderModel``: a Wav2Vec2 encoder reading raw ``input_values``
    ``[batch, WAVEFORM_SAMPLES]`` (see :func:`waveforms`; the model's own ``main_input_name`` is ``inputs``, the
    encoder's ``input_values``) and a GPT-2 decoder with cross-attention, starting from BOS. Shared across the
    session: do not mutate it."""
    from transformers import SpeechEncoderDecoderConfig, SpeechEncoderDecoderModel, Wav2Vec2Config

    encoder = Wav2Vec2Config(hidden_size=HIDDEN_SIZE, num_hidden_layers=NUM_LAYERS, num_attention_heads=NUM_HEADS,
                             intermediate_size=2 * HIDDEN_SIZE, conv_dim=(16, 16), conv_stride=(5, 2),
                             conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=NUM_HEADS,
                             feat_extract_norm="layer", do_stable_layer_norm=True, hidden_dropout=0.0,
                             attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0,
                             initializer_range=0.3)
    decoder = _cross_attention_gpt2_config()
    config = SpeechEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS_ID, PAD_ID, EOS_ID
    return _seeded_init(lambda: SpeechEncoderDecoderModel(config=config), seed)


def waveforms(batch: int, seed: int = 0) -> torch.Tensor:
    """Random raw audio ``input_values`` for :func:`tiny_speech_encoder_decoder`, ``[batch, WAVEFORM_SAMPLES]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, WAVEFORM_SAMPLES, generator=generator)


def encode_batch(texts, tokenizer=None):
    """Left-padded ``input_ids`` and ``attention_mask`` for ``texts`` (a string or a list of strings)."""
    tokenizer = tokenizer or tiny_tokenizer()
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    return encoded["input_ids"], encoded["attention_mask"]


@pytest.fixture
def tiny_model_environment():
    """Test setup for generating with the tiny models: transformers' per-call logging (its pad-token fallback
    notice) silenced, and restored afterwards. (tests/conftest.py already runs torch on one thread.)"""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A local model directory holding the tiny Llama and its tokenizer, as ``save_pretrained`` writes them:
    what the command and the batch integrations load (every Ray actor too) in a fraction of a second."""
    directory = tmp_path_factory.mktemp("tiny_llama")
    tiny_model("llama").save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return str(directory)
