// Repetition / presence / frequency penalties over per-row token counts (turbogen.ops.apply_penalties,
// and the same arithmetic fused into sampling). The function computed is turbogen.ref.penalties'.
//
// Per element x of row r whose bit is set in the row's mask (a superset of the counted tokens):
//   a. seen[r, t] > 0:      y = x < 0 ? x * rep : x / rep, rounded to the logits dtype
//   b. generated[r, t] > 0: y = (x - freq * c) - pres * 1, in float32, rounded to the logits dtype
// A zero count leaves the element unchanged. The same inline function (penalize) serves the CPU and
// the CUDA kernels, so every backend produces the same bits.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/checks.h"
#include "turbogen/dtype.h"
#include "turbogen/status.h"

namespace turbogen {

// Largest vocabulary (token ids are 32-bit in the kernels).
constexpr int64_t kPenaltyMaxVocab = (int64_t{1} << 31) - 1;

// Mask words per row: bit (t % 32) of word t / 32 is token t.
TURBOGEN_HOST_DEVICE inline int64_t penalty_mask_words(int64_t vocab) { return (vocab + 31) / 32; }

// The penalty state a kernel reads, for `rows` rows of `vocab` tokens. Every array is contiguous.
// mask == nullptr means "no penalties": nothing else is read. The parameters are arrays of `rows`
// values when the matching *_per_row flag is set, else one value shared by every row.
struct PenaltyInputs {
  const uint32_t* mask = nullptr;       // int32 [rows, penalty_mask_words(vocab)], read as uint32
  const int32_t* seen = nullptr;        // [rows, vocab] or null: counts for the repetition penalty
  const int32_t* generated = nullptr;   // [rows, vocab] or null: counts for presence / frequency
  const float* repetition = nullptr;  bool repetition_per_row = false;  // > 0; needed with seen
  const float* presence = nullptr;    bool presence_per_row = false;    // finite; needed with generated
  const float* frequency = nullptr;   bool frequency_per_row = false;   // finite; needed with generated

  TURBOGEN_HOST_DEVICE bool enabled() const { return mask != nullptr; }
};

// Sizes and pointers (no values read). `required`: the mask must be given (apply_penalties);
// otherwise a null mask means no penalties (sampling). Names are the Python field names.
inline Status validate(const PenaltyInputs& p, int64_t rows, int64_t vocab, bool required) {
  if (rows < 0) return bad_shape("rows must be >= 0");
  if (vocab < 0 || vocab > kPenaltyMaxVocab) return bad_shape("vocab must be in [0, 2**31 - 1]");
  if (!p.mask) {
    if (required && rows > 0 && vocab > 0) return null_pointer("penalty_mask");
    if (p.seen || p.generated) return null_pointer("penalty_mask (the penalty counts need it)");
    return ok_status();
  }
  if (rows == 0 || vocab == 0) return ok_status();
  const int64_t words = penalty_mask_words(vocab);
  Status s = check_matrix(rows, words, words, 4, "penalty_mask");
  if (!s.ok()) return s;
  s = check_matrix(rows, vocab, vocab, 4, "penalty_seen / penalty_generated");
  if (!s.ok()) return s;
  if (p.seen && !p.repetition) return null_pointer("repetition_penalty (penalty_seen needs it)");
  if (p.generated && !p.presence) return null_pointer("presence_penalty (penalty_generated needs it)");
  if (p.generated && !p.frequency) return null_pointer("frequency_penalty (penalty_generated needs it)");
  return ok_status();
}

// Host memory only (the CPU launchers): rep > 0 (not NaN), pres / freq finite, for every parameter
// value that is read. Device launchers cannot read them; penalty_row() neutralises invalid values.
inline Status check_penalty_values(const PenaltyInputs& p, int64_t rows) {
  if (!p.mask || rows == 0) return ok_status();
  const auto bad_float = [](float v) { return !(v - v == 0.0f); };  // NaN or infinite
  if (p.seen) {
    for (int64_t i = 0, n = p.repetition_per_row ? rows : 1; i < n; ++i) {
      if (!(p.repetition[i] > 0.0f)) return bad_value("repetition_penalty must be > 0");
    }
  }
  if (p.generated) {
    for (int64_t i = 0, n = p.presence_per_row ? rows : 1; i < n; ++i) {
      if (bad_float(p.presence[i])) return bad_value("presence_penalty must be finite");
    }
    for (int64_t i = 0, n = p.frequency_per_row ? rows : 1; i < n; ++i) {
      if (bad_float(p.frequency[i])) return bad_value("frequency_penalty must be finite");
    }
  }
  return ok_status();
}

// ---- the element arithmetic ---------------------------------------------------------------------

// float32 -> the logits dtype -> float32, round to nearest even (as torch's .to(dtype)).
TURBOGEN_HOST_DEVICE inline float round_to_dtype(float v, DType dtype) {
#if defined(__CUDA_ARCH__)
  if (dtype == DType::kFloat16) return __half2float(__float2half_rn(v));
  if (dtype == DType::kBFloat16) return __bfloat162float(__float2bfloat16_rn(v));
  return v;
#else
  if (dtype == DType::kFloat16) return half_bits_to_float(float_to_half_bits(v));
  if (dtype == DType::kBFloat16) return bfloat16_bits_to_float(float_to_bfloat16_bits(v));
  return v;
#endif
}

// a * b rounded once, never contracted with a following subtraction into an FMA (the reference
// rounds the product): the CPU kernels are compiled with -ffp-contract=fast (gnu++17) and FMA
// enabled in their AVX2 variants.
TURBOGEN_HOST_DEVICE inline float product_rounded(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  float p = a * b;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __asm__("" : "+x"(p));  // p must exist as a float32 value here
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(p));
#else
  volatile float v = p;
  p = v;
#endif
  return p;
#endif
}

