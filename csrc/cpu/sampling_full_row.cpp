// The CPU sampler's full-row path (no small top-k): top-p locates its cut with a histogram of
// probability mass and sorts only the tokens of the bin where the cumulative mass crosses top_p;
// the draw computes noise only for kept tokens within kGumbelBound of the best score so far and
// skips whole blocks that cannot win.
#include <algorithm>
#include <cmath>
#include <vector>

#include "isa.h"
#include "sampling_row.h"

namespace turbogen {
namespace cpu {
namespace sampling {
namespace {

// Histogram of probability mass over the distance below the row max: bin b holds the tokens with
// max - z in [b, b + 1) / kBinsPerUnit; the last bin also holds everything further down (their
// mass is below float resolution of the total anyway).
constexpr int kMassBins = 4096;
constexpr float kBinsPerUnit = 128.0f;
// exp(-x) is 0 in float32 (exp_vectorizable flushes below -87) beyond this distance from the max.
constexpr float kNegligibleDistance = 88.0f;

inline int mass_bin(float distance) {
  const float scaled = distance * kBinsPerUnit;
  return scaled < static_cast<float>(kMassBins - 1) ? static_cast<int>(scaled) : kMassBins - 1;
}

// Pass 2 of top-p: the mass histogram of the tokens >= floor. Returns the total mass.
TURBOGEN_ALWAYS_INLINE double mass_histogram_body(const RowReader& row, int64_t vocab, float temperature,
                                                  float max, float floor, const std::vector<float>& block_max,
                                                  std::vector<double>& bin_mass) {
  bin_mass.assign(kMassBins, 0.0);
  float weight[kBlock];
  int bins[kBlock];
  for_each_block(row, vocab, temperature, [&](int64_t, auto n, const float* z) {
    for (int64_t i = 0; i < n; ++i) {
      const float w = exp_vectorizable(z[i] - max);
      weight[i] = z[i] >= floor ? w : 0.0f;
      bins[i] = mass_bin(max - z[i]);
    }
    for (int64_t i = 0; i < n; ++i) bin_mass[static_cast<size_t>(bins[i])] += weight[i];
  }, [&](int64_t b) {  // blocks below the floor or with no representable weight add nothing
    const float m = block_max[static_cast<size_t>(b)];
    return m >= floor && m - max >= -kNegligibleDistance;
  });
  double total = 0.0;
  for (double mass : bin_mass) total += mass;
  return total;
}

TURBOGEN_TARGET_AVX2 double mass_histogram_avx2(const RowReader& row, int64_t vocab, float temperature, float max,
                                                float floor, const std::vector<float>& block_max,
                                                std::vector<double>& bin_mass) {
  return mass_histogram_body(row, vocab, temperature, max, floor, block_max, bin_mass);
}

double mass_histogram_portable(const RowReader& row, int64_t vocab, float temperature, float max, float floor,
                               const std::vector<float>& block_max, std::vector<double>& bin_mass) {
  return mass_histogram_body(row, vocab, temperature, max, floor, block_max, bin_mass);
}

// Pass 3 of top-p: the tokens >= floor in bin `bin`.
TURBOGEN_ALWAYS_INLINE void gather_bin_body(const RowReader& row, int64_t vocab, float temperature, float max,
                                            float floor, int bin, const std::vector<float>& block_max,
                                            std::vector<Candidate>& out) {
  for_each_block(row, vocab, temperature, [&](int64_t base, auto n, const float* z) {
    int32_t in_bin[kBlock];
    int32_t any = 0;
    for (int64_t i = 0; i < n; ++i) {
      in_bin[i] = static_cast<int32_t>(z[i] >= floor) & static_cast<int32_t>(mass_bin(max - z[i]) == bin);
      any |= in_bin[i];
    }
    if (!any) return;
    for (int64_t i = 0; i < n; ++i) {
      if (in_bin[i]) out.push_back({z[i], static_cast<uint32_t>(base + i)});
    }
  }, [&](int64_t b) {  // bins only grow below a block's max
    const float m = block_max[static_cast<size_t>(b)];
    return m >= floor && mass_bin(max - m) <= bin;
  });
}

TURBOGEN_TARGET_AVX2 void gather_bin_avx2(const RowReader& row, int64_t vocab, float temperature, float max,
                                          float floor, int bin, const std::vector<float>& block_max,
                                          std::vector<Candidate>& out) {
  gather_bin_body(row, vocab, temperature, max, floor, bin, block_max, out);
}

void gather_bin_portable(const RowReader& row, int64_t vocab, float temperature, float max, float floor, int bin,
                         const std::vector<float>& block_max, std::vector<Candidate>& out) {
  gather_bin_body(row, vocab, temperature, max, floor, bin, block_max, out);
}

// top-p without a small top-k: the histogram locates the bin where the cumulative mass crosses
// top_p * total; only that bin's tokens are gathered and sorted.
Cut top_p_cut(const RowReader& row, int64_t vocab, const RowParams& p, float max, float floor, Scratch& s) {
  static const auto histogram = TURBOGEN_SELECT_ISA(mass_histogram);
  const double total = histogram(row, vocab, p.temperature, max, floor, s.block_max, s.bin_mass);
  const double target = p.top_p * total;
  // The walk repeats the summation order of `total`, so it reaches the target at a non-empty bin.
  int crossing = kMassBins - 1;
  double above = 0.0;
  for (int b = 0; b < kMassBins; ++b) {
    if (s.bin_mass[b] > 0.0 && above + s.bin_mass[b] >= target) {
      crossing = b;
      break;
    }
    above += s.bin_mass[b];
  }
  std::vector<Candidate>& boundary = s.candidates;
  boundary.clear();
  static const auto gather = TURBOGEN_SELECT_ISA(gather_bin);
  gather(row, vocab, p.temperature, max, floor, crossing, s.block_max, boundary);
  std::sort(boundary.begin(), boundary.end(), ranks_before);
  Cut cut;
  cut.max = max;
  cut.value = boundary.front().value;
  cut.index = boundary.front().index;
  for (const Candidate& c : boundary) {
    if (above >= target) break;
    above += exp_vectorizable(c.value - max);
    cut.value = c.value;
    cut.index = c.index;
  }
  return cut;
}

// Pass 3: Gumbel argmax over the kept tokens that can still win. Also sums the kept mass when
// asked (logprobs), since that needs every kept token, reachable or not.
TURBOGEN_ALWAYS_INLINE void draw_full_row_body(const RowReader& row, int64_t vocab, const RowParams& p,
                                               const Cut& cut, const std::vector<float>& block_max, BestDraw& best,
                                               double* kept_mass) {
  float weight[kBlock];
  double mass_lanes[kBlock] = {};
  int32_t kept[kBlock];
  uint32_t tokens[kBlock];
  float values[kBlock];
  const bool weigh = kept_mass != nullptr || cut.min_p > 0.0f;
  for_each_block(row, vocab, p.temperature, [&](int64_t base, auto n, const float* z) {
    // Branch-free so that it vectorises; NaN compares false everywhere, so it is never kept.
    int32_t any = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t index_ok = static_cast<uint64_t>(base + i) <= cut.index;
      kept[i] = static_cast<int32_t>(z[i] > cut.value) | (static_cast<int32_t>(z[i] == cut.value) & index_ok);
      any |= kept[i];
    }
    if (!any) return;
    if (weigh) {
      for (int64_t i = 0; i < n; ++i) {
        const float w = exp_vectorizable(z[i] - cut.max);
        weight[i] = kept[i] ? w : 0.0f;
      }
      if (cut.min_p > 0.0f) {
        for (int64_t i = 0; i < n; ++i) kept[i] &= static_cast<int32_t>(weight[i] >= cut.min_p);
      }
      if (kept_mass) {
        for (int64_t i = 0; i < n; ++i) mass_lanes[i] += kept[i] ? weight[i] : 0.0f;
      }
    }
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      tokens[count] = static_cast<uint32_t>(base + i);
      values[count] = z[i];
      count += kept[i] & static_cast<int32_t>(z[i] + philox::kGumbelBound >= best.score);
    }
    if (count > 0) offer_block(tokens, values, count, p, best);
  }, [&](int64_t b) {  // blocks with nothing kept, or (without logprobs) nothing that can still win
    const float m = block_max[static_cast<size_t>(b)];
    return m >= cut.value && (kept_mass != nullptr || best.reachable(m));
  });
  if (kept_mass) {
    double mass = 0.0;
    for (int64_t i = 0; i < kBlock; ++i) mass += mass_lanes[i];
    *kept_mass = mass;
  }
}

TURBOGEN_TARGET_AVX2 void draw_full_row_avx2(const RowReader& row, int64_t vocab, const RowParams& p, const Cut& cut,
                                             const std::vector<float>& block_max, BestDraw& best, double* kept_mass) {
  draw_full_row_body(row, vocab, p, cut, block_max, best, kept_mass);
}

void draw_full_row_portable(const RowReader& row, int64_t vocab, const RowParams& p, const Cut& cut,
                            const std::vector<float>& block_max, BestDraw& best, double* kept_mass) {
  draw_full_row_body(row, vocab, p, cut, block_max, best, kept_mass);
}

}  // namespace

RowResult full_row(const RowReader& row, int64_t vocab, const RowParams& p, const MaxResult& top, Scratch& s,
                   bool want_token, bool want_logprob, float* filtered) {
  RowResult result;
  if (top.index < 0) {
    if (filtered) std::fill(filtered, filtered + vocab, kNegInf);
    return result;
  }
  const float max = top.value;
  const float floor = p.top_k > 0 ? kth_largest(row, vocab, p.temperature, p.top_k, s.values) : kLowestFinite;
  Cut cut;
  if (p.top_p < 1.0) {
    cut = top_p_cut(row, vocab, p, max, floor, s);
  } else {
    cut.value = floor;
  }
  cut.max = max;
  cut.min_p = p.min_p;
  if (filtered) write_filtered(row, vocab, p.temperature, cut, s.block_max, filtered);
  if (!want_token) return result;

  BestDraw best;
  // Start from the top token (always kept): its score prunes most of the row right away.
  const uint32_t first = static_cast<uint32_t>(top.index);
  offer_block(&first, &max, 1, p, best);
  double kept_mass = 0.0;
  static const auto draw = TURBOGEN_SELECT_ISA(draw_full_row);
  draw(row, vocab, p, cut, s.block_max, best, want_logprob ? &kept_mass : nullptr);
  result.token = best.index;
  if (want_logprob) result.logprob = log_probability(best.value, max, kept_mass);
  return result;
}


}  // namespace sampling
}  // namespace cpu
}  // namespace turbogen
