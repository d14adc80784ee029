#include "vector_math.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "lss/common.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define LSS_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LSS_MULTIVERSION
#endif

namespace lss::cpu {
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

template <typename Load, typename W>
inline float dot_impl(const float* __restrict x, const W* __restrict w, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * Load::load(w, i + j);
  }
  // Pairwise (tree) reduction of the lanes: lane j takes lane j + off for
  // off = 16, 8, 4, 2, 1. It vectorises (a sequential sum of 32 lanes was a
  // chain of 32 dependent adds, most of the cost of a d = 128 dot), and it is
  // exactly the order of a CUDA __shfl_down_sync tree.
  for (int off = kLanes / 2; off > 0; off /= 2)
    for (int j = 0; j < off; ++j) acc[j] += acc[j + off];
  float s = acc[0];
  for (; i < n; ++i) s += x[i] * Load::load(w, i);
  return s;
}

template <typename Load, typename W>
inline void axpy_impl(float a, const W* __restrict w, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * Load::load(w, i);
}

// Hand-written dot products for AVX-512 and AVX2. The generic dot_impl keeps
// its 32 partial sums in an array that GCC spills to the stack for the tree
// reduction (~65 ns per d = 128 dot, hot); these keep them in registers and
// reduce with shuffles in the same tree order (lane j += lane j + off for
// off = 16, 8, 4, 2, 1), so every ISA with FMA gives the same bits.
#if defined(__GNUC__) && defined(__x86_64__)
#define LSS_HAVE_X86_KERNELS 1
// GCC 12 flags the intrinsics' own _mm512_undefined_*() placeholders as
// "(may be) used uninitialized", and warns that returning __m512 from a
// function changes the ABI; both are internal to this file and harmless.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wpsabi"

#define LSS_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx2,fma,f16c")))
#define LSS_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

// Loads 16 (AVX-512) or 8 (AVX2) weights as fp32.
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

// Lanes 0..7 of an 8-wide vector: off = 4, 2, 1 of the tree.
LSS_TARGET_AVX2 inline float reduce8_tree(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));  // off 4
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));                                          // off 2
  s = _mm_add_ss(s, _mm_movehdup_ps(s));                                           // off 1
  return _mm_cvtss_f32(s);
}

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
// stack) made the loop ~2.4x slower than this on rows already in L1.
// kDim > 0 compiles it for that row length (the dot and prefetch loops
// unroll): at d = 128 that halved the time on L1-resident rows (20 -> 10 us
// for 2,000 rows, one thread) and took ~25% off cold ones.
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

