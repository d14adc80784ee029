// gathered_logits on the CPU: logits[b, m] = <x[b], W[ids[b, m]]> + bias[ids[b, m]]
// for per-query candidate ids (int32 [B, M], -1 padded), and its backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "candidate_rows.h"
#include "lss/arg_checks.h"

namespace lss::cpu {
namespace {

// The checks of the CUDA host code (lss/arg_checks.h), in the same order.
void check_gathered(const char* op, const at::Tensor& x, const at::Tensor& weight,
                    const c10::optional<at::Tensor>& bias, const at::Tensor& ids) {
  check_dense_args(op, x, weight, bias);
  check_ids_shape(op, x, ids);
}

// Every id must be a label or -1; checked once up front so the kernels can
// index the weight rows blindly. A min / max reduction (it vectorises) rather
// than a per-id test with a shared flag: negligible next to the logits even
// at batch 1.
void check_ids_in_range(const char* op, const int32_t* ids, int64_t n, int64_t num_labels) {
  std::atomic<bool> bad{false};
  at::parallel_for(0, n, 1 << 15, [&](int64_t b, int64_t e) {
    int32_t lo = ids[b], hi = ids[b];
    for (int64_t i = b + 1; i < e; ++i) {
      lo = std::min(lo, ids[i]);
      hi = std::max(hi, ids[i]);
    }
    if (!candidate_id_valid(lo, num_labels) || !candidate_id_valid(hi, num_labels)) bad = true;
  });
  TORCH_CHECK_VALUE(!bad, op, ": ids must be -1 (padding) or in [0, ", num_labels, ")");
}

at::Tensor gathered_logits_cpu(const at::Tensor& x, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, const at::Tensor& ids) {
  check_gathered("gathered_logits", x, weight, bias, ids);
  const int64_t B = x.size(0), d = x.size(1), M = ids.size(1), N = weight.size(0);
  const at::Tensor idc = ids.contiguous();
  check_ids_in_range("gathered_logits", idc.data_ptr<int32_t>(), B * M, N);
  at::Tensor out = at::empty({B, M}, x.options());
  if (B * M == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gathered_logits_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const at::Tensor xa = x.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const at::Tensor wc = weight.contiguous();
    at::Tensor bc;
    if (bias.has_value()) bc = bias->contiguous();
    const CandidateEntries e{idc.data_ptr<int32_t>(), nullptr, M, B * M};
    candidate_logits_forward<scalar_t>(xa.data_ptr<acc>(), wc.data_ptr<scalar_t>(),
                                       bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, d, e,
                                       out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gathered_logits_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& ids,
    bool need_x, bool need_weight, bool need_bias) {
  check_gathered("gathered_logits_backward", x, weight, c10::nullopt, ids);
  check_gathered_grad(grad, ids);
  const int64_t B = x.size(0), M = ids.size(1), N = weight.size(0);
  const at::Tensor idc = ids.contiguous();
  check_ids_in_range("gathered_logits_backward", idc.data_ptr<int32_t>(), B * M, N);
  auto [gx, gw, gb] = new_input_grads(x, weight, need_x, need_weight, need_bias, /*zero_x=*/B * M == 0);
  if (B * M == 0) return {gx, gw, gb};
  // Padding positions carry -inf logits; their incoming gradient is ignored.
  const CandidateEntries e{idc.data_ptr<int32_t>(), nullptr, M, B * M};
  candidate_logits_backward(grad, x, weight, nullptr, e, gx, gw, gb, need_x, need_weight, need_bias);
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) {
  m.impl("gathered_logits", &gathered_logits_cpu);
  m.impl("gathered_logits_backward", &gathered_logits_backward_cpu);
}

}  // namespace lss::cpu
