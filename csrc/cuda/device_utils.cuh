// Device-side helpers shared by the CUDA kernels: storage types and their
// conversions, arithmetic in the CPU kernels' order, the block-wide bitonic
// sort, and launch helpers. No torch header is included here on purpose (see
// launch.h); per-element logic shared with the CPU lives in lss/common.h.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "launch.h"
#include "lss/common.h"

namespace lss::cuda {

constexpr unsigned kFullMask = 0xFFFFFFFFu;

// ------------------------------------------------------------ storage types
// torch builds extensions with __CUDA_NO_HALF_CONVERSIONS__ and friends, so
// every conversion below is an explicit intrinsic.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_of = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(acc_of<T> v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename A> __device__ __forceinline__ A neg_inf() {
  return -std::numeric_limits<A>::infinity();
}
template <typename A> __device__ __forceinline__ A quiet_nan() {
  return std::numeric_limits<A>::quiet_NaN();
}

// Runs `body.template operator()<scalar_t>()` for the storage type of dtype.
template <typename F>
void dispatch_dtype(DType dtype, F&& body) {
  switch (dtype) {
    case DType::kFloat32: body.template operator()<float>(); break;
    case DType::kFloat64: body.template operator()<double>(); break;
    case DType::kFloat16: body.template operator()<__half>(); break;
    case DType::kBFloat16: body.template operator()<__nv_bfloat16>(); break;
  }
}

// --------------------------------------------- arithmetic in the CPU's order
// The CPU row kernels (csrc/cpu/vector_math.cpp) accumulate fp32 with fused
// multiply-adds (GCC contracts them on the x86-64-v3/v4 clones) and fp64 with
// a separate multiply and add (that routine is compiled for baseline x86-64).
// The CUDA kernels use the same operations in the same order, so on an FMA
// CPU the two backends agree bit for bit on dot products, hash codes and
// gradients (not on the tensor-core tile path, which sums in its own order).
__device__ __forceinline__ float madd(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double madd(double a, double b, double c) {
  return __dadd_rn(__dmul_rn(a, b), c);
}
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

// <x, w> for one warp, every lane returning the same value, summed exactly as
// lss::cpu::dot: kDotLanes partial sums over the full blocks of kDotLanes
// elements (lane j owns elements j, j + 32, ...), reduced as a tree (lane j +=
// lane j + off, off = 16 ... 1), then the tail added element by element.
static_assert(kDotLanes == 32, "the warp dot maps one CPU lane to one CUDA lane");
template <typename W>
__device__ __forceinline__ float warp_dot(const float* __restrict__ x, const W* __restrict__ w,
                                          int64_t d, int lane) {
  const int64_t full = d - d % kDotLanes;
  float part = 0.0f;
#pragma unroll 4
  for (int64_t i = lane; i < full; i += kDotLanes) part = madd(x[i], to_acc(w[i]), part);
  // Tree reduction in lss::cpu::dot's order: lane j += lane j + off.
#pragma unroll
  for (int off = kDotLanes / 2; off > 0; off >>= 1) part = add_rn(part, __shfl_down_sync(kFullMask, part, off));
  float s = __shfl_sync(kFullMask, part, 0);
  const int rem = int(d - full);
  if (rem > 0) {  // warp-uniform
    float xt = 0.0f, wt = 0.0f;
    if (lane < rem) {
      xt = x[full + lane];
      wt = to_acc(w[full + lane]);
    }
    for (int j = 0; j < rem; ++j)
      s = madd(__shfl_sync(kFullMask, xt, j), __shfl_sync(kFullMask, wt, j), s);
  }
  return s;
}
// fp64: lss::cpu::dot is a plain sequential loop; lanes form the products in
// parallel and the sum runs in element order.
__device__ __forceinline__ double warp_dot(const double* __restrict__ x,
                                           const double* __restrict__ w, int64_t d, int lane) {
  double s = 0.0;
  for (int64_t base = 0; base < d; base += 32) {
    const int64_t i = base + lane;
    const double p = i < d ? __dmul_rn(x[i], w[i]) : 0.0;
    const int n = d - base < 32 ? int(d - base) : 32;
    for (int j = 0; j < n; ++j) s = __dadd_rn(s, __shfl_sync(kFullMask, p, j));
  }
  return s;
}

// ----------------------------------------------------------- block helpers
__host__ __device__ __forceinline__ int64_t next_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

__device__ __forceinline__ void flag_error(unsigned long long* status, unsigned long long bit) {
  atomicOr(status + kStatusError, bit);
}

// Block-wide bitonic sort of n (a power of two) elements, ascending under
// less(i, j); swap(i, j) exchanges two elements. Works on shared or global
// memory (__syncthreads orders both within a block). Every thread of the
// block must call it; it ends with a barrier.
template <typename Less, typename Swap>
__device__ void block_bitonic_sort(int64_t n, Less less, Swap swap) {
  const int64_t half = n >> 1;
  for (int64_t k = 2; k <= n; k <<= 1) {
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
      for (int64_t t = threadIdx.x; t < half; t += blockDim.x) {
        const int64_t i = 2 * t - (t & (j - 1));  // t with a 0 inserted at bit log2(j)
        const int64_t p = i + j;
        const bool ascending = (i & k) == 0;
        if (less(p, i) == ascending) swap(i, p);
      }
      __syncthreads();
    }
  }
  if (n < 2) __syncthreads();
}

inline unsigned grid_for(int64_t work, int64_t per_block, int64_t cap = int64_t(1) << 30) {
  int64_t g = (work + per_block - 1) / per_block;
  if (g > cap) g = cap;
  return unsigned(g < 1 ? 1 : g);
}

}  // namespace lss::cuda
