// CUDA sampling: temperature / top-k / top-p / min-p filtering + Gumbel-max with Philox noise.
//
// Computes turbogen.ref.sampling's function (docs/sampling.md) with the same algorithm as the Triton
// kernels (kernels/sampling.py); no sort of the vocabulary anywhere:
//   1. chunk_stats_kernel (rows x chunks blocks): per chunk max, first argmax, sum exp(z - chunk max),
//      finite count. Splitting the vocabulary into chunks lets batch 1 fill the GPU.
//   2. select_kernel (one block per row): the filters reduce to one cut in the (value descending,
//      index ascending) order, found by a multi-pivot search over the order-preserving integer key of
//      the values (kPivots thresholds counted and weighed per pass, so each pass narrows the range
//      kPivots-fold); ties at the top-p cut are resolved by the same search over token indices.
//   3. draw_kernel (rows x chunks): Philox Gumbel noise for kept tokens, the chunk's best score with
//      its lowest index, and its kept mass (logprobs); or filter_kernel, which writes filtered logits.
//   4. finish_kernel (one warp per row): the best chunk, in index order.
// Every reduction has a fixed order, so results are identical run to run. With penalties
// (SamplingArgs::penalties), every load applies them (penalties.h's penalize, as apply_penalties).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <initializer_list>

#include <cub/block/block_reduce.cuh>

#include "turbogen/penalties.h"
#include "turbogen/philox.h"
#include "turbogen/sampling.h"

