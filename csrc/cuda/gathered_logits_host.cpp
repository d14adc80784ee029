// Host side of gathered_logits and its backward on CUDA (kernels:
// gathered_logits_cuda.cu, the radix sort of common_cuda.cu; interface:
// launch.h; shared host helpers: host_utils.h, whose grad_weight_bias is
// defined here).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host_utils.h"

namespace lss::cuda {
namespace {

int bit_width(int64_t v) {  // bits needed for values in [0, v]
  int b = 1;
  while (b < 63 && (int64_t(1) << b) <= v) ++b;
  return b;
}

void check_ids(const char* op, const at::Tensor& x, const at::Tensor& ids) {
  check_ids_shape(op, x, ids);
  TORCH_CHECK_VALUE(ids.numel() < (int64_t(1) << 31), op, ": at most 2^31 - 1 candidates per call");
  check_cuda(op, {&x, &ids});
}

void raise_bad_ids(const char* op, const at::Tensor& status, int64_t num_labels) {
  if (async_errors()) return;
  TORCH_CHECK_VALUE(read_status(status)[kStatusError] == 0, op, ": ids must be -1 (padding) or in [0, ",
                    num_labels, ")");
}

at::Tensor gathered_logits_cuda(const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& ids) {
  const char* op = "gathered_logits";
  check_dense_args(op, x, weight, bias);
  check_ids(op, x, ids);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), d = x.size(1), M = ids.size(1), N = weight.size(0);
  at::Tensor out = at::empty({B, M}, x.options());
  if (B * M == 0) return out;
  const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
  const at::Tensor wc = weight.contiguous(), idc = ids.contiguous();
  at::Tensor bc;
  if (bias.has_value()) bc = bias->contiguous();
  at::Tensor status = new_status(x);
  candidate_logits(dtype_of(op, x), xa.data_ptr(), wc.data_ptr(), raw(bc), d, N,
                   Entries{idc.data_ptr<int32_t>(), nullptr, M, B * M}, out.data_ptr(),
                   status_ptr(status), current_stream());
  raise_bad_ids(op, status, N);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gathered_logits_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& ids,
    bool need_x, bool need_weight, bool need_bias) {
  const char* op = "gathered_logits_backward";
  check_dense_args(op, x, weight, c10::nullopt);
  check_ids(op, x, ids);
  check_gathered_grad(grad, ids);
  check_cuda(op, {&x, &grad});
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = x.size(0), d = x.size(1), M = ids.size(1), N = weight.size(0);
  auto [gx, gw, gb] = new_input_grads(x, weight, need_x, need_weight, need_bias, /*zero_x=*/B * M == 0);
  if (B * M == 0) return {gx, gw, gb};
  const DType dt = dtype_of(op, x);
  const at::Tensor ga = grad.to(acc_type(x.scalar_type())).contiguous();
  const at::Tensor wc = weight.contiguous(), idc = ids.contiguous();
  const Entries e{idc.data_ptr<int32_t>(), nullptr, M, B * M};
  at::Tensor status = new_status(x);
  if (need_x)
    candidate_grad_x(dt, ga.data_ptr(), wc.data_ptr(), d, N, B, nullptr, e, gx.data_ptr(),
                     status_ptr(status), stream);
  if (need_weight || need_bias)
    grad_weight_bias(dt, ga, x, N, e, need_weight ? &gw : nullptr, need_bias ? &gb : nullptr,
                     status_ptr(status), stream);
  raise_bad_ids(op, status, N);
  return {gx, gw, gb};
}

}  // namespace

// Declared (and described) in host_utils.h.
void grad_weight_bias(DType dt, const at::Tensor& grad_acc, const at::Tensor& x, int64_t N,
                      const Entries& e, at::Tensor* gw, at::Tensor* gb, unsigned long long* status,
                      cudaStream_t stream) {
  const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
  const auto opts = x.options().dtype(at::kInt);
  at::Tensor keys = at::empty({e.nnz}, opts), order = at::empty({e.nnz}, opts);
  at::Tensor keys_sorted = at::empty({e.nnz}, opts), order_sorted = at::empty({e.nnz}, opts);
  label_keys(e, N, as_u32(keys), order.data_ptr<int32_t>(), status, stream);
  const int end_bit = bit_width(N);
  const size_t temp_bytes = radix_sort_pairs_temp_bytes(e.nnz, end_bit);
  at::Tensor temp = at::empty({int64_t(temp_bytes) + 1}, x.options().dtype(at::kByte));
  radix_sort_pairs(temp.data_ptr(), temp_bytes, as_u32(keys), as_u32(keys_sorted),
                   order.data_ptr<int32_t>(), order_sorted.data_ptr<int32_t>(), e.nnz, end_bit,
                   stream);
  candidate_grad_weight(dt, grad_acc.data_ptr(), xa.data_ptr(), x.size(1), N, e,
                        as_u32(keys_sorted), order_sorted.data_ptr<int32_t>(),
                        gw ? gw->data_ptr() : nullptr, gb ? gb->data_ptr() : nullptr, stream);
}

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("gathered_logits", &gathered_logits_cuda);
  m.impl("gathered_logits_backward", &gathered_logits_backward_cuda);
}

}  // namespace lss::cuda
