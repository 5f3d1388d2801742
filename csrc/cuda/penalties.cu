// CUDA apply_penalties: one thread per element (grid-stride over a row's chunks, rows across the
// grid's second dimension). A thread reads its element's mask word (one word serves 32 neighbours,
// a broadcast within the warp) and the counts only when the bit is set; the arithmetic is
// penalties.h's penalize(), shared with the CPU kernels. In place (out == logits) only penalised
// entries are written.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "turbogen/penalties.h"

namespace turbogen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kElementsPerThread = 4;
constexpr int64_t kChunk = kThreads * kElementsPerThread;
constexpr unsigned kMaxGridY = 65535;

__device__ __forceinline__ float load(const void* row, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(row)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(row)[i]);
    default: return static_cast<const float*>(row)[i];
  }
}

// Copies element i unchanged (raw bits, so NaN payloads survive) or stores its penalised value.
__device__ __forceinline__ void copy(const void* src, void* dst, DType dtype, int64_t i) {
  if (dtype == DType::kFloat32) {
    static_cast<float*>(dst)[i] = static_cast<const float*>(src)[i];
  } else {
    static_cast<uint16_t*>(dst)[i] = static_cast<const uint16_t*>(src)[i];
  }
}

__device__ __forceinline__ void store(void* row, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::kFloat16: static_cast<__half*>(row)[i] = __float2half_rn(v); break;
    case DType::kBFloat16: static_cast<__nv_bfloat16*>(row)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float*>(row)[i] = v; break;
  }
}

// grid: (chunks of kChunk elements, min(rows, kMaxGridY)); rows beyond gridDim.y loop.
__global__ void apply_penalties_kernel(PenaltyArgs a) {
  const int64_t element = a.dtype == DType::kFloat32 ? 4 : 2;
  const bool in_place = a.out == a.logits;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = begin + kChunk < a.vocab ? begin + kChunk : a.vocab;
  for (int64_t r = blockIdx.y; r < a.rows; r += gridDim.y) {
    const void* src = static_cast<const char*>(a.logits) + r * a.row_stride * element;  // [vocab]
    void* dst = static_cast<char*>(a.out) + r * a.vocab * element;                       // [vocab]
    const PenaltyRow row = penalty_row(a.penalties, r, a.vocab);
    for (int64_t t = begin + threadIdx.x; t < end; t += kThreads) {
      bool changed = false;
      if (row.marked(t)) {
        const int32_t seen = row.seen ? row.seen[t] : 0;
        const int32_t generated = row.generated ? row.generated[t] : 0;
        if (seen > 0 || generated > 0) {
          const float x = load(src, a.dtype, t);
          store(dst, a.dtype, t, penalize(x, a.dtype, seen, generated, row.repetition, row.presence, row.frequency));
          changed = true;
        }
      }
      if (!changed && !in_place) copy(src, dst, a.dtype, t);
    }
  }
}

}  // namespace

Status validate_launch(const PenaltyArgs& args) {
  const Status status = validate(args);
  if (!status.ok()) return status;
  if ((args.vocab + kChunk - 1) / kChunk > 0x7fffffff) return bad_shape("vocab too large for the grid");
  return ok_status();
}

cudaError_t apply_penalties(const PenaltyArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.rows == 0 || args.vocab == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((args.vocab + kChunk - 1) / kChunk),
                  static_cast<unsigned>(args.rows < kMaxGridY ? args.rows : kMaxGridY));
  apply_penalties_kernel<<<grid, kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace turbogen
