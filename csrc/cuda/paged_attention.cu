// The paged KV cache ops on a GPU (turbogen.ops.write_kv, turbogen.ops.paged_attention): the functions computed
// are turbogen.ref.paged's.
//
// write_kv_kernel: one thread per element of the [tokens, kv_heads * head_dim] input; a slot outside
// [0, num_slots) (the -1 padding, or anything else) is skipped.
//
// paged_attention_kernel: one block (kThreads = 4 warps) per (query token, head). The token's sequence is found
// by binary search over cu_seqlens_q; its keys are streamed in chunks of kChunk positions through the block
// table: each warp scores every kWarps-th key of the chunk (lanes across head_dim, coalesced, then a warp sum),
// then every thread folds the chunk into the online softmax (running max and sum, identical in every thread) and
// accumulates the values for its dimensions (threads across head_dim, coalesced). Index values read on the device
// are never trusted: a token outside every sequence, or a position outside its sequence, writes zeros; a block
// entry outside [0, num_blocks) is skipped (its key never read). The host-side checks of the cpu backend
// (validate_values) are the place to get an error for such input.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "turbogen/paged_attention.h"

namespace turbogen {
namespace cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = kThreads;  // keys per chunk: one weight per thread
constexpr int kDimsPerThread = static_cast<int>(kPagedMaxHeadDim / kThreads);
constexpr int kWriteThreads = 256;

__device__ __forceinline__ float load(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(base)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void store(void* base, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::kFloat16: static_cast<__half*>(base)[i] = __float2half_rn(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(base)[i] = v; break;
  }
}

template <typename T>
__global__ void write_kv_kernel(const T* key, const T* value, T* key_cache, T* value_cache, const int64_t* slots,
                                int64_t tokens, int64_t row, int64_t num_slots) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= tokens * row) return;
  const int64_t t = i / row;
  const int64_t e = i - t * row;
  const int64_t slot = slots[t];
  if (slot < 0 || slot >= num_slots) return;
  key_cache[slot * row + e] = key[i];
  value_cache[slot * row + e] = value[i];
}

// The physical block of key j of sequence s, or -1 when the table's entry is out of range.
__device__ __forceinline__ int64_t block_of(const PagedAttentionArgs& a, int64_t s, int64_t j) {
  const int64_t b = j / a.block_size;
  if (b >= a.max_blocks_per_seq) return -1;
  const int64_t block = a.block_tables[s * a.max_blocks_per_seq + b];
  return (block >= 0 && block < a.num_blocks) ? block : -1;
}

__global__ void __launch_bounds__(kThreads) paged_attention_kernel(PagedAttentionArgs a) {
  __shared__ float q_s[kPagedMaxHeadDim];
  __shared__ float s_s[kChunk];
  const int64_t t = blockIdx.x;
  const int64_t h = blockIdx.y;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t D = a.head_dim;
  const int64_t kvh = h / (a.heads / a.kv_heads);
  char* out = static_cast<char*>(a.out);
  const int64_t out_row = (t * a.heads + h) * D;

  // The sequence s with cu[s] <= t < cu[s + 1] (the first s with cu[s + 1] > t).
  int64_t lo = 0, hi = a.num_seqs;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (a.cu_seqlens_q[mid + 1] > t) hi = mid; else lo = mid + 1;
  }
  const int64_t s = lo;
  int64_t p = -1, len = 0;
  if (s < a.num_seqs && a.cu_seqlens_q[s] <= t) {
    const int64_t q_len = static_cast<int64_t>(a.cu_seqlens_q[s + 1]) - a.cu_seqlens_q[s];
    len = a.seq_lens[s];
    p = len - q_len + (t - a.cu_seqlens_q[s]);
  }
  if (p < 0 || p >= len || len > a.max_blocks_per_seq * a.block_size) {
    for (int64_t d = tid; d < D; d += kThreads) store(out, a.dtype, out_row + d, 0.0f);
    return;
  }
  const int64_t key_lo = a.sliding_window > 0 ? max(static_cast<int64_t>(0), p - a.sliding_window + 1) : 0;
  const int64_t key_hi = p + 1;

  const int64_t q_row = (t * a.heads + h) * D;
  for (int64_t d = tid; d < D; d += kThreads) q_s[d] = load(a.query, a.dtype, q_row + d) * a.scale;
  __syncthreads();

  const int64_t key_stride = a.kv_heads * D;
  float acc[kDimsPerThread];
