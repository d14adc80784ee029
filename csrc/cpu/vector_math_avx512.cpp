// The AVX-512 row kernels (x86-64-v4; vector_kernels.h). The dot keeps its
// 32 partial sums in two zmm registers and reduces them in the generic code's
// tree order (lane j += lane j + off for off = 16, 8, 4, 2, 1), so it gives
// the AVX2 kernel's bits; dot4 interleaves four of them, and gathered_dots
// runs its whole loop here, with versions compiled for d = 64, 128 and 256.
#include "vector_kernels.h"

#if defined(LSS_HAVE_X86_KERNELS)

namespace lss::cpu {
namespace {

LSS_X86_WARNINGS_OFF

// Loads 16 weights as fp32.
struct Avx512F32 {
  using Scalar = LoadF32;
  LSS_TARGET_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
};
struct Avx512BF16 {
  using Scalar = LoadBF16;
  LSS_TARGET_AVX512 static __m512 load(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
};
struct Avx512F16 {
  using Scalar = LoadF16;
  LSS_TARGET_AVX512 static __m512 load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
};
// Lanes 0..31 held as two 16-wide halves: off = 16, 8, then reduce8_tree.
LSS_TARGET_AVX512 inline float reduce32_tree(__m512 lo, __m512 hi) {
  const __m512 s16 = _mm512_add_ps(lo, hi);  // off 16
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(s16),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s16), 1)));  // off 8
  return reduce8_tree(s8);
}

template <typename Load, typename W>
LSS_TARGET_AVX512 inline float dot_avx512(const float* __restrict x, const W* __restrict w, int64_t n) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();  // lanes 0-15, 16-31
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    lo = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), Load::load(w + i), lo);
    hi = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), Load::load(w + i + 16), hi);
  }
  float s = reduce32_tree(lo, hi);
  for (; i < n; ++i) s += x[i] * Load::Scalar::load(w, i);
  return s;
}

// Four dots sharing one x (a query against four rows, or four projections):
// the accumulator pairs are named, not an array, so they stay in registers
// through the reduction.
template <typename Load, typename W>
LSS_TARGET_AVX512 inline void dot4_avx512(const float* __restrict x, const W* w0, const W* w1, const W* w2,
                                          const W* w3, int64_t n, float out[4]) {
  __m512 l0 = _mm512_setzero_ps(), h0 = l0, l1 = l0, h1 = l0, l2 = l0, h2 = l0, l3 = l0, h3 = l0;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m512 xl = _mm512_loadu_ps(x + i), xh = _mm512_loadu_ps(x + i + 16);
    l0 = _mm512_fmadd_ps(xl, Load::load(w0 + i), l0);
    h0 = _mm512_fmadd_ps(xh, Load::load(w0 + i + 16), h0);
    l1 = _mm512_fmadd_ps(xl, Load::load(w1 + i), l1);
    h1 = _mm512_fmadd_ps(xh, Load::load(w1 + i + 16), h1);
    l2 = _mm512_fmadd_ps(xl, Load::load(w2 + i), l2);
    h2 = _mm512_fmadd_ps(xh, Load::load(w2 + i + 16), h2);
    l3 = _mm512_fmadd_ps(xl, Load::load(w3 + i), l3);
    h3 = _mm512_fmadd_ps(xh, Load::load(w3 + i + 16), h3);
  }
  out[0] = reduce32_tree(l0, h0);
  out[1] = reduce32_tree(l1, h1);
  out[2] = reduce32_tree(l2, h2);
  out[3] = reduce32_tree(l3, h3);
  for (; i < n; ++i) {
    out[0] += x[i] * Load::Scalar::load(w0, i);
    out[1] += x[i] * Load::Scalar::load(w1, i);
    out[2] += x[i] * Load::Scalar::load(w2, i);
    out[3] += x[i] * Load::Scalar::load(w3, i);
  }
}

template <typename Load, typename W>
LSS_TARGET_AVX512 void dot4_avx512_rows(const float* x, const W* const w[4], int64_t n, float out[4]) {
  dot4_avx512<Load>(x, w[0], w[1], w[2], w[3], n, out);
}

