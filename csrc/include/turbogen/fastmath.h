// Branch-free float32 math that the compiler vectorises (libm's expf is a scalar call per element).
// The selects below are if-converted only with -fno-trapping-math (set in CMakeLists.txt).
#pragma once

#include <cstdint>
#include <cstring>

namespace turbogen {

// exp(x) for float32, within 2 ulp of libm over the normal range (Cephes' minimax polynomial on
// [-ln2/2, ln2/2] after range reduction); exp(-inf) = 0, exp(+inf) = inf, NaN propagates.
inline float exp_vectorizable(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  // NaN is clamped too (to -87; the result is replaced below), so the integer conversion and the
  // shift that follow stay defined for every input.
  const float clamped = !(x >= -87.0f) ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = (clamped * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float poly = p * r * r + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;  // n + 127 in [1, 254]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float y = poly * scale;
  y = x < -87.0f ? 0.0f : y;          // below the smallest normal result: flush (and exp(-inf) = 0)
  y = x > 88.0f ? x * 3.4e38f : y;    // overflow to inf (inf stays inf)
  return x != x ? x : y;              // NaN propagates
}

// Reductions over a row with kLanes independent accumulators: the compiler vectorises them
// without -ffast-math, and the summation order is fixed (the same result on every call).
constexpr int64_t kLanes = 8;

inline float max_of(const float* x, int64_t n) {
  float lanes[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) lanes[k] = -__builtin_inff();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) lanes[k] = x[i + k] > lanes[k] ? x[i + k] : lanes[k];
  }
  float m = -__builtin_inff();
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int64_t k = 0; k < kLanes; ++k) m = lanes[k] > m ? lanes[k] : m;
  return m;
}

inline float sum_of(const float* x, int64_t n) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) lanes[k] += x[i + k];
  }
  float s = 0.0f;
  for (; i < n; ++i) s += x[i];
  for (int64_t k = 0; k < kLanes; ++k) s += lanes[k];
  return s;
}

}  // namespace turbogen
