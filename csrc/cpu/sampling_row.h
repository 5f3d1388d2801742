// The pieces of the CPU sampler (sampling.cpp) that its files share: how a row is read block by
// block, the per-row parameters, the kept set, and the running Gumbel argmax. Internal to csrc/cpu.
//
// The sampler's files, by concern:
//   sampling.cpp            entry point, parameter checks, the greedy and small-top-k paths
//   sampling_scan.cpp       pass 1 (block maxima, the row max) and top-k candidate selection
//   sampling_noise.cpp      Philox bits and Gumbel noise for many tokens at once; the running argmax
//   sampling_full_row.cpp   the full-row path: top-p by mass histogram, the pruned Gumbel draw
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "turbogen/dtype.h"
#include "turbogen/fastmath.h"
#include "turbogen/penalties.h"
#include "turbogen/philox.h"
#include "turbogen/sampling.h"

namespace turbogen {
namespace cpu {
namespace sampling {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();
constexpr float kLowestFinite = std::numeric_limits<float>::lowest();
constexpr uint32_t kLastIndex = std::numeric_limits<uint32_t>::max();
constexpr int64_t kBlock = 64;  // elements per vectorised step

// ---- per-row parameters ------------------------------------------------------------------------

struct RowParams {
  float temperature;
  int64_t top_k;  // 0 = off (also when >= vocab)
  double top_p;   // >= 1 = off
  float min_p;    // 0 = off
  uint64_t seed;
  uint64_t offset;
};

template <typename T>
inline T param(const T* values, bool per_row, int64_t r) {
  return values[per_row ? r : 0];
}

// A +inf logit makes every probability of its row NaN in the reference (softmax computes
// inf - inf), so there top-p and min-p remove nothing and the kept set is top-k's alone; the
// draw then returns the first +inf token and its logprob is NaN, as in the reference.
inline void drop_probability_filters_if_infinite(float row_max, RowParams& p) {
  if (row_max == kPosInf) {
    p.top_p = 1.0;
    p.min_p = 0.0f;
  }
}

// ---- reading a row -----------------------------------------------------------------------------

using FullBlock = std::integral_constant<int64_t, kBlock>;

// A row of fp32/fp16/bf16 logits, read as tempered float32 values z = x / T (IEEE division: the
// reference's exact values). NaN stays NaN; every comparison below is false for it, which is how
// NaN reads as -inf.
struct RowReader {
  const void* data;
  DType dtype;

  // Elements [begin, begin + count) tempered: in place for fp32 at temperature 1, else in scratch.
  template <typename Count>
  inline const float* tempered(int64_t begin, Count count, float temperature, float* scratch) const {
    if (dtype == DType::kFloat32) {
      const float* x = static_cast<const float*>(data) + begin;
      if (temperature == 1.0f) return x;
      for (int64_t i = 0; i < count; ++i) scratch[i] = x[i] / temperature;
      return scratch;
    }
    const uint16_t* x = static_cast<const uint16_t*>(data) + begin;
    if (dtype == DType::kFloat16) {
      for (int64_t i = 0; i < count; ++i) scratch[i] = half_bits_to_float(x[i]);
    } else {
      for (int64_t i = 0; i < count; ++i) scratch[i] = bfloat16_bits_to_float(x[i]);
    }
    if (temperature != 1.0f) {
      for (int64_t i = 0; i < count; ++i) scratch[i] /= temperature;
    }
    return scratch;
  }
};

struct VisitEveryBlock {
  bool operator()(int64_t) const { return true; }
};

// Calls visit(base, n, z) for the consecutive blocks b of the row with wanted(b), z[0..n) the
// block's tempered values; unwanted blocks are not read. Full blocks pass n as a compile-time
// constant, so the visitor's loops vectorise with no remainder handling; only the last, partial
// block passes a runtime count.
template <typename Visit, typename Wanted = VisitEveryBlock>
inline void for_each_block(const RowReader& row, int64_t vocab, float temperature, Visit&& visit,
                           Wanted&& wanted = Wanted{}) {
  float scratch[kBlock];
  const int64_t full_end = vocab - vocab % kBlock;
  for (int64_t base = 0; base < full_end; base += kBlock) {
    if (wanted(base / kBlock)) visit(base, FullBlock{}, row.tempered(base, FullBlock{}, temperature, scratch));
  }
  if (full_end < vocab && wanted(full_end / kBlock)) {
    const int64_t n = vocab - full_end;
    visit(full_end, n, row.tempered(full_end, n, temperature, scratch));
  }
}

inline int64_t block_count(int64_t vocab) { return (vocab + kBlock - 1) / kBlock; }

struct MaxResult {
  float value;    // -inf when the row has no non-NaN value above -inf
  int64_t index;  // first index holding `value`, -1 when none
};


// ---- candidates ------------------------------------------------------------------------------

struct Candidate {
  float value;
  uint32_t index;
};

// Descending value, ascending index: the order in which filters keep tokens.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// Running Gumbel argmax: the highest score, ties to the lowest index.
struct BestDraw {
  float score = kNegInf;
  float value = kNegInf;  // the winner's tempered logit
  int64_t index = -1;

