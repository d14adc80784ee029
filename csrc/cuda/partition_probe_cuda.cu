// CUDA kernels of partition_probe (host side: partition_probe_host.cpp,
// interface: launch.h).
//
// Algorithm
//  1. partition_scores_kernel: one warp per (query b, partition p) computes
//     <x[b], centroids[p]> with lss::cuda::warp_dot (the CPU dot product's
//     summation order: 32 lane partial sums with fused multiply-adds, a tree
//     reduction, then the tail; fp64 in element order), adds the bias and
//     stores the score in canonical form (NaN -> -inf, -0.0 -> +0.0) in a
//     [B, P] buffer of the accumulator type.
//  2. probe_select_kernel: one block per query loads its P (score, p) pairs
//     into shared memory (or, for P above the shared-memory capacity, into
//     its slice of global scratch), pads to a power of two with (-inf,
//     INT32_MAX), sorts them with a block bitonic sort under "larger score
//     first, then smaller p" and writes the first nprobe p. Padding sorts
//     after every real pair (its p is larger than any real p, and no score
//     is below -inf), and nprobe <= P, so no padding is ever written.
// Every read is in bounds by construction (no data-dependent addressing), so
// partition_probe needs no status word.
#include "device_utils.cuh"
#include "launch.h"

namespace lss::cuda {
namespace {

constexpr int kScoreWarps = 8;
constexpr int kSelectThreads = 256;
constexpr int32_t kPadProbe = 0x7FFFFFFF;

template <typename A> __device__ __forceinline__ A canonical(A s) {
  if (s != s) return neg_inf<A>();
  return s == A(0) ? A(0) : s;
}

template <typename acc, typename scalar_t>
__global__ void partition_scores_kernel(const acc* __restrict__ x, const scalar_t* __restrict__ c,
                                        const scalar_t* __restrict__ bias, int64_t B, int64_t d,
                                        int64_t P, acc* __restrict__ scores) {
  const int lane = threadIdx.x & 31;
  const int64_t e = int64_t(blockIdx.x) * kScoreWarps + (threadIdx.x >> 5);
  if (e >= B * P) return;  // warp-uniform
  const int64_t b = e / P, p = e % P;
  acc s = warp_dot(x + b * d, c + p * d, d, lane);
  if (bias != nullptr) s = add_rn(s, to_acc(bias[p]));
  if (lane == 0) scores[e] = canonical(s);
}

template <typename acc>
__device__ __forceinline__ bool probe_before(acc sa, int32_t pa, acc sb, int32_t pb) {
  return sa > sb || (sa == sb && pa < pb);
}

template <typename acc>
__global__ void __launch_bounds__(kSelectThreads)
probe_select_kernel(const acc* __restrict__ scores, int64_t P, int64_t nprobe, int64_t capacity,
                    unsigned char* scratch, size_t row_bytes, int64_t r_begin,
                    int32_t* __restrict__ probes) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t b = r_begin + blockIdx.x;
  unsigned char* base = scratch == nullptr ? smem_raw : scratch + size_t(blockIdx.x) * row_bytes;
  acc* s = reinterpret_cast<acc*>(base);
  int32_t* p = reinterpret_cast<int32_t*>(base + size_t(capacity) * sizeof(acc));
  const int64_t n = next_pow2(P);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const bool real = i < P;
    s[i] = real ? scores[b * P + i] : neg_inf<acc>();
    p[i] = real ? int32_t(i) : kPadProbe;
  }
  __syncthreads();
  block_bitonic_sort(
      n,
      // "less" is the output order: better pairs first.
      [s, p](int64_t a, int64_t c) { return probe_before(s[a], p[a], s[c], p[c]); },
      [s, p](int64_t a, int64_t c) {
        const acc ts = s[a];
        s[a] = s[c];
        s[c] = ts;
        const int32_t tp = p[a];
        p[a] = p[c];
        p[c] = tp;
      });
  for (int64_t i = threadIdx.x; i < nprobe; i += blockDim.x) probes[b * nprobe + i] = p[i];
}

template <typename acc> size_t pair_bytes() { return sizeof(acc) + sizeof(int32_t); }

size_t pair_bytes_of(DType dtype) {
  return dtype == DType::kFloat64 ? pair_bytes<double>() : pair_bytes<float>();
}

}  // namespace

// ============================================================== launchers
void partition_scores(DType dtype, const void* x_acc, const void* centroids, const void* bias,
                      int64_t B, int64_t d, int64_t P, void* scores, cudaStream_t stream) {
  if (B * P == 0) return;
  dispatch_dtype(dtype, [&]<typename scalar_t>() {
    using acc = acc_of<scalar_t>;
    partition_scores_kernel<acc, scalar_t>
        <<<grid_for(B * P, kScoreWarps), kScoreWarps * 32, 0, stream>>>(
            static_cast<const acc*>(x_acc), static_cast<const scalar_t*>(centroids),
            static_cast<const scalar_t*>(bias), B, d, P, static_cast<acc*>(scores));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

int64_t probe_smem_capacity(DType dtype) {
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t per = int64_t(pair_bytes_of(dtype));
  int64_t cap = 16384;
  while (cap > 32 && cap * per + 1024 > optin) cap >>= 1;
  return cap;
}

size_t probe_scratch_bytes_per_row(DType dtype, int64_t capacity) {
  // 16-byte multiple so every row's scores stay aligned.
  return (size_t(capacity) * pair_bytes_of(dtype) + 15) & ~size_t(15);
}

void probe_select(DType dtype, const void* scores, int64_t B, int64_t P, int64_t nprobe,
                  int64_t capacity, void* scratch, int64_t r_begin, int64_t r_end,
                  int32_t* probes, cudaStream_t stream) {
  if (r_end <= r_begin || P == 0) return;
  (void)B;
  auto run = [&](auto tag) {
    using acc = decltype(tag);
    const size_t row_bytes = probe_scratch_bytes_per_row(dtype, capacity);
    size_t smem = 0;
    if (scratch == nullptr) {
      smem = size_t(capacity) * pair_bytes<acc>();
      if (smem > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(probe_select_kernel<acc>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    }
    probe_select_kernel<acc><<<unsigned(r_end - r_begin), kSelectThreads, smem, stream>>>(
        static_cast<const acc*>(scores), P, nprobe, capacity,
        static_cast<unsigned char*>(scratch), row_bytes, r_begin, probes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (dtype == DType::kFloat64)
    run(double{});
  else
    run(float{});
}

}  // namespace lss::cuda
