#include "turbogen/topk.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "turbogen/parallel.h"

#include "isa.h"

namespace turbogen {
namespace cpu {
namespace {

struct Entry {
  float value;
  int64_t index;
};

// The contract's total order: NaN first, then larger values, then lower indices.
inline bool ranks_above(const Entry& a, const Entry& b) {
  const bool a_nan = std::isnan(a.value);
  const bool b_nan = std::isnan(b.value);
  if (a_nan != b_nan) return a_nan;
  if (!a_nan && a.value != b.value) return a.value > b.value;
  return a.index < b.index;
}

// With std::push_heap / pop_heap this comparator keeps the worst kept entry at the front.
inline bool heap_order(const Entry& a, const Entry& b) { return ranks_above(a, b); }

constexpr int64_t kBlock = 32;

// Whether any of x[0..kBlock) could enter the kept set: `!(x <= bar)`, which is also true for NaN.
inline bool block_may_enter_portable(const float* x, float bar) {
  for (int64_t j = 0; j < kBlock; ++j) {
    if (!(x[j] <= bar)) return true;
  }
  return false;
}

#if defined(TURBOGEN_X86_DISPATCH)
// The same test in four 8-wide compares (not-less-or-equal, unordered: true for NaN). The
// compiler does not vectorise the early-exit loop above.
TURBOGEN_TARGET_AVX2 inline bool block_may_enter_avx2(const float* x, float bar) {
  const __m256 b = _mm256_set1_ps(bar);
  const __m256 m01 = _mm256_or_ps(_mm256_cmp_ps(_mm256_loadu_ps(x), b, _CMP_NLE_UQ),
                                  _mm256_cmp_ps(_mm256_loadu_ps(x + 8), b, _CMP_NLE_UQ));
  const __m256 m23 = _mm256_or_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + 16), b, _CMP_NLE_UQ),
                                  _mm256_cmp_ps(_mm256_loadu_ps(x + 24), b, _CMP_NLE_UQ));
  return _mm256_movemask_ps(_mm256_or_ps(m01, m23)) != 0;
}
#endif

// One row. Scanning in index order, a later score enters the kept set only if it ranks strictly
// above the worst kept one, i.e. it is greater (or it is NaN and the worst is not). Whole blocks
// failing that test are skipped after one vectorised compare, so once the kept set holds good
// scores (after a few thousand elements) the scan runs at memory speed.
template <bool (*BlockMayEnter)(const float*, float)>
void topk_row(const TopKArgs& a, int64_t r, std::vector<Entry>& heap) {
  const float* x = a.scores + r * a.row_stride;
  const int64_t n = a.cols;
  const int64_t k = a.k;
  heap.clear();
  for (int64_t i = 0; i < k; ++i) heap.push_back({x[i], i});
  std::make_heap(heap.begin(), heap.end(), heap_order);

  auto offer = [&](int64_t i) {
    const Entry candidate{x[i], i};
    if (!ranks_above(candidate, heap.front())) return;
    std::pop_heap(heap.begin(), heap.end(), heap_order);
    heap.back() = candidate;
    std::push_heap(heap.begin(), heap.end(), heap_order);
  };

  int64_t i = k;
  for (; i + kBlock <= n; i += kBlock) {
    if (!BlockMayEnter(x + i, heap.front().value)) continue;
    for (int64_t j = 0; j < kBlock; ++j) offer(i + j);
  }
  for (; i < n; ++i) offer(i);

  std::sort(heap.begin(), heap.end(), ranks_above);
  float* values = a.values + r * k;
  int64_t* indices = a.indices + r * k;
  for (int64_t j = 0; j < k; ++j) {
    values[j] = heap[j].value;
    indices[j] = heap[j].index;
  }
}

// The row function's two variants (isa.h): only the block test differs.
#if defined(TURBOGEN_X86_DISPATCH)
constexpr auto topk_row_avx2 = topk_row<block_may_enter_avx2>;
#endif
constexpr auto topk_row_portable = topk_row<block_may_enter_portable>;

}  // namespace

Status topk(const TopKArgs& args) {
  const Status status = validate(args);
  if (!status.ok() || args.rows == 0 || args.k == 0) return status;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(args.cols, 1));
  static const auto row_function = TURBOGEN_SELECT_ISA(topk_row);
  parallel_for(0, args.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<Entry> heap;
    heap.reserve(static_cast<size_t>(args.k));
    for (int64_t r = begin; r < end; ++r) row_function(args, r, heap);
  });
  return ok_status();
}

}  // namespace cpu
}  // namespace turbogen
