// Building blocks of the per-op validate() functions (sampling.h, softmax.h, topk.h): checks of
// the sizes and strides of a [rows, cols] matrix given by address, before any memory is touched.
#pragma once

#include <cstdint>
#include <limits>

#include "turbogen/dtype.h"
#include "turbogen/status.h"

namespace turbogen {

// A [rows, cols] input read with `row_stride` elements between row starts: sizes non-negative,
// the stride covering a row, and the offset of the last row's end representable in bytes.
inline Status check_matrix(int64_t rows, int64_t cols, int64_t row_stride, int64_t element_bytes,
                           const char* name) {
  if (rows < 0 || cols < 0) return bad_shape(name);
  if (rows == 0 || cols == 0) return ok_status();
  if (row_stride < cols) return bad_stride(name);
  const int64_t max_elements = std::numeric_limits<int64_t>::max() / element_bytes;
  if (row_stride > max_elements / rows) return bad_shape(name);
  return ok_status();
}

// A dtype code (python/turbogen/_ext.py's DTYPE_CODES) that the kernels can read.
inline Status check_dtype(DType dtype, const char* name) {
  return is_valid_dtype(static_cast<int>(dtype)) ? ok_status() : bad_dtype(name);
}

}  // namespace turbogen
