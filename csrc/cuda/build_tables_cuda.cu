// CUDA kernels of build_tables: the bucket histogram and its scan into
// offsets (host side: build_tables_host.cpp, which sorts the label ids into
// the buckets with common_cuda.cu's radix sort; interface: launch.h).
#include <cub/block/block_scan.cuh>

#include "device_utils.cuh"

namespace lss::cuda {
namespace {

__global__ void histogram_kernel(const int32_t* __restrict__ codes, int64_t N, int64_t L,
                                 int64_t buckets, int32_t* __restrict__ offsets,
                                 unsigned long long* status) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < N * L;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = codes[e], l = e % L;
    if (c < 0 || c >= buckets) {
      flag_error(status, kBadCode);
      continue;
    }
    atomicAdd(offsets + l * (buckets + 1) + c + 1, 1);
  }
}

// In-place inclusive scan of `rows` rows of `len` elements (stride `stride`),
// one block per row, in chunks of the block size.
constexpr int kScanThreads = 512;
template <typename T>
__global__ void __launch_bounds__(kScanThreads) scan_rows_kernel(T* data, int64_t len, int64_t stride) {
  using Scan = cub::BlockScan<T, kScanThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ T carry;
  T* row = data + int64_t(blockIdx.x) * stride;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < len; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    T v = i < len ? row[i] : T(0), total;
    Scan(tmp).InclusiveSum(v, v, total);
    const T c = carry;
    if (i < len) row[i] = v + c;
    __syncthreads();
    if (threadIdx.x == 0) carry = c + total;
    __syncthreads();
  }
}

}  // namespace

// ============================================================== launchers
void build_offsets(const int32_t* codes, int64_t N, int64_t L, int bits, int32_t* offsets,
                   unsigned long long* status, cudaStream_t stream) {
  if (L == 0) return;
  const int64_t buckets = int64_t(1) << bits;
  if (N > 0) {
    histogram_kernel<<<grid_for(N * L, 256, 65536), 256, 0, stream>>>(codes, N, L, buckets,
                                                                     offsets, status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  scan_rows_kernel<int32_t><<<unsigned(L), kScanThreads, 0, stream>>>(offsets, buckets + 1,
                                                                      buckets + 1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lss::cuda
