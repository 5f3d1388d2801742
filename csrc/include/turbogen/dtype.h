// Element types the kernels read, and their conversion to float32, without torch.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define TURBOGEN_HOST_DEVICE __host__ __device__
#else
#define TURBOGEN_HOST_DEVICE
#endif

namespace turbogen {

// Codes shared with python/turbogen/_ext.py (DTYPE_CODES).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline bool is_valid_dtype(int code) { return code >= 0 && code <= 2; }

inline int64_t dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// IEEE binary16 -> binary32, exact for every input (subnormals, infinities and NaN included).
TURBOGEN_HOST_DEVICE inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {  // inf / nan
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal: renormalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

TURBOGEN_HOST_DEVICE inline float bfloat16_bits_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// float32 -> binary16 bits, round to nearest even (as torch's .half()).
inline uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (abs < 0x38800000u) {  // result is subnormal or zero
    if (abs < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to zero
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // 14..24
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even at bit 13
  rounded -= 0x38000000u;                                // rebias exponent 127 -> 15
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

inline uint16_t float_to_bfloat16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

// Reads element i of a row stored as `dtype`, as float32.
inline float load_as_float(const void* row, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kFloat16:
      return half_bits_to_float(static_cast<const uint16_t*>(row)[i]);
    case DType::kBFloat16:
      return bfloat16_bits_to_float(static_cast<const uint16_t*>(row)[i]);
    case DType::kFloat32:
    default:
      return static_cast<const float*>(row)[i];
  }
}

inline void store_from_float(void* row, DType dtype, int64_t i, float value) {
  switch (dtype) {
    case DType::kFloat16:
      static_cast<uint16_t*>(row)[i] = float_to_half_bits(value);
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(row)[i] = float_to_bfloat16_bits(value);
      break;
    case DType::kFloat32:
    default:
      static_cast<float*>(row)[i] = value;
      break;
  }
}

// Converts `count` elements of `dtype` starting at `src` into float32 `dst`. The per-dtype loops are
// separate so the compiler vectorises each of them.
inline void convert_row_to_float(const void* src, DType dtype, int64_t count, float* dst) {
  switch (dtype) {
    case DType::kFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < count; ++i) dst[i] = half_bits_to_float(s[i]);
      break;
    }
    case DType::kBFloat16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < count; ++i) dst[i] = bfloat16_bits_to_float(s[i]);
      break;
    }
    case DType::kFloat32:
    default:
      std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(float));
      break;
  }
}

}  // namespace turbogen
