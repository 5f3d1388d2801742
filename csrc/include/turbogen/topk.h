// The k largest scores of each row, best first: beam search's candidate selection over
// num_beams * vocab scores per batch row (python/turbogen/ops/topk.py states the contract).
#pragma once

#include <cstdint>

#include "turbogen/checks.h"
#include "turbogen/status.h"

namespace turbogen {

struct TopKArgs {
  const float* scores = nullptr;  // [rows, cols] float32, row r starts at scores + r * row_stride
  float* values = nullptr;        // [rows, k] contiguous: the selected scores, best first
  int64_t* indices = nullptr;     // [rows, k] contiguous: their column indices
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;         // elements between row starts, >= cols
  int64_t k = 0;                  // 0 <= k <= cols
};

inline Status validate(const TopKArgs& a) {
  if (a.rows < 0) return bad_shape("rows must be >= 0");
  if (a.cols < 0) return bad_shape("cols must be >= 0");
  if (a.k < 0 || a.k > a.cols) return bad_shape("k must be in [0, cols]");
  if (a.rows == 0 || a.k == 0) return ok_status();
  const Status shape = check_matrix(a.rows, a.cols, a.row_stride, sizeof(float), "scores (row_stride)");
  if (!shape.ok()) return shape;
  if (!a.scores) return null_pointer("scores");
  if (!a.values) return null_pointer("values");
  if (!a.indices) return null_pointer("indices");
  return ok_status();
}

namespace cpu {
// Order: NaN above every number, then larger values; equal values (and NaNs) by lower index.
Status topk(const TopKArgs& args);
}  // namespace cpu

}  // namespace turbogen
