// The row kernels of vector_math.h, dispatched through one table
// (vector_kernels.h) chosen once, on first use: the best the CPU has
// (AVX-512, AVX2 + FMA, generic), lowered by LSS_CPU_ISA=avx2|generic so that
// tests can run every path on one machine (tests/test_cpu_isa.py).
#include "vector_math.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "vector_kernels.h"

namespace lss::cpu {
namespace {

const char* forced_isa() { return std::getenv("LSS_CPU_ISA"); }

// 4 = AVX-512 (x86-64-v4), 3 = AVX2 + FMA (x86-64-v3), 0 = generic, after
// LSS_CPU_ISA (which only lowers it; other values, such as int8_dots.cpp's
// avx512bw, leave it alone).
int cpu_level() {
#if defined(LSS_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  int level = __builtin_cpu_supports("x86-64-v4") ? 4 : __builtin_cpu_supports("x86-64-v3") ? 3 : 0;
  if (const char* forced = forced_isa()) {
    if (std::strcmp(forced, "avx2") == 0) level = std::min(level, 3);
    else if (std::strcmp(forced, "generic") == 0) level = 0;
  }
  return level;
#else
  return 0;
#endif
}

VectorKernels pick_vector_kernels() {
#if defined(LSS_HAVE_X86_KERNELS)
  const int level = cpu_level();
  if (level >= 4) return avx512_vector_kernels();
  if (level >= 3) return avx2_vector_kernels();
#endif
  return generic_vector_kernels();
}

const uint16_t* bits(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
const uint16_t* bits(const c10::Half* p) { return reinterpret_cast<const uint16_t*>(p); }
const uint16_t* const* bits(const c10::BFloat16* const* p) { return reinterpret_cast<const uint16_t* const*>(p); }
const uint16_t* const* bits(const c10::Half* const* p) { return reinterpret_cast<const uint16_t* const*>(p); }

}  // namespace

// A function-local static: int8_dots.cpp asks for vector_level() while its own
// table is built at load time, possibly before this file's statics exist.
const VectorKernels& vector_kernels() {
  static const VectorKernels k = pick_vector_kernels();
  return k;
}

float dot(const float* x, const float* w, int64_t n) { return vector_kernels().f32.dot(x, w, n); }
float dot(const float* x, const c10::BFloat16* w, int64_t n) { return vector_kernels().bf16.dot(x, bits(w), n); }
float dot(const float* x, const c10::Half* w, int64_t n) { return vector_kernels().f16.dot(x, bits(w), n); }
double dot(const double* x, const double* w, int64_t n) { return vector_kernels().f64.dot(x, w, n); }

void dot4(const float* x, const float* const w[4], int64_t n, float out[4]) {
  vector_kernels().f32.dot4(x, w, n, out);
}
void dot4(const float* x, const c10::BFloat16* const w[4], int64_t n, float out[4]) {
  vector_kernels().bf16.dot4(x, bits(w), n, out);
}
void dot4(const float* x, const c10::Half* const w[4], int64_t n, float out[4]) {
  vector_kernels().f16.dot4(x, bits(w), n, out);
}
void dot4(const double* x, const double* const w[4], int64_t n, double out[4]) {
  vector_kernels().f64.dot4(x, w, n, out);
}

void gathered_dots(const float* x, const float* weight, const float* bias, int64_t d, const int32_t* ids,
                   int64_t n, float* out) {
  vector_kernels().f32.gathered_for(d)(x, weight, bias, d, ids, n, out);
}
void gathered_dots(const float* x, const c10::BFloat16* weight, const c10::BFloat16* bias, int64_t d,
                   const int32_t* ids, int64_t n, float* out) {
  vector_kernels().bf16.gathered_for(d)(x, bits(weight), bits(bias), d, ids, n, out);
}
void gathered_dots(const float* x, const c10::Half* weight, const c10::Half* bias, int64_t d, const int32_t* ids,
                   int64_t n, float* out) {
  vector_kernels().f16.gathered_for(d)(x, bits(weight), bits(bias), d, ids, n, out);
}
void gathered_dots(const double* x, const double* weight, const double* bias, int64_t d, const int32_t* ids,
                   int64_t n, double* out) {
  vector_kernels().f64.gathered_for(d)(x, weight, bias, d, ids, n, out);
}

int64_t next_topk_candidate(const float* scores, const int32_t* ids, int64_t n, float threshold) {
  return vector_kernels().next_topk_candidate(scores, ids, n, threshold);
}

void axpy(float a, const float* w, float* y, int64_t n) { vector_kernels().f32.axpy(a, w, y, n); }
void axpy(float a, const c10::BFloat16* w, float* y, int64_t n) { vector_kernels().bf16.axpy(a, bits(w), y, n); }
void axpy(float a, const c10::Half* w, float* y, int64_t n) { vector_kernels().f16.axpy(a, bits(w), y, n); }
void axpy(double a, const double* w, double* y, int64_t n) { vector_kernels().f64.axpy(a, w, y, n); }

int vector_level() { return vector_kernels().level; }

bool cpu_has_bf16_dot() {
#if defined(LSS_HAVE_X86_KERNELS)
  return vector_level() >= 4 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

const char* vector_isa() {
  static const std::string name =
      std::string(vector_kernels().name) + (forced_isa() != nullptr ? ", LSS_CPU_ISA set" : "");
  return name.c_str();
}

std::vector<std::pair<std::string, std::string>> vector_kernel_isas() {
  const VectorKernels& k = vector_kernels();
  std::vector<std::pair<std::string, std::string>> out;
  const std::pair<const char*, const char*> rows[] = {
      {"f32", k.f32.isa}, {"bf16", k.bf16.isa}, {"f16", k.f16.isa}, {"f64", k.f64.isa}};
  for (const auto& [dtype, isa] : rows)
    for (const char* kernel : {"dot", "dot4", "gathered_dots", "axpy"})
      out.emplace_back(std::string(kernel) + "_" + dtype, isa);
  out.emplace_back("next_topk_candidate", k.next_topk_isa);
  return out;
}

}  // namespace lss::cpu
