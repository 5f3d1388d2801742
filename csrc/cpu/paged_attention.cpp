// CPU paged KV cache ops (turbogen.ops.write_kv, turbogen.ops.paged_attention): the functions computed are
// turbogen.ref.paged's.
//
// write_kv: every slot is checked first (nothing is written when one is out of range), then each token's
// [kv_heads, head_dim] row is copied into its slot.
//
// paged_attention: the work items are (sequence, kv head, tile of up to kQueryTile queries), on the thread pool.
// An item holds the tile's queries for every head of its kv group (pre-scaled, float32) and streams the keys the
// tile can see through the block table (never a dense copy of the cache), with an online softmax per (query,
// head) row (running max, running sum, float32 accumulator rescaled when the max grows). Only keys below the
// sequence's length are ever read, so whatever unused slots hold (NaN included) cannot reach the output.
// - Decode tiles (fewer than kPrefillRows rows: one query, the GQA group's heads; attend_decode_tile): block by
//   block, each row scores the keys of its own causal / sliding-window range (8 keys at a time), and each key row
//   is read once for the whole GQA group.
// - Prefill tiles (attend_prefill_tile): the tile's rows score panels of kPanelKeys keys (across blocks) with a
//   register-blocked GEMM micro-kernel over transposed queries; a row's keys outside its range get -inf scores
//   (a select), and the softmax update runs once per panel, vectorised across rows.

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
  std::vector<float> q, acc, m, l, k, v, s;
  std::vector<float> qt, alpha, base;          // prefill tiles: transposed queries, per-row softmax factors
  std::vector<int64_t> first, last;            // prefill tiles: each row's key range [first, last]
  std::vector<const float*> keys, values;      // prefill tiles: the panel's key and value rows
};

// From this many (query, head) rows per tile on (prefill chunks), a tile runs attend_prefill_tile: its scores are
// small register-blocked GEMMs over a panel of keys, and its online softmax is vectorised across rows. With
// fewer rows (decode: one query, the GQA group's heads) each row is scored on its own (dot, accumulate).
constexpr int64_t kPrefillRows = 8;

// 8 floats as one GCC/Clang vector: one AVX register in the _avx2 variant, two SSE registers in the portable one
// (the auto-vectoriser split these loops into 4 + 2 + 1 + 1 lanes).
// Internal and always inlined, so GCC's note that such a return value's ABI depends on AVX does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float Vec8 __attribute__((vector_size(32)));
constexpr int64_t kLanes8 = 8;

TURBOGEN_ALWAYS_INLINE Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

TURBOGEN_ALWAYS_INLINE void store8(float* p, const Vec8& v) { std::memcpy(p, &v, sizeof(v)); }

// Prefill layout: the tile's rows (row r = qi * group + g) padded to `rp`, a multiple of 8. Queries are
// transposed once per tile, qt[d * rp + r] (pre-scaled), so that scores come out as st[j * rp + r]: a key's
// scores for 8 rows are one vector, and the softmax's max, exp, sum and rescale over rows are plain vector loops.
// The keys are read in place (one pointer per key row of the panel): no per-block transpose or copy for float32.
constexpr int64_t kPanelKeys = 64;  // keys per online-softmax update
constexpr int kScoreKeys = 6;       // keys per scores micro-kernel: 6 keys x 16 rows = 12 accumulators
constexpr int kAccRows = 6;         // rows per value micro-kernel: 6 rows x 16 dims = 12 accumulators

// st[j * rp + r0 + 8 * v + 0..8) = sum over d (in order) of qt[d * rp + r0 + 8 * v + ..] * keys[j][d], for the
// J keys and NV vectors of 8 rows from r0.
template <int NV, int J>
TURBOGEN_ALWAYS_INLINE void score_panel_keys(const float* __restrict qt, int64_t rp, int64_t r0,
                                             const float* const* keys, int64_t D, float* __restrict st) {
  Vec8 acc[J][NV];
#pragma GCC unroll 6
  for (int j = 0; j < J; ++j) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[j][v] = Vec8{};
  }
  const float* key[J];
#pragma GCC unroll 6
  for (int j = 0; j < J; ++j) key[j] = keys[j];
  for (int64_t d = 0; d < D; ++d) {
    Vec8 q[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) q[v] = load8(qt + d * rp + r0 + kLanes8 * v);
#pragma GCC unroll 6
    for (int j = 0; j < J; ++j) {
      const float kd = key[j][d];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[j][v] += kd * q[v];
    }
  }
