// Pass 1 of the CPU sampler (the block maxima and the row max) and the selection of top-k
// candidates, which reads again only the blocks that can hold them.
#include <algorithm>
#include <functional>
#include <vector>

#include "isa.h"
#include "sampling_row.h"

namespace turbogen {
namespace cpu {
namespace sampling {
namespace {

void raw_block_maxima_portable(const RowReader& row, int64_t blocks, float* out) {
  constexpr int64_t kLanes = 8;
  for_each_block(row, blocks * kBlock, 1.0f, [&](int64_t base, auto n, const float* x) {
    float lanes[kLanes];
    std::fill(lanes, lanes + kLanes, kNegInf);
    for (int64_t i = 0; i < n; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] = x[i + l] > lanes[l] ? x[i + l] : lanes[l];
    }
    float m = kNegInf;
    for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
    out[base / kBlock] = m;
  });
}

#if defined(TURBOGEN_X86_DISPATCH)
// Eight values of the row as float32, NaN as -inf (MAXPS returns its second operand when either is
// NaN, so max(x, -inf) maps NaN to -inf and keeps everything else).
TURBOGEN_TARGET_AVX2 inline __m256 load8_avx2(const RowReader& row, int64_t i) {
  __m256 x;
  if (row.dtype == DType::kFloat32) {
    x = _mm256_loadu_ps(static_cast<const float*>(row.data) + i);
  } else {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row.data) + i));
    x = row.dtype == DType::kFloat16 ? _mm256_cvtph_ps(bits)
                                     : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  return _mm256_max_ps(x, _mm256_set1_ps(kNegInf));
}

// The same with AVX2: the scan is the one pass every path makes over the whole row, and the
// compiler's version spends most of its time reducing each block's lanes one by one.
TURBOGEN_TARGET_AVX2 void raw_block_maxima_avx2(const RowReader& row, int64_t blocks, float* out) {
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i = b * kBlock;
    const __m256 m01 = _mm256_max_ps(load8_avx2(row, i), load8_avx2(row, i + 8));
    const __m256 m23 = _mm256_max_ps(load8_avx2(row, i + 16), load8_avx2(row, i + 24));
    const __m256 m45 = _mm256_max_ps(load8_avx2(row, i + 32), load8_avx2(row, i + 40));
    const __m256 m67 = _mm256_max_ps(load8_avx2(row, i + 48), load8_avx2(row, i + 56));
    const __m256 m = _mm256_max_ps(_mm256_max_ps(m01, m23), _mm256_max_ps(m45, m67));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    out[b] = _mm_cvtss_f32(h);
  }
}

#endif

void raw_block_maxima(const RowReader& row, int64_t blocks, float* out) {
  static_assert(kBlock == 64, "raw_block_maxima_avx2 reads 64 values per block");
  static const auto variant = TURBOGEN_SELECT_ISA(raw_block_maxima);
  variant(row, blocks, out);
}

}  // namespace

// Pass 1 of every path: the tempered max of each block of kBlock tokens (-inf when it has no
// finite value) into block_max, and the row's max with its first index. Dividing by a positive
// temperature is monotone, so a block's tempered max is its raw max / T: no division per element.
// The later passes skip every block whose max shows it cannot matter, without reading it.
MaxResult scan_blocks(const RowReader& row, int64_t vocab, float temperature, std::vector<float>& block_max) {
  block_max.resize(static_cast<size_t>(block_count(vocab)));
  const int64_t full_blocks = vocab / kBlock;
  raw_block_maxima(row, full_blocks, block_max.data());
  if (full_blocks * kBlock < vocab) {
    float m = kNegInf;
    for (int64_t i = full_blocks * kBlock; i < vocab; ++i) {
      const float x = load_as_float(row.data, row.dtype, i);
      m = x > m ? x : m;
    }
    block_max[static_cast<size_t>(full_blocks)] = m;
  }
  if (temperature != 1.0f) {
    for (float& m : block_max) m /= temperature;
  }
  float best = kNegInf;
  size_t first_block = 0;
  for (size_t b = 0; b < block_max.size(); ++b) {
    if (block_max[b] > best) {
      best = block_max[b];
      first_block = b;
    }
  }
  if (!(best > kNegInf)) return {kNegInf, -1};
  int64_t first = -1;
  for_each_block(row, vocab, temperature, [&](int64_t base, auto n, const float* z) {
    for (int64_t i = 0; i < n && first < 0; ++i) {
      if (z[i] == best) first = base + i;
    }
  }, [&](int64_t b) { return static_cast<size_t>(b) == first_block; });
  return {best, first};
}

