// Sparse top-k on the CPU over the outputs of gathered_logits (fixed width,
// -1 padded ids) and bitmap_sparse_matmul (packed values + bitmap).
// Order: larger score first, ties by smaller label id; rows with fewer than k
// candidates are filled with score -inf and label -1.
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
#include "lss/common.h"
#include "vector_math.h"

namespace lss::cpu {
namespace {

template <typename acc>
struct Scored {
  acc score;
  int64_t label;
};

// Writes the n best (already sorted) entries, then -inf / -1 up to k.
template <typename scalar_t>
void write_row(const Scored<acc_t<scalar_t>>* best, int64_t n, int64_t k, scalar_t* scores, int64_t* labels) {
  for (int64_t i = 0; i < n; ++i) {
    scores[i] = scalar_t(best[i].score);
    labels[i] = best[i].label;
  }
  for (int64_t i = n; i < k; ++i) {
    scores[i] = scalar_t(-std::numeric_limits<acc_t<scalar_t>>::infinity());
    labels[i] = -1;
  }
}

// Keeps the best k of `cand` at its front, sorted, and writes them out.
template <typename scalar_t>
void write_topk(std::vector<Scored<acc_t<scalar_t>>>& cand, int64_t k, scalar_t* scores,
                int64_t* labels) {
  using acc = acc_t<scalar_t>;
  auto before = [](const Scored<acc>& a, const Scored<acc>& b) {
    return topk_before(a.score, a.label, b.score, b.label);
  };
  const int64_t n = std::min<int64_t>(k, int64_t(cand.size()));
  std::partial_sort(cand.begin(), cand.begin() + n, cand.end(), before);
  write_row<scalar_t>(cand.data(), n, k, scores, labels);
}

// Up to this k the top-k of a row is kept in a sorted buffer filled in one
// pass: after the first few hundred entries almost every candidate fails the
// single comparison with the current k-th best (about k ln(M / k) inserts), so
// a batch-1 row of M = 2000 takes ~2 us instead of collecting and
// partial-sorting all M (~10 us). Larger k collect and partial-sort.
constexpr int64_t kStreamingTopK = 64;

template <typename acc>
struct TopKBuffer {
  Scored<acc> best[kStreamingTopK];
  int64_t k, n = 0;
  explicit TopKBuffer(int64_t k_) : k(k_) {}
  void offer(acc score, int64_t label) {
    if (n == k && !topk_before(score, label, best[n - 1].score, best[n - 1].label)) return;
    int64_t i = n < k ? n++ : n - 1;  // the slot being vacated
    while (i > 0 && topk_before(score, label, best[i - 1].score, best[i - 1].label)) {
      best[i] = best[i - 1];
      --i;
    }
    best[i] = {score, label};
  }
};

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

// Calls emit(score, label) for every candidate of a row, then writes the row's
// top-k: streaming for small k, collect + partial sort otherwise.
template <typename scalar_t, typename ForEach>
void row_topk(int64_t k, std::vector<Scored<acc_t<scalar_t>>>& scratch, scalar_t* scores,
              int64_t* labels, const ForEach& for_each) {
  using acc = acc_t<scalar_t>;
  if (k <= kStreamingTopK) {
    TopKBuffer<acc> buffer(k);
    for_each([&](acc score, int64_t label) { buffer.offer(score, label); });
    write_row<scalar_t>(buffer.best, buffer.n, k, scores, labels);
  } else {
    scratch.clear();
    for_each([&](acc score, int64_t label) { scratch.push_back({score, label}); });
    write_topk<scalar_t>(scratch, k, scores, labels);
  }
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
  TORCH_CHECK(!bad, "topk_gathered: ids must be -1 (padding) or >= 0");
  return {scores, labels};
}

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
  TORCH_CHECK(rp[0] == 0 && rp[B] == values.numel(),
              "topk_packed: row_ptr must start at 0 and end at values.numel() = ", values.numel());
  std::atomic<bool> mismatch{false};
  at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      int64_t c = 0;
      for (int64_t w = 0; w < W; ++w) c += popcount32(bp[b * W + w]);
      if (rp[b + 1] - rp[b] != c) mismatch = true;
    }
  });
  TORCH_CHECK(!mismatch, "topk_packed: row_ptr does not match the bitmap's row popcounts");

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

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) {
  m.impl("topk_gathered", &topk_gathered_cpu);
  m.impl("topk_packed", &topk_packed_cpu);
}

}  // namespace lss::cpu