template <typename Load, typename W>
LSS_TARGET_AVX2 inline float dot_avx2(const float* __restrict x, const W* __restrict w, int64_t n) {
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
#pragma GCC diagnostic pop
#endif

LSS_MULTIVERSION float dot_f32_generic(const float* x, const float* w, int64_t n) {
  return dot_impl<LoadF32>(x, w, n);
}
LSS_MULTIVERSION float dot_bf16_generic(const float* x, const uint16_t* w, int64_t n) {
  return dot_impl<LoadBF16>(x, w, n);
}
LSS_MULTIVERSION float dot_f16_generic(const float* x, const uint16_t* w, int64_t n) {
  return dot_impl<LoadF16>(x, w, n);
}

LSS_MULTIVERSION void axpy_f32(float a, const float* w, float* y, int64_t n) {
  axpy_impl<LoadF32>(a, w, y, n);
}
LSS_MULTIVERSION void axpy_bf16(float a, const uint16_t* w, float* y, int64_t n) {
  axpy_impl<LoadBF16>(a, w, y, n);
}
LSS_MULTIVERSION void axpy_f16(float a, const uint16_t* w, float* y, int64_t n) {
  axpy_impl<LoadF16>(a, w, y, n);
}

// The level of the hand-written dot kernels, picked once at load time: the
// best the CPU has (4 = AVX-512, 3 = AVX2 + FMA, 0 = the target_clones generic
// code), lowered by LSS_CPU_ISA=avx2|generic so that tests can run every path
// on one machine (tests/test_cpu_isa.py). The target_clones functions (axpy,
// the generic dots) keep their own per-CPU choice.
int cpu_level() {
#if defined(LSS_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  int level = __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 0;
  if (const char* forced = std::getenv("LSS_CPU_ISA")) {
    if (std::strcmp(forced, "avx2") == 0) level = std::min(level, 3);
    else if (std::strcmp(forced, "generic") == 0) level = 0;
  }
  return level;
#else
  return 0;
#endif
}

template <typename W>
using DotFn = float (*)(const float*, const W*, int64_t);

template <typename W, typename A512, typename A2>
DotFn<W> pick_dot(DotFn<W> generic) {
#if defined(LSS_HAVE_X86_KERNELS)
  const int level = cpu_level();
  if (level >= 4) return &dot_avx512<A512, W>;
  if (level >= 3) return &dot_avx2<A2, W>;
#endif
  return generic;
}

#if defined(LSS_HAVE_X86_KERNELS)
const DotFn<float> dot_f32 = pick_dot<float, Avx512F32, Avx2F32>(&dot_f32_generic);
const DotFn<uint16_t> dot_bf16 = pick_dot<uint16_t, Avx512BF16, Avx2BF16>(&dot_bf16_generic);
const DotFn<uint16_t> dot_f16 = pick_dot<uint16_t, Avx512F16, Avx2F16>(&dot_f16_generic);
#else
const DotFn<float> dot_f32 = &dot_f32_generic;
const DotFn<uint16_t> dot_bf16 = &dot_bf16_generic;
const DotFn<uint16_t> dot_f16 = &dot_f16_generic;
#endif

template <typename W>
using Dot4Fn = void (*)(const float*, const W* const[4], int64_t, float[4]);

// Without AVX-512 the four dots run one after the other (AVX2 has too few
// registers to interleave four 32-lane accumulators).
template <typename W>
void dot4_by_one(DotFn<W> one, const float* x, const W* const w[4], int64_t n, float out[4]) {
  for (int j = 0; j < 4; ++j) out[j] = one(x, w[j], n);
}

template <typename W, typename A512>
Dot4Fn<W> pick_dot4() {
#if defined(LSS_HAVE_X86_KERNELS)
  if (cpu_level() >= 4) return &dot4_avx512_rows<A512, W>;
#endif
  return nullptr;
}

#if defined(LSS_HAVE_X86_KERNELS)
const Dot4Fn<float> dot4_f32 = pick_dot4<float, Avx512F32>();
const Dot4Fn<uint16_t> dot4_bf16 = pick_dot4<uint16_t, Avx512BF16>();
const Dot4Fn<uint16_t> dot4_f16 = pick_dot4<uint16_t, Avx512F16>();
#else
const Dot4Fn<float> dot4_f32 = nullptr;
const Dot4Fn<uint16_t> dot4_bf16 = nullptr;
const Dot4Fn<uint16_t> dot4_f16 = nullptr;
#endif

template <typename W>
void dot4_dispatch(Dot4Fn<W> four, DotFn<W> one, const float* x, const W* const w[4], int64_t n,
                   float out[4]) {
  if (four) four(x, w, n, out);
  else dot4_by_one(one, x, w, n, out);
}

// gathered_dots below AVX-512, and for fp64: the same loop, one dot call per
// valid entry.
template <typename Load, typename Acc, typename W, typename Dot>
void gathered_dots_by_row(Dot one, const Acc* x, const W* weight, const W* bias, int64_t d, const int32_t* ids,
                          int64_t n, Acc* out) {
  const int64_t row_bytes = d * int64_t(sizeof(W));
  const int64_t distance = prefetch_distance(row_bytes);
  for (int64_t j = 0; j < std::min(n, distance); ++j) prefetch_candidate(weight, bias, d, row_bytes, ids[j]);
  for (int64_t j = 0; j < n; ++j) {
    if (j + distance < n) prefetch_candidate(weight, bias, d, row_bytes, ids[j + distance]);
    const int32_t id = ids[j];
    if (id < 0) {
      out[j] = -std::numeric_limits<Acc>::infinity();
      continue;
    }
    const Acc v = one(x, weight + int64_t(id) * d, d);
    out[j] = bias ? v + Load::load(bias, id) : v;
  }
}

template <typename W>
using GatheredFn = void (*)(const float*, const W*, const W*, int64_t, const int32_t*, int64_t, float*);

void gathered_f32_by_row(const float* x, const float* w, const float* b, int64_t d, const int32_t* ids,
                         int64_t n, float* out) {
  gathered_dots_by_row<LoadF32>(dot_f32, x, w, b, d, ids, n, out);
}
void gathered_bf16_by_row(const float* x, const uint16_t* w, const uint16_t* b, int64_t d, const int32_t* ids,
                          int64_t n, float* out) {
  gathered_dots_by_row<LoadBF16>(dot_bf16, x, w, b, d, ids, n, out);
}
void gathered_f16_by_row(const float* x, const uint16_t* w, const uint16_t* b, int64_t d, const int32_t* ids,
                         int64_t n, float* out) {
  gathered_dots_by_row<LoadF16>(dot_f16, x, w, b, d, ids, n, out);
}

// The gathered kernels of one weight type: `any` for every d, and versions
// compiled for the common hidden sizes (AVX-512 only; null otherwise).
template <typename W>
struct GatheredKernels {
  GatheredFn<W> any = nullptr;
  GatheredFn<W> d64 = nullptr, d128 = nullptr, d256 = nullptr;
  GatheredFn<W> for_dim(int64_t d) const {
    const GatheredFn<W> fixed = d == 64 ? d64 : d == 128 ? d128 : d == 256 ? d256 : nullptr;
    return fixed ? fixed : any;
  }
};

template <typename W, typename A512>
GatheredKernels<W> pick_gathered(GatheredFn<W> by_row) {
  GatheredKernels<W> k;
  k.any = by_row;
#if defined(LSS_HAVE_X86_KERNELS)
  if (cpu_level() >= 4) {
    k.any = &gathered_dots_avx512<A512, W, 0>;
    k.d64 = &gathered_dots_avx512<A512, W, 64>;
    k.d128 = &gathered_dots_avx512<A512, W, 128>;
    k.d256 = &gathered_dots_avx512<A512, W, 256>;
  }
#endif
  return k;
}

#if defined(LSS_HAVE_X86_KERNELS)
const GatheredKernels<float> gathered_f32 = pick_gathered<float, Avx512F32>(&gathered_f32_by_row);
const GatheredKernels<uint16_t> gathered_bf16 = pick_gathered<uint16_t, Avx512BF16>(&gathered_bf16_by_row);
const GatheredKernels<uint16_t> gathered_f16 = pick_gathered<uint16_t, Avx512F16>(&gathered_f16_by_row);
#else
const GatheredKernels<float> gathered_f32 = pick_gathered<float, void>(&gathered_f32_by_row);
const GatheredKernels<uint16_t> gathered_bf16 = pick_gathered<uint16_t, void>(&gathered_bf16_by_row);
const GatheredKernels<uint16_t> gathered_f16 = pick_gathered<uint16_t, void>(&gathered_f16_by_row);
#endif

int64_t next_topk_candidate_generic(const float* scores, const int32_t* ids, int64_t n, float threshold) {
  for (int64_t j = 0; j < n; ++j)
    if (ids[j] >= 0 && !(scores[j] < threshold)) return j;
  return n;
}

using NextCandidateFn = int64_t (*)(const float*, const int32_t*, int64_t, float);

NextCandidateFn pick_next_candidate() {
#if defined(LSS_HAVE_X86_KERNELS)
  if (cpu_level() >= 4) return &next_topk_candidate_avx512;
#endif
  return &next_topk_candidate_generic;
}

const NextCandidateFn next_candidate = pick_next_candidate();

}  // namespace

