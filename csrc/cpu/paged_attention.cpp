// CPU paged KV cache ops (turbogen.ops.write_kv, turbogen.ops.paged_attention): the functions computed are
// turbogen.ref.paged's.
//
// write_kv: every slot is checked first (nothing is written when one is out of range), then each token's
// [kv_heads, head_dim] row is copied into its slot.
//
// paged_attention: the work items are (sequence, kv head, tile of up to kQueryTile queries), on the thread pool.
// An item holds the tile's queries for every head of its kv group (pre-scaled, float32) and streams the keys the
// tile can see, block by block through the block table (never a dense copy of the cache): per block, each
// (query, head) row scores the block's keys in its own causal / sliding-window range, and folds them into its
// online softmax (running max, running sum, float32 accumulator rescaled when the max grows). A key outside a
// row's range is never read for that row, so whatever unused slots hold (NaN included) cannot reach the output.
// A decode token is one item per (sequence, kv head): each key row is read once for the whole GQA group. A tile
// with at least kTransposeRows rows (prefill chunks) transposes each block's keys once and works on kRowBlock rows
// at a time (attend_block_rows): their scores are register-blocked multiply-adds over head_dim (no reduction per
// key), and their weighted values are summed in one pass over the block's value rows, so every key column and
// value row is loaded once per row block and the multiply-add chains are independent.

#include "turbogen/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "isa.h"
#include "turbogen/fastmath.h"
#include "turbogen/parallel.h"

namespace turbogen {
namespace cpu {
namespace {

constexpr int64_t kQueryTile = 16;
constexpr int64_t kSerialWork = int64_t{1} << 19;  // multiply-adds; see paged_attention()
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- write_kv --------------------------------------------------------------------------------------------

Status check_slots(const WriteKVArgs& a) {
  for (int64_t t = 0; t < a.tokens; ++t) {
    const int64_t slot = a.slot_mapping[t];
    if (slot < -1 || slot >= a.num_slots) return bad_value("slot_mapping entry out of [-1, num_slots)");
  }
  return ok_status();
}

// ---- paged_attention -------------------------------------------------------------------------------------

struct Tile {
  int64_t seq, begin, end;  // packed query tokens [begin, end) of sequence `seq`
};

struct Scratch {
  std::vector<float> q, acc, m, l, k, v, s, kt;
};

// From this many (query, head) rows per tile on, a block's keys are transposed once ([head_dim][n]) so that each
// row's scores are a vectorised sum of q[d] * keys[d][0..n) with no horizontal reduction per key; with fewer rows
// (decode: one query, the GQA group's heads) the transpose would cost more than it saves.
constexpr int64_t kTransposeRows = 8;

// s[c..c + kKeyChunk) = q . keys[c..c + kKeyChunk) for the chunks covering [lo, hi), from the transposed block kt
// ([D][padded], zero beyond the block's keys): each chunk's kKeyChunk scores stay in registers across head_dim.
constexpr int64_t kKeyChunk = 16;

// 8 floats as one GCC/Clang vector: one AVX register in the _avx2 variant, two SSE registers in the portable one
// (the auto-vectoriser split these loops into 4 + 2 + 1 + 1 lanes).
// Internal and always inlined, so GCC's note that such a return value's ABI depends on AVX does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float Vec8 __attribute__((vector_size(32)));

TURBOGEN_ALWAYS_INLINE Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

TURBOGEN_ALWAYS_INLINE void store8(float* p, const Vec8& v) { std::memcpy(p, &v, sizeof(v)); }

TURBOGEN_ALWAYS_INLINE void scores_transposed(const float* __restrict q, const float* __restrict kt, int64_t padded,
                                              int64_t D, int64_t lo, int64_t hi, float* __restrict s) {
  for (int64_t c = lo - lo % kKeyChunk; c < hi; c += kKeyChunk) {
    Vec8 r0 = {}, r1 = {};
    for (int64_t d = 0; d < D; ++d) {
      const float qd = q[d];
      const float* kd = kt + d * padded + c;
      r0 += qd * load8(kd);
      r1 += qd * load8(kd + 8);
    }
    store8(s + c, r0);
    store8(s + c + 8, r1);
  }
}

// Prefill tiles score and accumulate kRowBlock (query, head) rows at a time: each transposed key column chunk and
// each value row is loaded once per row block instead of once per row, and the block's 2 * kRowBlock accumulators
// are independent multiply-add chains (one chain per row was latency-bound).
constexpr int kRowBlock = 4;

// s[i * s_stride + c..] = q_i . keys[c..c + kKeyChunk) for rows i < R (row i's query at q + i * D) and the chunks
// covering [lo, hi) of the transposed block kt ([D][padded], zero beyond the block's keys). Each (row, key) score
// sums over d in order, as scores_transposed does.
template <int R>
TURBOGEN_ALWAYS_INLINE void scores_rows(const float* __restrict q, const float* __restrict kt, int64_t padded,
                                        int64_t D, int64_t lo, int64_t hi, float* __restrict s, int64_t s_stride) {
  for (int64_t c = lo - lo % kKeyChunk; c < hi; c += kKeyChunk) {
    Vec8 r[R][2];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) r[i][0] = r[i][1] = Vec8{};
    for (int64_t d = 0; d < D; ++d) {
      const float* kd = kt + d * padded + c;
      const Vec8 k0 = load8(kd), k1 = load8(kd + 8);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const float qd = q[i * D + d];
        r[i][0] += qd * k0;
        r[i][1] += qd * k1;
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      store8(s + i * s_stride + c, r[i][0]);
      store8(s + i * s_stride + c + 8, r[i][1]);
    }
  }
}

// acc_i[0..D) += sum over j in [lo, hi) of w_i[j] * v[j * stride + 0..D) for rows i < R (acc_i = acc + i * D,
// w_i = w + i * w_stride): each value row is loaded once for the R rows.
template <int R>
TURBOGEN_ALWAYS_INLINE void accumulate_rows(float* __restrict acc, const float* __restrict w, int64_t w_stride,
                                            const float* __restrict v, int64_t stride, int64_t lo, int64_t hi,
                                            int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 16 <= D; d0 += 16) {
    Vec8 r[R][2];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      r[i][0] = load8(acc + i * D + d0);
      r[i][1] = load8(acc + i * D + d0 + 8);
    }
    for (int64_t j = lo; j < hi; ++j) {
      const Vec8 v0 = load8(v + j * stride + d0), v1 = load8(v + j * stride + d0 + 8);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        const float wj = w[i * w_stride + j];
        r[i][0] += wj * v0;
        r[i][1] += wj * v1;
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      store8(acc + i * D + d0, r[i][0]);
      store8(acc + i * D + d0 + 8, r[i][1]);
    }
  }
  for (; d0 < D; ++d0) {
    for (int i = 0; i < R; ++i) {
      float r = acc[i * D + d0];
      for (int64_t j = lo; j < hi; ++j) r += w[i * w_stride + j] * v[j * stride + d0];
      acc[i * D + d0] = r;
    }
  }
}

