// The contract's noise for many tokens of a row at once: Philox4x32-10 bits (AVX2, 8 tokens per
// vector, where the CPU has it), then Gumbel values from a log that vectorises; and the running
// Gumbel argmax they feed.
#include <cstring>

#include "isa.h"
#include "sampling_row.h"

namespace turbogen {
namespace cpu {
namespace sampling {
namespace {

// Branch-free helpers with no library calls, so that loops over them vectorise.

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

// Word 0 of Philox4x32-10 for `count` tokens of one row (philox::token_bits, many at once).
void philox_bits_portable(const uint32_t* tokens, int64_t count, uint64_t seed, uint64_t offset, uint32_t* bits) {
  for (int64_t i = 0; i < count; ++i) bits[i] = philox::token_bits(seed, offset, tokens[i]);
}

#if defined(TURBOGEN_X86_DISPATCH)
// The same with AVX2, 8 tokens per vector. Compilers vectorise the 32x32->64-bit products of the
// generic loop poorly (constant multiplies become shift/add chains, or 64x64 emulation), so the
// round is spelled out: even and odd lanes multiply separately and blend back.
TURBOGEN_TARGET_AVX2 inline void mulhilo_avx2(__m256i multiplier, __m256i word, __m256i& high,
                                                         __m256i& low) {
  const __m256i even = _mm256_mul_epu32(word, multiplier);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(word, 32), multiplier);
  high = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
  low = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

TURBOGEN_TARGET_AVX2 void philox_bits_avx2(const uint32_t* tokens, int64_t count, uint64_t seed,
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
  philox_bits_portable(tokens + i, count - i, seed, offset, bits + i);
}

#endif

void philox_bits(const uint32_t* tokens, int64_t count, uint64_t seed, uint64_t offset, uint32_t* bits) {
  static const auto variant = TURBOGEN_SELECT_ISA(philox_bits);
  variant(tokens, count, seed, offset, bits);
}

TURBOGEN_ALWAYS_INLINE void gumbel_from_bits_block_body(const uint32_t* bits, int64_t count, float* noise) {
  for (int64_t i = 0; i < count; ++i) noise[i] = gumbel_from_bits(bits[i]);
}

TURBOGEN_TARGET_AVX2 void gumbel_from_bits_block_avx2(const uint32_t* bits, int64_t count, float* noise) {
  gumbel_from_bits_block_body(bits, count, noise);
}

void gumbel_from_bits_block_portable(const uint32_t* bits, int64_t count, float* noise) {
  gumbel_from_bits_block_body(bits, count, noise);
}

// Gumbel noise for `count` tokens of one row (count <= kBlock).
void gumbel_block(const uint32_t* tokens, int64_t count, uint64_t seed, uint64_t offset, float* noise) {
  uint32_t bits[kBlock];
  philox_bits(tokens, count, seed, offset, bits);
  static const auto from_bits = TURBOGEN_SELECT_ISA(gumbel_from_bits_block);
  from_bits(bits, count, noise);
}


}  // namespace

void offer_block(const uint32_t* tokens, const float* values, int64_t count, const RowParams& p, BestDraw& best) {
  float noise[kBlock];
  gumbel_block(tokens, count, p.seed, p.offset, noise);
  for (int64_t i = 0; i < count; ++i) best.offer(values[i] + noise[i], tokens[i], values[i]);
}

}  // namespace sampling
}  // namespace cpu
}  // namespace turbogen