float dot(const float* x, const float* w, int64_t n) { return dot_f32(x, w, n); }
float dot(const float* x, const c10::BFloat16* w, int64_t n) {
  return dot_bf16(x, reinterpret_cast<const uint16_t*>(w), n);
}
float dot(const float* x, const c10::Half* w, int64_t n) {
  return dot_f16(x, reinterpret_cast<const uint16_t*>(w), n);
}
double dot(const double* x, const double* w, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * w[i];
  return s;
}

void dot4(const float* x, const float* const w[4], int64_t n, float out[4]) {
  dot4_dispatch(dot4_f32, dot_f32, x, w, n, out);
}
void dot4(const float* x, const c10::BFloat16* const w[4], int64_t n, float out[4]) {
  dot4_dispatch(dot4_bf16, dot_bf16, x, reinterpret_cast<const uint16_t* const*>(w), n, out);
}
void dot4(const float* x, const c10::Half* const w[4], int64_t n, float out[4]) {
  dot4_dispatch(dot4_f16, dot_f16, x, reinterpret_cast<const uint16_t* const*>(w), n, out);
}
void dot4(const double* x, const double* const w[4], int64_t n, double out[4]) {
  for (int j = 0; j < 4; ++j) out[j] = dot(x, w[j], n);
}

void gathered_dots(const float* x, const float* weight, const float* bias, int64_t d, const int32_t* ids,
                   int64_t n, float* out) {
  gathered_f32.for_dim(d)(x, weight, bias, d, ids, n, out);
}
void gathered_dots(const float* x, const c10::BFloat16* weight, const c10::BFloat16* bias, int64_t d,
                   const int32_t* ids, int64_t n, float* out) {
  gathered_bf16.for_dim(d)(x, reinterpret_cast<const uint16_t*>(weight), reinterpret_cast<const uint16_t*>(bias), d, ids, n,
                out);
}
void gathered_dots(const float* x, const c10::Half* weight, const c10::Half* bias, int64_t d, const int32_t* ids,
                   int64_t n, float* out) {
  gathered_f16.for_dim(d)(x, reinterpret_cast<const uint16_t*>(weight), reinterpret_cast<const uint16_t*>(bias), d, ids, n,
               out);
}
void gathered_dots(const double* x, const double* weight, const double* bias, int64_t d, const int32_t* ids,
                   int64_t n, double* out) {
  const auto dot_f64 = [](const double* a, const double* w, int64_t len) { return dot(a, w, len); };
  gathered_dots_by_row<LoadF64>(dot_f64, x, weight, bias, d, ids, n, out);
}

