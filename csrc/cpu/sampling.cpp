// CPU sampling: temperature / top-k / top-p / min-p filtering + Gumbel-max with Philox noise.
//
// The function computed is turbogen.ref.sampling's (docs/sampling.md). Rows run in parallel on the
// thread pool; each row is handled by one thread, which never sorts the vocabulary. Pass 1 of every
// path (scan_blocks) records the max of each block of kBlock tokens; later passes skip, unread,
// every block whose max shows it cannot matter.
//
//  * top-k with a small k ("candidate path"): the k-th largest block max bounds the k-th largest
//    value from below, so only the ~k blocks reaching it are read again. The survivors (k plus
//    ties) are sorted, top-p and min-p walk them, and the Gumbel argmax visits them in descending
//    order and stops once no later token can win. About one read of the row.
//  * otherwise ("full-row path"): top-p builds a histogram of probability mass over the distance
//    below the max (pass 2) and sorts only the tokens of the bin where the cumulative mass crosses
//    top_p (pass 3); the sampling pass computes noise only for kept tokens within kGumbelBound of
//    the best score so far, and skips whole blocks that cannot win.
//
// Every path reduces the filters to one cut in the (value descending, index ascending) order:
// token j is kept iff (z_j, -j) >= (cut_value, -cut_index), and, on the full-row path, min-p's
// exp(z_j - max) >= min_p.

#include "turbogen/sampling.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "turbogen/fastmath.h"
#include "turbogen/parallel.h"
#include "turbogen/philox.h"

namespace turbogen {
namespace cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kLowestFinite = std::numeric_limits<float>::lowest();
constexpr uint32_t kLastIndex = std::numeric_limits<uint32_t>::max();
constexpr int64_t kBlock = 64;  // elements per vectorised step

// ---- Gumbel noise helpers that vectorise (branch-free, no library calls) ------------------------

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

// log(x) for positive normal x, within 1 ulp: x = 2^k * m with m in [sqrt(1/2), sqrt(2)), then
// log(m) = log((1 + s) / (1 - s)) as an odd series in s = (m - 1) / (m + 1).
inline float log_positive(float x) {
  uint32_t bits = float_to_bits(x) + (0x3f800000u - 0x3f3504f3u);
  const int32_t k = static_cast<int32_t>(bits >> 23) - 127;
  bits = (bits & 0x007fffffu) + 0x3f3504f3u;
  const float f = bits_to_float(bits) - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s, w = z * z;
  const float odd = w * (0.40000972152f + w * 0.24279078841f);
  const float even = z * (0.66666662693f + w * 0.28498786688f);
  const float half_f2 = 0.5f * f * f;
  const float kf = static_cast<float>(k);
  return s * (half_f2 + (odd + even)) + kf * 9.0580006145e-06f - half_f2 + f + kf * 6.9313812256e-01f;
}

inline float gumbel_from_bits(uint32_t bits) {
  return -log_positive(-log_positive(philox::uniform_from_bits(bits)));
}

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

RowParams row_params(const SamplingArgs& a, int64_t r) {
  RowParams p;
  p.temperature = param(a.temperature, a.temperature_per_row, r);
  p.top_k = param(a.top_k, a.top_k_per_row, r);
  if (p.top_k >= a.vocab) p.top_k = 0;
  p.top_p = param(a.top_p, a.top_p_per_row, r);
  p.min_p = param(a.min_p, a.min_p_per_row, r);
  p.seed = a.tokens ? static_cast<uint64_t>(a.seed[r]) : 0;
  p.offset = a.tokens ? static_cast<uint64_t>(param(a.offset, a.offset_per_row, r)) : 0;
  return p;
}

Status check(const SamplingArgs& a) {
  if (a.rows < 0 || a.vocab < 0 || a.vocab > kSamplingMaxVocab) return Status::kBadShape;
  if (a.rows == 0) return Status::kOk;
  if (!a.tokens && !a.filtered) return Status::kNullPointer;  // nothing to compute
  if (a.logprobs && !a.tokens) return Status::kNullPointer;
  if (!a.temperature || !a.top_k || !a.top_p || !a.min_p) return Status::kNullPointer;
  if (a.tokens && (!a.seed || !a.offset)) return Status::kNullPointer;
  if (a.vocab > 0 && !a.logits) return Status::kNullPointer;
  if (a.vocab > 0 && a.rows > 1 && a.row_stride < a.vocab) return Status::kBadStride;
  if (!is_valid_dtype(static_cast<int>(a.dtype))) return Status::kBadDType;
  for (int64_t r = 0; r < a.rows; ++r) {
    const float t = param(a.temperature, a.temperature_per_row, r);
    const double p = param(a.top_p, a.top_p_per_row, r);
    const float q = param(a.min_p, a.min_p_per_row, r);
    if (!(t >= 0.0f) || std::isinf(t)) return Status::kBadValue;
    if (param(a.top_k, a.top_k_per_row, r) < 0) return Status::kBadValue;
    if (!(p > 0.0 && p <= 1.0) || !(q >= 0.0f && q <= 1.0f)) return Status::kBadValue;
  }
  return Status::kOk;
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

// Raw (untempered) max of each of the first `blocks` full blocks, NaN ignored.
void raw_block_maxima_generic(const RowReader& row, int64_t blocks, float* out) {
  constexpr int64_t kLanes = 8;
  for_each_block(row, blocks * kBlock, 1.0f, [&](int64_t base, auto n, const float* x) {
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, kNegInf);
    for (int64_t i = 0; i < n; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] = x[i + l] > lanes[l] ? x[i + l] : lanes[l];
    }
    float m = kNegInf;
    for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
    out[base / kBlock] = m;
  });
}

