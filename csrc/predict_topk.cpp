// predict_topk: the whole inference pipeline of LSSLinear.predict in one call,
//   x -> hash_codes([x, 1, 0]) -> bucket_lookup -> gathered_logits -> topk_gathered.
// It is a composite of the other ops, called through the dispatcher, so it
// runs on whatever device they have kernels for and torch.compile traces
// through it. It exists because at batch 1 the four Python-level op calls and
// the query augmentation cost as much as the kernels themselves.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace lss {
namespace {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

std::tuple<at::Tensor, at::Tensor> predict_topk(const at::Tensor& x, const at::Tensor& query_proj,
                                                const at::Tensor& offsets, const at::Tensor& items,
                                                const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                                int64_t num_labels, int64_t max_candidates, int64_t min_hits,
                                                int64_t k) {
  static const auto hash_codes = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("lsskernels::hash_codes");
  static const auto bucket_lookup =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                            int64_t, int64_t)>("lsskernels::bucket_lookup");
  static const auto gathered_logits =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, const at::Tensor&)>(
          "lsskernels::gathered_logits");
  static const auto topk_gathered =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t)>(
          "lsskernels::topk_gathered");

  TORCH_CHECK_VALUE(x.dim() == 2, "predict_topk: x must be [B, d], got shape ", x.sizes());
  // The query side of the asymmetric hash: [x, 1, 0] (lsskernels.hashing.augment_queries).
  at::Tensor tail = at::zeros({x.size(0), 2}, x.options());
  tail.select(1, 0).fill_(1);
  const at::Tensor x_aug = at::cat({x, tail}, 1);
  const at::Tensor proj = query_proj.to(x.scalar_type());
  // Inference only (the scores carry no gradient): below autograd, so the
  // inner calls skip gathered_logits' autograd kernel, which is registered
  // from Python and costs tens of microseconds per call.
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor codes = hash_codes.call(x_aug, proj);
  const at::Tensor ids = std::get<0>(bucket_lookup.call(codes, offsets, items, num_labels, max_candidates, min_hits));
  const at::Tensor logits = gathered_logits.call(x, weight, bias, ids);
  return topk_gathered.call(logits, ids, k);
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CompositeImplicitAutograd, m) { m.impl("predict_topk", &predict_topk); }

}  // namespace lss