// q . k over head_dim: 16 independent lanes, then their sum (a fixed order: the same result on every call).
TURBOGEN_ALWAYS_INLINE float dot(const float* __restrict q, const float* __restrict k, int64_t n) {
  Vec8 r0 = {}, r1 = {};
  int64_t d = 0;
  for (; d + 16 <= n; d += 16) {
    r0 += load8(q + d) * load8(k + d);
    r1 += load8(q + d + 8) * load8(k + d + 8);
  }
  r0 += r1;
  float sum = 0.0f;
  for (; d < n; ++d) sum += q[d] * k[d];
  for (int i = 0; i < 8; ++i) sum += r0[i];
  return sum;
}

// acc[0..D) += sum over j in [lo, hi) of w[j] * v[j * stride + 0..D): 8 dimensions at a time held in a register
// across the keys.
TURBOGEN_ALWAYS_INLINE void accumulate(float* __restrict acc, const float* __restrict w, const float* __restrict v,
                                       int64_t stride, int64_t lo, int64_t hi, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 16 <= D; d0 += 16) {
    Vec8 r0 = load8(acc + d0), r1 = load8(acc + d0 + 8);
    for (int64_t j = lo; j < hi; ++j) {
      const float wj = w[j];
      r0 += wj * load8(v + j * stride + d0);
      r1 += wj * load8(v + j * stride + d0 + 8);
    }
    store8(acc + d0, r0);
    store8(acc + d0 + 8, r1);
  }
  for (; d0 < D; ++d0) {
    float r = acc[d0];
    for (int64_t j = lo; j < hi; ++j) r += w[j] * v[j * stride + d0];
    acc[d0] = r;
  }
}