#pragma unroll
  for (int i = 0; i < kDimsPerThread; ++i) acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  for (int64_t start = key_lo; start < key_hi; start += kChunk) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kChunk), key_hi - start));
    for (int jj = warp; jj < n; jj += kWarps) {
      const int64_t j = start + jj;
      const int64_t block = block_of(a, s, j);
      float partial = 0.0f;
      if (block >= 0) {
        const int64_t row = (block * a.block_size + j % a.block_size) * key_stride + kvh * D;
        for (int64_t d = lane; d < D; d += 32) partial += q_s[d] * load(a.key_cache, a.dtype, row + d);
      }
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) partial += __shfl_xor_sync(0xffffffffu, partial, offset);
      if (lane == 0) {
        float score = partial;
        if (a.softcap > 0.0f) score = tanhf(score / a.softcap) * a.softcap;
        s_s[jj] = block >= 0 ? score : -INFINITY;
      }
    }
    __syncthreads();
    float chunk_max = -INFINITY;
    for (int jj = 0; jj < n; ++jj) chunk_max = fmaxf(chunk_max, s_s[jj]);
    const float m_new = fmaxf(m, chunk_max);
    __syncthreads();  // every thread has read the scores before they become weights
    if (m_new == -INFINITY) continue;  // no readable key yet (uniform across the block)
    if (tid < n) s_s[tid] = expf(s_s[tid] - m_new);
    __syncthreads();
    const float alpha = m == -INFINITY ? 0.0f : expf(m - m_new);
    float sum = 0.0f;
    for (int jj = 0; jj < n; ++jj) sum += s_s[jj];
    l = l * alpha + sum;
    m = m_new;
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) acc[i] *= alpha;
    for (int jj = 0; jj < n; ++jj) {
      const float w = s_s[jj];
      if (w == 0.0f) continue;  // uniform across the block: a skipped key (or an underflowed weight)
      const int64_t j = start + jj;
      const int64_t block = block_of(a, s, j);
      const int64_t row = (block * a.block_size + j % a.block_size) * key_stride + kvh * D;
#pragma unroll
      for (int i = 0; i < kDimsPerThread; ++i) {
        const int64_t d = tid + static_cast<int64_t>(i) * kThreads;
        if (d < D) acc[i] += w * load(a.value_cache, a.dtype, row + d);
      }
    }
    __syncthreads();  // the weights are read before the next chunk's scores overwrite them
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
  for (int i = 0; i < kDimsPerThread; ++i) {
    const int64_t d = tid + static_cast<int64_t>(i) * kThreads;
    if (d < D) store(out, a.dtype, out_row + d, acc[i] * inv);
  }
}

}  // namespace

Status validate_launch(const WriteKVArgs& args) {
  const Status status = validate(args);
  if (!status.ok()) return status;
  const int64_t elements = args.tokens * args.kv_heads * args.head_dim;
  if ((elements + kWriteThreads - 1) / kWriteThreads > 0x7fffffff) return bad_shape("tokens: too many elements");
  return ok_status();
}

cudaError_t write_kv(const WriteKVArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.tokens == 0 || args.num_slots == 0) return cudaSuccess;
  const int64_t row = args.kv_heads * args.head_dim;
  const int64_t elements = args.tokens * row;
  const unsigned blocks = static_cast<unsigned>((elements + kWriteThreads - 1) / kWriteThreads);
  if (args.dtype == DType::kFloat32) {
    write_kv_kernel<float><<<blocks, kWriteThreads, 0, stream>>>(
        static_cast<const float*>(args.key), static_cast<const float*>(args.value), static_cast<float*>(args.key_cache),
        static_cast<float*>(args.value_cache), args.slot_mapping, args.tokens, row, args.num_slots);
  } else {
    write_kv_kernel<uint16_t><<<blocks, kWriteThreads, 0, stream>>>(
        static_cast<const uint16_t*>(args.key), static_cast<const uint16_t*>(args.value),
        static_cast<uint16_t*>(args.key_cache), static_cast<uint16_t*>(args.value_cache), args.slot_mapping,
        args.tokens, row, args.num_slots);
  }
  return cudaGetLastError();
}

Status validate_launch(const PagedAttentionArgs& args) {
  const Status status = validate(args);
  if (!status.ok()) return status;
  if (args.head_dim > kPagedMaxHeadDim) return bad_shape("head_dim must be <= 256 on cuda");
  if (args.heads > 65535) return bad_shape("heads must be <= 65535 on cuda (one block per token and head)");
  return ok_status();
}

cudaError_t paged_attention(const PagedAttentionArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.total_q == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(args.total_q), static_cast<unsigned>(args.heads));
  paged_attention_kernel<<<grid, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace turbogen
