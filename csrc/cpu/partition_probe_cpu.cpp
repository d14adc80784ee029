// partition_probe on the CPU: the nprobe best partitions of each query by
// <x, c_p> + cb_p (fp32 accumulation, fp64 for fp64), larger first, ties by
// smaller p, NaN counted as -inf (lsskernels/reference.py, partition_probe).
//
// Small batches score the centroids with the gathered dot kernels of
// vector_math (the AVX-512 four-row kernel, centroids read in their own
// dtype), a batch of one splitting the centroids across the threads when
// there are enough of them; from kMatmulBatch queries on, one GEMM scores the
// whole batch. Either way a streaming top-n (a sorted buffer that almost
// every partition fails to enter) picks the partitions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "lss/arg_checks.h"
#include "vector_math.h"

namespace lss::cpu {
namespace {

// From this batch on, at::addmm scores the batch (it reads the centroids
// once for all queries; the row kernels read them once per query).
constexpr int64_t kMatmulBatch = 16;
// A batch-1 query splits its centroids across the threads from this many
// bytes of centroids on (see bench/partition_ops.py).
constexpr int64_t kSplitBytes = 512 * 1024;
// Up to this nprobe a sorted buffer filled in one pass; larger ones collect
// and partial-sort.
constexpr int64_t kStreamingProbes = 64;

template <typename S>
struct Probe {
  S score;  // NaN already replaced by -inf
  int32_t p;
};

template <typename S>
inline bool probe_before(const Probe<S>& a, const Probe<S>& b) {
  return a.score > b.score || (a.score == b.score && a.p < b.p);
}

template <typename S>
inline S no_nan(S s) {
  return s != s ? -std::numeric_limits<S>::infinity() : s;
}

// The n best of scores[0, P) by (score desc, p asc) into out.
template <typename S>
void top_partitions(const S* scores, int64_t P, int64_t n, int32_t* out, std::vector<Probe<S>>& all) {
  if (n <= kStreamingProbes) {
    Probe<S> best[kStreamingProbes];
    int64_t filled = 0;
    for (int64_t p = 0; p < P; ++p) {
      const Probe<S> c{no_nan(scores[p]), int32_t(p)};
      // p grows, so a tie with the n-th best never enters.
      if (filled == n && !(c.score > best[n - 1].score)) continue;
      int64_t i = filled < n ? filled++ : n - 1;
      while (i > 0 && probe_before(c, best[i - 1])) {
        best[i] = best[i - 1];
        --i;
      }
      best[i] = c;
    }
    for (int64_t i = 0; i < n; ++i) out[i] = best[i].p;
    return;
  }
  all.resize(size_t(P));
  for (int64_t p = 0; p < P; ++p) all[size_t(p)] = {no_nan(scores[p]), int32_t(p)};
  std::partial_sort(all.begin(), all.begin() + n, all.end(), probe_before<S>);
  for (int64_t i = 0; i < n; ++i) out[i] = all[size_t(i)].p;
}

// 0, 1, ..., n - 1: the gathered kernels take row ids.
const int32_t* iota_ids(int64_t n) {
  thread_local std::vector<int32_t> ids;
  if (int64_t(ids.size()) < n) {
    ids.resize(size_t(n));
    std::iota(ids.begin(), ids.end(), 0);
  }
  return ids.data();
}

at::Tensor partition_probe_cpu(const at::Tensor& x, const at::Tensor& centroids,
                               const c10::optional<at::Tensor>& centroid_bias, int64_t nprobe) {
  check_partition_probe(x, centroids, centroid_bias, nprobe);
  const int64_t B = x.size(0), d = x.size(1), P = centroids.size(0);
  at::Tensor out = at::empty({B, nprobe}, x.options().dtype(at::kInt));
  if (B == 0) return out;
  int32_t* op = out.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "partition_probe_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr auto acc_type = c10::CppTypeToScalarType<acc>::value;
    const at::Tensor xa = x.to(acc_type).contiguous();
    if (B >= kMatmulBatch) {
      // The reference's own operations (a GEMM, then the bias), so the
      // scores are its bits.
      at::Tensor sc = at::mm(xa, centroids.to(acc_type).t()).contiguous();
      if (centroid_bias.has_value()) sc.add_(centroid_bias->to(acc_type));
      const acc* sp = sc.data_ptr<acc>();
      at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
        std::vector<Probe<acc>> all;
        for (int64_t b = b0; b < b1; ++b) top_partitions(sp + b * P, P, nprobe, op + b * nprobe, all);
      });
      return;
    }
    const at::Tensor cc = centroids.contiguous();
    at::Tensor bc;
    if (centroid_bias.has_value()) bc = centroid_bias->contiguous();
    const scalar_t* cp = cc.data_ptr<scalar_t>();
    const scalar_t* bp = bc.defined() ? bc.data_ptr<scalar_t>() : nullptr;
    const acc* xp = xa.data_ptr<acc>();
    const int32_t* rows = iota_ids(P);
    const bool split = B == 1 && P * d * int64_t(sizeof(scalar_t)) >= kSplitBytes && at::get_num_threads() > 1;
    if (split) {
      std::vector<acc> scores(static_cast<size_t>(P));
      const int64_t grain = std::max<int64_t>(256, (P + at::get_num_threads() - 1) / at::get_num_threads());
      at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
        gathered_dots(xp, cp, bp, d, rows + p0, p1 - p0, scores.data() + p0);
      });
      std::vector<Probe<acc>> all;
      top_partitions(scores.data(), P, nprobe, op, all);
      return;
    }
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      std::vector<acc> scores(static_cast<size_t>(P));
      std::vector<Probe<acc>> all;
      for (int64_t b = b0; b < b1; ++b) {
        gathered_dots(xp + b * d, cp, bp, d, rows, P, scores.data());
        top_partitions(scores.data(), P, nprobe, op + b * nprobe, all);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) { m.impl("partition_probe", &partition_probe_cpu); }

}  // namespace lss::cpu