#pragma GCC unroll 6
  for (int j = 0; j < J; ++j) {
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) store8(st + j * rp + r0 + kLanes8 * v, acc[j][v]);
  }
}

template <int NV>
TURBOGEN_ALWAYS_INLINE void score_panel_rows(const float* __restrict qt, int64_t rp, int64_t r0,
                                             const float* const* keys, int64_t n, int64_t D, float* __restrict st) {
  int64_t j = 0;
  for (; j + kScoreKeys <= n; j += kScoreKeys) score_panel_keys<NV, kScoreKeys>(qt, rp, r0, keys + j, D, st + j * rp);
  switch (n - j) {
    case 5: score_panel_keys<NV, 5>(qt, rp, r0, keys + j, D, st + j * rp); break;
    case 4: score_panel_keys<NV, 4>(qt, rp, r0, keys + j, D, st + j * rp); break;
    case 3: score_panel_keys<NV, 3>(qt, rp, r0, keys + j, D, st + j * rp); break;
    case 2: score_panel_keys<NV, 2>(qt, rp, r0, keys + j, D, st + j * rp); break;
    case 1: score_panel_keys<NV, 1>(qt, rp, r0, keys + j, D, st + j * rp); break;
    default: break;
  }
}

// acc[(r0 + i) * D + d] += sum over j < n (in order) of p[j * rp + r0 + i] * values[j][d], for rows i < R: each
// value row is loaded once for the R rows.
template <int R>
TURBOGEN_ALWAYS_INLINE void accumulate_panel_rows(float* __restrict acc, const float* __restrict p, int64_t rp,
                                                  int64_t r0, const float* const* values, int64_t n, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 2 * kLanes8 <= D; d0 += 2 * kLanes8) {
    Vec8 r[R][2];
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      r[i][0] = load8(acc + (r0 + i) * D + d0);
      r[i][1] = load8(acc + (r0 + i) * D + d0 + kLanes8);
    }
    for (int64_t j = 0; j < n; ++j) {
      const Vec8 v0 = load8(values[j] + d0), v1 = load8(values[j] + d0 + kLanes8);
      const float* w = p + j * rp + r0;
#pragma GCC unroll 6
      for (int i = 0; i < R; ++i) {
        r[i][0] += w[i] * v0;
        r[i][1] += w[i] * v1;
      }
    }
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) {
      store8(acc + (r0 + i) * D + d0, r[i][0]);
      store8(acc + (r0 + i) * D + d0 + kLanes8, r[i][1]);
    }
  }
  for (; d0 + kLanes8 <= D; d0 += kLanes8) {
    Vec8 r[R];
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) r[i] = load8(acc + (r0 + i) * D + d0);
    for (int64_t j = 0; j < n; ++j) {
      const Vec8 v0 = load8(values[j] + d0);
      const float* w = p + j * rp + r0;
#pragma GCC unroll 6
      for (int i = 0; i < R; ++i) r[i] += w[i] * v0;
    }
#pragma GCC unroll 6
    for (int i = 0; i < R; ++i) store8(acc + (r0 + i) * D + d0, r[i]);
  }
  for (; d0 < D; ++d0) {
    for (int i = 0; i < R; ++i) {
      float r = acc[(r0 + i) * D + d0];
      for (int64_t j = 0; j < n; ++j) r += p[j * rp + r0 + i] * values[j][d0];
      acc[(r0 + i) * D + d0] = r;
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

// s[0..8) = q . k_j over head_dim for the 8 key rows k_j = k + j * stride: a decode row scores a block's keys 8
// at a time. Portable: 8 dot products. AVX2: 8 running vectors of products, then their 8 horizontal sums at
// once (two rounds of pairwise adds and a swap of halves) instead of one horizontal reduction per key.
using KeyScores8 = void (*)(const float* __restrict, const float* __restrict, int64_t, int64_t, float* __restrict);

TURBOGEN_ALWAYS_INLINE void key_scores8_portable(const float* __restrict q, const float* __restrict k,
                                                 int64_t stride, int64_t D, float* __restrict s) {
  for (int j = 0; j < 8; ++j) s[j] = dot(q, k + j * stride, D);
}

#if defined(TURBOGEN_X86_DISPATCH)
TURBOGEN_TARGET_AVX2 inline void key_scores8_avx2(const float* __restrict q, const float* __restrict k,
                                                  int64_t stride, int64_t D, float* __restrict s) {
  __m256 p[8];
  for (int j = 0; j < 8; ++j) p[j] = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    const __m256 qd = _mm256_loadu_ps(q + d);
    for (int j = 0; j < 8; ++j) p[j] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(k + j * stride + d), p[j]);
  }
  // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]: after two rounds, e holds the four
  // quarter sums of keys 0..3 (low half: dims 0-3 of each 8, high half: dims 4-7), f those of keys 4..7.
  const __m256 e = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
  const __m256 f = _mm256_hadd_ps(_mm256_hadd_ps(p[4], p[5]), _mm256_hadd_ps(p[6], p[7]));
  _mm256_storeu_ps(s, _mm256_add_ps(_mm256_permute2f128_ps(e, f, 0x20), _mm256_permute2f128_ps(e, f, 0x31)));
  for (; d < D; ++d) {
    for (int j = 0; j < 8; ++j) s[j] += q[d] * k[j * stride + d];
  }
}
#endif

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