  void offer(float y, int64_t j, float z) {
    if (y > score || (y == score && j < index)) {
      score = y;
      value = z;
      index = j;
    }
  }
  // A token with value z can still win (or tie) only if z + kGumbelBound >= score.
  bool reachable(float z) const { return z + philox::kGumbelBound >= score; }
};

// ---- the row's kept set ------------------------------------------------------------------------

struct Cut {  // kept iff (z, -j) >= (value, -index) and, if min_p > 0, exp(z - max) >= min_p
  float value = kLowestFinite;
  uint32_t index = kLastIndex;
  float max = 0.0f;
  float min_p = 0.0f;

  inline bool keeps(float z, int64_t j) const {
    if (!(z > value || (z == value && static_cast<uint64_t>(j) <= index))) return false;
    return min_p <= 0.0f || exp_vectorizable(z - max) >= min_p;
  }
};

struct RowResult {
  int64_t token = -1;
  float logprob = kNegInf;
};

// log softmax of a token with tempered value z over a kept set of mass kept_mass = sum exp(z_i - max).
inline float log_probability(float z, float max, double kept_mass) {
  return static_cast<float>(static_cast<double>(z - max) - std::log(kept_mass));
}

// Thread-local scratch, reused across rows and calls.
struct Scratch {
  std::vector<float> block_max;  // scan_blocks
  std::vector<Candidate> candidates;
  std::vector<float> weights;
  std::vector<float> values;
  std::vector<double> bin_mass;
  std::vector<float> penalised;  // penalised_row: the row, and its marked tokens with their counts
  MarkedTokens marked;
};

// sampling.cpp: the row after its penalties (SamplingArgs::penalties), as float32 values of the logits'
// dtype in s.penalised, read by every later pass instead of the logits. One sequential pass over the
// row (converting blocks without marked tokens, penalising the marked ones); the scattered reads of the
// counts happen once, and the passes that follow read the copy from the core's cache.
RowReader penalised_row(const RowReader& row, const PenaltyRow& penalty, int64_t vocab, Scratch& s);

// ---- the passes, by file -----------------------------------------------------------------------

// sampling_scan.cpp: pass 1 of every path, the tempered max of each block of kBlock tokens (-inf
// when it has no finite value) into block_max, and the row's max with its first index.
MaxResult scan_blocks(const RowReader& row, int64_t vocab, float temperature, std::vector<float>& block_max);

// sampling_scan.cpp: every finite token whose tempered value is >= the k-th largest (ties
// included), in no particular order, reading again only the blocks whose max reaches it.
void collect_top_k(const RowReader& row, int64_t vocab, float temperature, int64_t k,
                   const std::vector<float>& block_max, std::vector<float>& maxima, std::vector<Candidate>& out);

// sampling_scan.cpp: the k-th largest tempered value, or the lowest finite value when fewer than k
// are finite.
float kth_largest(const RowReader& row, int64_t vocab, float temperature, int64_t k, std::vector<float>& values);

// sampling_noise.cpp: offers tokens[0..count) (count <= kBlock) with tempered values `values` to
// the running argmax, with the contract's Gumbel noise for the row's seed and offset.
void offer_block(const uint32_t* tokens, const float* values, int64_t count, const RowParams& p, BestDraw& best);

// sampling_full_row.cpp: the full-row path (no small top-k), from the row's pass-1 result.
RowResult full_row(const RowReader& row, int64_t vocab, const RowParams& p, const MaxResult& top, Scratch& s,
                   bool want_token, bool want_logprob, float* filtered);

// sampling.cpp: the filtered row, -inf where `cut` removes a token; blocks below the cut are not read.
void write_filtered(const RowReader& row, int64_t vocab, float temperature, const Cut& cut,
                    const std::vector<float>& block_max, float* out);

}  // namespace sampling
}  // namespace cpu
}  // namespace turbogen
