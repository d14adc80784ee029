// The AVX2 + FMA row kernels (x86-64-v3; vector_kernels.h). The dot keeps its
// 32 partial sums in four registers and reduces them in the generic code's
// tree order (lane j += lane j + off for off = 16, 8, 4, 2, 1), so it gives
// the AVX-512 kernel's bits. dot4 and gathered_dots call it once per row:
// AVX2 has too few registers to interleave four 32-lane accumulators.
// next_topk_candidate is the generic one.
#include "vector_kernels.h"

#if defined(LSS_HAVE_X86_KERNELS)

namespace lss::cpu {
namespace {

LSS_X86_WARNINGS_OFF

// Loads 8 weights as fp32.
struct Avx2F32 {
  using Scalar = LoadF32;
  LSS_TARGET_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
};
struct Avx2BF16 {
  using Scalar = LoadBF16;
  LSS_TARGET_AVX2 static __m256 load(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
};
struct Avx2F16 {
  using Scalar = LoadF16;
  LSS_TARGET_AVX2 static __m256 load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};

template <typename Load, typename W>
LSS_TARGET_AVX2 float dot_avx2(const float* __restrict x, const W* __restrict w, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();  // lanes 0-7, 8-15
  __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();  // lanes 16-23, 24-31
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), Load::load(w + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), Load::load(w + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), Load::load(w + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), Load::load(w + i + 24), a3);
  }
  const __m256 s8 = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));  // off 16, then 8
  float s = reduce8_tree(s8);
  for (; i < n; ++i) s += x[i] * Load::Scalar::load(w, i);
  return s;
}

// y[i] = fma(a, w[i], y[i]): one rounding per element, as the AVX-512 axpy,
// so the two give the same bits whatever the vector width.
template <typename Load, typename W>
LSS_TARGET_AVX2 void axpy_avx2(float a, const W* __restrict w, float* __restrict y, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, Load::load(w + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = __builtin_fmaf(a, Load::Scalar::load(w, i), y[i]);
}

LSS_X86_WARNINGS_ON

template <typename A2, typename W>
RowKernels<float, W> avx2_row() {
  using Scalar = typename A2::Scalar;
  RowKernels<float, W> r;
  r.isa = "avx2";
  r.dot = &dot_avx2<A2, W>;
  r.dot4 = &dot4_by_one<float, W, &dot_avx2<A2, W>>;
  r.gathered = &gathered_dots_by_row<Scalar, float, W, &dot_avx2<A2, W>>;
  r.axpy = &axpy_avx2<A2, W>;
  return r;
}

}  // namespace

VectorKernels avx2_vector_kernels() {
  VectorKernels k = generic_vector_kernels();  // fp64 and next_topk_candidate
  k.name = "x86-64-v3 (AVX2+FMA)";
  k.level = 3;
  k.f32 = avx2_row<Avx2F32, float>();
  k.bf16 = avx2_row<Avx2BF16, uint16_t>();
  k.f16 = avx2_row<Avx2F16, uint16_t>();
  return k;
}

}  // namespace lss::cpu

#endif  // LSS_HAVE_X86_KERNELS