// q[0..head_dim) = the query of token `token`, head `head`, in float32, multiplied by the scale: the row both tile
// routines start from.
TURBOGEN_ALWAYS_INLINE void load_scaled_query(const PagedAttentionArgs& a, int64_t token, int64_t head, float* q) {
  const int64_t D = a.head_dim;
  convert_row_to_float(static_cast<const char*>(a.query) + (token * a.heads + head) * D * dtype_size(a.dtype),
                       a.dtype, D, q);
  for (int64_t d = 0; d < D; ++d) q[d] *= a.scale;
}

// A prefill tile (see the layout above): its rows' queries transposed and scaled in sc.qt, then its keys
// [key_lo, key_hi) in panels of up to kPanelKeys (across cache blocks): per panel, the scores of every row
// (score_panel_rows), each row's causal / sliding-window range enforced by replacing the scores outside it with
// -inf (a select: whatever those keys hold cannot reach a weight), the online softmax of all rows at once (the
// panel's max per row, the rescale of the running sum and accumulator when it grows, exp), then the weighted
// values (accumulate_panel_rows). Every key of [key_lo, key_hi) is below the sequence's length (a written slot,
// never an unused one), so a zero weight multiplies a written value. Padded rows (r >= rows) have zero queries and
// see no key; their results are never stored.
template <typename Position, typename Lowest>
TURBOGEN_ALWAYS_INLINE void attend_prefill_tile(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh,
                                                Scratch& sc, const Position& position, const Lowest& lowest) {
  const int64_t D = a.head_dim;
  const int64_t group = a.heads / a.kv_heads;
  const int64_t nq = tile.end - tile.begin;
  const int64_t rows = nq * group;
  const int64_t rp = (rows + kLanes8 - 1) / kLanes8 * kLanes8;
  const int64_t esize = dtype_size(a.dtype);

  sc.qt.assign(static_cast<size_t>(D * rp), 0.0f);
  sc.acc.assign(static_cast<size_t>(rp * D), 0.0f);
  sc.m.assign(static_cast<size_t>(rp), kNegInf);
  sc.l.assign(static_cast<size_t>(rp), 0.0f);
  sc.alpha.resize(static_cast<size_t>(rp));
  sc.base.resize(static_cast<size_t>(rp));
  sc.s.resize(static_cast<size_t>(kPanelKeys * rp));
  sc.q.resize(static_cast<size_t>(D));
  sc.first.assign(static_cast<size_t>(rp), 1);  // padded rows: an empty range [1, 0)
  sc.last.assign(static_cast<size_t>(rp), 0);
  for (int64_t qi = 0; qi < nq; ++qi) {
    const int64_t p = position(qi);
    for (int64_t g = 0; g < group; ++g) {
      const int64_t r = qi * group + g;
      load_scaled_query(a, tile.begin + qi, kvh * group + g, sc.q.data());
      for (int64_t d = 0; d < D; ++d) sc.qt[d * rp + r] = sc.q[d];
      sc.first[r] = lowest(p);
      sc.last[r] = p;
    }
  }
  const int64_t key_lo = lowest(position(0));
  const int64_t key_hi = position(nq - 1) + 1;  // exclusive
  // Keys every real row sees: [lowest of the last query, position of the first], so a panel within it needs no
  // masking (padded rows then score their zero queries: finite, never stored).
  const int64_t all_lo = lowest(position(nq - 1)), all_hi = position(0);
  const bool convert = a.dtype != DType::kFloat32;
  if (convert) {
    sc.k.resize(static_cast<size_t>(kPanelKeys * D));
    sc.v.resize(static_cast<size_t>(kPanelKeys * D));
  }
  sc.keys.resize(static_cast<size_t>(kPanelKeys));
  sc.values.resize(static_cast<size_t>(kPanelKeys));
  const int64_t key_stride = a.kv_heads * D;  // elements between consecutive slots
  const int32_t* table = a.block_tables + tile.seq * a.max_blocks_per_seq;
  float* st = sc.s.data();
  float* m = sc.m.data();
  float* l = sc.l.data();
  float* alpha = sc.alpha.data();
  float* base = sc.base.data();

  for (int64_t c0 = key_lo; c0 < key_hi; c0 += kPanelKeys) {
    const int64_t n = std::min(kPanelKeys, key_hi - c0);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t key = c0 + j;
      const int64_t slot = static_cast<int64_t>(table[key / a.block_size]) * a.block_size + key % a.block_size;
      const int64_t offset = (slot * key_stride + kvh * D) * esize;
      const char* kp = static_cast<const char*>(a.key_cache) + offset;
      const char* vp = static_cast<const char*>(a.value_cache) + offset;
      if (convert) {
        convert_row_to_float(kp, a.dtype, D, sc.k.data() + j * D);
        convert_row_to_float(vp, a.dtype, D, sc.v.data() + j * D);
        sc.keys[j] = sc.k.data() + j * D;
        sc.values[j] = sc.v.data() + j * D;
      } else {
        sc.keys[j] = reinterpret_cast<const float*>(kp);
        sc.values[j] = reinterpret_cast<const float*>(vp);
      }
    }
    int64_t r0 = 0;
    for (; r0 + 2 * kLanes8 <= rp; r0 += 2 * kLanes8) score_panel_rows<2>(sc.qt.data(), rp, r0, sc.keys.data(), n, D, st);
    if (r0 < rp) score_panel_rows<1>(sc.qt.data(), rp, r0, sc.keys.data(), n, D, st);
    if (a.softcap > 0.0f) {
      for (int64_t i = 0; i < n * rp; ++i) st[i] = std::tanh(st[i] / a.softcap) * a.softcap;
    }
    if (c0 < all_lo || c0 + n - 1 > all_hi) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t key = c0 + j;
        float* row = st + j * rp;
        for (int64_t r = 0; r < rp; ++r) row[r] = key >= sc.first[r] && key <= sc.last[r] ? row[r] : kNegInf;
      }
    }
    // The online softmax of every row: m the running max, l the running sum; a row that has seen no key yet keeps
    // m = -inf (its exponentials are then exp(-inf) = 0 against base 0, and its rescale factor is 1).
    for (int64_t r = 0; r < rp; ++r) alpha[r] = kNegInf;
    for (int64_t j = 0; j < n; ++j) {
      const float* row = st + j * rp;
      for (int64_t r = 0; r < rp; ++r) alpha[r] = row[r] > alpha[r] ? row[r] : alpha[r];  // the panel's max
    }
    bool rescale = false;
    for (int64_t r = 0; r < rp; ++r) {
      const float m_new = alpha[r] > m[r] ? alpha[r] : m[r];
      const bool empty = m_new == kNegInf;
      base[r] = empty ? 0.0f : m_new;
      alpha[r] = empty ? 1.0f : exp_vectorizable(m[r] - m_new);
      rescale |= alpha[r] != 1.0f;
      m[r] = m_new;
    }
    for (int64_t j = 0; j < n; ++j) {
      float* row = st + j * rp;
      for (int64_t r = 0; r < rp; ++r) row[r] = exp_vectorizable(row[r] - base[r]);
    }
    for (int64_t r = 0; r < rp; ++r) l[r] *= alpha[r];
    for (int64_t j = 0; j < n; ++j) {
      const float* row = st + j * rp;
      for (int64_t r = 0; r < rp; ++r) l[r] += row[r];
    }
    if (rescale) {
      for (int64_t r = 0; r < rows; ++r) {
        float* acc = sc.acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) acc[d] *= alpha[r];
      }
    }
    r0 = 0;
    for (; r0 + kAccRows <= rows; r0 += kAccRows) {
      accumulate_panel_rows<kAccRows>(sc.acc.data(), st, rp, r0, sc.values.data(), n, D);
    }
    switch (rows - r0) {
      case 5: accumulate_panel_rows<5>(sc.acc.data(), st, rp, r0, sc.values.data(), n, D); break;
      case 4: accumulate_panel_rows<4>(sc.acc.data(), st, rp, r0, sc.values.data(), n, D); break;
      case 3: accumulate_panel_rows<3>(sc.acc.data(), st, rp, r0, sc.values.data(), n, D); break;
      case 2: accumulate_panel_rows<2>(sc.acc.data(), st, rp, r0, sc.values.data(), n, D); break;
      case 1: accumulate_panel_rows<1>(sc.acc.data(), st, rp, r0, sc.values.data(), n, D); break;
      default: break;
    }
  }
}

