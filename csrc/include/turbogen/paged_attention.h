// The paged KV cache ops (turbogen.ops.write_kv, turbogen.ops.paged_attention). The functions computed are
// turbogen.ref.paged's: caches [num_blocks, block_size, kv_heads, head_dim]; token j of sequence s lives in
// slot block_tables[s][j / block_size] * block_size + j % block_size; the packed queries of sequence s are the
// last q_len(s) = cu_seqlens_q[s + 1] - cu_seqlens_q[s] positions of its seq_lens[s] keys, causal, with an
// optional sliding window (the last `sliding_window` keys) and softcap (tanh(score / c) * c before masking);
// query head h reads kv head h / (heads / kv_heads). Arithmetic in float32, output in the query's dtype.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/checks.h"
#include "turbogen/dtype.h"
#include "turbogen/status.h"

namespace turbogen {

// Every tensor has the one `dtype` (key, value and the caches); all are contiguous.
struct WriteKVArgs {
  const void* key = nullptr;           // [tokens, kv_heads, head_dim]
  const void* value = nullptr;         // [tokens, kv_heads, head_dim]
  void* key_cache = nullptr;           // [num_slots, kv_heads, head_dim] (num_slots = num_blocks * block_size)
  void* value_cache = nullptr;         // [num_slots, kv_heads, head_dim]
  const int64_t* slot_mapping = nullptr;  // [tokens]: a slot in [0, num_slots), or -1 (skip)
  int64_t tokens = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t num_slots = 0;
  DType dtype = DType::kFloat32;
};

// Sizes, dtype and pointers (the slot values live in host memory on the cpu only: cpu::write_kv checks them).
inline Status validate(const WriteKVArgs& a) {
  if (a.tokens < 0) return bad_shape("tokens must be >= 0");
  if (a.kv_heads < 1) return bad_shape("kv_heads must be >= 1");
  if (a.head_dim < 1) return bad_shape("head_dim must be >= 1");
  if (a.num_slots < 0) return bad_shape("num_slots must be >= 0");
  const Status dtype = check_dtype(a.dtype, "dtype");
  if (!dtype.ok()) return dtype;
  const int64_t max_elements = std::numeric_limits<int64_t>::max() / dtype_size(a.dtype);
  if (a.head_dim > max_elements / a.kv_heads) return bad_shape("kv_heads * head_dim overflows");
  const int64_t row = a.kv_heads * a.head_dim;
  if (a.tokens > 0 && row > max_elements / a.tokens) return bad_shape("key (tokens * kv_heads * head_dim) overflows");
  if (a.num_slots > 0 && row > max_elements / a.num_slots) return bad_shape("key_cache (num_slots) overflows");
  if (a.tokens == 0) return ok_status();
  if (!a.key) return null_pointer("key");
  if (!a.value) return null_pointer("value");
  if (!a.slot_mapping) return null_pointer("slot_mapping");
  if (a.num_slots > 0 && !a.key_cache) return null_pointer("key_cache");
  if (a.num_slots > 0 && !a.value_cache) return null_pointer("value_cache");
  return ok_status();
}

struct PagedAttentionArgs {
  const void* query = nullptr;         // [total_q, heads, head_dim] of `dtype`, contiguous
  const void* key_cache = nullptr;     // [num_blocks, block_size, kv_heads, head_dim] of `dtype`, contiguous
  const void* value_cache = nullptr;   // same shape as key_cache
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq], contiguous
  const int32_t* cu_seqlens_q = nullptr;  // [num_seqs + 1]: 0 = cu[0] <= cu[1] <= ... <= cu[num_seqs] = total_q
  const int32_t* seq_lens = nullptr;      // [num_seqs]: q_len(s) <= seq_lens[s] <= max_blocks_per_seq * block_size
  void* out = nullptr;                 // [total_q, heads, head_dim] of `dtype`, contiguous
  int64_t total_q = 0;
  int64_t heads = 0;                   // a multiple of kv_heads
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t num_blocks = 0;
  int64_t block_size = 0;
  int64_t num_seqs = 0;
  int64_t max_blocks_per_seq = 0;
  DType dtype = DType::kFloat32;
  float scale = 1.0f;                  // finite
  int64_t sliding_window = 0;          // 0: none; else >= 1
  float softcap = 0.0f;                // 0: none; else > 0 and finite
};

