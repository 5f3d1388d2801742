// turbogen.ops.gumbel_noise on the CPU: every element is independent, so the flat range
// [0, rows * columns) is split across the thread pool.
#include "turbogen/noise.h"

#include "turbogen/parallel.h"

namespace turbogen {
namespace cpu {

namespace {
constexpr int64_t kGrain = 4096;  // elements per pool chunk at least: a few microseconds of work
}  // namespace

Status gumbel_noise(const GumbelNoiseArgs& a) {
  const Status status = validate(a);
  if (!status.ok()) return status;
  if (a.rows == 0 || a.columns == 0) return ok_status();
  parallel_for(0, a.rows * a.columns, kGrain, [&a](int64_t begin, int64_t end) {
    int64_t r = begin / a.columns;
    int64_t j = begin - r * a.columns;
    for (int64_t i = begin; i < end; ++i) {
      a.out[i] = noise::gumbel(static_cast<uint64_t>(a.seed[r]), static_cast<uint64_t>(a.offset[r]),
                               static_cast<uint64_t>(j));
      if (++j == a.columns) {
        j = 0;
        ++r;
      }
    }
  });
  return ok_status();
}

}  // namespace cpu
}  // namespace turbogen
