"""turbogen.cache: StaticKVCache against transformers' DynamicCache on tiny random-weight models.

The oracle is the dynamic cache: with a static cache a model must produce the same logits at every real
(non-padding) position and greedy search the same tokens, in a hand-written decode loop and inside
transformers' own ``generate``. The remaining tests pin the cache's own contract: in-place writes by
position, appends without positions (transformers v5's calling convention), beam reordering, overflow
and shape errors, reset, crop and the ``make_cache`` factory.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Cache, DynamicCache

from conftest import CACHE_API_IN_4_45, STATIC_CACHES_IN_4_45, skip_on_transformers_4_45
from tiny_models import encode_batch, tiny_model
from tolerances import assert_close_across_compilations
from turbogen.cache import CACHE_IMPLEMENTATIONS, StaticKVCache, make_cache
from turbogen.generation.runner import _reorder_cache

PROMPTS = {
    "batch1": ["the quick brown fox"],
    # Different lengths, so the first row is left-padded.
    "batch2_left_padded": ["hello world", "once upon a time there was a small model"],
}
NEW_TOKENS = 8
# Slots beyond what the decode needs, so attention always also spans never-written (zero) slots.
SPARE_SLOTS = 5


def _model(kind: str, attention: str):
    return tiny_model(kind, attn_implementation=attention)


def _static_cache_for(model, rows: int, max_cache_len: int) -> StaticKVCache:
    parameter = next(model.parameters())
    return StaticKVCache(model.config, batch_size=rows, max_cache_len=max_cache_len, dtype=parameter.dtype,
                         device=parameter.device)


def _greedy_decode(model, input_ids, attention_mask, cache, mask_columns: int, decode_forward=None):
    """A minimal decode loop, as turbogen's generate runs the model: explicit ``cache_position`` and
    ``position_ids``, and an attention mask that is either cut to the tokens seen so far (``mask_columns=0``,
    as for a dynamic cache) or a fixed-shape buffer of ``mask_columns`` columns, 1 for the tokens still to
    come (as a CUDA-graph loop passes it). ``decode_forward`` (default: the model) runs the one-token steps.

    Returns the prefill logits, the logits of each decode step and the generated tokens."""
    rows, prompt_length = input_ids.shape
    mask = torch.ones(rows, max(mask_columns, prompt_length + NEW_TOKENS), dtype=attention_mask.dtype)
    mask[:, :prompt_length] = attention_mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    cache_position = torch.arange(prompt_length)
    tokens, step_logits = input_ids, []
    with torch.no_grad():
        for step in range(NEW_TOKENS):
            seen = int(cache_position[-1]) + 1
            forward = model if step == 0 or decode_forward is None else decode_forward
            output = forward(input_ids=tokens[:, cache_position], attention_mask=mask[:, :max(seen, mask_columns)],
                           position_ids=positions[:, cache_position], cache_position=cache_position,
                           past_key_values=cache, use_cache=True)
            if step == 0:
                prefill_logits = output.logits
            step_logits.append(output.logits[:, -1])
            next_token = output.logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=-1)
            cache_position = cache_position[-1:] + 1
    return prefill_logits, torch.stack(step_logits, dim=1), tokens[:, prompt_length:]


@pytest.mark.parametrize("prompts", list(PROMPTS), ids=list(PROMPTS))
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_manual_greedy_loop_matches_dynamic_cache(kind, attention, prompts):
    model = _model(kind, attention)
    input_ids, attention_mask = encode_batch(PROMPTS[prompts])
    rows, prompt_length = input_ids.shape
    if rows > 1:
        assert not bool(attention_mask.all()), "the batch must contain left padding"
    max_cache_len = prompt_length + NEW_TOKENS + SPARE_SLOTS

    static = _static_cache_for(model, rows, max_cache_len)
    storage = (static.key_cache.data_ptr(), static.value_cache.data_ptr())
    # The dynamic cache gets the mask sliced to what it has seen; the static one a fixed-shape buffer as wide as
    # the cache, as a CUDA-graph loop passes it.
    dynamic_prefill, dynamic_steps, dynamic_tokens = _greedy_decode(
        model, input_ids, attention_mask, DynamicCache(config=model.config), mask_columns=0)
    static_prefill, static_steps, static_tokens = _greedy_decode(
        model, input_ids, attention_mask, static, mask_columns=max_cache_len)

    real = attention_mask.bool()  # padding rows attend to nothing real: their outputs carry no meaning
    # Attention over all max_cache_len slots (masked) sums in another order than over the slots seen so far.
    assert_close_across_compilations(static_prefill[real], dynamic_prefill[real])
    assert_close_across_compilations(static_steps, dynamic_steps)
    assert torch.equal(static_tokens, dynamic_tokens)
    # Written in place: same storage, prompt + all fed tokens cached, the spare slots untouched.
    assert (static.key_cache.data_ptr(), static.value_cache.data_ptr()) == storage
    fed = prompt_length + NEW_TOKENS - 1
    assert static.get_seq_length() == fed
    assert not bool(static.key_cache[..., fed:, :].any())


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_decode_step_compiles_to_one_graph():
    """Dynamo traces a decode step with the static cache into a single graph (``fullgraph``: no break in
    ``update`` or the mask code) that every later step reuses: nothing per-step lives in Python ints."""
    model = _model("llama", "sdpa")
    input_ids, attention_mask = encode_batch(PROMPTS["batch2_left_padded"])
    rows, prompt_length = input_ids.shape
    max_cache_len = prompt_length + NEW_TOKENS + SPARE_SLOTS
    graphs = []

    def record_graph(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    def decode_step(**inputs):  # compiled instead of model.forward, so dynamo's cache entries stay this test's own
        return model(**inputs)

    compiled_forward = torch.compile(decode_step, backend=record_graph, fullgraph=True)
    _, eager_steps, eager_tokens = _greedy_decode(
        model, input_ids, attention_mask, _static_cache_for(model, rows, max_cache_len), mask_columns=max_cache_len)
    _, compiled_steps, compiled_tokens = _greedy_decode(
        model, input_ids, attention_mask, _static_cache_for(model, rows, max_cache_len), mask_columns=max_cache_len,
        decode_forward=compiled_forward)

    assert len(graphs) == 1
    # The traced graph may build the mask and pick attention kernels differently from eager code.
    assert_close_across_compilations(compiled_steps, eager_steps)
    assert torch.equal(compiled_tokens, eager_tokens)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_transformers_generate_with_static_cache_matches_default(kind):
    model = _model(kind, "sdpa")
    input_ids, attention_mask = encode_batch(PROMPTS["batch2_left_padded"])
    rows, prompt_length = input_ids.shape
    settings = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False,
                    output_scores=True, return_dict_in_generate=True)
    static = _static_cache_for(model, rows, prompt_length + NEW_TOKENS + SPARE_SLOTS)

    default = model.generate(input_ids, **settings)
    with_static = model.generate(input_ids, past_key_values=static, **settings)

    assert torch.equal(with_static.sequences, default.sequences)
    assert_close_across_compilations(torch.stack(with_static.scores), torch.stack(default.scores))
    assert with_static.past_key_values is static
    assert static.get_seq_length() == prompt_length + NEW_TOKENS - 1

    # Emptied in place, the same cache serves a second call identically.
    static.reset()
    again = model.generate(input_ids, past_key_values=static, **settings)
    assert torch.equal(again.sequences, default.sequences)


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_transformers_beam_search_with_static_cache_matches_default():
    """Beam search reorders the cache through ``reorder_cache`` every step."""
    model = _model("llama", "sdpa")
    input_ids, attention_mask = encode_batch(PROMPTS["batch2_left_padded"])
    rows, prompt_length = input_ids.shape
    num_beams = 3
    settings = dict(attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=num_beams,
                    num_return_sequences=2)
    static = _static_cache_for(model, rows * num_beams, prompt_length + NEW_TOKENS)

    assert torch.equal(model.generate(input_ids, past_key_values=static, **settings),
                       model.generate(input_ids, **settings))


# ----------------------------------------------------------------------------------------------------------
# The cache's own contract
# ----------------------------------------------------------------------------------------------------------

LAYERS, ROWS, KV_HEADS, HEAD_DIM = 2, 3, 2, 4


def _small_cache(max_cache_len: int = 8, **overrides) -> StaticKVCache:
    shape = dict(batch_size=ROWS, max_cache_len=max_cache_len, num_layers=LAYERS, num_kv_heads=KV_HEADS,
                 head_dim=HEAD_DIM)
    return StaticKVCache(**{**shape, **overrides})


def _states(tokens: int, seed: int, rows: int = ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, KV_HEADS, tokens, HEAD_DIM, generator=generator),
            torch.randn(rows, KV_HEADS, tokens, HEAD_DIM, generator=generator))


def _fill(cache, chunks, with_positions: bool = True):
    """Write ``chunks`` (token counts) into every layer of ``cache`` as consecutive updates."""
    start = 0
    for seed, tokens in enumerate(chunks):
        for layer in range(LAYERS):
            keys, values = _states(tokens, seed=10 * seed + layer)
            kwargs = {"cache_position": torch.arange(start, start + tokens)} if with_positions else None
            cache.update(keys, values, layer, kwargs)
        start += tokens


def test_shape_from_configs_and_overrides():
    llama, gpt2 = tiny_model("llama"), tiny_model("gpt2")
    cache = StaticKVCache(llama.config, batch_size=2, max_cache_len=16)
    config = llama.config
    assert cache.key_cache.shape == (config.num_hidden_layers, 2, config.num_key_value_heads, 16,
                                     config.hidden_size // config.num_attention_heads)
    assert cache.num_kv_heads != config.num_attention_heads  # grouped-query attention: KV heads only

    cache = StaticKVCache(gpt2.config, batch_size=1, max_cache_len=4)
    config = gpt2.config
    assert cache.value_cache.shape == (config.n_layer, 1, config.n_head, 4, config.n_embd // config.n_head)

    # Explicit sizes win over the config's (e.g. the heads of one tensor-parallel shard).
    assert StaticKVCache(llama.config, batch_size=1, max_cache_len=4, num_kv_heads=1).num_kv_heads == 1
    with pytest.raises(ValueError, match="head_dim"):
        StaticKVCache(batch_size=1, max_cache_len=4, num_layers=1, num_kv_heads=1)
    with pytest.raises(ValueError, match="max_cache_len"):
        _small_cache(max_cache_len=0)
    with pytest.raises(TypeError, match="batch_size"):
        _small_cache(batch_size=2.0)
    with pytest.raises(TypeError, match="dtype"):
        _small_cache(dtype=torch.int64)


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_transformers_interface():
    cache = _small_cache(max_cache_len=8)
    assert isinstance(cache, Cache)
    assert len(cache) == cache.num_layers == LAYERS and cache.is_compileable and cache.is_initialized
    assert cache.is_sliding == [False] * LAYERS
    assert cache.max_cache_len == cache.get_max_cache_shape() == cache.get_max_length() == 8
    assert cache.max_batch_size == cache.batch_size == ROWS
    assert all(layer.is_compileable for layer in cache.layers)
    # Layers are views of the one storage tensor, not copies.
    for index, layer in enumerate(cache.layers):
        assert layer.keys.data_ptr() == cache.key_cache[index].data_ptr() == cache[index][0].data_ptr()
        assert layer.values.data_ptr() == cache.value_cache[index].data_ptr()
    assert [keys.shape for keys, _ in cache] == [(ROWS, KV_HEADS, 8, HEAD_DIM)] * LAYERS
    # Masks always span the whole cache, from v4.57's cache_position or v5's query length alike.
    assert cache.get_mask_sizes(torch.arange(3), 0) == cache.get_mask_sizes(3, 1) == (8, 0)
    # transformers' ahead-of-time initialisation finds the storage in place, and checks that it fits.
    cache.early_initialization(ROWS, KV_HEADS, HEAD_DIM, torch.float32, torch.device("cpu"))
    cache.early_initialization(ROWS, [KV_HEADS] * LAYERS, [HEAD_DIM] * LAYERS, torch.float32, "cpu")  # v5's lists
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        cache.early_initialization(ROWS, KV_HEADS + 1, HEAD_DIM, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="head_dim"):
        cache.early_initialization(ROWS, KV_HEADS, [HEAD_DIM, HEAD_DIM + 1], torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match=f"`num_heads` lists 1 layers but the cache has {LAYERS}"):
        cache.early_initialization(ROWS, [KV_HEADS], HEAD_DIM, torch.float32, torch.device("cpu"))
    with pytest.raises(TypeError, match="dtype"):
        cache.early_initialization(ROWS, KV_HEADS, HEAD_DIM, torch.float16, torch.device("cpu"))


def test_update_writes_in_place_by_position():
    cache = _small_cache()
    storage = cache.key_cache.data_ptr()
    prompt_keys, prompt_values = _states(3, seed=1)
    keys, values = cache.update(prompt_keys, prompt_values, 1, {"cache_position": torch.arange(3)})
    assert keys.data_ptr() == cache.key_cache[1].data_ptr() and keys.shape == (ROWS, KV_HEADS, 8, HEAD_DIM)
    step_keys, step_values = _states(1, seed=2)
    cache.update(step_keys, step_values, 1, {"cache_position": torch.tensor([3])})

    assert torch.equal(cache.key_cache[1, :, :, :4], torch.cat([prompt_keys, step_keys], dim=2))
    assert torch.equal(cache.value_cache[1, :, :, :4], torch.cat([prompt_values, step_values], dim=2))
    assert not bool(cache.key_cache[0].any())  # other layers untouched
    assert cache.get_seq_length(1) == 4 and cache.get_seq_length(0) == 0
    assert cache.key_cache.data_ptr() == storage


def test_update_without_positions_appends_like_transformers_v5():
    """transformers v5 models call ``update(key, value, layer_idx)``; their masks read ``get_query_offset``."""
    with_positions, appended = _small_cache(), _small_cache()
    _fill(with_positions, [3, 1, 1])
    for layer in range(LAYERS):
        assert int(appended.get_query_offset(layer)) == 0
    _fill(appended, [3, 1, 1], with_positions=False)

    assert torch.equal(appended.key_cache, with_positions.key_cache)
    assert torch.equal(appended.value_cache, with_positions.value_cache)
    offset = appended.get_query_offset(0)
    assert isinstance(offset, torch.Tensor) and offset.dim() == 0 and int(offset) == appended.get_seq_length() == 5


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_reorder_cache_matches_dynamic_cache():
    static, dynamic = _small_cache(), DynamicCache()
    for layer in range(LAYERS):
        keys, values = _states(5, seed=layer)
        static.update(keys, values, layer, {"cache_position": torch.arange(5)})
        dynamic.update(keys, values, layer)
    storage = (static.key_cache.data_ptr(), static.value_cache.data_ptr())

    beam_idx = torch.tensor([2, 0, 0])
    static.reorder_cache(beam_idx)
    dynamic.reorder_cache(beam_idx)
    for layer in range(LAYERS):
        assert torch.equal(static.layers[layer].keys[:, :, :5], dynamic.layers[layer].keys)
        assert torch.equal(static.layers[layer].values[:, :, :5], dynamic.layers[layer].values)
    assert (static.key_cache.data_ptr(), static.value_cache.data_ptr()) == storage

    static.reorder_(torch.tensor([1, 2, 0]))  # the in-place spelling does the same
    dynamic.reorder_cache(torch.tensor([1, 2, 0]))
    assert torch.equal(static.layers[0].keys[:, :, :5], dynamic.layers[0].keys)
    static.layers[1].reorder_cache(torch.tensor([0, 0, 1]))  # one layer alone, in its own view
    dynamic.layers[1].reorder_cache(torch.tensor([0, 0, 1]))
    for layer in range(LAYERS):
        assert torch.equal(static.layers[layer].values[:, :, :5], dynamic.layers[layer].values)
    assert (static.key_cache.data_ptr(), static.value_cache.data_ptr()) == storage

    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        static.reorder_cache(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        static.reorder_cache(torch.tensor([0, 1, 3]))
    with pytest.raises(TypeError, match="beam_idx"):
        static.reorder_cache(torch.tensor([0.0, 1.0, 2.0]))


class _RecordedOps(TorchDispatchMode):
    """The aten ops run on floating tensors (the cached states, not the index) while active."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [arg for arg in (*args, *(kwargs or {}).values()) if isinstance(arg, torch.Tensor)]
        if any(tensor.is_floating_point() for tensor in tensors):
            self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