#if defined(__x86_64__) && defined(__GNUC__)
// Eight values of the row as float32, NaN as -inf (MAXPS returns its second operand when either is
// NaN, so max(x, -inf) maps NaN to -inf and keeps everything else).
__attribute__((target("avx2,f16c"))) inline __m256 load8_avx2(const RowReader& row, int64_t i) {
  __m256 x;
  if (row.dtype == DType::kFloat32) {
    x = _mm256_loadu_ps(static_cast<const float*>(row.data) + i);
  } else {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row.data) + i));
    x = row.dtype == DType::kFloat16 ? _mm256_cvtph_ps(bits)
                                     : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  return _mm256_max_ps(x, _mm256_set1_ps(kNegInf));
}

// The same with AVX2: the scan is the one pass every path makes over the whole row, and the
// compiler's version spends most of its time reducing each block's lanes one by one.
__attribute__((target("avx2,f16c"))) void raw_block_maxima_avx2(const RowReader& row, int64_t blocks, float* out) {
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i = b * kBlock;
    const __m256 m01 = _mm256_max_ps(load8_avx2(row, i), load8_avx2(row, i + 8));
    const __m256 m23 = _mm256_max_ps(load8_avx2(row, i + 16), load8_avx2(row, i + 24));
    const __m256 m45 = _mm256_max_ps(load8_avx2(row, i + 32), load8_avx2(row, i + 40));
    const __m256 m67 = _mm256_max_ps(load8_avx2(row, i + 48), load8_avx2(row, i + 56));
    const __m256 m = _mm256_max_ps(_mm256_max_ps(m01, m23), _mm256_max_ps(m45, m67));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    out[b] = _mm_cvtss_f32(h);
  }
}

void raw_block_maxima(const RowReader& row, int64_t blocks, float* out) {
  static_assert(kBlock == 64, "raw_block_maxima_avx2 reads 64 values per block");
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  if (has_avx2) {
    raw_block_maxima_avx2(row, blocks, out);
  } else {
    raw_block_maxima_generic(row, blocks, out);
  }
}
#else
void raw_block_maxima(const RowReader& row, int64_t blocks, float* out) { raw_block_maxima_generic(row, blocks, out); }
#endif