namespace turbogen {
namespace cuda {
namespace {

constexpr int kThreads = 256;         // chunk kernels
constexpr int kSelectThreads = 512;   // select kernel (one block per row)
constexpr int kPivots = 16;
constexpr int64_t kMinChunk = 1024;
constexpr int64_t kMaxChunk = 8192;
constexpr int64_t kTargetPrograms = 512;
constexpr int kNoIndex = 0x7fffffff;
constexpr float kLowestFinite = -3.402823466e38f;

// ---- workspace ----------------------------------------------------------------------------------

int64_t next_power_of_2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

struct Layout {
  int64_t chunk_size;
  int64_t n_chunks;
  // Byte offsets into the workspace of [rows, n_chunks] and [rows] arrays.
  int64_t chunk_max, chunk_argmax, chunk_sum, chunk_finite, part_score, part_index, part_value, part_mass;
  int64_t cut_value, cut_index;
  int64_t bytes;
};

// Same policy as kernels/sampling.py's _chunk_size.
Layout make_layout(int64_t rows, int64_t vocab) {
  Layout l{};
  const int64_t chunks_wanted = (kTargetPrograms + rows - 1) / (rows > 0 ? rows : 1);
  int64_t size = next_power_of_2((vocab + chunks_wanted - 1) / chunks_wanted);
  size = std::min(std::min(size, kMaxChunk), next_power_of_2(vocab));
  l.chunk_size = std::max(kMinChunk, size);
  l.n_chunks = vocab > 0 ? (vocab + l.chunk_size - 1) / l.chunk_size : 0;
  const int64_t grid = rows * l.n_chunks * 4;  // every per-chunk array holds 4-byte elements
  const int64_t row_array = ((rows * 4 + 255) / 256) * 256;
  const int64_t chunk_array = ((grid + 255) / 256) * 256;
  int64_t at = 0;
  for (int64_t* field : {&l.chunk_max, &l.chunk_argmax, &l.chunk_sum, &l.chunk_finite, &l.part_score, &l.part_index,
                         &l.part_value, &l.part_mass}) {
    *field = at;
    at += chunk_array;
  }
  l.cut_value = at;
  at += row_array;
  l.cut_index = at;
  at += row_array;
  l.bytes = at;
  return l;
}

struct Workspace {
  float* chunk_max;
  int* chunk_argmax;
  float* chunk_sum;
  int* chunk_finite;
  float* part_score;
  int* part_index;
  float* part_value;
  float* part_mass;
  float* cut_value;
  int* cut_index;
  int64_t n_chunks;
  int64_t chunk_size;
};

Workspace carve(void* base, const Layout& l) {
  char* b = static_cast<char*>(base);
  return Workspace{reinterpret_cast<float*>(b + l.chunk_max),  reinterpret_cast<int*>(b + l.chunk_argmax),
                   reinterpret_cast<float*>(b + l.chunk_sum),  reinterpret_cast<int*>(b + l.chunk_finite),
                   reinterpret_cast<float*>(b + l.part_score), reinterpret_cast<int*>(b + l.part_index),
                   reinterpret_cast<float*>(b + l.part_value), reinterpret_cast<float*>(b + l.part_mass),
                   reinterpret_cast<float*>(b + l.cut_value),  reinterpret_cast<int*>(b + l.cut_index),
                   l.n_chunks,
                   l.chunk_size};
}

// ---- element helpers ----------------------------------------------------------------------------

__device__ __forceinline__ float load_raw(const void* row, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16: return __half2float(static_cast<const __half*>(row)[i]);
    case DType::kBFloat16: return __bfloat162float(static_cast<const __nv_bfloat16*>(row)[i]);
    default: return static_cast<const float*>(row)[i];
  }
}

// A row of logits and its penalties (penalty.mask == nullptr: none).
struct RowView {
  const void* data;  // [vocab] of dtype
  DType dtype;
  PenaltyRow penalty;
};

// The logit as apply_penalties leaves it: the mask word is read for every element, the counts only
// for marked tokens.
__device__ __forceinline__ float load_penalized(const RowView& row, int64_t i) {
  const float x = load_raw(row.data, row.dtype, i);
  return row.penalty.mask != nullptr && row.penalty.marked(i) ? row.penalty.apply(x, i, row.dtype) : x;
}

// (penalised) logits / temperature with IEEE division; NaN reads as -inf.
__device__ __forceinline__ float load_tempered(const RowView& row, int64_t i, float temperature) {
  const float z = __fdiv_rn(load_penalized(row, i), temperature);
  return z != z ? -INFINITY : z;
}

// Order-preserving integer key (-0.0 folded into +0.0) and its inverse.
__device__ __forceinline__ int64_t key_of(float z) {
  const int bits = __float_as_int(z + 0.0f);
  return static_cast<int64_t>(bits ^ ((bits >> 31) & 0x7fffffff));
}

__device__ __forceinline__ float value_of(int64_t key) {
  const int bits = static_cast<int>(key);
  return __int_as_float(bits ^ ((bits >> 31) & 0x7fffffff));
}

__device__ __forceinline__ int64_t chunk_end(int64_t begin, int64_t chunk_size, int64_t vocab) {
  return begin + chunk_size < vocab ? begin + chunk_size : vocab;
}

template <typename T>
__device__ __forceinline__ T param(const T* values, bool per_row, int64_t r) {
  return values[per_row ? r : 0];
}

// Device-resident parameters are not validated on the host (that would sync, and cannot happen
// during graph capture): an invalid temperature reads as 1, so nothing misbehaves.
__device__ __forceinline__ float raw_temperature(const SamplingArgs& a, int64_t r) {
  const float t = param(a.temperature, a.temperature_per_row, r);
  return (t >= 0.0f && t < INFINITY) ? t : 1.0f;
}

__device__ __forceinline__ float effective_temperature(const SamplingArgs& a, int64_t r) {
  const float t = raw_temperature(a, r);
  return t == 0.0f ? 1.0f : t;
}

__device__ __forceinline__ RowView row_view(const SamplingArgs& a, int64_t r) {
  const int64_t element = a.dtype == DType::kFloat32 ? 4 : 2;
  return RowView{static_cast<const char*>(a.logits) + r * a.row_stride * element, a.dtype,
                 penalty_row(a.penalties, r, a.vocab)};
}

// ---- 1. chunk statistics ------------------------------------------------------------------------

struct ChunkStats {
  float max;
  int argmax;
  float sum;  // of exp(z - max)
  int finite;
};

struct MergeStats {
  __device__ __forceinline__ ChunkStats operator()(const ChunkStats& a, const ChunkStats& b) const {
    const float m = fmaxf(a.max, b.max);
    ChunkStats out;
    out.max = m;
    out.argmax = (a.max == m && b.max == m) ? min(a.argmax, b.argmax) : (a.max == m ? a.argmax : b.argmax);
    out.sum = m == -INFINITY ? 0.0f : a.sum * expf(a.max - m) + b.sum * expf(b.max - m);
    out.finite = a.finite + b.finite;
    return out;
  }
};

__global__ void chunk_stats_kernel(SamplingArgs a, Workspace w) {
  using BlockReduce = cub::BlockReduce<ChunkStats, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t r = blockIdx.x / w.n_chunks;
  const int64_t chunk = blockIdx.x % w.n_chunks;
  const RowView row = row_view(a, r);
  const float temperature = effective_temperature(a, r);
  const int64_t begin = chunk * w.chunk_size;
  const int64_t end = chunk_end(begin, w.chunk_size, a.vocab);
  ChunkStats local{-INFINITY, kNoIndex, 0.0f, 0};
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float z = load_tempered(row, i, temperature);
    const bool finite = z > -INFINITY;
    local = MergeStats()(local, ChunkStats{z, finite ? static_cast<int>(i) : kNoIndex, finite ? 1.0f : 0.0f,
                                           finite ? 1 : 0});
  }
  const ChunkStats total = BlockReduce(temp).Reduce(local, MergeStats());
  if (threadIdx.x == 0) {
    w.chunk_max[blockIdx.x] = total.max;
    w.chunk_argmax[blockIdx.x] = total.argmax;
    w.chunk_sum[blockIdx.x] = total.sum;
    w.chunk_finite[blockIdx.x] = total.finite;
  }
}

// A row's stats from its chunks, merged in chunk order (every caller gets identical values).
__device__ ChunkStats row_stats(const Workspace& w, int64_t r) {
  ChunkStats s{-INFINITY, kNoIndex, 0.0f, 0};
  for (int64_t c = 0; c < w.n_chunks; ++c) {
    const int64_t at = r * w.n_chunks + c;
    s = MergeStats()(s, ChunkStats{w.chunk_max[at], w.chunk_argmax[at], w.chunk_sum[at], w.chunk_finite[at]});
  }
  return s;
}

// The row's stats computed once per block and shared.
__device__ ChunkStats block_row_stats(const Workspace& w, int64_t r) {
  __shared__ ChunkStats shared;
  if (threadIdx.x == 0) shared = row_stats(w, r);
  __syncthreads();
  return shared;
}

// ---- 2. selection -------------------------------------------------------------------------------

struct PivotTotals {
  long long count[kPivots];
  float mass[kPivots];
};

// Block-wide sums of per-thread counts and masses, one per pivot; fixed reduction order.
template <int kBlock>
__device__ void block_sum_pivots(PivotTotals& local, PivotTotals* shared_totals) {
  using CountReduce = cub::BlockReduce<long long, kBlock>;
  using MassReduce = cub::BlockReduce<float, kBlock>;
  __shared__ typename CountReduce::TempStorage count_temp;
  __shared__ typename MassReduce::TempStorage mass_temp;
  for (int p = 0; p < kPivots; ++p) {
    const long long count = CountReduce(count_temp).Sum(local.count[p]);
    __syncthreads();
    const float mass = MassReduce(mass_temp).Sum(local.mass[p]);
    __syncthreads();
    if (threadIdx.x == 0) {
      shared_totals->count[p] = count;
      shared_totals->mass[p] = mass;
    }
  }
  __syncthreads();
}

// One pass: for each pivot key, the count and mass (sum exp(z - max)) of the values >= floor whose
// key is >= the pivot.
__device__ void weigh_pivots(const SamplingArgs& a, const RowView& row, float temperature, float row_max, float floor,
                             const int64_t* pivots, PivotTotals* totals) {
  PivotTotals local;
  for (int p = 0; p < kPivots; ++p) {
    local.count[p] = 0;
    local.mass[p] = 0.0f;
  }
  for (int64_t i = threadIdx.x; i < a.vocab; i += kSelectThreads) {
    const float z = load_tempered(row, i, temperature);
    if (!(z >= floor)) continue;
    const int64_t key = key_of(z);
    const float weight = expf(z - row_max);
#pragma unroll
    for (int p = 0; p < kPivots; ++p) {
      if (key >= pivots[p]) {
        local.count[p] += 1;
        local.mass[p] += weight;
      }
    }
  }
  block_sum_pivots<kSelectThreads>(local, totals);
}

// The largest key K in [lo, hi] whose count (or mass) at or above reaches the target, given that
// lo's does; *lo_mass becomes the mass at or above K.
__device__ int64_t search_key(const SamplingArgs& a, const RowView& row, float temperature, float row_max, float floor,
                              int64_t lo, int64_t hi, float* lo_mass, bool by_mass, long long count_target,
                              float mass_target) {
  __shared__ int64_t pivots[kPivots];
  __shared__ PivotTotals totals;
  while (lo < hi) {
    if (threadIdx.x < kPivots) pivots[threadIdx.x] = lo + ((hi - lo) * (threadIdx.x + 1) + kPivots - 1) / kPivots;
    __syncthreads();
    weigh_pivots(a, row, temperature, row_max, floor, pivots, &totals);
    // Every thread reads the same totals and takes the same decision.
    int reached = -1;
    for (int p = 0; p < kPivots; ++p) {
      const bool ok = by_mass ? totals.mass[p] >= mass_target : totals.count[p] >= count_target;
      if (ok) reached = p;
    }
    if (reached < 0) {
      hi = pivots[0] - 1;
    } else {
      const int64_t new_lo = pivots[reached];
      *lo_mass = totals.mass[reached];
      if (reached < kPivots - 1) hi = pivots[reached + 1] - 1;
      lo = new_lo;
    }
    __syncthreads();  // pivots and totals are rewritten by the next pass
  }
  return lo;
}

// The index of the keep-th token (in index order) whose value is `value`.
__device__ int64_t search_tie_index(const SamplingArgs& a, const RowView& row, float temperature, float value,
                                    long long keep) {
  using CountReduce = cub::BlockReduce<long long, kSelectThreads>;
  __shared__ typename CountReduce::TempStorage temp;
  __shared__ long long counts[kPivots];
  int64_t lo = 0, hi = a.vocab - 1;
  while (lo < hi) {
    int64_t pivots[kPivots];
    long long local[kPivots];
    for (int p = 0; p < kPivots; ++p) {
      pivots[p] = lo + (hi - lo) * p / kPivots;
      local[p] = 0;
    }
    for (int64_t i = threadIdx.x; i < a.vocab; i += kSelectThreads) {
      if (load_tempered(row, i, temperature) != value) continue;
      for (int p = 0; p < kPivots; ++p) local[p] += i <= pivots[p] ? 1 : 0;
    }
    for (int p = 0; p < kPivots; ++p) {
      const long long total = CountReduce(temp).Sum(local[p]);
      if (threadIdx.x == 0) counts[p] = total;
      __syncthreads();
    }
    int first = -1;
    for (int p = kPivots - 1; p >= 0; --p) {
      if (counts[p] >= keep) first = p;
    }
    if (first < 0) {
      lo = pivots[kPivots - 1] + 1;
    } else {
      if (first > 0) lo = pivots[first - 1] + 1;
      hi = pivots[first];
    }
    __syncthreads();
  }
  return lo;
}

__global__ void select_kernel(SamplingArgs a, Workspace w) {
  const int64_t r = blockIdx.x;
  const RowView row = row_view(a, r);
  const float temperature = effective_temperature(a, r);
  const int64_t top_k = param(a.top_k, a.top_k_per_row, r);
  const double top_p = param(a.top_p, a.top_p_per_row, r);
  const ChunkStats stats = block_row_stats(w, r);
  float cut_value = kLowestFinite;
  int64_t cut_index = a.vocab;
  if (stats.max > -INFINITY && raw_temperature(a, r) > 0.0f) {
    float floor = kLowestFinite;
    int64_t lo = key_of(kLowestFinite);
    const int64_t hi = key_of(stats.max);
    float mass = stats.sum;
    // top-k: the k-th largest value, ties with it kept; fewer than k finite values: no-op.
    if (top_k > 0 && top_k < stats.finite) {
      lo = search_key(a, row, temperature, stats.max, floor, lo, hi, &mass, false, top_k, 0.0f);
      floor = value_of(lo);
      cut_value = floor;
    }
    // top-p over the top-k survivors (an invalid top_p outside (0, 1) reads as off). A +inf max
    // makes every probability NaN in the reference, whose top-p then removes nothing.
    if (top_p > 0.0 && top_p < 1.0 && stats.max < INFINITY) {
      const float target = static_cast<float>(top_p * mass);
      float unused = mass;
      const int64_t key = search_key(a, row, temperature, stats.max, floor, lo, hi, &unused, true, 0, target);
      cut_value = value_of(key);
      // Ties at the cut: keep them in index order while the mass above stays below the target.
      __shared__ int64_t edge[kPivots];
      __shared__ PivotTotals totals;
      if (threadIdx.x < kPivots) edge[threadIdx.x] = threadIdx.x == 0 ? key : key + 1;
      __syncthreads();
      weigh_pivots(a, row, temperature, stats.max, floor, edge, &totals);
      const long long tied = totals.count[0] - totals.count[1];
      const float needed = ceilf((target - totals.mass[1]) / expf(cut_value - stats.max));
      const long long keep = static_cast<long long>(fminf(fmaxf(needed, 1.0f), static_cast<float>(tied)));
      if (keep < tied) cut_index = search_tie_index(a, row, temperature, cut_value, keep);
    }
  }
  if (threadIdx.x == 0) {
    w.cut_value[r] = cut_value;
    w.cut_index[r] = static_cast<int>(cut_index);
  }
}

// ---- 3. draw or filter --------------------------------------------------------------------------

// min_p = 0 keeps all: exp(...) >= 0. A +inf max makes every probability NaN in the reference,
// whose min-p then removes nothing.
__device__ __forceinline__ bool kept(float z, int64_t i, float cut_value, int cut_index, float row_max, float min_p) {
  const bool above_cut = z > cut_value || (z == cut_value && i <= cut_index);
  return above_cut && (row_max == INFINITY || expf(z - row_max) >= min_p);
}

__device__ __forceinline__ float gumbel(uint64_t seed, uint64_t offset, uint64_t token) {
  const float u = philox::uniform_from_bits(philox::token_bits(seed, offset, token));
  return -logf(-logf(u));
}

struct Draw {
  float score;
  int index;
  float value;
  float mass;
};

struct MergeDraw {  // best score, ties to the lowest index; masses add
  __device__ __forceinline__ Draw operator()(const Draw& a, const Draw& b) const {
    const bool take_b = b.score > a.score || (b.score == a.score && b.index < a.index);
    Draw out = take_b ? b : a;
    out.mass = a.mass + b.mass;
    return out;
  }
};

__global__ void draw_kernel(SamplingArgs a, Workspace w, bool want_mass) {
  using BlockReduce = cub::BlockReduce<Draw, kThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  const int64_t r = blockIdx.x / w.n_chunks;
  const int64_t chunk = blockIdx.x % w.n_chunks;
  const RowView row = row_view(a, r);
  const float temperature = effective_temperature(a, r);
  const float min_p = param(a.min_p, a.min_p_per_row, r);
  const uint64_t seed = static_cast<uint64_t>(a.seed[r]);
  const uint64_t offset = static_cast<uint64_t>(param(a.offset, a.offset_per_row, r));
  const ChunkStats stats = block_row_stats(w, r);
  const float cut_value = w.cut_value[r];
  const int cut_index = w.cut_index[r];
  const int64_t begin = chunk * w.chunk_size;
  const int64_t end = chunk_end(begin, w.chunk_size, a.vocab);
  // The top token is always kept, so its score bounds the winner's from below: a token with
  // z + kGumbelBound below it can never win, and needs no noise.
  const float first_score =
      stats.max > -INFINITY ? stats.max + gumbel(seed, offset, static_cast<uint64_t>(stats.argmax)) : -INFINITY;
  Draw local{-INFINITY, kNoIndex, -INFINITY, 0.0f};
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float z = load_tempered(row, i, temperature);
    if (!kept(z, i, cut_value, cut_index, stats.max, min_p)) continue;
    if (want_mass) local.mass += expf(z - stats.max);
    if (z + philox::kGumbelBound < first_score) continue;
    const float score = z + gumbel(seed, offset, static_cast<uint64_t>(i));
    if (score > local.score) {  // indices only grow within a thread: strict keeps the lowest
      local.score = score;
      local.index = static_cast<int>(i);
      local.value = z;
    }
  }
  const Draw total = BlockReduce(temp).Reduce(local, MergeDraw());
  if (threadIdx.x == 0) {
    w.part_score[blockIdx.x] = total.score;
    w.part_index[blockIdx.x] = total.index;
    w.part_value[blockIdx.x] = total.value;
    w.part_mass[blockIdx.x] = total.mass;
  }
}

