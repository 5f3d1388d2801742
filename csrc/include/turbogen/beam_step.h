// The fused beam-search step (turbogen.ops.beam_step; python/turbogen/ops/beam.py states the
// contract, python/turbogen/ref/beam.py is the oracle): per batch row, the log-softmax of each
// beam's logits plus the beam's score, the K best (or Gumbel-perturbed best) candidates over
// beams * vocab, then the running / finished bookkeeping of transformers 4.57's beam search.
//
// This header also holds the per-row bookkeeping (steps 3-6), shared by the CPU and CUDA kernels
// so both perform the same float operations: it reads the K candidates of one batch row (already
// written to candidate_scores / candidate_flat) and writes the other outputs of that row, with no
// scratch memory.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

#include "turbogen/checks.h"
#include "turbogen/dtype.h"
#include "turbogen/status.h"

namespace turbogen {

// transformers' stand-in for an impossible score.
constexpr float kBeamImpossible = -1.0e9f;

struct BeamStepArgs {
  // inputs
  const void* logits = nullptr;            // [batch * beams, vocab] of `dtype`, row r at logits + r * row_stride
  const float* running_scores = nullptr;   // [batch, beams] contiguous
  const float* finished_scores = nullptr;  // [batch, beams] contiguous
  const uint8_t* is_finished = nullptr;    // [batch, beams] bool (0/1) contiguous
  const uint8_t* may_improve = nullptr;    // [batch] bool
  const int64_t* eos = nullptr;            // [num_eos]; any values (ids outside [0, vocab) never match)
  const int64_t* seeds = nullptr;          // [batch] or null (no sampling); read as uint64
  const int64_t* offsets = nullptr;        // [batch] or null, null exactly when seeds is; read as uint64
  int64_t batch = 0;
  int64_t beams = 0;
  int64_t vocab = 0;
  int64_t rows = 0;                        // rows of logits, must equal batch * beams
  int64_t row_stride = 0;                  // elements between logits row starts, >= vocab
  int64_t num_eos = 0;                     // E >= 0
  int64_t k = 0;                           // candidates per batch row: max(2, 1 + E) * beams, <= beams * vocab
  DType dtype = DType::kFloat32;
  bool normalized = false;                 // logits are log-probabilities already (no log-softmax)
  int64_t generated_length = 1;            // >= 1
  int64_t max_generated_length = 1;        // >= 1
  double length_penalty = 1.0;
  int64_t early_stopping = 0;              // 0 False, 1 True, 2 "never"
  bool all_stop = false;                   // every candidate stops this step
  // outputs, all contiguous
  float* candidate_scores = nullptr;       // [batch, k]
  int64_t* candidate_flat = nullptr;       // [batch, k]: beam * vocab + token
  float* next_scores = nullptr;            // [batch, beams]
  int64_t* next_source = nullptr;          // [batch, beams]: candidate index in [0, k)
  float* next_finished_scores = nullptr;   // [batch, beams]
  int64_t* finished_source = nullptr;      // [batch, beams]: < beams old slot, else beams + candidate
  uint8_t* next_is_finished = nullptr;     // [batch, beams] bool
  uint8_t* next_may_improve = nullptr;     // [batch] bool
  uint8_t* row_is_finite = nullptr;        // [batch] bool
};

inline int64_t beam_candidates_per_row(int64_t beams, int64_t num_eos) {
  return (num_eos + 1 > 2 ? num_eos + 1 : 2) * beams;
}

// Every check made before memory is touched: sizes and their products, k, the codes, pointers.
inline Status validate(const BeamStepArgs& a) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (a.batch < 0) return bad_shape("batch must be >= 0");
  if (a.beams < 1) return bad_shape("beams must be >= 1");
  if (a.vocab < 1 || a.vocab > kMax / a.beams) return bad_shape("vocab must be >= 1 and beams * vocab < 2**63");
  if (a.num_eos < 0 || a.num_eos > kMax / 4 / a.beams) return bad_shape("num_eos must be >= 0");
  if (a.k != beam_candidates_per_row(a.beams, a.num_eos)) return bad_shape("k must be max(2, 1 + num_eos) * beams");
  if (a.k > a.beams * a.vocab) return bad_shape("k must be <= beams * vocab");
  if (a.batch > kMax / a.k) return bad_shape("batch * k must be < 2**63");
  if (a.rows != a.batch * a.beams) return bad_shape("rows must equal batch * beams");
  if (a.generated_length < 1) return bad_value("generated_length must be >= 1");
  if (a.max_generated_length < 1) return bad_value("max_generated_length must be >= 1");
  if (a.early_stopping < 0 || a.early_stopping > 2) return bad_value("early_stopping must be 0, 1 or 2");
  if ((a.seeds == nullptr) != (a.offsets == nullptr)) return null_pointer("seeds and offsets (both or neither)");
  if (a.batch == 0) return ok_status();
  const Status dtype = check_dtype(a.dtype, "dtype");
  if (!dtype.ok()) return dtype;
  const Status shape = check_matrix(a.rows, a.vocab, a.row_stride, dtype_size(a.dtype), "logits (row_stride)");
  if (!shape.ok()) return shape;
  if (!a.logits) return null_pointer("logits");
  if (!a.running_scores) return null_pointer("running_scores");
  if (!a.finished_scores) return null_pointer("finished_scores");
  if (!a.is_finished) return null_pointer("is_finished");
  if (!a.may_improve) return null_pointer("may_improve");
  if (a.num_eos > 0 && !a.eos) return null_pointer("eos");
  if (!a.candidate_scores) return null_pointer("candidate_scores");
  if (!a.candidate_flat) return null_pointer("candidate_flat");
  if (!a.next_scores) return null_pointer("next_scores");
  if (!a.next_source) return null_pointer("next_source");
  if (!a.next_finished_scores) return null_pointer("next_finished_scores");
  if (!a.finished_source) return null_pointer("finished_source");
  if (!a.next_is_finished) return null_pointer("next_is_finished");
  if (!a.next_may_improve) return null_pointer("next_may_improve");
  if (!a.row_is_finite) return null_pointer("row_is_finite");
  return ok_status();
}

