// Host side of hash_codes on CUDA (kernel: hash_codes_cuda.cu; interface:
// launch.h; shared host helpers: host_utils.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host_utils.h"

namespace lss::cuda {
namespace {

at::Tensor hash_codes_cuda(const at::Tensor& x, const at::Tensor& proj) {
  check_hash_codes(x, proj);
  check_cuda("hash_codes", {&x, &proj});
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), d = x.size(1), L = proj.size(0), K = proj.size(1);
  at::Tensor codes = at::empty({B, L}, x.options().dtype(at::kInt));
  if (B == 0 || L == 0) return codes;
  const DType dt = dtype_of("hash_codes", x);
  const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
  const at::Tensor pc = proj.contiguous();
  hash_codes(dt, xa.data_ptr(), pc.data_ptr(), B, d, L, K, codes.data_ptr<int32_t>(),
             current_stream());
  return codes;
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("hash_codes", &hash_codes_cuda);
}

}  // namespace lss::cuda