// One key block [j0, j1) of a prefill tile, its keys transposed in sc.kt ([D][padded]): the tile's rows in blocks
// of kRowBlock. A row block's scores cover the union of its rows' key ranges within the block; each row's online
// softmax reads only its own range, and its weights outside that range are set to 0 before the shared
// accumulation. The union lies within [j0, j1), keys some query of the tile may see, all below the sequence's
// length: written rows, never an unused slot, so a zero weight multiplies a written value.
template <typename Position, typename Lowest>
TURBOGEN_ALWAYS_INLINE void attend_block_rows(const PagedAttentionArgs& a, Scratch& sc, int64_t rows, int64_t group,
                                              int64_t D, int64_t j0, int64_t j1, int64_t padded,
                                              const float* __restrict v, int64_t stride, const Position& position,
                                              const Lowest& lowest) {
  const int64_t s_stride = padded;
  float* s_all = sc.s.data();
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int nr = static_cast<int>(std::min<int64_t>(kRowBlock, rows - r0));
    int64_t lo[kRowBlock], hi[kRowBlock];
    int64_t union_lo = padded, union_hi = 0;
    for (int i = 0; i < nr; ++i) {
      const int64_t p = position((r0 + i) / group);
      lo[i] = std::max<int64_t>(lowest(p), j0) - j0;
      hi[i] = std::max<int64_t>(std::min<int64_t>(p + 1, j1) - j0, lo[i]);
      if (hi[i] > lo[i]) {
        union_lo = std::min(union_lo, lo[i]);
        union_hi = std::max(union_hi, hi[i]);
      }
    }
    if (union_hi <= union_lo) continue;
    const float* q = sc.q.data() + r0 * D;
    switch (nr) {
      case 4: scores_rows<4>(q, sc.kt.data(), padded, D, union_lo, union_hi, s_all, s_stride); break;
      case 3: scores_rows<3>(q, sc.kt.data(), padded, D, union_lo, union_hi, s_all, s_stride); break;
      case 2: scores_rows<2>(q, sc.kt.data(), padded, D, union_lo, union_hi, s_all, s_stride); break;
      default: scores_rows<1>(q, sc.kt.data(), padded, D, union_lo, union_hi, s_all, s_stride); break;
    }
    for (int i = 0; i < nr; ++i) {
      const int64_t r = r0 + i;
      float* s = s_all + i * s_stride;
      if (hi[i] > lo[i]) {
        if (a.softcap > 0.0f) {
          for (int64_t j = lo[i]; j < hi[i]; ++j) s[j] = std::tanh(s[j] / a.softcap) * a.softcap;
        }
        const float block_max = max_of(s + lo[i], hi[i] - lo[i]);
        const float m_old = sc.m[r];
        const float m_new = std::max(m_old, block_max);
        if (m_new > m_old) {
          const float alpha = m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
          sc.l[r] *= alpha;
          float* acc = sc.acc.data() + r * D;
          for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
          sc.m[r] = m_new;
        }
        for (int64_t j = lo[i]; j < hi[i]; ++j) s[j] = exp_vectorizable(s[j] - m_new);
        sc.l[r] += sum_of(s + lo[i], hi[i] - lo[i]);
      }
      // Keys of the union this row does not see (all of them when its range is empty) weigh nothing.
      const int64_t own_lo = hi[i] > lo[i] ? lo[i] : union_hi, own_hi = hi[i] > lo[i] ? hi[i] : union_hi;
      for (int64_t j = union_lo; j < own_lo; ++j) s[j] = 0.0f;
      for (int64_t j = own_hi; j < union_hi; ++j) s[j] = 0.0f;
    }
    float* acc = sc.acc.data() + r0 * D;
    switch (nr) {
      case 4: accumulate_rows<4>(acc, s_all, s_stride, v, stride, union_lo, union_hi, D); break;
      case 3: accumulate_rows<3>(acc, s_all, s_stride, v, stride, union_lo, union_hi, D); break;
      case 2: accumulate_rows<2>(acc, s_all, s_stride, v, stride, union_lo, union_hi, D); break;
      default: accumulate_rows<1>(acc, s_all, s_stride, v, stride, union_lo, union_hi, D); break;
    }
  }
}

