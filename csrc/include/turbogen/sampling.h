// Fused temperature / top-k / top-p / min-p sampling (turbogen.ops.sample, filter_logits).
// The function computed is turbogen.ref.sampling's; docs/sampling.md describes the algorithms.
#pragma once

#include <cstdint>

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/dtype.h"
#include "turbogen/status.h"

namespace turbogen {

// Per-row parameters are arrays of `rows` values when the matching *_per_row flag is set, else
// one value shared by every row. The kernels read exactly these elements and nothing else.
struct SamplingArgs {
  const void* logits;       // [rows, vocab] of `dtype`; row r starts at logits + r * row_stride elements
  int64_t rows;
  int64_t vocab;            // < 2^31
  int64_t row_stride;       // elements between row starts, >= vocab
  DType dtype;
  const float* temperature; bool temperature_per_row;  // >= 0 and finite; 0 = greedy
  const int64_t* top_k;     bool top_k_per_row;        // >= 0; 0 = off
  const double* top_p;      bool top_p_per_row;        // in (0, 1]; 1 = off
  const float* min_p;       bool min_p_per_row;        // in [0, 1]; 0 = off
  const int64_t* seed;                                 // [rows]; read as uint64; needed with `tokens`
  const int64_t* offset;    bool offset_per_row;       // read as uint64; needed with `tokens`
  int64_t* tokens;          // [rows] or null: the drawn token, -1 for a row without a finite logit
  float* logprobs;          // [rows] or null: its log-probability under the filtered distribution
  float* filtered;          // [rows, vocab] float32 contiguous or null: tempered logits, removed at -inf
  void* workspace;          // CUDA only: sampling_workspace_bytes(rows, vocab) bytes of device memory
};

// Largest vocabulary the kernels accept (token indices are 32-bit in the noise counter's low word).
constexpr int64_t kSamplingMaxVocab = (int64_t{1} << 31) - 1;

namespace cpu {
// Validates `args` (kBadValue for out-of-range parameters, never touching memory it was not
// given) and runs the rows on the thread pool.
Status sample(const SamplingArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// Device workspace the CUDA kernels need for `rows` x `vocab` (per-chunk partial results).
int64_t sampling_workspace_bytes(int64_t rows, int64_t vocab);
// Enqueues the kernels on `stream`; cudaErrorInvalidValue for invalid sizes or pointers (parameter
// values are device memory and are clamped into range by the kernels instead), else the launch status.
cudaError_t sample(const SamplingArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