_COPYING_OPS = {"index_select", "index_copy", "index_copy_", "copy_", "gather", "index", "index_put_"}


def _filled_caches(rows: int = 4):
    """A static cache and a DynamicCache holding the same random states (5 tokens per layer)."""
    static, dynamic = _small_cache(batch_size=rows), DynamicCache()
    for layer in range(LAYERS):
        keys, values = _states(5, seed=10 + layer, rows=rows)
        static.update(keys, values, layer, {"cache_position": torch.arange(5)})
        dynamic.update(keys, values, layer)
    return static, dynamic


def _reorder_both(static, dynamic, index):
    """Reorder through the runner's path (the in-place one for both caches); the caches stay the same objects."""
    assert _reorder_cache(None, static, index) is static
    assert _reorder_cache(None, dynamic, index) is dynamic


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_a_reorder_by_the_identity_copies_nothing():
    static, dynamic = _filled_caches()
    before = static.key_cache.clone(), [layer.keys.clone() for layer in dynamic.layers]
    with _RecordedOps() as recorded:
        _reorder_both(static, dynamic, torch.arange(4))
        static.layers[0].reorder_cache(torch.arange(4))
    assert not _COPYING_OPS & set(recorded.ops), recorded.ops
    assert torch.equal(static.key_cache, before[0])
    assert all(torch.equal(layer.keys, keys) for layer, keys in zip(dynamic.layers, before[1]))


