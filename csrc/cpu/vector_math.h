// Row kernels of the CPU ops: dot products and axpy between an fp32 (or fp64)
// accumulator vector and a weight row stored as float / bfloat16 / float16.
// They live in their own translation unit, compiled per ISA with GCC's
// target_clones, so one wheel runs at AVX-512 speed where it can and still
// loads on an x86-64 without AVX.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace lss::cpu {

float dot(const float* x, const float* w, int64_t n);
float dot(const float* x, const c10::BFloat16* w, int64_t n);
float dot(const float* x, const c10::Half* w, int64_t n);
double dot(const double* x, const double* w, int64_t n);

// Four independent dots at once, out[j] = dot(x[j], w[j], n), bit-identical to
// four dot() calls: interleaving them keeps the FMA units busy while each
// one's reduction tree waits (1.3x on a d = 128 fp32 row, hot cache).
void dot4(const float* const x[4], const float* const w[4], int64_t n, float out[4]);
void dot4(const float* const x[4], const c10::BFloat16* const w[4], int64_t n, float out[4]);
void dot4(const float* const x[4], const c10::Half* const w[4], int64_t n, float out[4]);
void dot4(const double* const x[4], const double* const w[4], int64_t n, double out[4]);

// y[i] += a * w[i]
void axpy(float a, const float* w, float* y, int64_t n);
void axpy(float a, const c10::BFloat16* w, float* y, int64_t n);
void axpy(float a, const c10::Half* w, float* y, int64_t n);
void axpy(double a, const double* w, double* y, int64_t n);

// Name of the instruction set the dispatcher picked ("x86-64-v4", ...).
const char* vector_isa();

// Accumulator type: fp64 inputs accumulate in fp64, everything else in fp32.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

}  // namespace lss::cpu