// The ranking everywhere in the op: NaN as -inf, then larger values, equal values by lower index.
TURBOGEN_HOST_DEVICE inline float beam_rank_key(float x) {
  return x != x ? -INFINITY : x;
}

TURBOGEN_HOST_DEVICE inline bool beam_ranks_above(float a, int64_t ia, float b, int64_t ib) {
  const float ka = beam_rank_key(a), kb = beam_rank_key(b);
  return ka > kb || (ka == kb && ia < ib);
}

namespace beam_detail {

TURBOGEN_HOST_DEVICE inline bool stops(const BeamStepArgs& a, int64_t flat) {
  if (a.all_stop) return true;
  const int64_t token = flat % a.vocab;
  for (int64_t e = 0; e < a.num_eos; ++e) {
    if (a.eos[e] == token) return true;
  }
  return false;
}

// The `picks` best of `count` values value(0..count-1) in the contract's order (beam_ranks_above), best
// first, into out_values / out_index: each pick is the best value ranking strictly below the previous
// one, so no scratch memory is needed (count is small: nb + K).
template <typename Value>
TURBOGEN_HOST_DEVICE inline void select_best(int64_t count, int64_t picks, const Value& value, float* out_values,
                                             int64_t* out_index) {
  float prev_value = 0.0f;
  int64_t prev_index = -1;
  for (int64_t s = 0; s < picks; ++s) {
    float best_value = 0.0f;
    int64_t best_index = -1;
    for (int64_t m = 0; m < count; ++m) {
      const float v = value(m);
      if (prev_index >= 0 && !beam_ranks_above(prev_value, prev_index, v, m)) continue;
      if (best_index < 0 || beam_ranks_above(v, m, best_value, best_index)) {
        best_value = v;
        best_index = m;
      }
    }
    out_values[s] = best_value;
    out_index[s] = best_index;
    prev_value = best_value;
    prev_index = best_index;
  }
}

}  // namespace beam_detail