// Section 2 of the contract for one element: x is the logit upcast to float32, the result is a value
// of the logits dtype (as float32). Zero counts change nothing.
TURBOGEN_HOST_DEVICE inline float penalize(float x, DType dtype, int32_t seen_count, int32_t generated_count,
                                           float repetition, float presence, float frequency) {
  if (seen_count > 0) {
#if defined(__CUDA_ARCH__)
    x = x < 0.0f ? __fmul_rn(x, repetition) : __fdiv_rn(x, repetition);
#else
    x = x < 0.0f ? product_rounded(x, repetition) : x / repetition;  // never fused with step b
#endif
    x = round_to_dtype(x, dtype);
  }
  if (generated_count > 0) {
    const float scaled = product_rounded(frequency, static_cast<float>(generated_count));
#if defined(__CUDA_ARCH__)
    x = __fsub_rn(__fsub_rn(x, scaled), presence);
#else
    const float tmp = x - scaled;
    x = tmp - presence;  // presence * 1.0f is exactly presence
#endif
    x = round_to_dtype(x, dtype);
  }
  return x;
}

// One row's view of the penalty state. mask == nullptr: the row has no penalties.
struct PenaltyRow {
  const uint32_t* mask = nullptr;      // [penalty_mask_words(vocab)]
  const int32_t* seen = nullptr;       // [vocab] or null
  const int32_t* generated = nullptr;  // [vocab] or null
  float repetition = 1.0f;
  float presence = 0.0f;
  float frequency = 0.0f;

  TURBOGEN_HOST_DEVICE bool marked(int64_t t) const { return ((mask[t >> 5] >> (t & 31)) & 1u) != 0u; }

  // The penalised value of token t (whose bit is set) with logit x upcast to float32.
  TURBOGEN_HOST_DEVICE float apply(float x, int64_t t, DType dtype) const {
    return penalize(x, dtype, seen ? seen[t] : 0, generated ? generated[t] : 0, repetition, presence, frequency);
  }

  // x itself, or its penalised value when t's bit is set.
  TURBOGEN_HOST_DEVICE float value(float x, int64_t t, DType dtype) const {
    return mask && marked(t) ? apply(x, t, dtype) : x;
  }
};

// Row r of `p` (vocab tokens). Parameter values are device memory on the GPU and not checked there:
// an invalid one reads as the neutral value (repetition 1, presence / frequency 0).
TURBOGEN_HOST_DEVICE inline PenaltyRow penalty_row(const PenaltyInputs& p, int64_t r, int64_t vocab) {
  PenaltyRow row;
  if (!p.mask) return row;
  row.mask = p.mask + r * penalty_mask_words(vocab);
  if (p.seen) {
    row.seen = p.seen + r * vocab;
    const float rep = p.repetition[p.repetition_per_row ? r : 0];
    row.repetition = rep > 0.0f ? rep : 1.0f;
  }
  if (p.generated) {
    row.generated = p.generated + r * vocab;
    const float pres = p.presence[p.presence_per_row ? r : 0];
    const float freq = p.frequency[p.frequency_per_row ? r : 0];
    row.presence = pres - pres == 0.0f ? pres : 0.0f;
    row.frequency = freq - freq == 0.0f ? freq : 0.0f;
  }
  return row;
}

// ---- apply_penalties ------------------------------------------------------------------------------

struct PenaltyArgs {
  const void* logits = nullptr;  // [rows, vocab] of `dtype`; row r starts at logits + r * row_stride elements
  int64_t rows = 0;
  int64_t vocab = 0;             // <= kPenaltyMaxVocab
  int64_t row_stride = 0;        // elements between row starts, >= vocab (== vocab when out == logits)
  DType dtype = DType::kFloat32;
  void* out = nullptr;           // [rows, vocab] of `dtype`, contiguous; == logits: in place
  PenaltyInputs penalties;       // mask required
};