int64_t next_topk_candidate(const float* scores, const int32_t* ids, int64_t n, float threshold) {
  return next_candidate(scores, ids, n, threshold);
}

void axpy(float a, const float* w, float* y, int64_t n) { axpy_f32(a, w, y, n); }
void axpy(float a, const c10::BFloat16* w, float* y, int64_t n) {
  axpy_bf16(a, reinterpret_cast<const uint16_t*>(w), y, n);
}
void axpy(float a, const c10::Half* w, float* y, int64_t n) {
  axpy_f16(a, reinterpret_cast<const uint16_t*>(w), y, n);
}
void axpy(double a, const double* w, double* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * w[i];
}

int vector_level() { return cpu_level(); }

const char* vector_isa() {
  const bool forced = std::getenv("LSS_CPU_ISA") != nullptr;
  switch (cpu_level()) {
    case 4: return forced ? "x86-64-v4 (AVX-512), LSS_CPU_ISA set" : "x86-64-v4 (AVX-512)";
    case 3: return forced ? "x86-64-v3 (AVX2+FMA), LSS_CPU_ISA set" : "x86-64-v3 (AVX2+FMA)";
    default: return forced ? "generic (target_clones), LSS_CPU_ISA set" : "generic (target_clones)";
  }
}

}  // namespace lss::cpu
