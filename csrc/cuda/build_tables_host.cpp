// Host side of build_tables on CUDA (kernels: build_tables_cuda.cu and the
// radix sort of common_cuda.cu; interface: launch.h; shared host helpers:
// host_utils.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host_utils.h"

namespace lss::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> build_tables_cuda(const at::Tensor& codes, int64_t bits) {
  check_build_tables(codes, bits);
  check_cuda("build_tables", {&codes});
  const c10::cuda::CUDAGuard guard(codes.device());
  const int64_t N = codes.size(0), L = codes.size(1), buckets = int64_t(1) << bits;
  const cudaStream_t stream = current_stream();
  at::Tensor offsets = at::zeros({L, buckets + 1}, codes.options());
  at::Tensor items = at::empty({L, N}, codes.options());
  if (L == 0) return {offsets, items};
  at::Tensor status = new_status(codes);
  const at::Tensor cc = codes.contiguous();
  build_offsets(cc.data_ptr<int32_t>(), N, L, int(bits), offsets.data_ptr<int32_t>(),
                status_ptr(status), stream);
  if (N > 0) {
    // Per table, a stable radix sort of the label ids 0..N-1 by code: each
    // bucket comes out in ascending label order.
    const at::Tensor by_table = cc.t().contiguous();  // [L, N]
    at::Tensor ids = at::empty({N}, codes.options());
    at::Tensor keys_out = at::empty({N}, codes.options());
    iota_int32(ids.data_ptr<int32_t>(), N, stream);
    const size_t temp_bytes = radix_sort_pairs_temp_bytes(N, int(bits));
    at::Tensor temp = at::empty({int64_t(temp_bytes) + 1}, codes.options().dtype(at::kByte));
    for (int64_t l = 0; l < L; ++l)
      radix_sort_pairs(temp.data_ptr(), temp_bytes, as_u32(by_table) + l * N, as_u32(keys_out),
                       ids.data_ptr<int32_t>(), items.data_ptr<int32_t>() + l * N, N, int(bits),
                       stream);
  }
  TORCH_CHECK_VALUE(read_status(status)[kStatusError] == 0, "build_tables: codes values must be in [0, ", buckets,
                    ") (0 <= code < 2^bits, bits = ", bits, ")");
  return {offsets, items};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("build_tables", &build_tables_cuda);
}

}  // namespace lss::cuda