// Steps 3-6 for batch row b, from its candidates (candidate_scores / candidate_flat of row b).
// `finished_divisor` = (float)pow(generated_length, length_penalty) and `improve_divisor` =
// (float)pow(best_length, length_penalty), computed once on the host.
TURBOGEN_HOST_DEVICE inline void beam_bookkeeping(const BeamStepArgs& a, int64_t b, float finished_divisor,
                                                  float improve_divisor) {
  const int64_t nb = a.beams, k = a.k;
  const float* cand = a.candidate_scores + b * k;
  const int64_t* flat = a.candidate_flat + b * k;
  const float* old_scores = a.finished_scores + b * nb;
  const uint8_t* old_finished = a.is_finished + b * nb;
  float* next_scores = a.next_scores + b * nb;
  int64_t* next_source = a.next_source + b * nb;
  float* next_finished = a.next_finished_scores + b * nb;
  int64_t* finished_source = a.finished_source + b * nb;
  uint8_t* next_is_finished = a.next_is_finished + b * nb;

  // Running beams: the nb best demoted candidates.
  bool any_stopped = false;
  for (int64_t c = 0; c < k; ++c) any_stopped = any_stopped || beam_detail::stops(a, flat[c]);
  beam_detail::select_best(k, nb, [&](int64_t c) {
    return beam_detail::stops(a, flat[c]) ? cand[c] + kBeamImpossible : cand[c];
  }, next_scores, next_source);

  // Finished beams: merge the stopped top-nb candidates into the old finished slots.
  if (!any_stopped) {
    for (int64_t s = 0; s < nb; ++s) {
      next_finished[s] = old_scores[s];
      finished_source[s] = s;
      next_is_finished[s] = old_finished[s] ? 1 : 0;
    }
  } else {
    bool row_is_full = true;
    for (int64_t s = 0; s < nb; ++s) row_is_full = row_is_full && old_finished[s] != 0;
    const bool full_penalty = a.early_stopping == 1 && row_is_full;
    const bool closed = a.may_improve[b] == 0;
    // merged(m): m < nb the old slot m, else candidate m - nb scored for the finished set.
    auto newly = [&](int64_t c) { return c < nb && beam_detail::stops(a, flat[c]); };
    auto merged = [&](int64_t m) -> float {
      if (m < nb) return old_scores[m];
      const int64_t c = m - nb;
      float fs = cand[c] / finished_divisor;
      if (full_penalty) fs = fs + kBeamImpossible;
      if (closed) fs = fs + kBeamImpossible;
      if (!newly(c)) fs = fs + kBeamImpossible;
      return fs;
    };
    beam_detail::select_best(nb + k, nb, merged, next_finished, finished_source);
    for (int64_t s = 0; s < nb; ++s) {
      const int64_t m = finished_source[s];
      next_is_finished[s] = (m < nb ? old_finished[m] != 0 : newly(m - nb)) ? 1 : 0;
    }
  }

  // The early-stopping heuristic: can the best running beam still beat the worst finished one?
  const float best_running = next_scores[0] / improve_divisor;
  float worst = next_finished[0];
  bool worst_is_nan = worst != worst;
  for (int64_t s = 1; s < nb; ++s) {
    const float v = next_finished[s];
    if (v != v) worst_is_nan = true;
    if (v < worst) worst = v;
  }
  if (worst_is_nan) worst = NAN;  // torch.min propagates NaN
  bool improve = false;
  for (int64_t s = 0; s < nb; ++s) {
    const float bar = next_is_finished[s] ? worst : kBeamImpossible;
    if (best_running > bar) improve = true;
  }
  a.next_may_improve[b] = (a.may_improve[b] != 0 && improve) ? 1 : 0;
}

namespace cpu {
Status beam_step(const BeamStepArgs& args);
}  // namespace cpu

#if defined(TURBOGEN_WITH_CUDA)
namespace cuda {
// validate() and the grid's limits (batch < 2**31, beams <= 1024).
Status validate_launch(const BeamStepArgs& args);
// Enqueues the kernel on `stream`; cudaErrorInvalidValue when validate_launch() fails.
cudaError_t beam_step(const BeamStepArgs& args, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace turbogen