@pytest.mark.parametrize("index", [[1, 0, 2, 3], [0, 3, 2, 1], [1, 0, 0, 1], [3, 3, 3, 3], [2, 3, 0, 1], [1, 2, 3, 0]],
                         ids=str)
@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_in_place_reorders_equal_a_gather_swaps_included(index):
    """Swaps and cycles are the trap for in-place copies: a row must be read before it is overwritten."""
    static, dynamic = _filled_caches()
    index = torch.tensor(index)
    expected_static = (static.key_cache.index_select(1, index), static.value_cache.index_select(1, index))
    expected_dynamic = [(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                        for layer in dynamic.layers]
    addresses = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in dynamic.layers]
    storage = (static.key_cache.data_ptr(), static.value_cache.data_ptr())
    with _RecordedOps() as recorded:
        _reorder_both(static, dynamic, index)
    moved = int((index != torch.arange(4)).sum())
    if 2 * moved <= 4:  # few rows move: per row-major slice, one gather of their sources and one index_copy_
        slices = 2 * LAYERS + 2 * LAYERS  # the static storage's keys and values per layer, each dynamic layer's
        assert recorded.ops.count("index_copy_") == slices and recorded.ops.count("index_select") == slices
        assert "copy_" not in recorded.ops
    assert torch.equal(static.key_cache, expected_static[0]) and torch.equal(static.value_cache, expected_static[1])
    for layer, (keys, values) in zip(dynamic.layers, expected_dynamic):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)
    # In place: no new tensors.
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in dynamic.layers] == addresses
    assert (static.key_cache.data_ptr(), static.value_cache.data_ptr()) == storage
    # One layer alone, in its own view, does the same.
    single, _ = _filled_caches()
    single.layers[1].reorder_cache(index)
    assert torch.equal(single.layers[1].keys, static.layers[1].keys)
    assert torch.equal(single.layers[0].keys, _filled_caches()[0].layers[0].keys)


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_a_device_side_index_gathers_every_row_without_a_host_read(monkeypatch):
    """Off the host (here: while compiling, where reading the index is not allowed either) every row is
    gathered; the result is the same."""
    static, dynamic = _filled_caches()
    index = torch.tensor([1, 0, 3, 3])
    expected = static.key_cache.index_select(1, index)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    _reorder_both(static, dynamic, index)
    assert torch.equal(static.key_cache, expected)
    assert torch.equal(dynamic.layers[0].keys, expected[0][:, :, :5])


