// The fused beam-search step on CUDA (turbogen/beam_step.h; the contract is
// python/turbogen/ops/beam.py's docstring). One block per batch row:
//   1. per beam, the row's max (NaN flagged) and sum of exp(x - max), by block reductions;
//   2. the max of acc over the batch row (row_is_finite);
//   3. the k candidates one at a time: pass t finds the best element (acc, or acc + Gumbel noise
//      when sampling) ranking strictly below candidate t - 1, so the selection is exact under the
//      contract's total order and needs no scratch memory;
//   4. thread 0 runs beam_bookkeeping() (shared with the CPU kernel: the same float operations).
// A correct, simple kernel: k passes over beams * vocab elements per batch row.
#include <cmath>

#include "turbogen/beam_step.h"
#include "turbogen/noise.h"

namespace turbogen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBeams = 1024;  // the per-beam statistics live in shared memory

struct BeamStats {
  float max;
  float log_sum;
  int nan_row;  // every log-probability of the beam is NaN (as torch's log_softmax)
};

__device__ inline float load_logit(const BeamStepArgs& a, int64_t row, int64_t j) {
  const int64_t element = a.dtype == DType::kFloat32 ? 4 : 2;
  const char* base = static_cast<const char*>(a.logits) + row * a.row_stride * element;
  switch (a.dtype) {
    case DType::kFloat16:
      return half_bits_to_float(reinterpret_cast<const uint16_t*>(base)[j]);
    case DType::kBFloat16:
      return bfloat16_bits_to_float(reinterpret_cast<const uint16_t*>(base)[j]);
    default:
      return reinterpret_cast<const float*>(base)[j];
  }
}

__device__ inline float accumulated(const BeamStepArgs& a, const BeamStats& s, float x, float running) {
  if (a.normalized) return x + running;
  if (s.nan_row) return NAN;
  return ((x - s.max) - s.log_sum) + running;
}

// A block-wide reduction with `combine` over a shared array of kThreads entries; every thread gets the result.
template <typename T, typename Combine>
__device__ T block_reduce(T v, T* s, Combine combine) {
  s[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) s[threadIdx.x] = combine(s[threadIdx.x], s[threadIdx.x + half]);
    __syncthreads();
  }
  const T r = s[0];
  __syncthreads();
  return r;
}

__device__ float block_max(float v, float* s) {
  return block_reduce(v, s, [](float x, float y) { return fmaxf(x, y); });
}

__device__ float block_sum(float v, float* s) {
  return block_reduce(v, s, [](float x, float y) { return x + y; });
}

__device__ int block_or(int v, int* s) {
  return block_reduce(v, s, [](int x, int y) { return x | y; });
}

