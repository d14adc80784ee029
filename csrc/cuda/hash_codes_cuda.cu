// CUDA kernel of hash_codes (host side: hash_codes_host.cpp; interface:
// launch.h).
#include "device_utils.cuh"

namespace lss::cuda {
namespace {

// One warp per (query, table); the K projections run one after another, each
// a warp dot in the CPU's summation order (so codes match the CPU bit for bit
// on an FMA CPU, projections within rounding of 0 included).
constexpr int kWarpsPerBlock = 8;

template <typename acc, typename scalar_t>
__global__ void hash_codes_kernel(const acc* __restrict__ x, const scalar_t* __restrict__ proj,
                                  int64_t B, int64_t d, int64_t L, int64_t K,
                                  int32_t* __restrict__ codes) {
  const int lane = threadIdx.x & 31;
  const int64_t e = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (e >= B * L) return;  // warp-uniform
  const int64_t b = e / L, l = e % L;
  int32_t code = 0;
  for (int64_t j = 0; j < K; ++j) {
    const acc p = warp_dot(x + b * d, proj + (l * K + j) * d, d, lane);
    code = set_code_bit(code, int(j), p);
  }
  if (lane == 0) codes[e] = code;
}

}  // namespace

// ============================================================== launchers
void hash_codes(DType proj_dtype, const void* x_acc, const void* proj, int64_t B, int64_t d,
                int64_t L, int64_t K, int32_t* codes, cudaStream_t stream) {
  if (B * L == 0) return;
  dispatch_dtype(proj_dtype, [&]<typename scalar_t>() {
    using acc = acc_of<scalar_t>;
    hash_codes_kernel<acc, scalar_t><<<grid_for(B * L, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
        static_cast<const acc*>(x_acc), static_cast<const scalar_t*>(proj), B, d, L, K, codes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lss::cuda