@skip_on_transformers_4_45(CACHE_API_IN_4_45)
def test_caches_that_are_not_plain_keep_their_own_reorder():
    class OwnCache(DynamicCache):
        calls = 0

        def reorder_cache(self, beam_idx):
            OwnCache.calls += 1
            super().reorder_cache(beam_idx)

    cache = OwnCache()
    cache.update(*_states(3, seed=0), 0)
    keys = cache.layers[0].keys
    assert _reorder_cache(None, cache, torch.tensor([2, 1, 0])) is cache
    assert OwnCache.calls == 1 and torch.equal(cache.layers[0].keys, keys.index_select(0, torch.tensor([2, 1, 0])))


@pytest.mark.parametrize("with_positions", [True, False], ids=["cache_position", "append"])
def test_overflow_is_a_value_error_and_writes_nothing(with_positions):
    cache = _small_cache(max_cache_len=4)
    _fill(cache, [3], with_positions=with_positions)
    before = cache.key_cache.clone()
    keys, values = _states(2, seed=7)
    kwargs = {"cache_position": torch.arange(3, 5)} if with_positions else None
    with pytest.raises(ValueError, match="max_cache_len"):
        cache.update(keys, values, 0, kwargs)
    assert torch.equal(cache.key_cache, before) and cache.get_seq_length() == 3

    keys, values = _states(5, seed=8)  # more new tokens than the whole cache holds
    with pytest.raises(ValueError, match="max_cache_len"):
        cache.update(keys, values, 0, {"cache_position": torch.arange(5)} if with_positions else None)


