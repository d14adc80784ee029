// topk_gathered on the CPU: the top-k of each row of gathered_logits' output
// (fixed width, -1 padded ids). Order: larger score first, ties by smaller
// label id; rows with fewer than k candidates are filled with score -inf and
// label -1. The row top-k helpers, shared with topk_packed_cpu.cpp, are in
// topk_rows.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <type_traits>
#include <vector>

#include "lss/arg_checks.h"
#include "topk_rows.h"
#include "vector_math.h"

namespace lss::cpu {
namespace {

// The fp32 streaming top-k of one gathered row, skipping ahead with
// next_topk_candidate to the entries that can still enter the buffer; same
// result as offering every entry. Returns false if an id is below -1.
bool streaming_topk_f32(const float* logits, const int32_t* ids, int64_t M, int64_t k, float* scores,
                        int64_t* labels) {
  int32_t lowest = 0;
  for (int64_t m = 0; m < M; ++m) lowest = std::min(lowest, ids[m]);
  TopKBuffer<float> buffer(k);
  const float none = -std::numeric_limits<float>::infinity();
  for (int64_t m = 0; m < M; ++m) {
    const float threshold = buffer.n == k ? buffer.best[k - 1].score : none;
    m += next_topk_candidate(logits + m, ids + m, M - m, threshold);
    if (m == M) break;
    buffer.offer(logits[m], ids[m]);
  }
  write_row<float>(buffer.best, buffer.n, k, scores, labels);
  return lowest >= -1;
}

// One row of topk_gathered: fp32 rows with a small k skip ahead
// (streaming_topk_f32); every other row offers each entry to row_topk.
template <typename scalar_t>
void gathered_row_topk(const scalar_t* logits, const int32_t* ids, int64_t M, int64_t k,
                       std::vector<Scored<acc_t<scalar_t>>>& scratch, scalar_t* scores, int64_t* labels,
                       std::atomic<bool>& bad) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (k <= kStreamingTopK) {
      if (!streaming_topk_f32(logits, ids, M, k, scores, labels)) bad = true;
      return;
    }
  }
  using acc = acc_t<scalar_t>;
  row_topk<scalar_t>(k, scratch, scores, labels, [&](const auto& emit) {
    for (int64_t m = 0; m < M; ++m) {
      if (ids[m] >= 0) emit(acc(logits[m]), ids[m]);
      else if (ids[m] != -1) bad = true;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> topk_gathered_cpu(const at::Tensor& logits,
                                                     const at::Tensor& ids, int64_t k) {
  check_topk_gathered(logits, ids, k);
  const int64_t B = logits.size(0), M = logits.size(1);
  at::Tensor scores = at::empty({B, k}, logits.options());
  at::Tensor labels = at::empty({B, k}, logits.options().dtype(at::kLong));
  const at::Tensor lc = logits.contiguous(), ic = ids.contiguous();
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "topk_gathered_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* lp = lc.data_ptr<scalar_t>();
    const int32_t* ip = ic.data_ptr<int32_t>();
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<Scored<acc>> cand;
      for (int64_t b = b0; b < b1; ++b) {
        gathered_row_topk<scalar_t>(lp + b * M, ip + b * M, M, k, cand, scores.data_ptr<scalar_t>() + b * k,
                                    labels.data_ptr<int64_t>() + b * k, bad);
      }
    });
  });
  TORCH_CHECK_VALUE(!bad, "topk_gathered: ids must be -1 (padding) or >= 0");
  return {scores, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) { m.impl("topk_gathered", &topk_gathered_cpu); }

}  // namespace lss::cpu
