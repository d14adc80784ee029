// partition_predict_topk: the partition family's whole predict in one call,
//   x -> probe -> quantized_candidates -> gathered_logits -> topk_gathered.
// The probe is quantized_candidates too: the P centroid codes form one list
// (offsets [0, P], ids 0 .. P - 1), so partitions are ranked by the same
// exact int8 score as labels (reference.quantized_probe). Under a code
// projection U (code_proj [d, r], the list codes being of U^T (w - mean w))
// the candidates are scored with the code queries x @ U; probe and exact
// logits take x. Like predict_topk (csrc/predict_topk.cpp) it is a composite
// of the other ops, called through the dispatcher: it runs on whatever device
// they have kernels for, torch.compile traces through it, and a batch-1 call
// pays one Python-level dispatch instead of several.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <initializer_list>
#include <type_traits>

#include "lss/arg_checks.h"
#include "lss/partition_predict_topk.h"

namespace lss {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using OptTensor = c10::optional<at::Tensor>;
using Candidates = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, int64_t, int64_t);

std::tuple<at::Tensor, at::Tensor> partition_predict_topk(
    const at::Tensor& x, const at::Tensor& centroid_codes, const at::Tensor& centroid_scales,
    const at::Tensor& centroid_bias, const at::Tensor& list_offsets, const at::Tensor& codes,
    const at::Tensor& code_scales, const at::Tensor& code_bias, const at::Tensor& list_ids, const at::Tensor& weight,
    const OptTensor& bias, int64_t num_labels, int64_t nprobe, int64_t max_candidates, int64_t k,
    const OptTensor& code_proj) {
  static const auto quantized_candidates = op<Candidates>("lsskernels::quantized_candidates");
  static const auto gathered_logits =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&, const at::Tensor&)>(
          "lsskernels::gathered_logits");
  static const auto topk_gathered =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>(
          "lsskernels::topk_gathered");

  // The arguments as the caller passed them (ValueError / TypeError naming
  // them), where their sizes are concrete: under torch.compile's symbolic
  // shapes the check is left to the ops below, which make it at run time.
  bool concrete = true;
  for (const at::Tensor* t : {&x, &centroid_codes, &centroid_scales, &centroid_bias, &list_offsets, &codes,
                              &code_scales, &code_bias, &list_ids, &weight})
    concrete = concrete && !t->unsafeGetTensorImpl()->has_symbolic_sizes_strides();
  for (const OptTensor* t : {&bias, &code_proj})
    concrete = concrete && !(t->has_value() && (*t)->defined() &&
                             (*t)->unsafeGetTensorImpl()->has_symbolic_sizes_strides());
  if (concrete)
    check_partition_predict_topk(x, centroid_codes, centroid_scales, centroid_bias, list_offsets, codes, code_scales,
                                 code_bias, list_ids, weight, bias, num_labels, nprobe, max_candidates, k, code_proj);

  // Inference only: below autograd, so gathered_logits' autograd kernel
  // (registered from Python, tens of microseconds a call) is skipped.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const auto int32 = x.options().dtype(at::kInt);
  const c10::SymInt partitions = centroid_codes.sym_size(0);
  const at::Tensor one_list = at::zeros_symint({x.sym_size(0), 1}, int32);
  const at::Tensor probe_offsets = at::arange(0, c10::Scalar(partitions + 1), c10::Scalar(partitions), int32);  // [0, P]
  const at::Tensor probe_ids = at::arange(c10::Scalar(partitions), int32);
  const at::Tensor probes =
      std::get<0>(quantized_candidates.call(x, one_list, probe_offsets, centroid_codes, centroid_scales, centroid_bias,
                                            probe_ids, partitions.guard_int(__FILE__, __LINE__), nprobe));

  // (sym_numel: under torch.compile with dynamic shapes the size is symbolic;
  // x.to(float) of a float32 x would return x itself, which the dispatcher
  // does not allow below autograd.)
  const bool projected = code_proj.has_value() && code_proj->defined() && code_proj->sym_numel() != 0;
  const at::Tensor code_queries =
      !projected ? x : at::matmul(x.scalar_type() == at::kFloat ? x : x.to(at::kFloat), *code_proj);
  const at::Tensor ids = std::get<0>(quantized_candidates.call(code_queries, probes, list_offsets, codes,
                                                               code_scales, code_bias, list_ids, num_labels,
                                                               max_candidates));
  const at::Tensor logits = gathered_logits.call(x, weight, bias, ids);
  return topk_gathered.call(logits, ids, k);
}

static_assert(std::is_same_v<decltype(partition_predict_topk), PartitionPredictTopk>,
              "partition_predict_topk must have the type lss/partition_predict_topk.h declares");

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CompositeImplicitAutograd, m) {
  m.impl("partition_predict_topk", &partition_predict_topk);
}

}  // namespace lss
