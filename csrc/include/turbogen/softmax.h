// softmax(logits / temperature) over each row; the worked example of the backend seam.
#pragma once

#include <cstdint>

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/dtype.h"
#include "turbogen/status.h"

namespace turbogen {

struct SoftmaxArgs {
  const void* logits;         // [rows, cols] of `dtype`, row r starts at logits + r * row_stride elements
  void* out;                  // [rows, cols] of `dtype`, contiguous
  const float* temperature;   // [rows] when temperature_per_row, else [1]; every value > 0
  int64_t rows;
  int64_t cols;
  int64_t row_stride;         // elements between row starts, >= cols
  DType dtype;
  bool temperature_per_row;
};

namespace cpu {
Status softmax(const SoftmaxArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// Enqueues the kernel on `stream`; cudaErrorInvalidValue for invalid arguments, else the launch status.
cudaError_t softmax(const SoftmaxArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
