// CPU penalties: apply_penalties (section 2 of the penalty contract on every marked token) and
// accept_penalty_tokens (counting accepted tokens into a CPU PenaltyState). Rows run in parallel on
// the thread pool; each row walks its mask words (16 KB for a vocabulary of 128256), so the work beyond
// the copy is proportional to the number of marked tokens, not to the vocabulary.
#include "turbogen/penalties.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "turbogen/parallel.h"

namespace turbogen {
namespace cpu {
namespace {

void penalize_row(const PenaltyArgs& a, int64_t r, MarkedTokens& marked, std::vector<float>& values) {
  const int64_t element = dtype_size(a.dtype);
  const char* src = static_cast<const char*>(a.logits) + r * a.row_stride * element;
  char* dst = static_cast<char*>(a.out) + r * a.vocab * element;
  if (dst != src) std::memcpy(dst, src, static_cast<size_t>(a.vocab * element));
  const PenaltyRow row = penalty_row(a.penalties, r, a.vocab);
  collect_marked(row, a.vocab, marked);
  // Gather, penalise, scatter: the scattered loads are independent of each other, so they overlap.
  const size_t count = marked.tokens.size();
  values.resize(count);
  for (size_t i = 0; i < count; ++i) values[i] = load_as_float(src, a.dtype, marked.tokens[i]);
  for (size_t i = 0; i < count; ++i) {
    const int32_t seen = marked.seen[i], generated = marked.generated[i];
    if (seen <= 0 && generated <= 0) continue;  // stale bit: the element stays as it is
    store_from_float(dst, a.dtype, marked.tokens[i],
                     penalize(values[i], a.dtype, seen, generated, row.repetition, row.presence, row.frequency));
  }
}

// The ids and lengths accept would use, checked before anything is written.
Status check_accept_values(const PenaltyAcceptArgs& a) {
  for (int64_t i = 0; i < a.rows * a.n; ++i) {
    if (a.tokens[i] < 0 || a.tokens[i] >= a.vocab) return bad_value("tokens: every token id must be in [0, vocab)");
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    if (a.lengths[r] < 0 || a.lengths[r] > std::numeric_limits<int64_t>::max() - a.n) {
      return bad_value("lengths must be >= 0 (and lengths + n must fit in int64)");
    }
  }
  return ok_status();
}

inline void increment(int32_t& count) {  // wraps instead of overflowing (counts stay far below 2**31)
  count = static_cast<int32_t>(static_cast<uint32_t>(count) + 1u);
}

void accept_row(const PenaltyAcceptArgs& a, int64_t r) {
  const int64_t* tokens = a.tokens + r * a.n;
  const int64_t length = a.lengths[r];
  uint32_t* mask = a.mask + r * penalty_mask_words(a.vocab);
  int32_t* seen = a.seen ? a.seen + r * a.vocab : nullptr;
  int32_t* generated = a.generated ? a.generated + r * a.vocab : nullptr;
  for (int64_t i = 0; i < a.n; ++i) {
    const int64_t p = length + i;
    const int64_t t = tokens[i];
    bool counted = false;
    if (seen && p >= a.seen_from[r]) {
      increment(seen[t]);
      counted = true;
    }
    if (generated && p >= a.generated_from[r]) {
      increment(generated[t]);
      counted = true;
    }
    if (counted) mask[t >> 5] |= 1u << (t & 31);
  }
  if (a.window > 0) {
    int64_t* recent = a.recent + r * a.window;
    for (int64_t i = std::max<int64_t>(0, a.n - a.window); i < a.n; ++i) recent[(length + i) % a.window] = tokens[i];
  }
  a.lengths[r] = length + a.n;
  const int64_t retained = a.retained[r];
  a.retained[r] = retained >= a.window - a.n ? a.window : retained + a.n;
}

}  // namespace

void collect_marked(const PenaltyRow& row, int64_t vocab, MarkedTokens& out) {
  out.tokens.clear();
  const int64_t words = penalty_mask_words(vocab);
  for (int64_t w = 0; w < words; ++w) {
    uint32_t bits = row.mask[w];
    while (bits != 0u) {
      const int64_t t = w * 32 + __builtin_ctz(bits);
      bits &= bits - 1u;
      if (t < vocab) out.tokens.push_back(static_cast<uint32_t>(t));
    }
  }
  const size_t count = out.tokens.size();
  out.seen.assign(count, 0);
  out.generated.assign(count, 0);
  if (row.seen) {
    for (size_t i = 0; i < count; ++i) out.seen[i] = row.seen[out.tokens[i]];
  }
  if (row.generated) {
    for (size_t i = 0; i < count; ++i) out.generated[i] = row.generated[out.tokens[i]];
  }
}

Status apply_penalties(const PenaltyArgs& args) {
  Status status = validate(args);
  if (status.ok()) status = check_penalty_values(args.penalties, args.rows);
  if (!status.ok() || args.rows == 0 || args.vocab == 0) return status;
  // The copy dominates a row's cost: small vocabularies share a chunk.
  const int64_t grain = std::max<int64_t>(1, 16384 / args.vocab);
  parallel_for(0, args.rows, grain, [&](int64_t begin, int64_t end) {
    thread_local MarkedTokens marked;
    thread_local std::vector<float> values;
    for (int64_t r = begin; r < end; ++r) penalize_row(args, r, marked, values);
  });
  return ok_status();
}

Status accept_penalty_tokens(const PenaltyAcceptArgs& args) {
  Status status = validate(args);
  if (!status.ok() || args.rows == 0 || args.n == 0) return status;
  status = check_accept_values(args);
  if (!status.ok()) return status;
  for (int64_t r = 0; r < args.rows; ++r) accept_row(args, r);
  return ok_status();
}

}  // namespace cpu
}  // namespace turbogen
