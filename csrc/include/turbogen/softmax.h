// softmax(logits / temperature) over each row; the worked example of the backend seam.
#pragma once

#include <cstdint>

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/checks.h"
#include "turbogen/dtype.h"
#include "turbogen/status.h"

namespace turbogen {

struct SoftmaxArgs {
  const void* logits = nullptr;        // [rows, cols] of `dtype`, row r starts at logits + r * row_stride elements
  void* out = nullptr;                 // [rows, cols] of `dtype`, contiguous
  const float* temperature = nullptr;  // [rows] when temperature_per_row, else [1]; every value > 0 and finite
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;              // elements between row starts, >= cols
  DType dtype = DType::kFloat32;
  bool temperature_per_row = false;
};

// The checks every launcher (cpu and cuda) makes before touching memory. Temperature values are
// read by the cpu launcher only (on the GPU they are device memory).
inline Status validate(const SoftmaxArgs& a) {
  if (a.rows < 0) return bad_shape("rows must be >= 0");
  if (a.cols < 0) return bad_shape("cols must be >= 0");
  if (a.rows == 0 || a.cols == 0) return ok_status();
  const Status dtype = check_dtype(a.dtype, "dtype");
  if (!dtype.ok()) return dtype;
  const Status shape = check_matrix(a.rows, a.cols, a.row_stride, dtype_size(a.dtype), "logits (row_stride)");
  if (!shape.ok()) return shape;
  if (!a.logits) return null_pointer("logits");
  if (!a.out) return null_pointer("out");
  if (!a.temperature) return null_pointer("temperature");
  return ok_status();
}

namespace cpu {
Status softmax(const SoftmaxArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// validate() and the grid's limits.
Status validate_launch(const SoftmaxArgs& args);
// Enqueues the kernel on `stream`; cudaErrorInvalidValue when validate_launch() fails, else the
// launch status.
cudaError_t softmax(const SoftmaxArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
