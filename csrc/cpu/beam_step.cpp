// The fused beam-search step on the CPU (turbogen/beam_step.h; the contract is
// python/turbogen/ops/beam.py's docstring).
//
// Phase 1, on the thread pool over (batch row, beam) pairs (so batch 1 still uses every thread):
//   pass 1 (normalized=false only): the row's max and sum of exp(x - max), online, block by block;
//   pass 2: acc = log_softmax(x) + running score, block by block, offered to a per-beam heap of the
//   k best (acc, or acc + Gumbel noise when sampling). Once the heap is full, a block is skipped
//   after one vectorised compare when no element can rank above the heap's worst entry; the noise
//   (Philox + two logs) is computed only for elements whose acc + kGumbelBound could.
// Each logits row is read at most twice and the vocabulary is never sorted.
// Phase 2, per batch row: merge the beams' heaps into the k best, then beam_bookkeeping().
#include "turbogen/beam_step.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "isa.h"
#include "turbogen/fastmath.h"
#include "turbogen/parallel.h"
#include "turbogen/noise.h"

namespace turbogen {
namespace cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kBlock = 64;

struct Cand {
  float key;     // ranking value: acc, or acc + noise when sampling (NaN ranks as -inf)
  float acc;     // the candidate's score
  int64_t flat;  // beam * vocab + token
};

// Heap order with std::push_heap / pop_heap: the worst kept entry at the front.
inline bool cand_above(const Cand& x, const Cand& y) { return beam_ranks_above(x.key, x.flat, y.key, y.flat); }

struct BeamResult {
  int64_t count = 0;     // entries in the beam's heap slice
  float acc_max = kNegInf;
  bool any_nan = false;  // some acc of the beam is NaN
};

// Elements [base, base + n) of row `src` as float32: in place for float32, else converted into buf.
inline const float* load_block(const char* src, DType dtype, int64_t base, int64_t n, float* buf) {
  if (dtype == DType::kFloat32) return reinterpret_cast<const float*>(src) + base;
  convert_row_to_float(src + base * 2, dtype, n, buf);
  return buf;
}

// The max of v[0..n) (NaN ignored; -inf when none) and whether some v is NaN, in kLanes independent lanes so
// that the loop vectorises.
TURBOGEN_ALWAYS_INLINE void max_and_nan(const float* v, int64_t n, float& max, bool& any_nan) {
  float lanes[kLanes];
  int32_t nan_lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) {
    lanes[l] = kNegInf;
    nan_lanes[l] = 0;
  }
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const float x = v[j + l];
      lanes[l] = x > lanes[l] ? x : lanes[l];
      nan_lanes[l] |= x != x ? 1 : 0;
    }
  }
  for (; j < n; ++j) {
    lanes[0] = v[j] > lanes[0] ? v[j] : lanes[0];
    nan_lanes[0] |= v[j] != v[j] ? 1 : 0;
  }
  float m = kNegInf;
  int32_t nan = 0;
  for (int64_t l = 0; l < kLanes; ++l) {
    m = lanes[l] > m ? lanes[l] : m;
    nan |= nan_lanes[l];
  }
  max = m;
  any_nan = nan != 0;
}

#if defined(TURBOGEN_X86_DISPATCH)
// The same with AVX2 (the compiler keeps the NaN-aware selects above scalar): _mm256_max_ps(x, m) returns m
// when x is NaN, so NaN is ignored by the max and flagged by an unordered compare.
TURBOGEN_TARGET_AVX2 void max_and_nan_avx2(const float* v, int64_t n, float& max, bool& any_nan) {
  __m256 m = _mm256_set1_ps(kNegInf);
  __m256 nan = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 x = _mm256_loadu_ps(v + j);
    m = _mm256_max_ps(x, m);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, m);
  float result = kNegInf;
  for (int l = 0; l < 8; ++l) result = lanes[l] > result ? lanes[l] : result;
  bool flag = _mm256_movemask_ps(nan) != 0;
  for (; j < n; ++j) {
    result = v[j] > result ? v[j] : result;
    flag = flag || v[j] != v[j];
  }
  max = result;
  any_nan = flag;
}
#endif

