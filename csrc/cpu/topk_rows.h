// The row top-k shared by topk_gathered_cpu.cpp and topk_packed_cpu.cpp:
// a row's candidates are offered one at a time (a sorted buffer for small k,
// collect + partial sort otherwise) and its top-k written out, larger score
// first, ties by smaller label id (lss::topk_before), then -inf / -1 up to k.
// Internal to csrc/cpu.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "lss/common.h"
#include "vector_math.h"

namespace lss::cpu {

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
// single comparison with the current k-th best (about k ln(M / k) inserts),
// several times cheaper at batch 1 than collecting and partial-sorting all M.
// Larger k collect and partial-sort.
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

}  // namespace lss::cpu
