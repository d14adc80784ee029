// Host side of partition_probe on CUDA (kernels: partition_probe_cuda.cu;
// interface: launch.h; shared host helpers: host_utils.h): argument checks
// (lss/arg_checks.h, the preconditions of lsskernels/_checks.py), the device
// guard, the current stream, allocation through the caching allocator.
// (partition_predict_topk is a composite of the partition ops and the logits
// / top-k ops: no CUDA kernel of its own.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "host_utils.h"

namespace lss::cuda {
namespace {

// The shared checks (lss/arg_checks.h), then the devices.
void check_partition_probe(const at::Tensor& x, const at::Tensor& centroids,
                           const c10::optional<at::Tensor>& bias, int64_t nprobe) {
  lss::check_partition_probe(x, centroids, bias, nprobe);
  if (bias.has_value()) {
    check_cuda("partition_probe", {&x, &centroids, &*bias});
  } else {
    check_cuda("partition_probe", {&x, &centroids});
  }
}

at::Tensor partition_probe_cuda(const at::Tensor& x, const at::Tensor& centroids,
                                const c10::optional<at::Tensor>& centroid_bias, int64_t nprobe) {
  check_partition_probe(x, centroids, centroid_bias, nprobe);
  const char* op = "partition_probe";
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = x.size(0), d = x.size(1), P = centroids.size(0);
  at::Tensor probes = at::empty({B, nprobe}, x.options().dtype(at::kInt));
  if (B == 0) return probes;
  const DType dt = dtype_of(op, x);
  const at::ScalarType acc = acc_type(x.scalar_type());
  const at::Tensor xa = x.to(acc).contiguous(), cc = centroids.contiguous();
  at::Tensor bc;
  if (centroid_bias.has_value()) bc = centroid_bias->contiguous();
  at::Tensor scores = at::empty({B, P}, x.options().dtype(acc));
  partition_scores(dt, xa.data_ptr(), cc.data_ptr(), raw(bc), B, d, P, scores.data_ptr(), stream);
  const int64_t n = next_pow2_host(P);
  const int64_t smem_cap = probe_smem_capacity(dt);
  if (n <= smem_cap) {
    probe_select(dt, scores.data_ptr(), B, P, nprobe, n, nullptr, 0, B, probes.data_ptr<int32_t>(),
                 stream);
    return probes;
  }
  // P above the shared-memory capacity: sort in global scratch, <= 256 MiB of rows at a time.
  TORCH_CHECK_VALUE(n <= (int64_t(1) << 30), op, ": P = ", P, " partitions is too many");
  const int64_t per_row = int64_t(probe_scratch_bytes_per_row(dt, n));
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 28) / per_row);
  at::Tensor scratch = at::empty({std::min(rows, B) * per_row}, x.options().dtype(at::kByte));
  for (int64_t r0 = 0; r0 < B; r0 += rows)
    probe_select(dt, scores.data_ptr(), B, P, nprobe, n, scratch.data_ptr(), r0,
                 std::min(B, r0 + rows), probes.data_ptr<int32_t>(), stream);
  return probes;
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("partition_probe", &partition_probe_cuda);
}

}  // namespace lss::cuda