__global__ void filter_kernel(SamplingArgs a, Workspace w) {
  const int64_t r = blockIdx.x / w.n_chunks;
  const int64_t chunk = blockIdx.x % w.n_chunks;
  const RowView row = row_view(a, r);
  const bool greedy = raw_temperature(a, r) == 0.0f;
  const float temperature = effective_temperature(a, r);
  const float min_p = param(a.min_p, a.min_p_per_row, r);
  const ChunkStats stats = block_row_stats(w, r);
  const float cut_value = w.cut_value[r];
  const int cut_index = w.cut_index[r];
  const int64_t begin = chunk * w.chunk_size;
  const int64_t end = chunk_end(begin, w.chunk_size, a.vocab);
  float* out = a.filtered + r * a.vocab;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float z = load_tempered(row, i, temperature);
    const bool keep = greedy ? i == stats.argmax : kept(z, i, cut_value, cut_index, stats.max, min_p);
    out[i] = keep ? z : -INFINITY;
  }
}

// ---- 4. finish ----------------------------------------------------------------------------------

__global__ void finish_kernel(SamplingArgs a, Workspace w) {
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x;
  Draw best{-INFINITY, kNoIndex, -INFINITY, 0.0f};
  for (int64_t c = lane; c < w.n_chunks; c += 32) {
    const int64_t at = r * w.n_chunks + c;
    best = MergeDraw()(best, Draw{w.part_score[at], w.part_index[at], w.part_value[at], w.part_mass[at]});
  }
  for (int delta = 16; delta > 0; delta >>= 1) {
    Draw other;
    other.score = __shfl_down_sync(0xffffffffu, best.score, delta);
    other.index = __shfl_down_sync(0xffffffffu, best.index, delta);
    other.value = __shfl_down_sync(0xffffffffu, best.value, delta);
    other.mass = __shfl_down_sync(0xffffffffu, best.mass, delta);
    best = MergeDraw()(best, other);
  }
  if (lane != 0) return;
  const ChunkStats stats = row_stats(w, r);
  const bool any_finite = stats.max > -INFINITY;
  int64_t token;
  float logprob;
  // With a +inf max the reference's logprob is NaN (inf - inf), greedy or not; the mass is NaN too.
  const bool infinite_max = stats.max == INFINITY;
  if (raw_temperature(a, r) == 0.0f) {
    token = any_finite ? stats.argmax : -1;
    logprob = any_finite ? stats.max - stats.max : -INFINITY;
  } else {
    const bool found = best.score > -INFINITY;
    token = found ? best.index : -1;
    logprob = found && (best.mass > 0.0f || infinite_max) ? (best.value - stats.max) - logf(best.mass) : -INFINITY;
  }
  a.tokens[r] = token;
  if (a.logprobs) a.logprobs[r] = logprob;
}