def test_mismatched_inputs_are_rejected():
    cache = _small_cache()
    keys, values = _states(2, seed=0)
    positions = {"cache_position": torch.arange(2)}
    with pytest.raises(ValueError, match="batch_size=3"):
        cache.update(*_states(2, seed=0, rows=2), 0, positions)
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        cache.update(keys[:, :1], values[:, :1], 0, positions)
    with pytest.raises(ValueError, match="head_dim=4"):
        cache.update(keys[..., :3], values[..., :3], 0, positions)
    with pytest.raises(ValueError, match="same shape"):
        cache.update(keys, values[:, :, :1], 0, positions)
    with pytest.raises(ValueError, match="4-D"):
        cache.update(keys[0], values[0], 0, positions)
    with pytest.raises(TypeError, match="dtype"):
        cache.update(keys.double(), values.double(), 0, positions)
    with pytest.raises(ValueError, match="one position per new token"):
        cache.update(keys, values, 0, {"cache_position": torch.arange(3)})
    with pytest.raises(TypeError, match="cache_position"):
        cache.update(keys, values, 0, {"cache_position": torch.arange(2, dtype=torch.int32)})
    with pytest.raises(ValueError, match="layer_idx"):
        cache.update(keys, values, LAYERS, positions)
    assert not bool(cache.key_cache.any())


