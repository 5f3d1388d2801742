// CPU sampling: temperature / top-k / top-p / min-p filtering + Gumbel-max with Philox noise.
//
// The function computed is turbogen.ref.sampling's (docs/sampling.md). Rows run in parallel on the
// thread pool; each row is handled by one thread, which never sorts the vocabulary. Pass 1 of every
// path (scan_blocks) records the max of each block of kBlock tokens; later passes skip, unread,
// every block whose max shows it cannot matter.
//
//  * top-k with a small k ("candidate path"): the k-th largest block max bounds the k-th largest
//    value from below, so only the ~k blocks reaching it are read again. The survivors (k plus
//    ties) are sorted, top-p and min-p walk them, and the Gumbel argmax visits them in descending
//    order and stops once no later token can win. About one read of the row.
//  * otherwise ("full-row path"): top-p builds a histogram of probability mass over the distance
//    below the max (pass 2) and sorts only the tokens of the bin where the cumulative mass crosses
//    top_p (pass 3); the sampling pass computes noise only for kept tokens within kGumbelBound of
//    the best score so far, and skips whole blocks that cannot win.
//
// Every path reduces the filters to one cut in the (value descending, index ascending) order:
// token j is kept iff (z_j, -j) >= (cut_value, -cut_index), and, on the full-row path, min-p's
// exp(z_j - max) >= min_p. A row holding +inf keeps top-k's set alone (drop_probability_filters_if_infinite).
//
// Penalties (SamplingArgs::penalties): penalised_row copies the row once, as float32, with apply_penalties'
// values for its marked tokens, and every pass reads that copy (from the core's cache: it is at most
// 4 bytes per token) instead of the logits.
//
// The files: sampling_row.h lists them and what each holds.

#include "turbogen/sampling.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sampling_row.h"
#include "turbogen/parallel.h"

