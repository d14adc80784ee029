// The dispatch table of the CPU row kernels (vector_math.h), in the style of
// ATen's DispatchStub: one struct of function pointers, VectorKernels, filled
// per instruction set by that instruction set's own file, and one of them
// chosen once, at load time, from the CPU and LSS_CPU_ISA (vector_math.cpp).
// Every kernel of vector_math.h (dot, dot4, gathered_dots, axpy,
// next_topk_candidate) goes through it, so LSS_CPU_ISA=avx2|generic lowers
// them all.
//
//   vector_math_avx512.cpp   x86-64-v4: AVX-512 F/VL/BW, FMA, F16C
//   vector_math_avx2.cpp     x86-64-v3: AVX2, FMA, F16C
//   vector_math_generic.cpp  plain C++ for the baseline ISA (no FMA on
//                            x86-64), and the fp64 row of every table
//
// Internal to csrc/cpu/vector_math*.cpp; the ops include vector_math.h.
//
// The ISA files mark each of their functions with a target attribute
// (LSS_TARGET_*, x86_targets.h) instead of being compiled with their own flags: setup.py has
// no per-file flags, and the inline helpers below are then the same baseline
// code in every file that includes them (a header inline compiled with
// -mavx512f in one file and without it in another is an ODR trap: the linker
// may keep the AVX-512 copy for a CPU without AVX-512). The helpers sit in an
// anonymous namespace, so each file has its own copy anyway.
#pragma once

#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "lss/common.h"
#include "vector_math.h"
#include "x86_targets.h"  // LSS_TARGET_*, LSS_HAVE_X86_KERNELS

namespace lss::cpu {

// The kernels of one (query, weight) type pair. X is the query and
// accumulator type (float, or double for fp64), W the stored weight type
// (bfloat16 and float16 as their uint16_t bits).
template <typename X, typename W>
struct RowKernels {
  using Dot = X (*)(const X* x, const W* w, int64_t n);
  using Dot4 = void (*)(const X* x, const W* const w[4], int64_t n, X out[4]);
  using Gathered = void (*)(const X* x, const W* weight, const W* bias, int64_t d, const int32_t* ids, int64_t n,
                            X* out);
  using Axpy = void (*)(X a, const W* w, X* y, int64_t n);

  const char* isa = nullptr;  // the file that filled the row: "avx512", "avx2", "generic"
  Dot dot = nullptr;
  Dot4 dot4 = nullptr;
  Gathered gathered = nullptr;  // any d
  // Compiled for that row length, or null (then `gathered` serves).
  Gathered gathered_d64 = nullptr, gathered_d128 = nullptr, gathered_d256 = nullptr;
  Axpy axpy = nullptr;

  Gathered gathered_for(int64_t d) const {
    const Gathered fixed = d == 64 ? gathered_d64 : d == 128 ? gathered_d128 : d == 256 ? gathered_d256 : nullptr;
    return fixed ? fixed : gathered;
  }
};

using NextCandidateFn = int64_t (*)(const float* scores, const int32_t* ids, int64_t n, float threshold);

struct VectorKernels {
  const char* name = "generic";  // what vector_isa() reports: "x86-64-v4 (AVX-512)", ...
  int level = 0;                 // what vector_level() reports: 4, 3 or 0
  RowKernels<float, float> f32;
  RowKernels<float, uint16_t> bf16, f16;
  RowKernels<double, double> f64;
  const char* next_topk_isa = nullptr;
  NextCandidateFn next_topk_candidate = nullptr;
};

// One table per instruction set, each complete (the AVX tables take the
// generic fp64 row, and AVX2 the generic next_topk_candidate).
VectorKernels generic_vector_kernels();
#if defined(LSS_HAVE_X86_KERNELS)
VectorKernels avx2_vector_kernels();
VectorKernels avx512_vector_kernels();
#endif

// The table in use, chosen on first call (vector_math.cpp).
const VectorKernels& vector_kernels();

namespace {

// 32 independent partial sums: wide enough for two AVX-512 FMA chains, and a
// fixed summation order, so results do not depend on the thread count. The
// CUDA warp dot reproduces this order (lss::kDotLanes in lss/common.h).
constexpr int kLanes = kDotLanes;

inline float bf16_to_float(uint16_t bits) {
  uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float half_to_float(uint16_t bits) {
#if defined(__FLT16_MAX__)
  _Float16 h;
  std::memcpy(&h, &bits, sizeof(h));
  return float(h);
#else
  return float(c10::Half(bits, c10::Half::from_bits()));
#endif
}

// One weight as the accumulator type (exact for every type).
struct LoadF32 {
  static float load(const float* p, int64_t i) { return p[i]; }
};
struct LoadBF16 {
  static float load(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
};
struct LoadF16 {
  static float load(const uint16_t* p, int64_t i) { return half_to_float(p[i]); }
};
struct LoadF64 {
  static double load(const double* p, int64_t i) { return p[i]; }
};

// Four dots as four calls of One (below AVX-512, and for fp64).
template <typename X, typename W, X (*One)(const X*, const W*, int64_t)>
void dot4_by_one(const X* x, const W* const w[4], int64_t n, X out[4]) {
  for (int j = 0; j < 4; ++j) out[j] = One(x, w[j], n);
}

// gathered_dots as one call of One per valid entry, prefetching ahead (below
// AVX-512, and for fp64). Baseline code: the bias add is never fused into an
// FMA, in any table.
template <typename Load, typename X, typename W, X (*One)(const X*, const W*, int64_t)>
void gathered_dots_by_row(const X* x, const W* weight, const W* bias, int64_t d, const int32_t* ids, int64_t n,
                          X* out) {
  const int64_t row_bytes = d * int64_t(sizeof(W));
  const int64_t distance = prefetch_distance(row_bytes);
  for (int64_t j = 0; j < std::min(n, distance); ++j) prefetch_candidate(weight, bias, d, row_bytes, ids[j]);
  for (int64_t j = 0; j < n; ++j) {
    if (j + distance < n) prefetch_candidate(weight, bias, d, row_bytes, ids[j + distance]);
    const int32_t id = ids[j];
    if (id < 0) {
      out[j] = -std::numeric_limits<X>::infinity();
      continue;
    }
    const X v = One(x, weight + int64_t(id) * d, d);
    out[j] = bias ? v + Load::load(bias, id) : v;
  }
}

#if defined(LSS_HAVE_X86_KERNELS)
LSS_X86_WARNINGS_OFF
// Lanes 0..7 of an 8-wide vector, off = 4, 2, 1 of the tree (lane j +=
// lane j + off): the end of every AVX2 and AVX-512 dot.
LSS_TARGET_AVX2 inline float reduce8_tree(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // off 4
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                          // off 2
  s = _mm_add_ss(s, _mm_movehdup_ps(s));                                           // off 1
  return _mm_cvtss_f32(s);
}
LSS_X86_WARNINGS_ON
#endif

}  // namespace
}  // namespace lss::cpu