// Pass 1 of every path: the tempered max of each block of kBlock tokens (-inf when it has no
// finite value) into block_max, and the row's max with its first index. Dividing by a positive
// temperature is monotone, so a block's tempered max is its raw max / T: no division per element.
// The later passes skip every block whose max shows it cannot matter, without reading it.
MaxResult scan_blocks(const RowReader& row, int64_t vocab, float temperature, std::vector<float>& block_max) {
  block_max.resize(static_cast<size_t>(block_count(vocab)));
  const int64_t full_blocks = vocab / kBlock;
  raw_block_maxima(row, full_blocks, block_max.data());
  if (full_blocks * kBlock < vocab) {
    float m = kNegInf;
    for (int64_t i = full_blocks * kBlock; i < vocab; ++i) {
      const float x = load_as_float(row.data, row.dtype, i);
      m = x > m ? x : m;
    }
    block_max[static_cast<size_t>(full_blocks)] = m;
  }
  if (temperature != 1.0f) {
    for (float& m : block_max) m /= temperature;
  }
  float best = kNegInf;
  size_t first_block = 0;
  for (size_t b = 0; b < block_max.size(); ++b) {
    if (block_max[b] > best) {
      best = block_max[b];
      first_block = b;
    }
  }
  if (!(best > kNegInf)) return {kNegInf, -1};
  int64_t first = -1;
  for_each_block(row, vocab, temperature, [&](int64_t base, auto n, const float* z) {
    for (int64_t i = 0; i < n && first < 0; ++i) {
      if (z[i] == best) first = base + i;
    }
  }, [&](int64_t b) { return static_cast<size_t>(b) == first_block; });
  return {best, first};
}

// ---- candidates ------------------------------------------------------------------------------

struct Candidate {
  float value;
  uint32_t index;
};

// Descending value, ascending index: the order in which filters keep tokens.
inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

inline bool value_greater(const Candidate& a, const Candidate& b) { return a.value > b.value; }

// Keeps the entries >= the k-th largest value (ties included); returns that value.
float keep_top_k(std::vector<Candidate>& buffer, int64_t k) {
  std::nth_element(buffer.begin(), buffer.begin() + (k - 1), buffer.end(), value_greater);
  const float kth = buffer[static_cast<size_t>(k - 1)].value;
  buffer.erase(std::remove_if(buffer.begin(), buffer.end(), [kth](const Candidate& c) { return c.value < kth; }),
               buffer.end());
  return kth;
}

// Every finite token whose tempered value is >= the k-th largest (ties included), in no particular
// order, from the block maxima of scan_blocks: the k-th largest block max is a lower bound of the
// k-th largest value (those k blocks hold k values at least as large), and usually equal to it, so
// only the blocks whose max reaches it are read again: about k blocks.
void collect_top_k(const RowReader& row, int64_t vocab, float temperature, int64_t k,
                   const std::vector<float>& block_max, std::vector<float>& maxima, std::vector<Candidate>& out) {
  out.clear();
  // The k largest block maxima in a min-heap: after the first few blocks most are rejected by one
  // comparison with the heap's top.
  maxima.clear();
  const std::greater<float> min_heap;
  for (const float m : block_max) {
    if (maxima.size() < static_cast<size_t>(k)) {
      if (m > kNegInf) {
        maxima.push_back(m);
        std::push_heap(maxima.begin(), maxima.end(), min_heap);
      }
    } else if (m > maxima.front()) {
      std::pop_heap(maxima.begin(), maxima.end(), min_heap);
      maxima.back() = m;
      std::push_heap(maxima.begin(), maxima.end(), min_heap);
    }
  }
  // Fewer than k blocks with a finite value: every finite value survives (-inf never does).
  const float floor = maxima.size() == static_cast<size_t>(k) ? maxima.front() : kLowestFinite;
  for_each_block(row, vocab, temperature, [&](int64_t base, auto n, const float* z) {
    // Usually one token of the block passes: find it 8 at a time.
    for (int64_t start = 0; start < n; start += 8) {
      const int64_t end = std::min<int64_t>(start + 8, n);
      int32_t any = 0;
      for (int64_t i = start; i < end; ++i) any |= static_cast<int32_t>(z[i] >= floor);
      if (!any) continue;
      for (int64_t i = start; i < end; ++i) {
        if (z[i] >= floor) out.push_back({z[i], static_cast<uint32_t>(base + i)});
      }
    }
  }, [&](int64_t b) { return block_max[static_cast<size_t>(b)] >= floor; });
  if (out.size() > static_cast<size_t>(k)) keep_top_k(out, k);
}

