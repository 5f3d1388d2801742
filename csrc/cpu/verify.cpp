// CPU speculative verification (turbogen.ops.verify): the function computed is turbogen.ref.verify's.
//
// Every draw is the CPU sampler's (cpu::sample on one position: the same filters, noise and row kernels as
// turbogen.ops.sample, so coupled tokens are sample's tokens). A row's positions are evaluated in order and
// the row stops at its first rejected position, so a row that rejects its first draft costs one sample.
//
// Threads: with at least as many rows as threads, each row runs on one thread (rows in parallel). With
// fewer rows than threads, the rows advance in waves of `width` positions each, the wave's positions in
// parallel in chunks of `grain` positions (the sampler's grain: a chunk is at least ~4096 logits of work, so
// small vocabularies do not pay for waking threads): width = threads * grain / rows, rounded up. At most
// width - 1 positions past a rejection are drawn for nothing, on threads that would otherwise idle.
//
// Rejection mode, per position i < k with a draft x: the target's filtered row (the sampler's filtered
// output), p = its softmax, accept iff u <= p(x) / q(x) in float32 (u: counter 2**32 + i, the row's
// offset); on rejection, the Gumbel-max draw over log(max(p - q, 0)) at offset + i (the noise of
// noise.h), or the target's own token when no residual is positive.

#include "turbogen/verify.h"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "turbogen/noise.h"
#include "turbogen/parallel.h"
#include "turbogen/philox.h"

namespace turbogen {
namespace cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
inline const T* row_param(const T* values, bool per_row, int64_t r) {
  return values + (per_row ? r : 0);
}

// The parameter values, after validate(): host memory, checked before any row runs.
Status check_parameter_values(const VerifyArgs& a) {
  for (int64_t r = 0; r < a.rows; ++r) {
    const float temperature = *row_param(a.temperature, a.temperature_per_row, r);
    if (!(temperature >= 0.0f) || std::isinf(temperature)) return bad_value("temperature must be >= 0 and finite");
    if (*row_param(a.top_k, a.top_k_per_row, r) < 0) return bad_value("top_k must be >= 0");
    const double top_p = *row_param(a.top_p, a.top_p_per_row, r);
    if (!(top_p > 0.0 && top_p <= 1.0)) return bad_value("top_p must be in (0, 1]");
    const float min_p = *row_param(a.min_p, a.min_p_per_row, r);
    if (!(min_p >= 0.0f && min_p <= 1.0f)) return bad_value("min_p must be in [0, 1]");
  }
  return ok_status();
}

// What one position decides: whether its draft is accepted, and the token it emits if the row stops there.
struct Verdict {
  bool accept = false;
  int64_t token = -1;
};

// Thread-local scratch: the filtered row of a rejection-mode position.
struct Scratch {
  std::vector<float> filtered;
};

class Verifier {
 public:
  explicit Verifier(const VerifyArgs& a) : a_(a), k_(a.positions - 1) {}

  int64_t draft(int64_t r, int64_t i) const {
    const int64_t x = a_.draft_tokens[r * k_ + i];
    return (x >= 0 && x < a_.vocab) ? x : -1;
  }

  // Position i of row r (i < positions).
  Verdict evaluate(int64_t r, int64_t i, Scratch& s) {
    const int64_t x = i < k_ ? draft(r, i) : -1;
    const uint64_t offset = static_cast<uint64_t>(*row_param(a_.offset, a_.offset_per_row, r));
    const int64_t position_offset = static_cast<int64_t>(offset + static_cast<uint64_t>(i));
    const bool residual = a_.rejection && x >= 0;
    if (residual) s.filtered.resize(static_cast<size_t>(a_.vocab));
    Verdict verdict;
    draw(r, i, &position_offset, &verdict.token, residual ? s.filtered.data() : nullptr);
    if (x < 0) return verdict;
    if (!a_.rejection) {
      verdict.accept = x == verdict.token;
      return verdict;
    }
    // p: the softmax of the filtered row; q: the draft's distribution at this position.
    const float* f = s.filtered.data();
    const float* q = a_.draft_probs + (r * k_ + i) * a_.vocab;
    float max = kNegInf;
    for (int64_t j = 0; j < a_.vocab; ++j) max = std::max(max, f[j]);
    if (!(max > kNegInf) || std::isinf(max)) return verdict;  // p is NaN (as torch's softmax): reject
    double total = 0.0;
    for (int64_t j = 0; j < a_.vocab; ++j) total += std::exp(f[j] - max);
    const float mass = static_cast<float>(total);
    const float p_x = std::exp(f[x] - max) / mass;
    const float u = philox::uniform_from_bits(
        philox::philox4x32(static_cast<uint32_t>(i), 1u, static_cast<uint32_t>(offset),
                           static_cast<uint32_t>(offset >> 32), static_cast<uint32_t>(a_.seed[r]),
                           static_cast<uint32_t>(static_cast<uint64_t>(a_.seed[r]) >> 32))
            .w[0]);
    if (u <= p_x / q[x]) {
      verdict.accept = true;
      return verdict;
    }
    // The residual max(p - q, 0), drawn by Gumbel-max; tokens that cannot reach the best are skipped.
    const uint64_t seed = static_cast<uint64_t>(a_.seed[r]);
    float best = kNegInf;
    int64_t best_index = -1;
    for (int64_t j = 0; j < a_.vocab; ++j) {
      const float excess = std::exp(f[j] - max) / mass - q[j];
      if (!(excess > 0.0f)) continue;
      const float log_excess = noise::log32(excess);
      if (log_excess + philox::kGumbelBound < best) continue;
      const float score = log_excess + noise::gumbel(seed, static_cast<uint64_t>(position_offset), j);
      if (score > best) {
        best = score;
        best_index = j;
      }
    }
    if (best_index >= 0) verdict.token = best_index;
    return verdict;
  }

