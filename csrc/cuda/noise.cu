// turbogen.ops.gumbel_noise on a GPU: a grid-stride loop over the flat [rows, columns] output.
#include "turbogen/noise.h"

namespace turbogen {
namespace cuda {

namespace {

constexpr int kBlockThreads = 256;
constexpr int64_t kMaxBlocks = 65536;  // the loop strides over the rest

__global__ void gumbel_noise_kernel(GumbelNoiseArgs args) {
  const int64_t total = args.rows * args.columns;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / args.columns;
    const int64_t j = i - r * args.columns;
    args.out[i] = noise::gumbel(static_cast<uint64_t>(args.seed[r]), static_cast<uint64_t>(args.offset[r]),
                                static_cast<uint64_t>(j));
  }
}

}  // namespace

Status validate_launch(const GumbelNoiseArgs& args) { return validate(args); }

cudaError_t gumbel_noise(const GumbelNoiseArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.rows == 0 || args.columns == 0) return cudaSuccess;
  const int64_t total = args.rows * args.columns;
  int64_t blocks = (total + kBlockThreads - 1) / kBlockThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  gumbel_noise_kernel<<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace turbogen