// The whole gathered loop for one query in one AVX-512 function: prefetch
// the row `distance` entries ahead, queue four valid entries, dot them at once.
// A call per row (dot4 through its function pointer, arrays spilled to the
// stack) made the loop more than twice as slow on rows already in L1.
// kDim > 0 compiles it for that row length (the dot and prefetch loops
// unroll), which pays on L1-resident rows and on cold ones alike
// (docs/performance.md, "Measurements moved out of code comments").
template <typename Load, typename W, int64_t kDim>
LSS_TARGET_AVX512 void gathered_dots_avx512(const float* __restrict x, const W* weight, const W* bias,
                                            int64_t runtime_d, const int32_t* ids, int64_t n, float* out) {
  const int64_t d = kDim > 0 ? kDim : runtime_d;
  const int64_t row_bytes = d * int64_t(sizeof(W));
  const int64_t distance = prefetch_distance(row_bytes);
  for (int64_t j = 0; j < std::min(n, distance); ++j) prefetch_candidate(weight, bias, d, row_bytes, ids[j]);
  int64_t queue[4];
  int queued = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (j + distance < n) prefetch_candidate(weight, bias, d, row_bytes, ids[j + distance]);
    if (ids[j] < 0) {
      out[j] = -std::numeric_limits<float>::infinity();
      continue;
    }
    queue[queued] = j;
    if (++queued < 4) continue;
    float v[4];
    dot4_avx512<Load>(x, weight + int64_t(ids[queue[0]]) * d, weight + int64_t(ids[queue[1]]) * d,
                      weight + int64_t(ids[queue[2]]) * d, weight + int64_t(ids[queue[3]]) * d, d, v);
    for (int t = 0; t < 4; ++t)
      out[queue[t]] = bias ? v[t] + Load::Scalar::load(bias, ids[queue[t]]) : v[t];
    queued = 0;
  }
  for (int t = 0; t < queued; ++t) {
    const int32_t id = ids[queue[t]];
    const float v = dot_avx512<Load>(x, weight + int64_t(id) * d, d);
    out[queue[t]] = bias ? v + Load::Scalar::load(bias, id) : v;
  }
}

LSS_TARGET_AVX512 int64_t next_topk_candidate_avx512(const float* scores, const int32_t* ids, int64_t n,
                                                    float threshold) {
  const __m512 t = _mm512_set1_ps(threshold);
  const __m512i zero = _mm512_setzero_si512();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    // not-less-than, unordered: true for NaN, like the scalar test below.
    const __mmask16 keep = _mm512_cmp_ps_mask(_mm512_loadu_ps(scores + j), t, _CMP_NLT_UQ) &
                           _mm512_cmpge_epi32_mask(_mm512_loadu_si512(ids + j), zero);
    if (keep) return j + __builtin_ctz(keep);
  }
  for (; j < n; ++j)
    if (ids[j] >= 0 && !(scores[j] < threshold)) return j;
  return n;
}

// y[i] = fma(a, w[i], y[i]): one rounding per element, as the AVX2 axpy, so
// the two give the same bits whatever the vector width.
template <typename Load, typename W>
LSS_TARGET_AVX512 void axpy_avx512(float a, const W* __restrict w, float* __restrict y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, Load::load(w + i), _mm512_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = __builtin_fmaf(a, Load::Scalar::load(w, i), y[i]);
}

LSS_X86_WARNINGS_ON

template <typename A512, typename W>
RowKernels<float, W> avx512_row() {
  RowKernels<float, W> r;
  r.isa = "avx512";
  r.dot = &dot_avx512<A512, W>;
  r.dot4 = &dot4_avx512_rows<A512, W>;
  r.gathered = &gathered_dots_avx512<A512, W, 0>;
  r.gathered_d64 = &gathered_dots_avx512<A512, W, 64>;
  r.gathered_d128 = &gathered_dots_avx512<A512, W, 128>;
  r.gathered_d256 = &gathered_dots_avx512<A512, W, 256>;
  r.axpy = &axpy_avx512<A512, W>;
  return r;
}

}  // namespace

VectorKernels avx512_vector_kernels() {
  VectorKernels k = generic_vector_kernels();  // fp64
  k.name = "x86-64-v4 (AVX-512)";
  k.level = 4;
  k.f32 = avx512_row<Avx512F32, float>();
  k.bf16 = avx512_row<Avx512BF16, uint16_t>();
  k.f16 = avx512_row<Avx512F16, uint16_t>();
  k.next_topk_isa = "avx512";
  k.next_topk_candidate = &next_topk_candidate_avx512;
  return k;
}

}  // namespace lss::cpu

#endif  // LSS_HAVE_X86_KERNELS
