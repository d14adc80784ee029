// The generic row kernels (vector_kernels.h): plain C++ for the baseline
// instruction set, which on x86-64 has no FMA, so a product and its sum are
// rounded separately here (tests/test_cpu_isa.py checks axpy for it). The
// compiler vectorises them for SSE2 where it can. Also the fp64 row, which
// every table uses: one sequential sum per dot, the same bits everywhere.
#include "vector_kernels.h"

namespace lss::cpu {
namespace {

template <typename Load, typename W>
float dot_generic(const float* __restrict x, const W* __restrict w, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * Load::load(w, i + j);
  }
  // Pairwise (tree) reduction of the lanes: lane j takes lane j + off for
  // off = 16, 8, 4, 2, 1. It vectorises (a sequential sum of 32 lanes was a
  // chain of 32 dependent adds, most of the cost of a d = 128 dot), and it is
  // exactly the order of the AVX kernels and of a CUDA __shfl_down_sync tree.
  for (int off = kLanes / 2; off > 0; off /= 2)
    for (int j = 0; j < off; ++j) acc[j] += acc[j + off];
  float s = acc[0];
  for (; i < n; ++i) s += x[i] * Load::load(w, i);
  return s;
}

template <typename Load, typename W>
void axpy_generic(float a, const W* __restrict w, float* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * Load::load(w, i);
}

int64_t next_topk_candidate_generic(const float* scores, const int32_t* ids, int64_t n, float threshold) {
  for (int64_t j = 0; j < n; ++j)
    if (ids[j] >= 0 && !(scores[j] < threshold)) return j;
  return n;
}

double dot_f64(const double* x, const double* w, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i] * w[i];
  return s;
}

void axpy_f64(double a, const double* w, double* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * w[i];
}

template <typename Load, typename W>
RowKernels<float, W> generic_row() {
  RowKernels<float, W> r;
  r.isa = "generic";
  r.dot = &dot_generic<Load, W>;
  r.dot4 = &dot4_by_one<float, W, &dot_generic<Load, W>>;
  r.gathered = &gathered_dots_by_row<Load, float, W, &dot_generic<Load, W>>;
  r.axpy = &axpy_generic<Load, W>;
  return r;
}

}  // namespace

VectorKernels generic_vector_kernels() {
  VectorKernels k;
#if defined(LSS_HAVE_X86_KERNELS)
  k.name = "generic (baseline x86-64)";
#else
  k.name = "generic";
#endif
  k.level = 0;
  k.f32 = generic_row<LoadF32, float>();
  k.bf16 = generic_row<LoadBF16, uint16_t>();
  k.f16 = generic_row<LoadF16, uint16_t>();
  k.f64.isa = "generic";
  k.f64.dot = &dot_f64;
  k.f64.dot4 = &dot4_by_one<double, double, &dot_f64>;
  k.f64.gathered = &gathered_dots_by_row<LoadF64, double, double, &dot_f64>;
  k.f64.axpy = &axpy_f64;
  k.next_topk_isa = "generic";
  k.next_topk_candidate = &next_topk_candidate_generic;
  return k;
}

}  // namespace lss::cpu
