// softmax(logits / temperature) per row: one thread block per row, online max/sum in a single
// read of the row, then one more read to write the normalised values.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cub/block/block_reduce.cuh>

#include "turbogen/softmax.h"

namespace turbogen {
namespace cuda {
namespace {

constexpr int kBlockThreads = 256;

__device__ __forceinline__ float load(const void* row, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(row)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(row)[i]);
    default: return static_cast<const float*>(row)[i];
  }
}

__device__ __forceinline__ void store(void* row, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::kFloat16: static_cast<__half*>(row)[i] = __float2half_rn(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(row)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(row)[i] = v; break;
  }
}

// Running (max, sum of exp(x - max)) pair; merging two is associative, so a block reduce works.
struct MaxSum {
  float max;
  float sum;
};

struct MergeMaxSum {
  __device__ __forceinline__ MaxSum operator()(const MaxSum& a, const MaxSum& b) const {
    const float m = fmaxf(a.max, b.max);
    if (m == -INFINITY) return {m, 0.0f};
    return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
  }
};

__global__ void softmax_kernel(SoftmaxArgs args) {
  using BlockReduce = cub::BlockReduce<MaxSum, kBlockThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  __shared__ MaxSum row_stats;

  const int64_t r = blockIdx.x;
  const int64_t elem = args.dtype == DType::kFloat32 ? 4 : 2;
  const char* src = static_cast<const char*>(args.logits) + r * args.row_stride * elem;
  char* dst = static_cast<char*>(args.out) + r * args.cols * elem;
  const float t = args.temperature[args.temperature_per_row ? r : 0];

  MaxSum local{-INFINITY, 0.0f};
  for (int64_t i = threadIdx.x; i < args.cols; i += kBlockThreads) {
    local = MergeMaxSum()(local, MaxSum{load(src, args.dtype, i) / t, 1.0f});
  }
  const MaxSum total = BlockReduce(temp).Reduce(local, MergeMaxSum());
  if (threadIdx.x == 0) row_stats = total;
  __syncthreads();

  const float inv_sum = 1.0f / row_stats.sum;
  for (int64_t i = threadIdx.x; i < args.cols; i += kBlockThreads) {
    store(dst, args.dtype, i, __expf(load(src, args.dtype, i) / t - row_stats.max) * inv_sum);
  }
}

}  // namespace

Status validate_launch(const SoftmaxArgs& args) {
  const Status status = validate(args);
  if (!status.ok()) return status;
  if (args.rows > 0x7fffffff) return bad_shape("rows must be < 2**31 (one block per row)");
  return ok_status();
}

cudaError_t softmax(const SoftmaxArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.rows == 0 || args.cols == 0) return cudaSuccess;
  softmax_kernel<<<static_cast<unsigned>(args.rows), kBlockThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace turbogen