// Decode tiles (fewer than kPrefillRows rows): each (query, head) row scores the block's keys in its own causal /
// sliding-window range with dot products and folds them into its online softmax; a key outside a row's range is
// never read for that row.
template <KeyScores8 key_scores8, typename Position, typename Lowest>
TURBOGEN_ALWAYS_INLINE void attend_decode_tile(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh,
                                               Scratch& sc, const Position& position, const Lowest& lowest) {
  const int64_t D = a.head_dim;
  const int64_t group = a.heads / a.kv_heads;
  const int64_t nq = tile.end - tile.begin;
  const int64_t rows = nq * group;
  const int64_t esize = dtype_size(a.dtype);

  sc.q.resize(static_cast<size_t>(rows * D));
  sc.acc.assign(static_cast<size_t>(rows * D), 0.0f);
  sc.m.assign(static_cast<size_t>(rows), kNegInf);
  sc.l.assign(static_cast<size_t>(rows), 0.0f);
  sc.s.resize(static_cast<size_t>(a.block_size));
  // Row r = qi * group + g: query token tile.begin + qi, head kvh * group + g, multiplied by the scale.
  for (int64_t qi = 0; qi < nq; ++qi) {
    for (int64_t g = 0; g < group; ++g) {
      load_scaled_query(a, tile.begin + qi, kvh * group + g, sc.q.data() + (qi * group + g) * D);
    }
  }
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
        int64_t j = lo;
        for (; j + 8 <= hi; j += 8) key_scores8(q, k + j * stride, stride, D, s + j);
        for (; j < hi; ++j) s[j] = dot(q, k + j * stride, D);
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
}