TURBOGEN_ALWAYS_INLINE void attend_tile_body(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh,
                                             Scratch& sc) {
  const int64_t D = a.head_dim;
  const int64_t group = a.heads / a.kv_heads;
  const int64_t nq = tile.end - tile.begin;
  const int64_t rows = nq * group;
  const int64_t esize = dtype_size(a.dtype);
  const int64_t q_begin = a.cu_seqlens_q[tile.seq];
  const int64_t q_len = a.cu_seqlens_q[tile.seq + 1] - q_begin;
  const int64_t len = a.seq_lens[tile.seq];
  const int64_t first_position = len - q_len;  // of the sequence's first query

  sc.q.resize(static_cast<size_t>(rows * D));
  sc.acc.assign(static_cast<size_t>(rows * D), 0.0f);
  sc.m.assign(static_cast<size_t>(rows), kNegInf);
  sc.l.assign(static_cast<size_t>(rows), 0.0f);
  // Scores: one block's (padded) keys for each of kRowBlock rows.
  sc.s.resize(static_cast<size_t>(kRowBlock * ((a.block_size + kKeyChunk - 1) / kKeyChunk * kKeyChunk)));
  // Row r = qi * group + g: query token tile.begin + qi, head kvh * group + g, multiplied by the scale.
  for (int64_t qi = 0; qi < nq; ++qi) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t head = kvh * group + g;
      const char* src = static_cast<const char*>(a.query) + ((tile.begin + qi) * a.heads + head) * D * esize;
      float* q = sc.q.data() + (qi * group + g) * D;
      convert_row_to_float(src, a.dtype, D, q);
      for (int64_t d = 0; d < D; ++d) q[d] *= a.scale;
    }
  }
  auto position = [&](int64_t qi) { return first_position + (tile.begin - q_begin) + qi; };
  auto lowest = [&](int64_t p) { return a.sliding_window > 0 ? std::max<int64_t>(0, p - a.sliding_window + 1) : 0; };
  const int64_t key_lo = lowest(position(0));
  const int64_t key_hi = position(nq - 1) + 1;  // exclusive
  const bool convert = a.dtype != DType::kFloat32;
  if (convert) {
    sc.k.resize(static_cast<size_t>(a.block_size * D));
    sc.v.resize(static_cast<size_t>(a.block_size * D));
  }
  const int64_t key_stride = a.kv_heads * D;  // elements between consecutive slots
  const int32_t* table = a.block_tables + tile.seq * a.max_blocks_per_seq;

  for (int64_t b = key_lo / a.block_size; b * a.block_size < key_hi; ++b) {
    const int64_t block = table[b];
    const int64_t j0 = std::max(b * a.block_size, key_lo);
    const int64_t j1 = std::min((b + 1) * a.block_size, key_hi);
    const int64_t n = j1 - j0;
    const int64_t first = (block * a.block_size + (j0 - b * a.block_size)) * key_stride + kvh * D;
    const char* kbase = static_cast<const char*>(a.key_cache) + first * esize;
    const char* vbase = static_cast<const char*>(a.value_cache) + first * esize;
    const float* k;
    const float* v;
    int64_t stride;
    if (convert) {
      for (int64_t j = 0; j < n; ++j) {
        convert_row_to_float(kbase + j * key_stride * esize, a.dtype, D, sc.k.data() + j * D);
        convert_row_to_float(vbase + j * key_stride * esize, a.dtype, D, sc.v.data() + j * D);
      }
      k = sc.k.data();
      v = sc.v.data();
      stride = D;
    } else {
      k = reinterpret_cast<const float*>(kbase);
      v = reinterpret_cast<const float*>(vbase);
      stride = key_stride;
    }
    const bool transposed = rows >= kTransposeRows;
    const int64_t padded = (n + kKeyChunk - 1) / kKeyChunk * kKeyChunk;
    if (transposed) {
      sc.kt.resize(static_cast<size_t>(D * padded));
      float* kt = sc.kt.data();
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t j = n; j < padded; ++j) kt[d * padded + j] = 0.0f;
      }
      for (int64_t j = 0; j < n; ++j) {
        const float* kj = k + j * stride;
        for (int64_t d = 0; d < D; ++d) kt[d * padded + j] = kj[d];
      }
      attend_block_rows(a, sc, rows, group, D, j0, j1, padded, v, stride, position, lowest);
      continue;
    }
    for (int64_t qi = 0; qi < nq; ++qi) {
      const int64_t p = position(qi);
      // This row's keys within the block: [j0 + lo, j0 + hi).
      const int64_t lo = std::max<int64_t>(lowest(p), j0) - j0;
      const int64_t hi = std::min<int64_t>(p + 1, j1) - j0;
      if (hi <= lo) continue;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = qi * group + g;
        const float* q = sc.q.data() + r * D;
        float* s = sc.s.data();
        if (transposed) {
          scores_transposed(q, sc.kt.data(), padded, D, lo, hi, s);
        } else {
          for (int64_t j = lo; j < hi; ++j) s[j] = dot(q, k + j * stride, D);
        }
        if (a.softcap > 0.0f) {
          for (int64_t j = lo; j < hi; ++j) s[j] = std::tanh(s[j] / a.softcap) * a.softcap;
        }
        const float block_max = max_of(s + lo, hi - lo);
        const float m_old = sc.m[r];
        const float m_new = std::max(m_old, block_max);
        float* acc = sc.acc.data() + r * D;
        if (m_new > m_old) {
          const float alpha = m_old == kNegInf ? 0.0f : std::exp(m_old - m_new);
          sc.l[r] *= alpha;
          for (int64_t d = 0; d < D; ++d) acc[d] *= alpha;
          sc.m[r] = m_new;
        }
        for (int64_t j = lo; j < hi; ++j) s[j] = exp_vectorizable(s[j] - m_new);
        const float sum = sum_of(s + lo, hi - lo);
        accumulate(acc, s, v, stride, lo, hi, D);
        sc.l[r] += sum;
      }
    }
  }

  for (int64_t qi = 0; qi < nq; ++qi) {
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = qi * group + g;
      const int64_t head = kvh * group + g;
      char* dst = static_cast<char*>(a.out) + ((tile.begin + qi) * a.heads + head) * D * esize;
      const float inv = sc.l[r] > 0.0f ? 1.0f / sc.l[r] : 0.0f;
      const float* acc = sc.acc.data() + r * D;
      if (a.dtype == DType::kFloat32) {
        float* y = reinterpret_cast<float*>(dst);
        for (int64_t d = 0; d < D; ++d) y[d] = acc[d] * inv;
      } else {
        for (int64_t d = 0; d < D; ++d) store_from_float(dst, a.dtype, d, acc[d] * inv);
      }
    }
  }
}