namespace turbogen {
namespace cpu {
namespace sampling {

RowReader penalised_row(const RowReader& row, const PenaltyRow& penalty, int64_t vocab, Scratch& s) {
  s.penalised.resize(static_cast<size_t>(vocab));
  float* out = s.penalised.data();
  if (row.dtype == DType::kFloat32) {
    std::copy_n(static_cast<const float*>(row.data), vocab, out);
  } else {
    convert_row_to_float(row.data, row.dtype, vocab, out);
  }
  collect_marked(penalty, vocab, s.marked);
  for (size_t i = 0; i < s.marked.tokens.size(); ++i) {
    float& x = out[s.marked.tokens[i]];
    x = penalize(x, row.dtype, s.marked.seen[i], s.marked.generated[i], penalty.repetition, penalty.presence,
                 penalty.frequency);
  }
  return RowReader{out, DType::kFloat32};
}

void write_filtered(const RowReader& row, int64_t vocab, float temperature, const Cut& cut,
                    const std::vector<float>& block_max, float* out) {
  std::fill(out, out + vocab, kNegInf);
  for_each_block(row, vocab, temperature, [&](int64_t base, auto n, const float* z) {
    for (int64_t i = 0; i < n; ++i) out[base + i] = cut.keeps(z[i], base + i) ? z[i] : kNegInf;
  }, [&](int64_t b) { return block_max[static_cast<size_t>(b)] >= cut.value; });
}

namespace {

RowParams row_params(const SamplingArgs& a, int64_t r) {
  RowParams p;
  p.temperature = param(a.temperature, a.temperature_per_row, r);
  p.top_k = param(a.top_k, a.top_k_per_row, r);
  if (p.top_k >= a.vocab) p.top_k = 0;
  p.top_p = param(a.top_p, a.top_p_per_row, r);
  p.min_p = param(a.min_p, a.min_p_per_row, r);
  p.seed = a.tokens ? static_cast<uint64_t>(a.seed[r]) : 0;
  p.offset = a.tokens ? static_cast<uint64_t>(param(a.offset, a.offset_per_row, r)) : 0;
  return p;
}

// The parameter values, after validate(): host memory here, so they are checked before any row
// runs (the CUDA kernels clamp them instead).
Status check_parameter_values(const SamplingArgs& a) {
  for (int64_t r = 0; r < a.rows; ++r) {
    const float temperature = param(a.temperature, a.temperature_per_row, r);
    if (!(temperature >= 0.0f) || std::isinf(temperature)) return bad_value("temperature must be >= 0 and finite");
    if (param(a.top_k, a.top_k_per_row, r) < 0) return bad_value("top_k must be >= 0");
    const double top_p = param(a.top_p, a.top_p_per_row, r);
    if (!(top_p > 0.0 && top_p <= 1.0)) return bad_value("top_p must be in (0, 1]");
    const float min_p = param(a.min_p, a.min_p_per_row, r);
    if (!(min_p >= 0.0f && min_p <= 1.0f)) return bad_value("min_p must be in [0, 1]");
  }
  return check_penalty_values(a.penalties, a.rows);
}

// Temperature 0: the argmax, a point mass.
RowResult greedy_row(const RowReader& row, int64_t vocab, Scratch& s, float* filtered) {
  const MaxResult top = scan_blocks(row, vocab, 1.0f, s.block_max);
  if (filtered) {
    std::fill(filtered, filtered + vocab, kNegInf);
    if (top.index >= 0) filtered[top.index] = top.value;
  }
  RowResult result;
  // A point mass: logprob 0, or NaN (inf - inf) for a +inf logit, as in the reference.
  if (top.index >= 0) result = {top.index, log_probability(top.value, top.value, 1.0)};
  return result;
}

// top-k with a small k: the survivors of one pass are sorted and walked (module comment).
// Needs pass 1's block maxima in s.block_max.
RowResult candidate_row(const RowReader& row, int64_t vocab, const RowParams& p, Scratch& s, bool want_token,
                        bool want_logprob, float* filtered) {
  std::vector<Candidate>& cand = s.candidates;
  collect_top_k(row, vocab, p.temperature, p.top_k, s.block_max, s.values, cand);
  RowResult result;
  if (cand.empty()) {
    if (filtered) std::fill(filtered, filtered + vocab, kNegInf);
    return result;
  }
  std::sort(cand.begin(), cand.end(), ranks_before);
  const float max = cand.front().value;
  const size_t count = cand.size();
  s.weights.resize(count);
  double total = 0.0;
  for (size_t i = 0; i < count; ++i) {
    s.weights[i] = exp_vectorizable(cand[i].value - max);
    total += s.weights[i];
  }
  // top-p: keep while the mass ranked strictly above is < top_p of the total; min-p: keep while
  // the weight relative to the top token is >= min_p. Both keep a prefix, and always the first.
  size_t kept = count;
  if (p.top_p < 1.0) {
    const double target = p.top_p * total;
    double above = 0.0;
    for (size_t i = 0; i < count; ++i) {
      if (above >= target) {
        kept = i;
        break;
      }
      above += s.weights[i];
    }
  }
  if (p.min_p > 0.0f) {
    for (size_t i = 1; i < kept; ++i) {
      if (s.weights[i] < p.min_p) {
        kept = i;
        break;
      }
    }
  }
  if (filtered) {
    Cut cut;
    cut.value = cand[kept - 1].value;
    cut.index = cand[kept - 1].index;
    write_filtered(row, vocab, p.temperature, cut, s.block_max, filtered);
  }
  if (!want_token) return result;

  // Descending values: stop at the first token that cannot reach the best score.
  BestDraw best;
  uint32_t tokens[kBlock];
  float values[kBlock];
  for (size_t start = 0; start < kept;) {
    int64_t n = 0;
    while (start < kept && n < kBlock && best.reachable(cand[start].value)) {
      tokens[n] = cand[start].index;
      values[n] = cand[start].value;
      ++n;
      ++start;
    }
    if (n == 0) break;
    offer_block(tokens, values, n, p, best);
  }
  result.token = best.index;
  if (want_logprob) {
    double kept_mass = 0.0;
    for (size_t i = 0; i < kept; ++i) kept_mass += s.weights[i];
    result.logprob = log_probability(best.value, max, kept_mass);
  }
  return result;
}

// Candidates come from about k blocks (collect_top_k) while k is a small part of the block count;
// beyond that the full-row path's selection (nth_element over the row) is the better deal.
inline bool small_top_k(int64_t k, int64_t vocab) { return k > 0 && k * 4 <= block_count(vocab); }

void sample_row(const SamplingArgs& a, int64_t r, Scratch& s) {
  const int64_t vocab = a.vocab;
  RowParams p = row_params(a, r);
  RowReader row{static_cast<const char*>(a.logits) + r * a.row_stride * dtype_size(a.dtype), a.dtype};
  const PenaltyRow penalty = penalty_row(a.penalties, r, vocab);
  if (penalty.mask != nullptr && vocab > 0) row = penalised_row(row, penalty, vocab, s);
  float* filtered = a.filtered ? a.filtered + r * vocab : nullptr;
  const bool want_token = a.tokens != nullptr;
  const bool want_logprob = a.logprobs != nullptr;
  RowResult result;
  if (vocab == 0) {
    // Nothing to read or write: the row has no finite logit.
  } else if (p.temperature == 0.0f) {
    result = greedy_row(row, vocab, s, filtered);
  } else {
    const MaxResult top = scan_blocks(row, vocab, p.temperature, s.block_max);
    drop_probability_filters_if_infinite(top.value, p);
    if (small_top_k(p.top_k, vocab)) {
      result = candidate_row(row, vocab, p, s, want_token, want_logprob, filtered);
    } else {
      result = full_row(row, vocab, p, top, s, want_token, want_logprob, filtered);
    }
  }
  if (want_token) a.tokens[r] = result.token;
  if (want_logprob) a.logprobs[r] = result.logprob;
}

}  // namespace
}  // namespace sampling

Status sample(const SamplingArgs& args) {
  Status status = validate(args);
  if (status.ok()) status = sampling::check_parameter_values(args);
  if (!status.ok() || args.rows == 0) return status;
  // A row is at least a few microseconds of work; small vocabularies share a chunk.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(args.vocab, 1));
  parallel_for(0, args.rows, grain, [&](int64_t begin, int64_t end) {
    thread_local sampling::Scratch scratch;
    for (int64_t r = begin; r < end; ++r) sampling::sample_row(args, r, scratch);
  });
  return ok_status();
}

}  // namespace cpu
}  // namespace turbogen