__global__ void fill_empty_rows_kernel(SamplingArgs a) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= a.rows) return;
  if (a.tokens) a.tokens[r] = -1;
  if (a.logprobs) a.logprobs[r] = -INFINITY;
}

}  // namespace

int64_t sampling_workspace_bytes(int64_t rows, int64_t vocab) {
  if (rows <= 0 || vocab <= 0 || rows > 0x7fffffff || vocab > kSamplingMaxVocab) return 0;
  return make_layout(rows, vocab).bytes;
}

Status validate_launch(const SamplingArgs& args) {
  const Status status = validate(args);
  if (!status.ok() || args.rows == 0 || args.vocab == 0) return status;
  if (!args.workspace) return null_pointer("workspace");
  if (args.rows > 0x7fffffff) return bad_shape("rows must be < 2**31 (the grid's limit)");
  const Layout layout = make_layout(args.rows, args.vocab);
  if (args.rows * layout.n_chunks > 0x7fffffff) {
    return bad_shape("rows x vocabulary chunks must be < 2**31 (the grid's limit)");
  }
  if (args.workspace_bytes < layout.bytes) return bad_shape("workspace_bytes < sampling_workspace_bytes(rows, vocab)");
  return ok_status();
}

cudaError_t sample(const SamplingArgs& args, cudaStream_t stream) {
  if (!validate_launch(args).ok()) return cudaErrorInvalidValue;
  if (args.rows == 0) return cudaSuccess;
  if (args.vocab == 0) {
    if (args.tokens) {
      fill_empty_rows_kernel<<<static_cast<unsigned>((args.rows + 255) / 256), 256, 0, stream>>>(args);
    }
    return cudaGetLastError();
  }
  const Layout layout = make_layout(args.rows, args.vocab);
  const Workspace w = carve(args.workspace, layout);
  const unsigned chunk_blocks = static_cast<unsigned>(args.rows * layout.n_chunks);
  const unsigned row_blocks = static_cast<unsigned>(args.rows);
  chunk_stats_kernel<<<chunk_blocks, kThreads, 0, stream>>>(args, w);
  select_kernel<<<row_blocks, kSelectThreads, 0, stream>>>(args, w);
  if (args.filtered) filter_kernel<<<chunk_blocks, kThreads, 0, stream>>>(args, w);
  if (args.tokens) {
    draw_kernel<<<chunk_blocks, kThreads, 0, stream>>>(args, w, args.logprobs != nullptr);
    finish_kernel<<<row_blocks, 32, 0, stream>>>(args, w);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace turbogen
