// Fused temperature / top-k / top-p / min-p sampling (turbogen.ops.sample, filter_logits).
// The function computed is turbogen.ref.sampling's; docs/sampling.md describes the algorithms.
#pragma once

#include <cstdint>

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/checks.h"
#include "turbogen/dtype.h"
#include "turbogen/penalties.h"
#include "turbogen/status.h"

namespace turbogen {

// Largest vocabulary the kernels accept (token indices are 32-bit in the noise counter's low word).
constexpr int64_t kSamplingMaxVocab = (int64_t{1} << 31) - 1;

// Per-row parameters are arrays of `rows` values when the matching *_per_row flag is set, else
// one value shared by every row. The kernels read exactly these elements and nothing else.
struct SamplingArgs {
  const void* logits = nullptr;       // [rows, vocab] of `dtype`; row r starts at logits + r * row_stride elements
  int64_t rows = 0;
  int64_t vocab = 0;                  // <= kSamplingMaxVocab
  int64_t row_stride = 0;             // elements between row starts, >= vocab
  DType dtype = DType::kFloat32;
  const float* temperature = nullptr; bool temperature_per_row = false;  // >= 0 and finite; 0 = greedy
  const int64_t* top_k = nullptr;     bool top_k_per_row = false;        // >= 0; 0 = off
  const double* top_p = nullptr;      bool top_p_per_row = false;        // in (0, 1]; 1 = off
  const float* min_p = nullptr;       bool min_p_per_row = false;        // in [0, 1]; 0 = off
  const int64_t* seed = nullptr;                                         // [rows]; read as uint64; needed with `tokens`
  const int64_t* offset = nullptr;    bool offset_per_row = false;       // read as uint64; needed with `tokens`
  int64_t* tokens = nullptr;          // [rows] or null: the drawn token, -1 for a row without a finite logit
  float* logprobs = nullptr;          // [rows] or null (needs tokens): the token's log-probability
  float* filtered = nullptr;          // [rows, vocab] float32 contiguous or null: tempered logits, removed at -inf
  void* workspace = nullptr;          // CUDA only: device memory for the per-chunk partial results
  int64_t workspace_bytes = 0;        // its size, >= cuda::sampling_workspace_bytes(rows, vocab)
  // Penalties applied to the logits before everything else (penalties.h), as if the sampler read
  // apply_penalties' output; penalties.mask == nullptr: none. Nothing is written back.
  PenaltyInputs penalties;
};

// The checks every launcher (cpu and cuda) makes before touching memory: sizes, strides, dtype,
// the pointers the requested outputs need. Parameter values are not read here: on the cpu they
// are checked by the launcher, on the GPU they are device memory and the kernels clamp them.
inline Status validate(const SamplingArgs& a) {
  if (a.rows < 0) return bad_shape("rows must be >= 0");
  if (a.vocab < 0 || a.vocab > kSamplingMaxVocab) return bad_shape("vocab must be in [0, 2**31 - 1]");
  if (a.rows == 0) return ok_status();
  const Status dtype = check_dtype(a.dtype, "dtype");
  if (!dtype.ok()) return dtype;
  const Status shape = check_matrix(a.rows, a.vocab, a.row_stride, dtype_size(a.dtype), "logits (row_stride)");
  if (!shape.ok()) return shape;
  if (!a.tokens && !a.filtered) return null_pointer("tokens and filtered: at least one output is required");
  if (a.logprobs && !a.tokens) return null_pointer("tokens (logprobs needs tokens)");
  if (!a.temperature) return null_pointer("temperature");
  if (!a.top_k) return null_pointer("top_k");
  if (!a.top_p) return null_pointer("top_p");
  if (!a.min_p) return null_pointer("min_p");
  if (a.tokens && !a.seed) return null_pointer("seed (tokens need it)");
  if (a.tokens && !a.offset) return null_pointer("offset (tokens need it)");
  if (a.vocab > 0 && !a.logits) return null_pointer("logits");
  return validate(a.penalties, a.rows, a.vocab, false);
}

namespace cpu {
// validate(), then the parameter values (read from host memory), then the rows on the thread pool.
Status sample(const SamplingArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// Device workspace the CUDA kernels need for `rows` x `vocab` (per-chunk partial results).
int64_t sampling_workspace_bytes(int64_t rows, int64_t vocab);
// validate(), the workspace's size and the grid's limits; then enqueues the kernels on `stream`.
// Parameter values are device memory, clamped into range by the kernels instead.
Status validate_launch(const SamplingArgs& args);
cudaError_t sample(const SamplingArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
