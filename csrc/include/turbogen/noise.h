// The sampling contract's Gumbel noise for every token of every row (turbogen.ops.gumbel_noise):
// out[r, j] = -log(-log(u)), u the contract's uniform for seed[r], offset[r] and token j
// (docs/design.md, "Randomness: the determinism contract"; philox.h draws the bits).
//
// The raw bits and u are exact on every backend. The two logs are float32 logs:
// - device code uses CUDA's logf, the function torch.log runs on a GPU, so the cuda kernel is the
//   reference's noise bit for bit there;
// - host code uses the correctly rounded float32 log (the double log rounded to float), which is
//   the same on every CPU and every ISA; torch's CPU log (SLEEF) is within 1 ulp of it, so the cpu
//   noise differs from the CPU reference by an ulp in some elements (documented in
//   tests/ops/test_gumbel_noise.py, which checks both statements).
// gumbel() is the per-token function the other kernels (beam search) share with this op.
#pragma once

#include <cstdint>

#if !defined(__CUDA_ARCH__)
#include <cmath>
#endif

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/checks.h"
#include "turbogen/dtype.h"
#include "turbogen/philox.h"
#include "turbogen/status.h"

namespace turbogen {
namespace noise {

// float32 natural log: CUDA's logf on the device, the correctly rounded value on the host.
TURBOGEN_HOST_DEVICE inline float log32(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  return static_cast<float>(std::log(static_cast<double>(x)));
#endif
}

// -log(-log(u)) for the raw draw `bits` (philox::token_bits).
TURBOGEN_HOST_DEVICE inline float gumbel_from_bits(uint32_t bits) {
  return -log32(-log32(philox::uniform_from_bits(bits)));
}

// The noise of token `token` for a row with `seed` and `offset`.
TURBOGEN_HOST_DEVICE inline float gumbel(uint64_t seed, uint64_t offset, uint64_t token) {
  return gumbel_from_bits(philox::token_bits(seed, offset, token));
}

}  // namespace noise

struct GumbelNoiseArgs {
  const int64_t* seed = nullptr;    // [rows] int64, read as uint64: row r's Philox key
  const int64_t* offset = nullptr;  // [rows] int64, read as uint64: row r's counter high half
  float* out = nullptr;             // [rows, columns] float32, contiguous
  int64_t rows = 0;
  int64_t columns = 0;              // tokens [0, columns) of every row
};

// The checks every launcher (cpu and cuda) makes before touching memory.
inline Status validate(const GumbelNoiseArgs& a) {
  if (a.rows < 0) return bad_shape("rows must be >= 0");
  if (a.columns < 0) return bad_shape("columns must be >= 0");
  if (a.rows == 0 || a.columns == 0) return ok_status();
  const Status shape = check_matrix(a.rows, a.columns, a.columns, sizeof(float), "out (rows * columns)");
  if (!shape.ok()) return shape;
  if (!a.seed) return null_pointer("seed");
  if (!a.offset) return null_pointer("offset");
  if (!a.out) return null_pointer("out");
  return ok_status();
}

namespace cpu {
Status gumbel_noise(const GumbelNoiseArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// validate() (the grid strides over elements, so there is no grid limit to check).
Status validate_launch(const GumbelNoiseArgs& args);
// Enqueues the kernel on `stream`; cudaErrorInvalidValue when validate_launch() fails.
cudaError_t gumbel_noise(const GumbelNoiseArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