template <bool kAvx2>
inline void block_max_and_nan(const float* v, int64_t n, float& max, bool& any_nan) {
#if defined(TURBOGEN_X86_DISPATCH)
  if (kAvx2) {
    max_and_nan_avx2(v, n, max, any_nan);
    return;
  }
#endif
  max_and_nan(v, n, max, any_nan);
}

template <bool kAvx2>
TURBOGEN_ALWAYS_INLINE void beam_row_body(const BeamStepArgs& a, int64_t task, Cand* heap, BeamResult& out) {
  const int64_t b = task / a.beams, i = task % a.beams, v = a.vocab;
  const char* src = static_cast<const char*>(a.logits) + task * a.row_stride * dtype_size(a.dtype);
  const float running = a.running_scores[task];
  float buf[kBlock];
  float acc[kBlock];

  // Pass 1: max and sum of exp(x - max), rescaling the sum when the max grows.
  float row_max = kNegInf, sum = 0.0f;
  bool nan_row = false;
  if (!a.normalized) {
    bool any_nan = false;
    for (int64_t base = 0; base < v; base += kBlock) {
      const int64_t n = std::min(kBlock, v - base);
      const float* x = load_block(src, a.dtype, base, n, buf);
      float block_max;
      bool block_nan;
      block_max_and_nan<kAvx2>(x, n, block_max, block_nan);
      any_nan = any_nan || block_nan;
      if (block_max > row_max) {
        sum = std::isinf(block_max) ? 0.0f : sum * exp_vectorizable(row_max - block_max);
        row_max = block_max;
      }
      if (std::isinf(row_max)) continue;  // -inf: nothing to add yet; +inf: the row is NaN anyway
      float lanes[kLanes] = {};
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += exp_vectorizable(x[j + l] - row_max);
      }
      for (; j < n; ++j) lanes[0] += exp_vectorizable(x[j] - row_max);
      for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
    }
    // As torch's log_softmax: a NaN, a +inf or no finite logit makes every log-probability NaN.
    nan_row = any_nan || !std::isfinite(row_max);
  }
  const float log_sum = nan_row ? 0.0f : std::log(sum);

  // Pass 2: candidates.
  const bool sampling = a.seeds != nullptr;
  const uint64_t seed = sampling ? static_cast<uint64_t>(a.seeds[b]) : 0;
  const uint64_t offset = sampling ? static_cast<uint64_t>(a.offsets[b]) : 0;
  const float bound = sampling ? philox::kGumbelBound : 0.0f;  // acc + bound bounds the ranking key
  const int64_t cap = std::min(a.k, v);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int64_t count = 0;
  float acc_max = kNegInf;
  bool acc_nan = false;

  // ops.gumbel_noise's noise, bit for bit (noise.h: the same function serves that op's kernels).
  auto key_of = [&](float value, int64_t flat) {
    return sampling ? value + noise::gumbel(seed, offset, static_cast<uint64_t>(flat)) : value;
  };
  for (int64_t base = 0; base < v; base += kBlock) {
    const int64_t n = std::min(kBlock, v - base);
    const float* x = load_block(src, a.dtype, base, n, buf);
    if (a.normalized) {
      for (int64_t j = 0; j < n; ++j) acc[j] = x[j] + running;
    } else if (nan_row) {
      for (int64_t j = 0; j < n; ++j) acc[j] = nan;
    } else {
      for (int64_t j = 0; j < n; ++j) acc[j] = ((x[j] - row_max) - log_sum) + running;
    }
    float block_max;
    bool block_nan;
    block_max_and_nan<kAvx2>(acc, n, block_max, block_nan);
    acc_max = block_max > acc_max ? block_max : acc_max;
    acc_nan = acc_nan || block_nan;

    const int64_t flat0 = i * v + base;
    int64_t j = 0;
    for (; j < n && count < cap; ++j) {  // filling the heap
      heap[count++] = Cand{key_of(acc[j], flat0 + j), acc[j], flat0 + j};
      std::push_heap(heap, heap + count, cand_above);
    }
    if (j == n) continue;
    // Later elements have larger flat indices: they enter only with a rank key strictly above the worst's.
    float worst = beam_rank_key(heap[0].key);
    if (!(block_max + bound > worst)) continue;  // acc + bound is monotone in acc; NaN never enters
    for (; j < n; ++j) {
      if (!(acc[j] + bound > worst)) continue;
      const float key = key_of(acc[j], flat0 + j);
      if (!(beam_rank_key(key) > worst)) continue;
      std::pop_heap(heap, heap + count, cand_above);
      heap[count - 1] = Cand{key, acc[j], flat0 + j};
      std::push_heap(heap, heap + count, cand_above);
      worst = beam_rank_key(heap[0].key);
    }
  }
  out.count = count;
  out.acc_max = acc_max;
  out.any_nan = acc_nan;
}

