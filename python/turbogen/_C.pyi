"""Typed stub of turbogen's compiled extension (csrc/bindings/). Use turbogen.ops, not this module.

Every op has an argument struct whose fields are set by name (buffers as integer addresses from
``Tensor.data_ptr()``, 0 for none) and launchers ``launch_<op>_cpu(args)`` /
``launch_<op>_cuda(args, stream)``, which validate the struct before touching memory and raise
ValueError naming the bad argument. The CUDA launchers exist in every build and raise RuntimeError
when the extension was built without CUDA kernels. tests/ops/test_native_bounds.py keeps this stub
and the module's names in sync.
"""

version: str
cuda_compiled: bool
cuda_archs: str

class SamplingArgs:
    logits: int
    rows: int
    vocab: int
    row_stride: int
    dtype: int
    temperature: int
    temperature_per_row: bool
    top_k: int
    top_k_per_row: bool
    top_p: int
    top_p_per_row: bool
    min_p: int
    min_p_per_row: bool
    seed: int
    offset: int
    offset_per_row: bool
    tokens: int
    logprobs: int
    filtered: int
    workspace: int
    workspace_bytes: int
    # Penalties applied before sampling (as turbogen.ops.apply_penalties would): penalty_mask = 0 for none.
    penalty_mask: int  # int32 [rows, (vocab + 31) // 32]: bit t % 32 of word t // 32 marks token t
    penalty_seen: int  # int32 [rows, vocab] counts for the repetition penalty, or 0
    penalty_generated: int  # int32 [rows, vocab] counts for the presence / frequency penalties, or 0
    repetition_penalty: int  # float32 [rows] or [1], > 0; needed with penalty_seen
    repetition_penalty_per_row: bool
    presence_penalty: int  # float32 [rows] or [1], finite; needed with penalty_generated
    presence_penalty_per_row: bool
    frequency_penalty: int  # float32 [rows] or [1], finite; needed with penalty_generated
    frequency_penalty_per_row: bool
    def __init__(self) -> None: ...

class SoftmaxArgs:
    logits: int
    out: int
    temperature: int
    rows: int
    cols: int
    row_stride: int
    dtype: int
    temperature_per_row: bool
    def __init__(self) -> None: ...

class PenaltyArgs:
    """Arguments of launch_apply_penalties_cpu / _cuda; the penalty fields as in SamplingArgs (mask required)."""
    logits: int  # [rows, vocab] of dtype, row r at logits + r * row_stride elements
    out: int  # [rows, vocab] of dtype, contiguous; == logits: in place (only penalised entries written)
    rows: int
    vocab: int
    row_stride: int
    dtype: int
    penalty_mask: int
    penalty_seen: int
    penalty_generated: int
    repetition_penalty: int
    repetition_penalty_per_row: bool
    presence_penalty: int
    presence_penalty_per_row: bool
    frequency_penalty: int
    frequency_penalty_per_row: bool
    def __init__(self) -> None: ...

class PenaltyAcceptArgs:
    """Arguments of launch_accept_penalty_tokens_cpu (a CPU PenaltyState; every array contiguous)."""
    mask: int  # int32 [rows, (vocab + 31) // 32], updated
    seen: int  # int32 [rows, vocab], updated, or 0
    generated: int  # int32 [rows, vocab], updated, or 0
    seen_from: int  # int64 [rows]; needed with seen
    generated_from: int  # int64 [rows]; needed with generated
    lengths: int  # int64 [rows], >= 0, updated
    recent: int  # int64 [rows, window] ring, updated
    retained: int  # int64 [rows], updated
    tokens: int  # int64 [rows, n], ids in [0, vocab)
    rows: int
    vocab: int
    window: int
    n: int
    def __init__(self) -> None: ...

class TopKArgs:
    scores: int
    values: int
    indices: int
    rows: int
    cols: int
    row_stride: int
    k: int
    def __init__(self) -> None: ...

class GumbelNoiseArgs:
    seed: int
    offset: int
    out: int
    rows: int
    columns: int
    def __init__(self) -> None: ...

class BeamStepArgs:
    logits: int
    running_scores: int
    finished_scores: int
    is_finished: int
    may_improve: int
    eos: int
    seeds: int
    offsets: int
    candidate_scores: int
    candidate_flat: int
    next_scores: int
    next_source: int
    next_finished_scores: int
    finished_source: int
    next_is_finished: int
    next_may_improve: int
    row_is_finite: int
    batch: int
    beams: int
    vocab: int
    rows: int
    row_stride: int
    num_eos: int
    k: int
    normalized: bool
    generated_length: int
    max_generated_length: int
    length_penalty: float
    early_stopping: int
    all_stop: bool
    dtype: int
    def __init__(self) -> None: ...

