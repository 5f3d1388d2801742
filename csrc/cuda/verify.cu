// turbogen.ops.verify on a GPU: the function computed is turbogen.ref.verify's.
//
// 1. expand_kernel: every position of every row becomes a row of the sampler (flat row r * positions + i)
//    with the row's filters and seed, and offset[r] + i, written into the workspace.
// 2. cuda::sample (sampling.cu) over the rows * positions flat rows: the target's token at every position
//    (and, in rejection mode, the filtered logits). A GPU draws every position at once; the sequential
//    dependency is only in step 3.
// 3. accept_kernel (one block per row): walks the positions in order. Coupled mode accepts a draft while it
//    equals the target's token. Rejection mode computes p = softmax(filtered) at the draft (block
//    reductions), accepts iff u <= p(x) / q(x), and on rejection draws the Gumbel-max over
//    log(max(p - q, 0)) at offset + i (noise.h), the target's token when no residual is positive.
#include <algorithm>
#include <cmath>

#include "turbogen/noise.h"
#include "turbogen/philox.h"
#include "turbogen/verify.h"

namespace turbogen {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kAlign = 256;
constexpr float kNegInf = -INFINITY;

int64_t aligned(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

struct Layout {
  int64_t sampling = 0, sampling_bytes = 0, tokens = 0, seeds = 0, offsets = 0, temperature = 0, top_k = 0,
          top_p = 0, min_p = 0, filtered = 0, bytes = 0;
};

Layout make_layout(int64_t rows, int64_t positions, int64_t vocab, bool rejection) {
  const int64_t flat = rows * positions;
  Layout l;
  int64_t at = 0;
  l.sampling = at;
  l.sampling_bytes = sampling_workspace_bytes(flat, vocab);
  at += aligned(l.sampling_bytes);
  l.tokens = at;
  at += aligned(flat * 8);
  l.seeds = at;
  at += aligned(flat * 8);
  l.offsets = at;
  at += aligned(flat * 8);
  l.temperature = at;
  at += aligned(flat * 4);
  l.top_k = at;
  at += aligned(flat * 8);
  l.top_p = at;
  at += aligned(flat * 8);
  l.min_p = at;
  at += aligned(flat * 4);
  l.filtered = at;
  if (rejection) at += aligned(flat * vocab * 4);
  l.bytes = at;
  return l;
}

struct Workspace {
  int64_t* tokens;
  int64_t* seeds;
  int64_t* offsets;
  float* temperature;
  int64_t* top_k;
  double* top_p;
  float* min_p;
  float* filtered;  // null outside rejection mode
};

Workspace carve(void* base, const Layout& l, bool rejection) {
  char* b = static_cast<char*>(base);
  return Workspace{reinterpret_cast<int64_t*>(b + l.tokens),     reinterpret_cast<int64_t*>(b + l.seeds),
                   reinterpret_cast<int64_t*>(b + l.offsets),    reinterpret_cast<float*>(b + l.temperature),
                   reinterpret_cast<int64_t*>(b + l.top_k),      reinterpret_cast<double*>(b + l.top_p),
                   reinterpret_cast<float*>(b + l.min_p),        rejection ? reinterpret_cast<float*>(b + l.filtered)
                                                                           : nullptr};
}

// The sampler's arguments over the flat rows (pointers into the workspace).
SamplingArgs sampling_args(const VerifyArgs& a, const Layout& l, const Workspace& w) {
  SamplingArgs s;
  s.logits = a.logits;
  s.rows = a.rows * a.positions;
  s.vocab = a.vocab;
  s.row_stride = a.row_stride;
  s.dtype = a.dtype;
  s.temperature = w.temperature;
  s.temperature_per_row = true;
  s.top_k = w.top_k;
  s.top_k_per_row = true;
  s.top_p = w.top_p;
  s.top_p_per_row = true;
  s.min_p = w.min_p;
  s.min_p_per_row = true;
  s.seed = w.seeds;
  s.offset = w.offsets;
  s.offset_per_row = true;
  s.tokens = w.tokens;
  s.filtered = w.filtered;
  s.workspace = static_cast<char*>(a.workspace) + l.sampling;
  s.workspace_bytes = l.sampling_bytes;
  return s;
}

template <typename T>
__device__ inline T row_value(const T* values, bool per_row, int64_t r) {
  return values[per_row ? r : 0];
}

__global__ void expand_kernel(VerifyArgs a, Workspace w) {
  const int64_t flat = a.rows * a.positions;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < flat; n += stride) {
    const int64_t r = n / a.positions;
    const int64_t i = n - r * a.positions;
    w.seeds[n] = a.seed[r];
    w.offsets[n] = static_cast<int64_t>(static_cast<uint64_t>(row_value(a.offset, a.offset_per_row, r)) +
                                        static_cast<uint64_t>(i));
    w.temperature[n] = row_value(a.temperature, a.temperature_per_row, r);
    w.top_k[n] = row_value(a.top_k, a.top_k_per_row, r);
    w.top_p[n] = row_value(a.top_p, a.top_p_per_row, r);
    w.min_p[n] = row_value(a.min_p, a.min_p_per_row, r);
  }
}

// Block-wide reductions (every thread of the block calls them; every thread gets the result).
__device__ float block_max(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + half]);
    __syncthreads();
  }
  const float result = shared[0];
  __syncthreads();
  return result;
}

__device__ float block_sum(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
    __syncthreads();
  }
  const float result = shared[0];
  __syncthreads();
  return result;
}

