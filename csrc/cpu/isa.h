// CPU instruction-set dispatch, the one idiom of the CPU kernels: one wheel runs on every x86-64
// CPU and uses 8-wide AVX2 vectors where the CPU has them.
//
// A function with an AVX2 variant exists twice, with one signature: `<name>_avx2`, compiled with
// TURBOGEN_TARGET_AVX2, and `<name>_portable`, compiled for the baseline. Its caller picks one
// the first time it runs:
//
//     static const auto fn = TURBOGEN_SELECT_ISA(name);  // name_avx2 or name_portable
//
// When both variants are the same loops (which the compiler vectorises for each target), they are
// written once as an inline `<name>_body` and both variants are one-line wrappers around it.
// TURBOGEN_TARGET_AVX2 also flattens: everything the variant calls (the body, the row readers, the
// lambdas) is inlined into it and so compiled for AVX2; only the instruction set differs from the
// baseline, not the -march, so GCC may inline baseline code there. Hand-written intrinsics live
// only in the `_avx2` variant, which exists only where TURBOGEN_X86_DISPATCH is defined.
#pragma once

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#define TURBOGEN_X86_DISPATCH 1
#include <immintrin.h>
// x86-64-v3's vector subset: AVX2, FMA (so a*b+c may contract, as with -march=x86-64-v3), F16C.
#define TURBOGEN_TARGET_AVX2 __attribute__((target("avx2,fma,f16c"), flatten))
#define TURBOGEN_SELECT_ISA(name) (::turbogen::cpu::isa::has_avx2() ? name##_avx2 : name##_portable)
#else
#define TURBOGEN_TARGET_AVX2
#define TURBOGEN_SELECT_ISA(name) (name##_portable)
#endif

#if defined(__GNUC__)
#define TURBOGEN_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define TURBOGEN_ALWAYS_INLINE inline
#endif

namespace turbogen {
namespace cpu {
namespace isa {

// TURBOGEN_CPU_ISA=portable makes every kernel use its baseline variant, so that the portable
// code can be tested (and compared with the AVX2 code) on a CPU that has AVX2. Read once.
inline bool portable_forced() {
  static const bool forced = [] {
    const char* value = std::getenv("TURBOGEN_CPU_ISA");
    return value != nullptr && std::strcmp(value, "portable") == 0;
  }();
  return forced;
}

#if defined(TURBOGEN_X86_DISPATCH)
// Whether the kernels run their TURBOGEN_TARGET_AVX2 variants: the CPU has AVX2, FMA and F16C, and
// TURBOGEN_CPU_ISA does not ask for the baseline. Checked once.
inline bool has_avx2() {
  static const bool use = !portable_forced() && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return use;
}
#endif

// The variant the kernels run: "avx2" or "portable".
inline const char* selected() {
#if defined(TURBOGEN_X86_DISPATCH)
  return has_avx2() ? "avx2" : "portable";
#else
  return "portable";
#endif
}

}  // namespace isa
}  // namespace cpu
}  // namespace turbogen
