// The x86 instruction-set levels of the CPU kernels, defined once for every
// ISA-specific file (vector_math_avx512.cpp, vector_math_avx2.cpp,
// int8_dots.cpp). Each of their functions is marked with one of these target
// attributes instead of the file being compiled with its own flags: setup.py
// has no per-file flags, and an inline helper shared by several files is then
// the same baseline code in each (see vector_kernels.h).
//
//   LSS_TARGET_AVX512  x86-64-v4 (AVX-512 F/VL/BW/DQ) with AVX2, FMA, F16C:
//                      picked where __builtin_cpu_supports("x86-64-v4")
//   LSS_TARGET_VNNI    the same plus AVX-512 VNNI (int8_dots.cpp), picked
//                      where the CPU also has avx512vnni
//   LSS_TARGET_AVX2    x86-64-v3's AVX2, FMA, F16C
//
// LSS_HAVE_X86_KERNELS is defined where these (and <immintrin.h>) exist.
#pragma once

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define LSS_HAVE_X86_KERNELS 1
#define LSS_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")))
#define LSS_TARGET_VNNI __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx512vnni,avx2,fma,f16c")))
#define LSS_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
// GCC 12 flags the intrinsics' own _mm512_undefined_*() placeholders as
// "(may be) used uninitialized", and warns that returning __m256 from a
// function changes the ABI; both are internal to these files and harmless.
#define LSS_X86_WARNINGS_OFF                                   \
  _Pragma("GCC diagnostic push")                               \
  _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"") \
  _Pragma("GCC diagnostic ignored \"-Wuninitialized\"")       \
  _Pragma("GCC diagnostic ignored \"-Wpsabi\"")
#define LSS_X86_WARNINGS_ON _Pragma("GCC diagnostic pop")
#endif
