// CUDA launchers more than one op uses (interface: launch.h): the stable
// radix sort of (key, value) pairs behind build_tables (label ids by code)
// and the deterministic weight gradients of gathered_logits and
// bitmap_sparse_matmul (entries by label), and iota.
#include <cub/device/device_radix_sort.cuh>

#include "device_utils.cuh"

namespace lss::cuda {
namespace {

__global__ void iota_kernel(int32_t* v, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    v[i] = int32_t(i);
}

}  // namespace

// ============================================================== launchers
size_t radix_sort_pairs_temp_bytes(int64_t n, int end_bit) {
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), int(n), 0, end_bit));
  return bytes;
}

void radix_sort_pairs(void* temp, size_t temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                      const int32_t* values_in, int32_t* values_out, int64_t n, int end_bit,
                      cudaStream_t stream) {
  if (n == 0) return;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in,
                                                 values_out, int(n), 0, end_bit, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void iota_int32(int32_t* values, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  iota_kernel<<<grid_for(n, 256, 65536), 256, 0, stream>>>(values, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lss::cuda