// ---- noise -------------------------------------------------------------------------------------

// Word 0 of Philox4x32-10 for `count` tokens of one row (philox::token_bits, many at once).
void philox_bits_generic(const uint32_t* tokens, int64_t count, uint64_t seed, uint64_t offset, uint32_t* bits) {
  for (int64_t i = 0; i < count; ++i) bits[i] = philox::token_bits(seed, offset, tokens[i]);
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same with AVX2, 8 tokens per vector. Compilers vectorise the 32x32->64-bit products of the
// generic loop poorly (constant multiplies become shift/add chains, or 64x64 emulation), so the
// round is spelled out: even and odd lanes multiply separately and blend back.
__attribute__((target("avx2"))) inline void mulhilo_avx2(__m256i multiplier, __m256i word, __m256i& high,
                                                         __m256i& low) {
  const __m256i even = _mm256_mul_epu32(word, multiplier);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(word, 32), multiplier);
  high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  low = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

__attribute__((target("avx2"))) void philox_bits_avx2(const uint32_t* tokens, int64_t count, uint64_t seed,
                                                      uint64_t offset, uint32_t* bits) {
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(philox::kRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(philox::kRoundB));
  const __m256i offset_lo = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset)));
  const __m256i offset_hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(offset >> 32)));
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tokens + i));
    __m256i c1 = _mm256_setzero_si256(), c2 = offset_lo, c3 = offset_hi;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < philox::kRounds; ++round) {
      if (round > 0) {
        k0 += philox::kKeyA;
        k1 += philox::kKeyB;
      }
      __m256i high_a, low_a, high_b, low_b;
      mulhilo_avx2(round_a, c0, high_a, low_a);
      mulhilo_avx2(round_b, c2, high_b, low_b);
      c0 = _mm256_xor_si256(_mm256_xor_si256(high_b, c1), _mm256_set1_epi32(static_cast<int>(k0)));
      c2 = _mm256_xor_si256(_mm256_xor_si256(high_a, c3), _mm256_set1_epi32(static_cast<int>(k1)));
      c1 = low_b;
      c3 = low_a;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(bits + i), c0);
  }
  philox_bits_generic(tokens + i, count - i, seed, offset, bits + i);
}

void philox_bits(const uint32_t* tokens, int64_t count, uint64_t seed, uint64_t offset, uint32_t* bits) {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) {
    philox_bits_avx2(tokens, count, seed, offset, bits);
  } else {
    philox_bits_generic(tokens, count, seed, offset, bits);
  }
}
#else
void philox_bits(const uint32_t* tokens, int64_t count, uint64_t seed, uint64_t offset, uint32_t* bits) {
  philox_bits_generic(tokens, count, seed, offset, bits);
}
#endif

TURBOGEN_CPU_DISPATCH void gumbel_from_bits_block(const uint32_t* bits, int64_t count, float* noise) {
  for (int64_t i = 0; i < count; ++i) noise[i] = gumbel_from_bits(bits[i]);
}

// Gumbel noise for `count` tokens of one row (count <= kBlock).
void gumbel_block(const uint32_t* tokens, int64_t count, uint64_t seed, uint64_t offset, float* noise) {
  uint32_t bits[kBlock];
  philox_bits(tokens, count, seed, offset, bits);
  gumbel_from_bits_block(bits, count, noise);
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

void offer_block(const uint32_t* tokens, const float* values, int64_t count, const RowParams& p, BestDraw& best) {
  float noise[kBlock];
  gumbel_block(tokens, count, p.seed, p.offset, noise);
  for (int64_t i = 0; i < count; ++i) best.offer(values[i] + noise[i], tokens[i], values[i]);
}

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
};

