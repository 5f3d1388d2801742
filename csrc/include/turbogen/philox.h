// Philox4x32-10 and the Gumbel noise of the sampling contract (docs/design.md, "Randomness: the
// determinism contract"; docs/sampling.md has the bit layout). Host and device code share this
// header, so the CPU and CUDA kernels draw bit-identical raw numbers.
#pragma once

#include <cstdint>

#include "turbogen/dtype.h"  // TURBOGEN_HOST_DEVICE

namespace turbogen {
namespace philox {

// Random123's Philox4x32 constants (Salmon et al., SC 2011); also Triton's tl.philox.
constexpr uint32_t kRoundA = 0xD2511F53u;  // multiplies counter word 0
constexpr uint32_t kRoundB = 0xCD9E8D57u;  // multiplies counter word 2
constexpr uint32_t kKeyA = 0x9E3779B9u;    // added to key word 0 after every round
constexpr uint32_t kKeyB = 0xBB67AE85u;    // added to key word 1 after every round
constexpr int kRounds = 10;

struct Words {
  uint32_t w[4];
};

TURBOGEN_HOST_DEVICE inline uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32 with `rounds` rounds on counter (c0, c1, c2, c3) and key (k0, k1).
TURBOGEN_HOST_DEVICE inline Words philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                             uint32_t k1, int rounds = kRounds) {
  for (int round = 0; round < rounds; ++round) {
    if (round > 0) {
      k0 += kKeyA;
      k1 += kKeyB;
    }
    const uint32_t high_a = mulhi32(kRoundA, c0), low_a = kRoundA * c0;
    const uint32_t high_b = mulhi32(kRoundB, c2), low_b = kRoundB * c2;
    c0 = high_b ^ c1 ^ k0;
    c1 = low_b;
    c2 = high_a ^ c3 ^ k1;
    c3 = low_a;
  }
  return Words{{c0, c1, c2, c3}};
}

// The contract's raw draw for token `token` of a row: word 0 of Philox4x32-10 with key
// (lo32(seed), hi32(seed)) and counter (lo32(token), hi32(token), lo32(offset), hi32(offset)).
TURBOGEN_HOST_DEVICE inline uint32_t token_bits(uint64_t seed, uint64_t offset, uint64_t token) {
  return philox4x32(static_cast<uint32_t>(token), static_cast<uint32_t>(token >> 32), static_cast<uint32_t>(offset),
                    static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                    static_cast<uint32_t>(seed >> 32))
      .w[0];
}

// u = float(bits >> 9) * 2^-23 + 2^-24: exact in float32, strictly inside (0, 1).
TURBOGEN_HOST_DEVICE inline float uniform_from_bits(uint32_t bits) {
  return static_cast<float>(bits >> 9) * 0x1.0p-23f + 0x1.0p-24f;
}

// An upper bound on every Gumbel value -log(-log(u)) the kernels compute: the largest u is
// 1 - 2^-24, whose noise is 16.64 (a few ulp either way depending on the log implementation).
// A token with z + kGumbelBound < best score so far can never win the argmax.
constexpr float kGumbelBound = 17.0f;

}  // namespace philox
}  // namespace turbogen