def test_reset_and_crop():
    cache = _small_cache()
    storage = cache.key_cache.data_ptr()
    _fill(cache, [4, 1, 1])
    reference = cache.key_cache.clone()

    cache.crop(5)
    assert cache.get_seq_length() == 5
    assert torch.equal(cache.key_cache[..., :5, :], reference[..., :5, :])
    assert not bool(cache.key_cache[..., 5:, :].any())
    cache.crop(-2)  # negative: drop that many from the end
    assert cache.get_seq_length() == 3 and not bool(cache.key_cache[..., 3:, :].any())
    cache.crop(7)  # longer than what is cached: nothing to do
    assert cache.get_seq_length() == 3

    cache.reset()
    assert cache.get_seq_length() == 0 and all(cache.get_seq_length(layer) == 0 for layer in range(LAYERS))
    assert not bool(cache.key_cache.any()) and not bool(cache.value_cache.any())
    assert cache.key_cache.data_ptr() == storage
    _fill(cache, [4, 1, 1])  # refilled after a reset, it is exactly as before
    assert torch.equal(cache.key_cache, reference)


def test_fixed_batch_size():
    cache = _small_cache()
    with pytest.raises(NotImplementedError, match="fixed batch size"):
        cache.batch_repeat_interleave(2)
    with pytest.raises(NotImplementedError, match="fixed batch size"):
        cache.batch_select_indices(torch.tensor([0]))


@skip_on_transformers_4_45(STATIC_CACHES_IN_4_45)
def test_make_cache():
    model = tiny_model("llama")
    assert CACHE_IMPLEMENTATIONS[:2] == ("dynamic", "static")  # the others: tests/cache/test_cache_implementations.py
    for name in ("dynamic", None):
        assert type(make_cache(name, model, batch_size=2, max_cache_len=10)) is DynamicCache

    static = make_cache("static", model, batch_size=2, max_cache_len=10)
    assert isinstance(static, StaticKVCache)
    assert static.key_cache.shape == StaticKVCache(model.config, batch_size=2, max_cache_len=10).key_cache.shape
    assert (static.dtype, static.device) == (next(model.parameters()).dtype, next(model.parameters()).device)
    assert make_cache("static", model, 1, 4, dtype=torch.float64).dtype == torch.float64

    with pytest.raises(ValueError, match="CUDA"):  # a CPU model
        make_cache("offloaded", model, batch_size=1, max_cache_len=4)
    with pytest.raises(ValueError, match=r"one of \('dynamic', 'static'"):
        make_cache("bogus", model, batch_size=1, max_cache_len=4)
    with pytest.raises(ValueError, match="max_cache_len"):
        make_cache("static", model, batch_size=1, max_cache_len=0)