TURBOGEN_TARGET_AVX2 void attend_tile_avx2(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh, Scratch& sc) {
  attend_tile_body(a, tile, kvh, sc);
}

void attend_tile_portable(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh, Scratch& sc) {
  attend_tile_body(a, tile, kvh, sc);
}

}  // namespace

Status write_kv(const WriteKVArgs& args) {
  Status status = validate(args);
  if (!status.ok() || args.tokens == 0) return status;
  status = check_slots(args);
  if (!status.ok()) return status;
  const int64_t row_bytes = args.kv_heads * args.head_dim * dtype_size(args.dtype);
  const char* key = static_cast<const char*>(args.key);
  const char* value = static_cast<const char*>(args.value);
  char* key_cache = static_cast<char*>(args.key_cache);
  char* value_cache = static_cast<char*>(args.value_cache);
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(row_bytes, 1));
  parallel_for(0, args.tokens, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = args.slot_mapping[t];
      if (slot < 0) continue;
      std::memcpy(key_cache + slot * row_bytes, key + t * row_bytes, static_cast<size_t>(row_bytes));
      std::memcpy(value_cache + slot * row_bytes, value + t * row_bytes, static_cast<size_t>(row_bytes));
    }
  });
  return ok_status();
}

Status paged_attention(const PagedAttentionArgs& args) {
  Status status = validate(args);
  if (!status.ok() || args.total_q == 0) return status;
  status = validate_values(args);
  if (!status.ok()) return status;
  std::vector<Tile> tiles;
  for (int64_t s = 0; s < args.num_seqs; ++s) {
    for (int64_t t = args.cu_seqlens_q[s]; t < args.cu_seqlens_q[s + 1]; t += kQueryTile) {
      tiles.push_back(Tile{s, t, std::min<int64_t>(t + kQueryTile, args.cu_seqlens_q[s + 1])});
    }
  }
  static const auto attend_tile = TURBOGEN_SELECT_ISA(attend_tile);
  const int64_t items = static_cast<int64_t>(tiles.size()) * args.kv_heads;
  // Multiply-adds of the whole call (scores and values, every tile's rows over the keys its last query sees): a
  // call below kSerialWork runs on the calling thread, since waking the pool's workers costs more than they save
  // on a few microseconds of work (a decode step of a handful of short sequences, once per layer).
  // (A double: an estimate that cannot overflow.)
  double work = 0.0;
  for (const Tile& tile : tiles) {
    const int64_t q_len = args.cu_seqlens_q[tile.seq + 1] - args.cu_seqlens_q[tile.seq];
    const int64_t last_position = args.seq_lens[tile.seq] - q_len + (tile.end - args.cu_seqlens_q[tile.seq]);
    work += static_cast<double>(tile.end - tile.begin) * static_cast<double>(last_position);
  }
  work *= 2.0 * static_cast<double>(args.heads) * static_cast<double>(args.head_dim);
  const int64_t grain = work < static_cast<double>(kSerialWork) ? std::max<int64_t>(items, 1) : 1;
  parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    Scratch scratch;
    for (int64_t i = begin; i < end; ++i) attend_tile(args, tiles[i / args.kv_heads], i % args.kv_heads, scratch);
  });
  return ok_status();
}

}  // namespace cpu
}  // namespace turbogen
