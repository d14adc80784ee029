// lsskernels::partition_predict_topk (schema: csrc/ops.cpp) as one C++
// function type, for the composite that implements it
// (csrc/partition_predict_topk.cpp) and the Python module's unboxed door
// to it (csrc/python_module.cpp): the argument list is written once.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace lss {

using PartitionPredictTopk = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& centroid_codes, const at::Tensor& centroid_scales,
    const at::Tensor& centroid_bias, const at::Tensor& list_offsets, const at::Tensor& codes,
    const at::Tensor& code_scales, const at::Tensor& code_bias, const at::Tensor& list_ids, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, int64_t num_labels, int64_t nprobe, int64_t max_candidates, int64_t k,
    const c10::optional<at::Tensor>& code_proj);

}  // namespace lss