namespace {

inline bool value_greater(const Candidate& a, const Candidate& b) { return a.value > b.value; }

// Keeps the entries >= the k-th largest value (ties included); returns that value.
float keep_top_k(std::vector<Candidate>& buffer, int64_t k) {
  std::nth_element(buffer.begin(), buffer.begin() + (k - 1), buffer.end(), value_greater);
  const float kth = buffer[static_cast<size_t>(k - 1)].value;
  buffer.erase(std::remove_if(buffer.begin(), buffer.end(), [kth](const Candidate& c) { return c.value < kth; }),
               buffer.end());
  return kth;
}

}  // namespace

// Every finite token whose tempered value is >= the k-th largest (ties included), in no particular
// order, from the block maxima of scan_blocks: the k-th largest block max is a lower bound of the
// k-th largest value (those k blocks hold k values at least as large), and usually equal to it, so
// only the blocks whose max reaches it are read again: about k blocks.
void collect_top_k(const RowReader& row, int64_t vocab, float temperature, int64_t k,
                   const std::vector<float>& block_max, std::vector<float>& maxima, std::vector<Candidate>& out) {
  out.clear();
  // The k largest block maxima in a min-heap: after the first few blocks most are rejected by one
  // comparison with the heap's top.
  maxima.clear();
  const std::greater<float> min_heap;
  for (const float m : block_max) {
    if (maxima.size() < static_cast<size_t>(k)) {
      if (m > kNegInf) {
        maxima.push_back(m);
        std::push_heap(maxima.begin(), maxima.end(), min_heap);
      }
    } else if (m > maxima.front()) {
      std::pop_heap(maxima.begin(), maxima.end(), min_heap);
      maxima.back() = m;
      std::push_heap(maxima.begin(), maxima.end(), min_heap);
    }
  }
  // Fewer than k blocks with a finite value: every finite value survives (-inf never does).
  const float floor = maxima.size() == static_cast<size_t>(k) ? maxima.front() : kLowestFinite;
  for_each_block(row, vocab, temperature, [&](int64_t base, auto n, const float* z) {
    // Usually one token of the block passes: find it 8 at a time.
    for (int64_t start = 0; start < n; start += 8) {
      const int64_t end = std::min<int64_t>(start + 8, n);
      int32_t any = 0;
      for (int64_t i = start; i < end; ++i) any |= static_cast<int32_t>(z[i] >= floor);
      if (!any) continue;
      for (int64_t i = start; i < end; ++i) {
        if (z[i] >= floor) out.push_back({z[i], static_cast<uint32_t>(base + i)});
      }
    }
  }, [&](int64_t b) { return block_max[static_cast<size_t>(b)] >= floor; });
  if (out.size() > static_cast<size_t>(k)) keep_top_k(out, k);
}

// The k-th largest tempered value (large k), or the lowest finite value when fewer than k are finite.
float kth_largest(const RowReader& row, int64_t vocab, float temperature, int64_t k, std::vector<float>& values) {
  values.clear();
  for_each_block(row, vocab, temperature, [&](int64_t, auto n, const float* z) {
    for (int64_t i = 0; i < n; ++i) {
      if (z[i] >= kLowestFinite) values.push_back(z[i]);
    }
  });
  if (values.size() <= static_cast<size_t>(k)) return kLowestFinite;
  std::nth_element(values.begin(), values.begin() + (k - 1), values.end(), std::greater<float>());
  return values[static_cast<size_t>(k - 1)];
}

}  // namespace sampling
}  // namespace cpu
}  // namespace turbogen
