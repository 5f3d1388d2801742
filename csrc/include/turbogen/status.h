// Error reporting shared by the kernels, their argument checks and the bindings: kernels and
// validate() return a Status instead of throwing, so they run on pool threads and from any host
// code; the bindings turn a failed Status into a Python ValueError.
#pragma once

namespace turbogen {

enum class StatusCode : int {
  kOk = 0,
  kNullPointer,
  kBadShape,
  kBadStride,
  kBadDType,
  kBadValue,
};

// A code plus the argument it is about (a string literal, so a Status is trivially copyable and
// never allocates).
struct Status {
  StatusCode code = StatusCode::kOk;
  const char* detail = "";

  bool ok() const { return code == StatusCode::kOk; }
};

inline Status ok_status() { return Status{}; }
inline Status null_pointer(const char* detail) { return Status{StatusCode::kNullPointer, detail}; }
inline Status bad_shape(const char* detail) { return Status{StatusCode::kBadShape, detail}; }
inline Status bad_stride(const char* detail) { return Status{StatusCode::kBadStride, detail}; }
inline Status bad_dtype(const char* detail) { return Status{StatusCode::kBadDType, detail}; }
inline Status bad_value(const char* detail) { return Status{StatusCode::kBadValue, detail}; }

inline const char* status_message(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kNullPointer: return "a required pointer is null";
    case StatusCode::kBadShape: return "sizes are negative, too large or inconsistent";
    case StatusCode::kBadStride: return "row stride is smaller than the row length";
    case StatusCode::kBadDType: return "unsupported dtype code";
    case StatusCode::kBadValue: return "a parameter value is out of range";
  }
  return "unknown error";
}

}  // namespace turbogen
