// Error reporting shared by the CPU kernels and the bindings: kernels return a Status instead of
// throwing, so they can run on pool threads and be called from any host code.
#pragma once

namespace turbogen {

enum class Status : int {
  kOk = 0,
  kNullPointer,
  kBadShape,
  kBadStride,
  kBadDType,
  kBadValue,
};

inline const char* status_message(Status status) {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kNullPointer: return "a required pointer is null";
    case Status::kBadShape: return "sizes are negative, empty where data is required, or inconsistent";
    case Status::kBadStride: return "row stride is smaller than the row length";
    case Status::kBadDType: return "unsupported dtype code";
    case Status::kBadValue: return "a parameter value is out of range";
  }
  return "unknown error";
}

}  // namespace turbogen
