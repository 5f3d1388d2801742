// Speculative-decoding verification (turbogen.ops.verify). The function computed is
// turbogen.ref.verify's (docs/design.md, "Contract extensions"): per row, position i of k + 1 is the
// target's token drawn as turbogen.ops.sample draws it (seed[r], offset[r] + i, the row's filters);
// coupled mode accepts drafts while they equal it, rejection mode accepts draft x iff u <= p(x) / q(x)
// and corrects from log(max(p - q, 0)). The kernels reuse the sampler (sampling.h) for every draw.
#pragma once

#include <cstdint>
#include <limits>

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/checks.h"
#include "turbogen/dtype.h"
#include "turbogen/sampling.h"
#include "turbogen/status.h"

namespace turbogen {

// Position i of row r is flat row r * positions + i of the logits: logits + (r * positions + i) * row_stride
// elements. Per-row parameters as in SamplingArgs (arrays of `rows` values when *_per_row, else one value).
struct VerifyArgs {
  const void* logits = nullptr;       // [rows * positions, vocab] of `dtype`, row_stride elements between rows
  int64_t rows = 0;
  int64_t positions = 0;              // k + 1 >= 1
  int64_t vocab = 0;                  // in [1, kSamplingMaxVocab]
  int64_t row_stride = 0;             // >= vocab
  DType dtype = DType::kFloat32;
  const int64_t* draft_tokens = nullptr;  // [rows, k] int64 contiguous; < 0 or >= vocab: no draft (k = 0: may be null)
  const float* draft_probs = nullptr;     // [rows, k, vocab] float32 contiguous; rejection mode only
  bool rejection = false;
  const float* temperature = nullptr; bool temperature_per_row = false;  // >= 0 and finite; 0 = greedy
  const int64_t* top_k = nullptr;     bool top_k_per_row = false;        // >= 0; 0 = off
  const double* top_p = nullptr;      bool top_p_per_row = false;        // in (0, 1]; 1 = off
  const float* min_p = nullptr;       bool min_p_per_row = false;        // in [0, 1]; 0 = off
  const int64_t* seed = nullptr;                                         // [rows]; read as uint64
  const int64_t* offset = nullptr;    bool offset_per_row = false;       // read as uint64: position 0's offset
  int64_t* accepted = nullptr;        // [rows] output: leading drafts accepted, in [0, k]
  int64_t* tokens = nullptr;          // [rows, positions] output, contiguous: drafts, the target's token, then -1
  void* workspace = nullptr;          // CUDA only: device memory, >= cuda::verify_workspace_bytes(...)
  int64_t workspace_bytes = 0;
};

// The checks every launcher (cpu and cuda) makes before touching memory: sizes, strides, dtype, pointers.
inline Status validate(const VerifyArgs& a) {
  if (a.rows < 0) return bad_shape("rows must be >= 0");
  if (a.positions < 1) return bad_shape("positions (k + 1) must be >= 1");
  if (a.vocab < 1 || a.vocab > kSamplingMaxVocab) return bad_shape("vocab must be in [1, 2**31 - 1]");
  if (a.rows == 0) return ok_status();
  if (a.positions > std::numeric_limits<int64_t>::max() / a.rows) return bad_shape("rows * positions overflows");
  const int64_t k = a.positions - 1;
  const Status dtype = check_dtype(a.dtype, "dtype");
  if (!dtype.ok()) return dtype;
  const Status shape =
      check_matrix(a.rows * a.positions, a.vocab, a.row_stride, dtype_size(a.dtype), "logits (row_stride)");
  if (!shape.ok()) return shape;
  if (a.rejection) {
    const Status probs = check_matrix(a.rows * k, a.vocab, a.vocab, sizeof(float), "draft_probs (rows * k * vocab)");
    if (!probs.ok()) return probs;
    if (k > 0 && !a.draft_probs) return null_pointer("draft_probs (rejection mode needs it)");
  }
  if (!a.logits) return null_pointer("logits");
  if (k > 0 && !a.draft_tokens) return null_pointer("draft_tokens");
  if (!a.temperature) return null_pointer("temperature");
  if (!a.top_k) return null_pointer("top_k");
  if (!a.top_p) return null_pointer("top_p");
  if (!a.min_p) return null_pointer("min_p");
  if (!a.seed) return null_pointer("seed");
  if (!a.offset) return null_pointer("offset");
  if (!a.accepted) return null_pointer("accepted");
  if (!a.tokens) return null_pointer("tokens");
  return ok_status();
}

namespace cpu {
// validate(), the parameter values (host memory), then the rows on the thread pool: each row's positions are
// drawn in order up to its first rejection (when rows are fewer than threads, a few positions at once).
Status verify(const VerifyArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// Device workspace launch needs: the sampler's workspace for rows * positions rows, the target's tokens and,
// in rejection mode, the filtered logits.
int64_t verify_workspace_bytes(int64_t rows, int64_t positions, int64_t vocab, bool rejection);
// validate(), the workspace's size and the sampler's launch limits for rows * positions rows.
Status validate_launch(const VerifyArgs& args);
// Enqueues the sampler over every position, then the acceptance kernel, on `stream`.
cudaError_t verify(const VerifyArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
