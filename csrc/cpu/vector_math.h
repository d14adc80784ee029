// Row kernels of the CPU ops: dot products and axpy between an fp32 (or fp64)
// accumulator vector and a weight row stored as float / bfloat16 / float16.
// Each one goes through a table of kernels picked once, at load time, per
// instruction set (AVX-512, AVX2 + FMA, generic; vector_kernels.h and
// vector_math_<isa>.cpp), so one wheel runs at AVX-512 speed where it can and
// still loads on an x86-64 without AVX, and LSS_CPU_ISA=avx2|generic lowers
// every one of them.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace lss::cpu {

float dot(const float* x, const float* w, int64_t n);
float dot(const float* x, const c10::BFloat16* w, int64_t n);
float dot(const float* x, const c10::Half* w, int64_t n);
double dot(const double* x, const double* w, int64_t n);

// Four dots sharing x, out[j] = dot(x, w[j], n), bit-identical to four dot()
// calls: interleaving them keeps the FMA units busy while each one's
// reduction tree waits.
void dot4(const float* x, const float* const w[4], int64_t n, float out[4]);
void dot4(const float* x, const c10::BFloat16* const w[4], int64_t n, float out[4]);
void dot4(const float* x, const c10::Half* const w[4], int64_t n, float out[4]);
void dot4(const double* x, const double* const w[4], int64_t n, double out[4]);

// Logits of one query against a list of weight rows:
// out[j] = dot(x, W[ids[j]]) + bias[ids[j]] (no bias term when bias is null),
// -inf where ids[j] < 0. Bit-identical to dot() plus the bias in fp32 (fp64
// for double); ids must already be checked to be -1 or rows of W. The whole
// loop (prefetch ahead, four rows at a time) runs in the ISA-specific code.
void gathered_dots(const float* x, const float* weight, const float* bias, int64_t d, const int32_t* ids,
                   int64_t n, float* out);
void gathered_dots(const float* x, const c10::BFloat16* weight, const c10::BFloat16* bias, int64_t d,
                   const int32_t* ids, int64_t n, float* out);
void gathered_dots(const float* x, const c10::Half* weight, const c10::Half* bias, int64_t d, const int32_t* ids,
                   int64_t n, float* out);
void gathered_dots(const double* x, const double* weight, const double* bias, int64_t d, const int32_t* ids,
                   int64_t n, double* out);

// The first j in [0, n) with ids[j] >= 0 and !(scores[j] < threshold), or n:
// the entries a streaming top-k whose k-th best score is `threshold` must
// still look at (NaN passes, it ranks first). 16 at a time with AVX-512, so a
// streaming top-k skips the bulk of a row, which cannot enter, in a few
// vector compares.
int64_t next_topk_candidate(const float* scores, const int32_t* ids, int64_t n, float threshold);

// How far ahead to prefetch weight rows: the rows are random, so the hardware
// prefetcher cannot guess them. A few rows ahead is too close, 8-32 KB ahead
// (prefetcht1) was best and further gained nothing (docs/performance.md,
// "Measurements moved out of code comments"). So
// the distance is a byte budget, turned into rows per call.
constexpr int64_t kPrefetchBytes = 16 * 1024;

inline int64_t prefetch_distance(int64_t row_bytes) {
  return std::clamp<int64_t>(kPrefetchBytes / std::max<int64_t>(row_bytes, 1), 4, 64);
}

// Prefetch into L2 (prefetcht1, locality 2): L1 is too small to hold 16 KB of
// rows in flight next to the queries.
inline void prefetch_row(const void* p, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 2);
#else
  (void)p;
  (void)bytes;
#endif
}

// Prefetches candidate `id`'s weight row (and bias) unless it is padding.
template <typename W>
inline void prefetch_candidate(const W* weight, const W* bias, int64_t d, int64_t row_bytes, int32_t id) {
  if (id < 0) return;
  prefetch_row(weight + int64_t(id) * d, row_bytes);
  if (bias) prefetch_row(bias + id, 1);
}

// y[i] += a * w[i]: one rounding per element (an FMA) in the AVX2 and AVX-512
// tables, two (a product, then a sum) in the generic one on x86-64.
void axpy(float a, const float* w, float* y, int64_t n);
void axpy(float a, const c10::BFloat16* w, float* y, int64_t n);
void axpy(float a, const c10::Half* w, float* y, int64_t n);
void axpy(double a, const double* w, double* y, int64_t n);

// Name of the instruction set the dispatcher picked ("x86-64-v4 (AVX-512)",
// ...; ", LSS_CPU_ISA set" appended when that variable is set).
const char* vector_isa();

// Which table row each kernel came from, ("axpy_bf16", "avx2"), ... (the fp64
// row is the generic one in every table).
std::vector<std::pair<std::string, std::string>> vector_kernel_isas();

// The level it stands for: 4 = AVX-512 (x86-64-v4), 3 = AVX2 + FMA
// (x86-64-v3), 0 = generic, after LSS_CPU_ISA. Other kernel tables
// (int8_dots.cpp) pick their ISA from it, so one switch lowers them all.
int vector_level();

// True where the CPU multiplies bf16 natively (AVX-512 BF16, which every
// AMX-BF16 CPU has too) and LSS_CPU_ISA leaves AVX-512 on: the k-means
// assignment then screens centroids with a bf16 GEMM (partition/kmeans.py).
bool cpu_has_bf16_dot();

// Accumulator type: fp64 inputs accumulate in fp64, everything else in fp32.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

}  // namespace lss::cpu