// The highest score, ties to the lowest index (-1: none).
__device__ int64_t block_argmax(float score, int64_t index, float* scores, int64_t* indices) {
  scores[threadIdx.x] = score;
  indices[threadIdx.x] = index;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const float other = scores[threadIdx.x + half];
      const int64_t other_index = indices[threadIdx.x + half];
      const int64_t mine = indices[threadIdx.x];
      if (other_index >= 0 && (mine < 0 || other > scores[threadIdx.x] ||
                               (other == scores[threadIdx.x] && other_index < mine))) {
        scores[threadIdx.x] = other;
        indices[threadIdx.x] = other_index;
      }
    }
    __syncthreads();
  }
  const int64_t result = indices[0];
  __syncthreads();
  return result;
}

__global__ void accept_kernel(VerifyArgs a, Workspace w) {
  __shared__ float shared[kThreads];
  __shared__ int64_t shared_index[kThreads];
  const int64_t r = blockIdx.x;
  const int64_t k = a.positions - 1;
  const int64_t vocab = a.vocab;
  const int64_t* target = w.tokens + r * a.positions;
  int64_t stop = k;
  int64_t token = target[k];
  for (int64_t i = 0; i < k; ++i) {
    const int64_t x = a.draft_tokens[r * k + i];
    const bool has_draft = x >= 0 && x < vocab;
    if (!has_draft || (!a.rejection && x != target[i])) {
      stop = i;
      token = target[i];
      break;
    }
    if (!a.rejection) continue;
    const float* f = w.filtered + (r * a.positions + i) * vocab;
    const float* q = a.draft_probs + (r * k + i) * vocab;
    float local_max = kNegInf;
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) local_max = fmaxf(local_max, f[j]);
    const float max = block_max(local_max, shared);
    if (!(max > kNegInf) || isinf(max)) {  // p is NaN (as torch's softmax): reject, emit the target's token
      stop = i;
      token = target[i];
      break;
    }
    float local_mass = 0.0f;
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) local_mass += expf(f[j] - max);
    const float mass = block_sum(local_mass, shared);
    const uint64_t offset = static_cast<uint64_t>(row_value(a.offset, a.offset_per_row, r));
    const uint64_t seed = static_cast<uint64_t>(a.seed[r]);
    const float u = philox::uniform_from_bits(
        philox::philox4x32(static_cast<uint32_t>(i), 1u, static_cast<uint32_t>(offset),
                           static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(seed),
                           static_cast<uint32_t>(seed >> 32))
            .w[0]);
    if (u <= (expf(f[x] - max) / mass) / q[x]) continue;
    float best = kNegInf;
    int64_t best_index = -1;
    for (int64_t j = threadIdx.x; j < vocab; j += kThreads) {
      const float excess = expf(f[j] - max) / mass - q[j];
      if (!(excess > 0.0f)) continue;
      const float score = noise::log32(excess) + noise::gumbel(seed, offset + static_cast<uint64_t>(i), j);
      if (best_index < 0 || score > best) {
        best = score;
        best_index = j;
      }
    }
    const int64_t corrected = block_argmax(best, best_index, shared, shared_index);
    stop = i;
    token = corrected >= 0 ? corrected : target[i];
    break;
  }
  int64_t* out = a.tokens + r * a.positions;
  for (int64_t j = threadIdx.x; j < a.positions; j += kThreads) {
    out[j] = j < stop ? a.draft_tokens[r * k + j] : (j == stop ? token : -1);
  }
  if (threadIdx.x == 0) a.accepted[r] = stop;
}

}  // namespace

int64_t verify_workspace_bytes(int64_t rows, int64_t positions, int64_t vocab, bool rejection) {
  if (rows <= 0 || positions <= 0 || vocab <= 0 || vocab > kSamplingMaxVocab) return 0;
  if (rows > 0x7fffffff / positions) return 0;
  if (rejection && rows * positions > (int64_t{1} << 60) / (vocab * 4)) return 0;
  return make_layout(rows, positions, vocab, rejection).bytes;
}

Status validate_launch(const VerifyArgs& args) {
  const Status status = validate(args);
  if (!status.ok() || args.rows == 0) return status;
  if (!args.workspace) return null_pointer("workspace");
  if (args.rows > 0x7fffffff / args.positions) return bad_shape("rows * positions must be < 2**31 (the grid's limit)");
  if (args.rejection && args.rows * args.positions > (int64_t{1} << 60) / (args.vocab * 4)) {
    return bad_shape("rows * positions * vocab too large for the filtered logits");
  }
  const Layout layout = make_layout(args.rows, args.positions, args.vocab, args.rejection);
  if (args.workspace_bytes < layout.bytes) {
    return bad_shape("workspace_bytes < verify_workspace_bytes(rows, positions, vocab, rejection)");
  }
  return validate_launch(sampling_args(args, layout, carve(args.workspace, layout, args.rejection)));
}

cudaError_t verify(const VerifyArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.rows == 0) return cudaSuccess;
  const Layout layout = make_layout(args.rows, args.positions, args.vocab, args.rejection);
  const Workspace w = carve(args.workspace, layout, args.rejection);
  const int64_t flat = args.rows * args.positions;
  const int64_t blocks = std::min<int64_t>((flat + kThreads - 1) / kThreads, 65536);
  expand_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args, w);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  err = sample(sampling_args(args, layout, w), stream);
  if (err != cudaSuccess) return err;
  accept_kernel<<<static_cast<unsigned>(args.rows), kThreads, 0, stream>>>(args, w);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace turbogen