inline Status validate(const PenaltyArgs& a) {
  if (a.rows < 0) return bad_shape("rows must be >= 0");
  if (a.vocab < 0 || a.vocab > kPenaltyMaxVocab) return bad_shape("vocab must be in [0, 2**31 - 1]");
  if (a.rows == 0 || a.vocab == 0) return ok_status();
  const Status dtype = check_dtype(a.dtype, "dtype");
  if (!dtype.ok()) return dtype;
  const Status shape = check_matrix(a.rows, a.vocab, a.row_stride, dtype_size(a.dtype), "logits (row_stride)");
  if (!shape.ok()) return shape;
  if (!a.logits) return null_pointer("logits");
  if (!a.out) return null_pointer("out");
  if (a.out == a.logits && a.row_stride != a.vocab) return bad_stride("row_stride must equal vocab when out == logits");
  return validate(a.penalties, a.rows, a.vocab, true);
}

// ---- accept (CPU only) ----------------------------------------------------------------------------

// Counts `n` accepted tokens per row into the state (python/turbogen/ops/penalties.py PenaltyState):
// token i of row r sits at position p = lengths[r] + i; it is counted in seen if p >= seen_from[r],
// in generated if p >= generated_from[r], and sets its mask bit if counted in either;
// recent[r, p % window] = token; then lengths[r] += n and retained[r] = min(retained[r] + n, window).
struct PenaltyAcceptArgs {
  uint32_t* mask = nullptr;              // int32 [rows, penalty_mask_words(vocab)]
  int32_t* seen = nullptr;               // [rows, vocab] or null
  int32_t* generated = nullptr;          // [rows, vocab] or null
  const int64_t* seen_from = nullptr;    // [rows]; needed with seen
  const int64_t* generated_from = nullptr;  // [rows]; needed with generated
  int64_t* lengths = nullptr;            // [rows], >= 0
  int64_t* recent = nullptr;             // [rows, window] ring
  int64_t* retained = nullptr;           // [rows]
  const int64_t* tokens = nullptr;       // [rows, n] contiguous, every id in [0, vocab)
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t window = 0;                    // >= 0
  int64_t n = 0;                         // tokens per row, >= 0
};

inline Status validate(const PenaltyAcceptArgs& a) {
  if (a.rows < 0) return bad_shape("rows must be >= 0");
  if (a.vocab < 0 || a.vocab > kPenaltyMaxVocab) return bad_shape("vocab must be in [0, 2**31 - 1]");
  if (a.window < 0) return bad_shape("window must be >= 0");
  if (a.n < 0) return bad_shape("n must be >= 0");
  if (a.rows == 0 || a.n == 0) return ok_status();
  Status s = check_matrix(a.rows, a.n, a.n, 8, "tokens");
  if (!s.ok()) return s;
  s = check_matrix(a.rows, a.window, a.window, 8, "recent");
  if (!s.ok()) return s;
  const int64_t words = penalty_mask_words(a.vocab);
  s = check_matrix(a.rows, words, words, 4, "mask");
  if (!s.ok()) return s;
  s = check_matrix(a.rows, a.vocab, a.vocab, 4, "seen / generated");
  if (!s.ok()) return s;
  if (!a.tokens) return null_pointer("tokens");
  if (a.vocab == 0) return bad_value("tokens: every token id must be in [0, vocab) (vocab is 0)");
  if (!a.mask) return null_pointer("mask");
  if (!a.lengths) return null_pointer("lengths");
  if (!a.retained) return null_pointer("retained");
  if (a.window > 0 && !a.recent) return null_pointer("recent");
  if (a.seen && !a.seen_from) return null_pointer("seen_from (seen needs it)");
  if (a.generated && !a.generated_from) return null_pointer("generated_from (generated needs it)");
  return ok_status();
}

namespace cpu {
// One row's marked tokens (in increasing order, below vocab) and their counts (0 where the state keeps
// none). The scattered count reads run in tight loops of independent loads, so they overlap.
struct MarkedTokens {
  std::vector<uint32_t> tokens;
  std::vector<int32_t> seen;
  std::vector<int32_t> generated;
};
void collect_marked(const PenaltyRow& row, int64_t vocab, MarkedTokens& out);

// validate(), the parameter values, then the rows on the thread pool.
Status apply_penalties(const PenaltyArgs& args);
// validate(), then every token id and length (nothing is written when one is out of range).
Status accept_penalty_tokens(const PenaltyAcceptArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// validate() and the grid's limits.
Status validate_launch(const PenaltyArgs& args);
// Enqueues the kernel on `stream`; cudaErrorInvalidValue when validate_launch() fails.
cudaError_t apply_penalties(const PenaltyArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