  Status error() {
    std::lock_guard<std::mutex> lock(error_mutex_);
    return error_;
  }

 private:
  // The sampler on one position: its token (and its filtered row when `filtered` is set).
  void draw(int64_t r, int64_t i, const int64_t* offset, int64_t* token, float* filtered) {
    SamplingArgs s;
    const int64_t flat = r * a_.positions + i;
    s.logits = static_cast<const char*>(a_.logits) + flat * a_.row_stride * dtype_size(a_.dtype);
    s.rows = 1;
    s.vocab = a_.vocab;
    s.row_stride = a_.vocab;
    s.dtype = a_.dtype;
    s.temperature = row_param(a_.temperature, a_.temperature_per_row, r);
    s.top_k = row_param(a_.top_k, a_.top_k_per_row, r);
    s.top_p = row_param(a_.top_p, a_.top_p_per_row, r);
    s.min_p = row_param(a_.min_p, a_.min_p_per_row, r);
    s.seed = a_.seed + r;
    s.offset = offset;
    s.tokens = token;
    s.filtered = filtered;
    const Status status = sample(s);
    if (!status.ok()) {
      std::lock_guard<std::mutex> lock(error_mutex_);
      if (error_.ok()) error_ = status;
      *token = -1;
    }
  }

  const VerifyArgs& a_;
  const int64_t k_;
  std::mutex error_mutex_;
  Status error_;
};

// Row r stops at position `stop` (its first rejected position, or k) emitting `token`.
void write_row(const VerifyArgs& a, const Verifier& verifier, int64_t r, int64_t stop, int64_t token) {
  int64_t* out = a.tokens + r * a.positions;
  for (int64_t i = 0; i < stop; ++i) out[i] = verifier.draft(r, i);
  out[stop] = token;
  for (int64_t i = stop + 1; i < a.positions; ++i) out[i] = -1;
  a.accepted[r] = stop;
}

// Positions per chunk of work: at least a few microseconds (the sampler's grain for rows).
int64_t position_grain(int64_t vocab) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(vocab, 1)); }

// One thread per row, positions in order until the first rejection.
void verify_rows(const VerifyArgs& a, Verifier& verifier) {
  const int64_t grain = std::max<int64_t>(1, position_grain(a.vocab) / a.positions);
  parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
    thread_local Scratch scratch;
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = 0; i < a.positions; ++i) {
        const Verdict verdict = verifier.evaluate(r, i, scratch);
        if (!verdict.accept) {
          write_row(a, verifier, r, i, verdict.token);
          break;
        }
      }
    }
  });
}

// Fewer rows than threads: waves of `width` positions per row, the wave's positions in parallel.
void verify_in_waves(const VerifyArgs& a, Verifier& verifier, int64_t width, int64_t grain) {
  struct Item {
    int64_t row, position;
  };
  std::vector<int64_t> next(static_cast<size_t>(a.rows), 0);  // first position not yet evaluated
  std::vector<int64_t> active(static_cast<size_t>(a.rows));
  for (int64_t r = 0; r < a.rows; ++r) active[static_cast<size_t>(r)] = r;
  std::vector<Verdict> verdicts(static_cast<size_t>(a.rows * a.positions));
  std::vector<Item> items;
  while (!active.empty()) {
    items.clear();
    for (const int64_t r : active) {
      const int64_t end = std::min(a.positions, next[static_cast<size_t>(r)] + width);
      for (int64_t i = next[static_cast<size_t>(r)]; i < end; ++i) items.push_back({r, i});
    }
    parallel_for(0, static_cast<int64_t>(items.size()), grain, [&](int64_t begin, int64_t end) {
      thread_local Scratch scratch;
      for (int64_t n = begin; n < end; ++n) {
        const Item item = items[static_cast<size_t>(n)];
        verdicts[static_cast<size_t>(item.row * a.positions + item.position)] =
            verifier.evaluate(item.row, item.position, scratch);
      }
    });
    std::vector<int64_t> still_active;
    for (const int64_t r : active) {
      const int64_t begin = next[static_cast<size_t>(r)];
      const int64_t end = std::min(a.positions, begin + width);
      bool stopped = false;
      for (int64_t i = begin; i < end; ++i) {
        const Verdict& verdict = verdicts[static_cast<size_t>(r * a.positions + i)];
        if (!verdict.accept) {
          write_row(a, verifier, r, i, verdict.token);
          stopped = true;
          break;
        }
      }
      if (!stopped) {
        next[static_cast<size_t>(r)] = end;
        still_active.push_back(r);
      }
    }
    active.swap(still_active);
  }
}

}  // namespace

Status verify(const VerifyArgs& args) {
  Status status = validate(args);
  if (status.ok()) status = check_parameter_values(args);
  if (!status.ok() || args.rows == 0) return status;
  Verifier verifier(args);
  const int64_t threads = ThreadPool::instance().num_threads();
  if (args.rows >= threads || args.positions == 1) {
    verify_rows(args, verifier);
  } else {
    const int64_t grain = position_grain(args.vocab);
    const int64_t width = std::min(args.positions, (threads * grain + args.rows - 1) / args.rows);
    verify_in_waves(args, verifier, width, grain);
  }
  return verifier.error();
}

}  // namespace cpu
}  // namespace turbogen
