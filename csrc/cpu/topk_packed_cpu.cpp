// topk_packed on the CPU: the top-k of each row of bitmap_sparse_matmul's
// output (values packed row by row in ascending label order, the bitmap as
// the column index). Order: larger score first, ties by smaller label id;
// rows with fewer than k candidates are filled with score -inf and label -1.
// The row top-k helpers, shared with topk_gathered_cpu.cpp, are in
// topk_rows.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "lss/arg_checks.h"
#include "lss/common.h"
#include "topk_rows.h"

namespace lss::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> topk_packed_cpu(const at::Tensor& values,
                                                   const at::Tensor& row_ptr,
                                                   const at::Tensor& bitmap, int64_t k) {
  check_topk_packed(values, row_ptr, bitmap, k);
  const int64_t B = bitmap.size(0), W = bitmap.size(1);
  const at::Tensor vc = values.contiguous(), rc = row_ptr.contiguous(), bc = bitmap.contiguous();
  const int64_t* rp = rc.data_ptr<int64_t>();
  const uint32_t* bp = reinterpret_cast<const uint32_t*>(bc.data_ptr<int32_t>());
  // row_ptr must be exactly the bitmap's prefix popcount: it is what makes
  // values[row_ptr[b] + i] the i-th set bit of row b, and keeps reads in bounds.
  TORCH_CHECK_VALUE(rp[0] == 0 && rp[B] == values.numel(),
              "topk_packed: row_ptr must start at 0 and end at values.numel() = ", values.numel());
  std::atomic<bool> mismatch{false};
  at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t c = 0;
      for (int64_t w = 0; w < W; ++w) c += popcount32(bp[b * W + w]);
      if (rp[b + 1] - rp[b] != c) mismatch = true;
    }
  });
  TORCH_CHECK_VALUE(!mismatch, "topk_packed: row_ptr does not match the bitmap's row popcounts");

  at::Tensor scores = at::empty({B, k}, values.options());
  at::Tensor labels = at::empty({B, k}, values.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, values.scalar_type(), "topk_packed_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* vp = vc.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<Scored<acc>> cand;
      for (int64_t b = b0; b < b1; ++b) {
        row_topk<scalar_t>(k, cand, scores.data_ptr<scalar_t>() + b * k, labels.data_ptr<int64_t>() + b * k,
                           [&](const auto& emit) {
                             int64_t i = rp[b];
                             for (int64_t w = 0; w < W; ++w)
                               for (uint32_t v = bp[b * W + w]; v; v &= v - 1) emit(acc(vp[i++]), w * 32 + lowest_bit(v));
                           });
      }
    });
  });
  return {scores, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) { m.impl("topk_packed", &topk_packed_cpu); }

}  // namespace lss::cpu
