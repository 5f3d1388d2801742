// The k largest scores of each row, best first: beam search's candidate selection over
// num_beams * vocab scores per batch row (python/turbogen/ops/topk.py states the contract).
#pragma once

#include <cstdint>

#include "turbogen/status.h"

namespace turbogen {

struct TopKArgs {
  const float* scores;  // [rows, cols], row r starts at scores + r * row_stride
  float* values;        // [rows, k] contiguous: the selected scores, best first
  int64_t* indices;     // [rows, k] contiguous: their column indices
  int64_t rows;
  int64_t cols;
  int64_t row_stride;   // elements between row starts, >= cols
  int64_t k;            // 0 <= k <= cols
};

namespace cpu {
// Order: NaN above every number, then larger values; equal values (and NaNs) by lower index.
Status topk(const TopKArgs& args);
}  // namespace cpu

}  // namespace turbogen
