// Host side of topk_gathered and topk_packed on CUDA (kernels: topk_cuda.cu;
// interface: launch.h; shared host helpers: host_utils.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "host_utils.h"

namespace lss::cuda {
namespace {

// Runs a top-k launcher over all rows: shared-memory buffers when
// 2 k' + kTopkThreads fits (k' = k capped by the most candidates a row can
// have), else global scratch, in chunks of at most 256 MiB.
template <typename Launch>
void run_topk(const char* op, DType dt, int64_t B, int64_t k, int64_t max_per_row,
              const at::Tensor& like, Launch&& launch) {
  if (B == 0) return;
  const int64_t kk = std::min(k, std::max<int64_t>(max_per_row, 1));
  const int64_t smem_cap = topk_smem_capacity(dt);
  if (2 * kk + kTopkThreads <= smem_cap) {
    launch(smem_cap, nullptr, int64_t(0), B);
    return;
  }
  const int64_t cap = next_pow2_host(2 * kk + kTopkThreads);
  TORCH_CHECK_VALUE(cap <= (int64_t(1) << 30), op, ": k = ", k, " is too large");
  const int64_t per_row = int64_t(topk_scratch_bytes_per_row(dt, cap));
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 28) / per_row);
  at::Tensor scratch = at::empty({std::min(rows, B) * per_row}, like.options().dtype(at::kByte));
  for (int64_t r0 = 0; r0 < B; r0 += rows) launch(cap, scratch.data_ptr(), r0, std::min(B, r0 + rows));
}

std::tuple<at::Tensor, at::Tensor> topk_gathered_cuda(const at::Tensor& logits,
                                                      const at::Tensor& ids, int64_t k) {
  const char* op = "topk_gathered";
  check_topk_gathered(logits, ids, k);
  check_cuda(op, {&logits, &ids});
  const DType dt = dtype_of(op, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = logits.size(0), M = logits.size(1);
  at::Tensor scores = at::empty({B, k}, logits.options());
  at::Tensor labels = at::empty({B, k}, logits.options().dtype(at::kLong));
  if (B == 0) return {scores, labels};
  const at::Tensor lc = logits.contiguous(), ic = ids.contiguous();
  at::Tensor status = new_status(logits);
  run_topk(op, dt, B, k, M, logits, [&](int64_t cap, void* scratch, int64_t r0, int64_t r1) {
    topk_gathered(dt, lc.data_ptr(), ic.data_ptr<int32_t>(), B, M, k, cap, scratch, r0, r1,
                  scores.data_ptr(), labels.data_ptr<int64_t>(), status_ptr(status), stream);
  });
  if (!async_errors())
    TORCH_CHECK_VALUE(read_status(status)[kStatusError] == 0,
                      "topk_gathered: ids must be -1 (padding) or >= 0");
  return {scores, labels};
}

std::tuple<at::Tensor, at::Tensor> topk_packed_cuda(const at::Tensor& values,
                                                    const at::Tensor& row_ptr,
                                                    const at::Tensor& bitmap, int64_t k) {
  const char* op = "topk_packed";
  check_topk_packed(values, row_ptr, bitmap, k);
  const int64_t B = bitmap.size(0), W = bitmap.size(1);
  TORCH_CHECK_VALUE(W < (int64_t(1) << 26), "topk_packed: the CUDA kernel supports label ids < 2^31 "
              "(bitmap.size(1) < 2^26), got ", W, " words");
  check_cuda(op, {&values, &row_ptr, &bitmap});
  const DType dt = dtype_of(op, values);
  const c10::cuda::CUDAGuard guard(values.device());
  const cudaStream_t stream = current_stream();
  const at::Tensor vc = values.contiguous(), rc = row_ptr.contiguous(), bc = bitmap.contiguous();
  at::Tensor scores = at::empty({B, k}, values.options());
  at::Tensor labels = at::empty({B, k}, values.options().dtype(at::kLong));
  if (B == 0) {  // no row to check it: row_ptr = [0] and no values
    TORCH_CHECK_VALUE(rc.item<int64_t>() == 0 && values.numel() == 0,
                      "topk_packed: row_ptr must start at 0 and end at values.numel() = ", values.numel());
    return {scores, labels};
  }
  at::Tensor status = new_status(values);
  run_topk(op, dt, B, k, W * 32, values, [&](int64_t cap, void* scratch, int64_t r0, int64_t r1) {
    topk_packed(dt, vc.data_ptr(), vc.numel(), rc.data_ptr<int64_t>(), bc.data_ptr<int32_t>(), B,
                W, k, cap, scratch, r0, r1, scores.data_ptr(), labels.data_ptr<int64_t>(),
                status_ptr(status), stream);
  });
  if (!async_errors())
    TORCH_CHECK_VALUE(read_status(status)[kStatusError] == 0,
                      "topk_packed: row_ptr must start at 0, end at values.numel() = ", values.numel(),
                      " and match the bitmap's row popcounts");
  return {scores, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("topk_gathered", &topk_gathered_cuda);
  m.impl("topk_packed", &topk_packed_cuda);
}

}  // namespace lss::cuda