template <KeyScores8 key_scores8>
TURBOGEN_ALWAYS_INLINE void attend_tile_body(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh,
                                             Scratch& sc) {
  const int64_t D = a.head_dim;
  const int64_t group = a.heads / a.kv_heads;
  const int64_t nq = tile.end - tile.begin;
  const int64_t esize = dtype_size(a.dtype);
  const int64_t q_begin = a.cu_seqlens_q[tile.seq];
  const int64_t q_len = a.cu_seqlens_q[tile.seq + 1] - q_begin;
  const int64_t first_position = a.seq_lens[tile.seq] - q_len;  // of the sequence's first query
  auto position = [&](int64_t qi) { return first_position + (tile.begin - q_begin) + qi; };
  auto lowest = [&](int64_t p) { return a.sliding_window > 0 ? std::max<int64_t>(0, p - a.sliding_window + 1) : 0; };
  if (nq * group >= kPrefillRows) {
    attend_prefill_tile(a, tile, kvh, sc, position, lowest);
  } else {
    attend_decode_tile<key_scores8>(a, tile, kvh, sc, position, lowest);
  }
  // Row r = qi * group + g of sc.acc (D floats each), sc.l its softmax sum.
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

#if defined(TURBOGEN_X86_DISPATCH)
TURBOGEN_TARGET_AVX2 void attend_tile_avx2(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh, Scratch& sc) {
  attend_tile_body<key_scores8_avx2>(a, tile, kvh, sc);
}
#endif

void attend_tile_portable(const PagedAttentionArgs& a, const Tile& tile, int64_t kvh, Scratch& sc) {
  attend_tile_body<key_scores8_portable>(a, tile, kvh, sc);
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