// Sizes, strides (none: everything is contiguous), dtype, scalars and pointers: what every launcher checks
// before touching memory. The index values (cu_seqlens_q, seq_lens, block tables) are checked by
// validate_values() where they are host memory (cpu); the CUDA kernels skip what is out of range instead.
inline Status validate(const PagedAttentionArgs& a) {
  if (a.total_q < 0) return bad_shape("total_q must be >= 0");
  if (a.num_seqs < 0) return bad_shape("num_seqs must be >= 0");
  if (a.kv_heads < 1) return bad_shape("kv_heads must be >= 1");
  if (a.heads < 1 || a.heads % a.kv_heads != 0) return bad_shape("heads must be a positive multiple of kv_heads");
  if (a.head_dim < 1) return bad_shape("head_dim must be >= 1");
  if (a.num_blocks < 0) return bad_shape("num_blocks must be >= 0");
  if (a.block_size < 1) return bad_shape("block_size must be >= 1");
  if (a.max_blocks_per_seq < 0) return bad_shape("max_blocks_per_seq must be >= 0");
  const Status dtype = check_dtype(a.dtype, "dtype");
  if (!dtype.ok()) return dtype;
  if (!std::isfinite(a.scale)) return bad_value("scale must be finite");
  if (!(a.softcap >= 0.0f) || std::isinf(a.softcap)) return bad_value("softcap must be 0 (none) or > 0 and finite");
  if (a.sliding_window < 0) return bad_value("sliding_window must be 0 (none) or >= 1");
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 4;  // elements, for any dtype
  if (a.heads > kMax / a.head_dim) return bad_shape("heads * head_dim overflows");
  if (a.total_q > 0 && a.heads * a.head_dim > kMax / a.total_q) return bad_shape("query (total_q * heads) overflows");
  if (a.kv_heads * a.head_dim > kMax / a.block_size) return bad_shape("block_size * kv_heads * head_dim overflows");
  if (a.num_blocks > 0 && a.block_size * a.kv_heads * a.head_dim > kMax / a.num_blocks)
    return bad_shape("key_cache (num_blocks) overflows");
  if (a.max_blocks_per_seq > 0 && a.block_size > std::numeric_limits<int32_t>::max() / a.max_blocks_per_seq)
    return bad_shape("max_blocks_per_seq * block_size must fit in int32");
  if (a.num_seqs > 0 && a.max_blocks_per_seq > kMax / a.num_seqs) return bad_shape("block_tables overflows");
  if (a.total_q > std::numeric_limits<int32_t>::max()) return bad_shape("total_q must fit in int32");
  if (!a.cu_seqlens_q) return null_pointer("cu_seqlens_q");
  if (a.total_q == 0) return ok_status();
  if (a.num_seqs == 0) return bad_shape("total_q > 0 queries need num_seqs >= 1");
  if (!a.query) return null_pointer("query");
  if (!a.out) return null_pointer("out");
  if (!a.seq_lens) return null_pointer("seq_lens");
  if (a.max_blocks_per_seq > 0 && !a.block_tables) return null_pointer("block_tables");
  if (a.num_blocks > 0 && !a.key_cache) return null_pointer("key_cache");
  if (a.num_blocks > 0 && !a.value_cache) return null_pointer("value_cache");
  return ok_status();
}

// The index values, in host memory, after validate(): cu_seqlens_q runs from 0 to total_q without going down,
// every sequence has at least its queries' keys and at most its block table's, and every block-table entry a
// sequence reads (the first ceil(seq_lens[s] / block_size)) names a block in [0, num_blocks).
inline Status validate_values(const PagedAttentionArgs& a) {
  if (a.cu_seqlens_q[0] != 0) return bad_value("cu_seqlens_q[0] must be 0");
  for (int64_t s = 0; s < a.num_seqs; ++s) {
    const int64_t q_len = static_cast<int64_t>(a.cu_seqlens_q[s + 1]) - a.cu_seqlens_q[s];
    if (q_len < 0) return bad_value("cu_seqlens_q must be non-decreasing");
    if (a.cu_seqlens_q[s + 1] > a.total_q) return bad_value("cu_seqlens_q must end at total_q");
    const int64_t len = a.seq_lens[s];
    if (len < q_len) return bad_value("seq_lens[s] must be >= the sequence's query count");
    if (len > a.max_blocks_per_seq * a.block_size)
      return bad_value("seq_lens[s] must be <= max_blocks_per_seq * block_size");
    const int64_t used = (len + a.block_size - 1) / a.block_size;
    for (int64_t b = 0; b < used; ++b) {
      const int64_t block = a.block_tables[s * a.max_blocks_per_seq + b];
      if (block < 0 || block >= a.num_blocks) return bad_value("block_tables entry out of [0, num_blocks)");
    }
  }
  if (a.cu_seqlens_q[a.num_seqs] != a.total_q) return bad_value("cu_seqlens_q must end at total_q");
  return ok_status();
}

namespace cpu {
// validate(), every slot in [-1, num_slots) (nothing written otherwise), then the copies.
Status write_kv(const WriteKVArgs& args);
// validate(), validate_values(), then (sequence, kv head, query tile) items on the thread pool: each streams its
// sequence's keys block by block through the block table with an online softmax in float32.
Status paged_attention(const PagedAttentionArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// The largest head_dim the CUDA kernel takes.
constexpr int64_t kPagedMaxHeadDim = 256;
Status validate_launch(const WriteKVArgs& args);
// One thread per element; a slot outside [0, num_slots) is skipped.
cudaError_t write_kv(const WriteKVArgs& args, cudaStream_t stream);
// validate() and head_dim <= kPagedMaxHeadDim.
Status validate_launch(const PagedAttentionArgs& args);
// One block per (query token, head), online softmax over chunks of keys; index values read on the device are
// clamped or skipped (a sequence index, length or block outside its range is never dereferenced).
cudaError_t paged_attention(const PagedAttentionArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