__global__ void beam_step_kernel(BeamStepArgs a, float finished_divisor, float improve_divisor) {
  extern __shared__ BeamStats stats[];  // [beams]
  __shared__ float s_float[kThreads];
  __shared__ int s_int[kThreads];
  __shared__ float s_key[kThreads];
  __shared__ float s_acc[kThreads];
  __shared__ int64_t s_flat[kThreads];
  const int64_t b = blockIdx.x;
  const int64_t nb = a.beams, v = a.vocab;

  // 1. log-softmax statistics per beam.
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t row = b * nb + i;
    float local_max = -INFINITY;
    int local_nan = 0;
    if (!a.normalized) {
      for (int64_t j = threadIdx.x; j < v; j += kThreads) {
        const float x = load_logit(a, row, j);
        if (x != x) local_nan = 1;
        else local_max = fmaxf(local_max, x);
      }
    }
    const float m = block_max(local_max, s_float);
    const int nan = block_or(local_nan, s_int);
    const bool nan_row = !a.normalized && (nan != 0 || !isfinite(m));
    float local_sum = 0.0f;
    if (!a.normalized && !nan_row) {
      for (int64_t j = threadIdx.x; j < v; j += kThreads) local_sum += expf(load_logit(a, row, j) - m);
    }
    const float sum = block_sum(local_sum, s_float);
    if (threadIdx.x == 0) stats[i] = BeamStats{m, nan_row ? 0.0f : logf(sum), nan_row ? 1 : 0};
  }
  __syncthreads();

  // 2. The max of acc over the batch row, NaN propagating.
  {
    float local_max = -INFINITY;
    int local_nan = 0;
    for (int64_t i = 0; i < nb; ++i) {
      const float running = a.running_scores[b * nb + i];
      for (int64_t j = threadIdx.x; j < v; j += kThreads) {
        const float acc = accumulated(a, stats[i], load_logit(a, b * nb + i, j), running);
        if (acc != acc) local_nan = 1;
        else local_max = fmaxf(local_max, acc);
      }
    }
    const float m = block_max(local_max, s_float);
    const int nan = block_or(local_nan, s_int);
    if (threadIdx.x == 0) a.row_is_finite[b] = (nan == 0 && isfinite(m)) ? 1 : 0;
  }

  // 3. The k candidates, one pass each.
  const bool sampling = a.seeds != nullptr;
  const uint64_t seed = sampling ? static_cast<uint64_t>(a.seeds[b]) : 0;
  const uint64_t offset = sampling ? static_cast<uint64_t>(a.offsets[b]) : 0;
  float prev_key = 0.0f;
  int64_t prev_flat = -1;
  for (int64_t t = 0; t < a.k; ++t) {
    float best_key = 0.0f, best_acc = 0.0f;
    int64_t best_flat = -1;
    for (int64_t i = 0; i < nb; ++i) {
      const float running = a.running_scores[b * nb + i];
      for (int64_t j = threadIdx.x; j < v; j += kThreads) {
        const int64_t flat = i * v + j;
        const float acc = accumulated(a, stats[i], load_logit(a, b * nb + i, j), running);
        const float key = sampling ? acc + noise::gumbel(seed, offset, static_cast<uint64_t>(flat)) : acc;
        if (prev_flat >= 0 && !beam_ranks_above(prev_key, prev_flat, key, flat)) continue;
        if (best_flat < 0 || beam_ranks_above(key, flat, best_key, best_flat)) {
          best_key = key;
          best_acc = acc;
          best_flat = flat;
        }
      }
    }
    s_key[threadIdx.x] = best_key;
    s_acc[threadIdx.x] = best_acc;
    s_flat[threadIdx.x] = best_flat;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (threadIdx.x < half) {
        const int other = threadIdx.x + half;
        const bool take = s_flat[other] >= 0 &&
                          (s_flat[threadIdx.x] < 0 ||
                           beam_ranks_above(s_key[other], s_flat[other], s_key[threadIdx.x], s_flat[threadIdx.x]));
        if (take) {
          s_key[threadIdx.x] = s_key[other];
          s_acc[threadIdx.x] = s_acc[other];
          s_flat[threadIdx.x] = s_flat[other];
        }
      }
      __syncthreads();
    }
    prev_key = s_key[0];
    prev_flat = s_flat[0];
    if (threadIdx.x == 0) {
      a.candidate_scores[b * a.k + t] = s_acc[0];
      a.candidate_flat[b * a.k + t] = s_flat[0];
    }
    __syncthreads();
  }

  // 4. Bookkeeping (reads the candidates thread 0 wrote).
  if (threadIdx.x == 0) beam_bookkeeping(a, b, finished_divisor, improve_divisor);
}

}  // namespace

Status validate_launch(const BeamStepArgs& args) {
  const Status status = validate(args);
  if (!status.ok() || args.batch == 0) return status;
  if (args.batch > 0x7fffffff) return bad_shape("batch must be < 2**31 (the grid's limit)");
  if (args.beams > kMaxBeams) return bad_shape("beams must be <= 1024 on cuda");
  return ok_status();
}

cudaError_t beam_step(const BeamStepArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.batch == 0) return cudaSuccess;
  const float finished_divisor =
      static_cast<float>(std::pow(static_cast<double>(args.generated_length), args.length_penalty));
  const int64_t best_length = (args.early_stopping == 2 && args.length_penalty > 0.0) ? args.max_generated_length
                                                                                      : args.generated_length;
  const float improve_divisor = static_cast<float>(std::pow(static_cast<double>(best_length), args.length_penalty));
  const size_t shared = static_cast<size_t>(args.beams) * sizeof(BeamStats);
  beam_step_kernel<<<static_cast<unsigned>(args.batch), kThreads, shared, stream>>>(args, finished_divisor,
                                                                                     improve_divisor);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace turbogen