void write_filtered(const RowReader& row, int64_t vocab, float temperature, const Cut& cut,
                    const std::vector<float>& block_max, float* out) {
  std::fill(out, out + vocab, kNegInf);
  for_each_block(row, vocab, temperature, [&](int64_t base, auto n, const float* z) {
    for (int64_t i = 0; i < n; ++i) out[base + i] = cut.keeps(z[i], base + i) ? z[i] : kNegInf;
  }, [&](int64_t b) { return block_max[static_cast<size_t>(b)] >= cut.value; });
}

// Temperature 0: the argmax, a point mass.
RowResult greedy_row(const RowReader& row, int64_t vocab, Scratch& s, float* filtered) {
  const MaxResult top = scan_blocks(row, vocab, 1.0f, s.block_max);
  if (filtered) {
    std::fill(filtered, filtered + vocab, kNegInf);
    if (top.index >= 0) filtered[top.index] = top.value;
  }
  RowResult result;
  if (top.index >= 0) result = {top.index, 0.0f};
  return result;
}

// top-k with a small k: the survivors of one pass are sorted and walked (module comment).
RowResult candidate_row(const RowReader& row, int64_t vocab, const RowParams& p, Scratch& s, bool want_token,
                        bool want_logprob, float* filtered) {
  std::vector<Candidate>& cand = s.candidates;
  scan_blocks(row, vocab, p.temperature, s.block_max);
  collect_top_k(row, vocab, p.temperature, p.top_k, s.block_max, s.values, cand);
  RowResult result;
  if (cand.empty()) {
    if (filtered) std::fill(filtered, filtered + vocab, kNegInf);
    return result;
  }
  std::sort(cand.begin(), cand.end(), ranks_before);
  const float max = cand.front().value;
  const size_t count = cand.size();
  s.weights.resize(count);
  double total = 0.0;
  for (size_t i = 0; i < count; ++i) {
    s.weights[i] = exp_vectorizable(cand[i].value - max);
    total += s.weights[i];
  }
  // top-p: keep while the mass ranked strictly above is < top_p of the total; min-p: keep while
  // the weight relative to the top token is >= min_p. Both keep a prefix, and always the first.
  size_t kept = count;
  if (p.top_p < 1.0) {
    const double target = p.top_p * total;
    double above = 0.0;
    for (size_t i = 0; i < count; ++i) {
      if (above >= target) {
        kept = i;
        break;
      }
      above += s.weights[i];
    }
  }
  if (p.min_p > 0.0f) {
    for (size_t i = 1; i < kept; ++i) {
      if (s.weights[i] < p.min_p) {
        kept = i;
        break;
      }
    }
  }
  if (filtered) {
    Cut cut;
    cut.value = cand[kept - 1].value;
    cut.index = cand[kept - 1].index;
    write_filtered(row, vocab, p.temperature, cut, s.block_max, filtered);
  }
  if (!want_token) return result;

  // Descending values: stop at the first token that cannot reach the best score.
  BestDraw best;
  uint32_t tokens[kBlock];
  float values[kBlock];
  for (size_t start = 0; start < kept;) {
    int64_t n = 0;
    while (start < kept && n < kBlock && best.reachable(cand[start].value)) {
      tokens[n] = cand[start].index;
      values[n] = cand[start].value;
      ++n;
      ++start;
    }
    if (n == 0) break;
    offer_block(tokens, values, n, p, best);
  }
  result.token = best.index;
  if (want_logprob) {
    double kept_mass = 0.0;
    for (size_t i = 0; i < kept; ++i) kept_mass += s.weights[i];
    result.logprob = log_probability(best.value, max, kept_mass);
  }
  return result;
}


// ---- full-row path -----------------------------------------------------------------------------

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

// The k-th largest tempered value (large k), or the lowest finite value when fewer than k are finite.
float kth_largest(const RowReader& row, int64_t vocab, float temperature, int64_t k, std::vector<float>& values) {
  values.clear();
  for_each_block(row, vocab, temperature, [&](int64_t, auto n, const float* z) {
    for (int64_t i = 0; i < n; ++i) {
      if (z[i] >= kLowestFinite) values.push_back(z[i]);
    }
  });
  if (values.size() <= static_cast<size_t>(k)) return kLowestFinite;
  std::nth_element(values.begin(), values.begin() + (k - 1), values.end(), std::greater<float>());
  return values[static_cast<size_t>(k - 1)];
}

