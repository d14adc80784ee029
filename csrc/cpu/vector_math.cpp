#include "vector_math.h"

#include <cstring>

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

LSS_MULTIVERSION float dot_f32(const float* x, const float* w, int64_t n) {
  return dot_impl<LoadF32>(x, w, n);
}
LSS_MULTIVERSION float dot_bf16(const float* x, const uint16_t* w, int64_t n) {
  return dot_impl<LoadBF16>(x, w, n);
}
LSS_MULTIVERSION float dot_f16(const float* x, const uint16_t* w, int64_t n) {
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

const char* vector_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 baseline";
#else
  return "compiler default";
#endif
}

}  // namespace lss::cpu