class VerifyArgs:
    logits: int  # [rows * positions, vocab] of `dtype`, row_stride elements between rows
    rows: int
    positions: int  # k + 1
    vocab: int
    row_stride: int
    dtype: int
    draft_tokens: int  # int64 [rows, positions - 1]
    draft_probs: int  # float32 [rows, positions - 1, vocab] (rejection mode), or 0
    rejection: bool
    temperature: int
    temperature_per_row: bool
    top_k: int
    top_k_per_row: bool
    top_p: int
    top_p_per_row: bool
    min_p: int
    min_p_per_row: bool
    seed: int
    offset: int
    offset_per_row: bool
    accepted: int  # int64 [rows] output
    tokens: int  # int64 [rows, positions] output
    workspace: int
    workspace_bytes: int
    def __init__(self) -> None: ...

class WriteKVArgs:
    key: int  # [tokens, kv_heads, head_dim] of `dtype`, contiguous
    value: int  # [tokens, kv_heads, head_dim] of `dtype`, contiguous
    key_cache: int  # [num_slots, kv_heads, head_dim] of `dtype`, written
    value_cache: int  # [num_slots, kv_heads, head_dim] of `dtype`, written
    slot_mapping: int  # int64 [tokens]: a slot, or -1 to skip
    tokens: int
    kv_heads: int
    head_dim: int
    num_slots: int  # num_blocks * block_size
    dtype: int
    def __init__(self) -> None: ...

class PagedAttentionArgs:
    query: int  # [total_q, heads, head_dim] of `dtype`, contiguous
    key_cache: int  # [num_blocks, block_size, kv_heads, head_dim]
    value_cache: int  # [num_blocks, block_size, kv_heads, head_dim]
    block_tables: int  # int32 [num_seqs, max_blocks_per_seq]
    cu_seqlens_q: int  # int32 [num_seqs + 1]
    seq_lens: int  # int32 [num_seqs]
    out: int  # [total_q, heads, head_dim] of `dtype` output
    total_q: int
    heads: int
    kv_heads: int
    head_dim: int
    num_blocks: int
    block_size: int
    num_seqs: int
    max_blocks_per_seq: int
    scale: float
    sliding_window: int  # 0: none
    softcap: float  # 0: none
    dtype: int
    def __init__(self) -> None: ...

def launch_sample_cpu(args: SamplingArgs) -> None: ...
def launch_sample_cuda(args: SamplingArgs, stream: int) -> None: ...
def sampling_workspace_bytes(rows: int, vocab: int) -> int: ...
def launch_softmax_cpu(args: SoftmaxArgs) -> None: ...
def launch_softmax_cuda(args: SoftmaxArgs, stream: int) -> None: ...
def launch_topk_cpu(args: TopKArgs) -> None: ...
def launch_beam_step_cpu(args: BeamStepArgs) -> None: ...
def launch_beam_step_cuda(args: BeamStepArgs, stream: int) -> None: ...
def launch_apply_penalties_cpu(args: PenaltyArgs) -> None: ...
def launch_apply_penalties_cuda(args: PenaltyArgs, stream: int) -> None: ...
def launch_accept_penalty_tokens_cpu(args: PenaltyAcceptArgs) -> None: ...
def launch_gumbel_noise_cpu(args: GumbelNoiseArgs) -> None: ...
def launch_gumbel_noise_cuda(args: GumbelNoiseArgs, stream: int) -> None: ...
def launch_verify_cpu(args: VerifyArgs) -> None: ...
def launch_verify_cuda(args: VerifyArgs, stream: int) -> None: ...
def verify_workspace_bytes(rows: int, positions: int, vocab: int, rejection: bool) -> int: ...
def launch_write_kv_cpu(args: WriteKVArgs) -> None: ...
def launch_write_kv_cuda(args: WriteKVArgs, stream: int) -> None: ...
def launch_paged_attention_cpu(args: PagedAttentionArgs) -> None: ...
def launch_paged_attention_cuda(args: PagedAttentionArgs, stream: int) -> None: ...
def philox4x32(c0: int, c1: int, c2: int, c3: int, k0: int, k1: int, rounds: int = 10) -> tuple[int, int, int, int]: ...
def cuda_device_count() -> tuple[int, str]: ...
def num_threads() -> int: ...
def cpu_isa() -> str: ...