// Pass 2 of top-p: the mass histogram of the tokens >= floor. Returns the total mass.
TURBOGEN_CPU_DISPATCH double mass_histogram(const RowReader& row, int64_t vocab, float temperature, float max,
                                            float floor, const std::vector<float>& block_max,
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

// Pass 3 of top-p: the tokens >= floor in bin `bin`.
TURBOGEN_CPU_DISPATCH void gather_bin(const RowReader& row, int64_t vocab, float temperature, float max, float floor,
                                      int bin, const std::vector<float>& block_max, std::vector<Candidate>& out) {
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

// top-p without a small top-k: the histogram locates the bin where the cumulative mass crosses
// top_p * total; only that bin's tokens are gathered and sorted.
Cut top_p_cut(const RowReader& row, int64_t vocab, const RowParams& p, float max, float floor, Scratch& s) {
  const double total = mass_histogram(row, vocab, p.temperature, max, floor, s.block_max, s.bin_mass);
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
  gather_bin(row, vocab, p.temperature, max, floor, crossing, s.block_max, boundary);
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
TURBOGEN_CPU_DISPATCH void draw_full_row(const RowReader& row, int64_t vocab, const RowParams& p, const Cut& cut,
                                         const std::vector<float>& block_max, BestDraw& best, double* kept_mass) {
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

RowResult full_row(const RowReader& row, int64_t vocab, const RowParams& p, Scratch& s, bool want_token,
                   bool want_logprob, float* filtered) {
  RowResult result;
  const MaxResult top = scan_blocks(row, vocab, p.temperature, s.block_max);
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
  draw_full_row(row, vocab, p, cut, s.block_max, best, want_logprob ? &kept_mass : nullptr);
  result.token = best.index;
  if (want_logprob) result.logprob = log_probability(best.value, max, kept_mass);
  return result;
}

// Candidates come from about k blocks (collect_top_k) while k is a small part of the block count;
// beyond that the full-row path's selection (nth_element over the row) is the better deal.
inline bool small_top_k(int64_t k, int64_t vocab) { return k > 0 && k * 4 <= block_count(vocab); }

void sample_row(const SamplingArgs& a, int64_t r, Scratch& s) {
  const int64_t vocab = a.vocab;
  const RowParams p = row_params(a, r);
  const RowReader row{static_cast<const char*>(a.logits) + r * a.row_stride * dtype_size(a.dtype), a.dtype};
  float* filtered = a.filtered ? a.filtered + r * vocab : nullptr;
  const bool want_token = a.tokens != nullptr;
  const bool want_logprob = a.logprobs != nullptr;
  RowResult result;
  if (vocab == 0) {
    // Nothing to read or write: the row has no finite logit.
  } else if (p.temperature == 0.0f) {
    result = greedy_row(row, vocab, s, filtered);
  } else if (small_top_k(p.top_k, vocab)) {
    result = candidate_row(row, vocab, p, s, want_token, want_logprob, filtered);
  } else {
    result = full_row(row, vocab, p, s, want_token, want_logprob, filtered);
  }
  if (want_token) a.tokens[r] = result.token;
  if (want_logprob) a.logprobs[r] = result.logprob;
}

}  // namespace

Status sample(const SamplingArgs& args) {
  const Status status = check(args);
  if (status != Status::kOk || args.rows == 0) return status;
  // A row is at least a few microseconds of work; small vocabularies share a chunk.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(args.vocab, 1));
  parallel_for(0, args.rows, grain, [&](int64_t begin, int64_t end) {
    thread_local Scratch scratch;
    for (int64_t r = begin; r < end; ++r) sample_row(args, r, scratch);
  });
  return Status::kOk;
}

}  // namespace cpu
}  // namespace turbogen
