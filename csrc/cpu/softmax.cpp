#include "turbogen/softmax.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "isa.h"
#include "turbogen/fastmath.h"
#include "turbogen/parallel.h"

namespace turbogen {
namespace cpu {
namespace {

// The temperatures, after validate(): host memory here, so they are checked before any row runs.
Status check_temperatures(const SoftmaxArgs& a) {
  const int64_t count = a.temperature_per_row ? a.rows : 1;
  for (int64_t i = 0; i < count; ++i) {
    if (!(a.temperature[i] > 0.0f) || std::isinf(a.temperature[i])) {
      return bad_value("temperature must be > 0 and finite");
    }
  }
  return ok_status();
}

// One row: x = logits / T in fp32, then exp(x - max) / sum: vectorised loops over a row-sized fp32
// scratch buffer that stays in cache (the row is read from memory once).
TURBOGEN_ALWAYS_INLINE void softmax_row_body(const SoftmaxArgs& a, int64_t r, std::vector<float>& scratch) {
  const int64_t n = a.cols;
  const char* src = static_cast<const char*>(a.logits) + r * a.row_stride * dtype_size(a.dtype);
  float* x = scratch.data();
  convert_row_to_float(src, a.dtype, n, x);

  // Divide (not multiply by 1/T) so the values are bit-identical to the reference.
  const float t = a.temperature[a.temperature_per_row ? r : 0];
  for (int64_t i = 0; i < n; ++i) x[i] /= t;
  const float row_max = max_of(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] = exp_vectorizable(x[i] - row_max);
  const float sum = sum_of(x, n);
  const float inv_sum = 1.0f / sum;
  char* dst = static_cast<char*>(a.out) + r * n * dtype_size(a.dtype);
  if (a.dtype == DType::kFloat32) {
    float* y = reinterpret_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv_sum;
  } else {
    for (int64_t i = 0; i < n; ++i) store_from_float(dst, a.dtype, i, x[i] * inv_sum);
  }
}

TURBOGEN_TARGET_AVX2 void softmax_row_avx2(const SoftmaxArgs& a, int64_t r, std::vector<float>& scratch) {
  softmax_row_body(a, r, scratch);
}

void softmax_row_portable(const SoftmaxArgs& a, int64_t r, std::vector<float>& scratch) {
  softmax_row_body(a, r, scratch);
}

}  // namespace

Status softmax(const SoftmaxArgs& args) {
  Status status = validate(args);
  if (status.ok() && args.rows > 0 && args.cols > 0) status = check_temperatures(args);
  if (!status.ok() || args.rows == 0 || args.cols == 0) return status;
  static const auto softmax_row = TURBOGEN_SELECT_ISA(softmax_row);
  // Enough rows per chunk that a chunk is worth a thread hand-off (~64k elements).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / args.cols);
  parallel_for(0, args.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(static_cast<size_t>(args.cols));
    for (int64_t r = begin; r < end; ++r) softmax_row(args, r, scratch);
  });
  return ok_status();
}

}  // namespace cpu
}  // namespace turbogen