TURBOGEN_TARGET_AVX2 void beam_row_avx2(const BeamStepArgs& a, int64_t task, Cand* heap, BeamResult& out) {
  beam_row_body<true>(a, task, heap, out);
}

void beam_row_portable(const BeamStepArgs& a, int64_t task, Cand* heap, BeamResult& out) {
  beam_row_body<false>(a, task, heap, out);
}

// Phase 2 for batch row b: the k best of the beams' heaps, then the bookkeeping.
void merge_row(const BeamStepArgs& a, int64_t b, const std::vector<Cand>& heaps, const std::vector<BeamResult>& beams,
               int64_t cap, std::vector<Cand>& merged, float finished_divisor, float improve_divisor) {
  merged.clear();
  float acc_max = kNegInf;
  bool any_nan = false;
  for (int64_t i = 0; i < a.beams; ++i) {
    const int64_t task = b * a.beams + i;
    const BeamResult& r = beams[static_cast<size_t>(task)];
    const Cand* h = heaps.data() + task * cap;
    merged.insert(merged.end(), h, h + r.count);
    acc_max = r.acc_max > acc_max ? r.acc_max : acc_max;
    any_nan = any_nan || r.any_nan;
  }
  std::partial_sort(merged.begin(), merged.begin() + a.k, merged.end(), cand_above);
  for (int64_t c = 0; c < a.k; ++c) {
    a.candidate_scores[b * a.k + c] = merged[static_cast<size_t>(c)].acc;
    a.candidate_flat[b * a.k + c] = merged[static_cast<size_t>(c)].flat;
  }
  a.row_is_finite[b] = (!any_nan && std::isfinite(acc_max)) ? 1 : 0;
  beam_bookkeeping(a, b, finished_divisor, improve_divisor);
}

}  // namespace

Status beam_step(const BeamStepArgs& args) {
  const Status status = validate(args);
  if (!status.ok() || args.batch == 0) return status;
  static const auto beam_row = TURBOGEN_SELECT_ISA(beam_row);
  const int64_t cap = std::min(args.k, args.vocab);
  const int64_t tasks = args.rows;
  std::vector<Cand> heaps(static_cast<size_t>(tasks * cap));
  std::vector<BeamResult> beams(static_cast<size_t>(tasks));
  parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) beam_row(args, t, heaps.data() + t * cap, beams[static_cast<size_t>(t)]);
  });
  const float finished_divisor =
      static_cast<float>(std::pow(static_cast<double>(args.generated_length), args.length_penalty));
  const int64_t best_length = (args.early_stopping == 2 && args.length_penalty > 0.0) ? args.max_generated_length
                                                                                      : args.generated_length;
  const float improve_divisor = static_cast<float>(std::pow(static_cast<double>(best_length), args.length_penalty));
  parallel_for(0, args.batch, 16, [&](int64_t begin, int64_t end) {
    std::vector<Cand> merged;
    merged.reserve(static_cast<size_t>(args.beams * cap));
    for (int64_t b = begin; b < end; ++b) merge_row(args, b, heaps, beams, cap, merged, finished_divisor, improve_divisor);
  });
  return ok_status();
}

}  // namespace cpu
}  // namespace turbogen
