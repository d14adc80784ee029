// partition_probe on the CPU: the nprobe best partitions of each query by
// <x, c_p> + cb_p (fp32 accumulation, fp64 for fp64), larger first, ties by
// smaller p, NaN counted as -inf (lsskernels/reference.py, partition_probe).
//
// Small batches score the centroids with the gathered dot kernels of
// vector_math (the AVX-512 four-row kernel, centroids read in their own
// dtype), a batch of one splitting them across the threads only where
// LSS_SPLIT_QUERY_BYTES asks for it; from kMatmulBatch queries on, one GEMM
// scores the whole batch. Either way a streaming top-n (a sorted buffer that
// almost every partition fails to enter) picks the partitions.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "lss/arg_checks.h"
#include "vector_math.h"

namespace lss::cpu {
namespace {

// From this batch on, one GEMM scores the batch: it reads the centroids once
// for all queries, the row kernels once per query, so the GEMM wins from the
// second query on (at one query the two take the same time).
constexpr int64_t kMatmulBatch = 2;
// Bytes of centroids from which a batch-1 query splits them across the
// threads: LSS_SPLIT_QUERY_BYTES (as quantized_candidates), default never:
// waking the second OpenMP thread on a busy core costs a time slice, far
// more than the probe takes on one thread (docs/performance.md,
// "Measurements moved out of code comments"). An idle
// machine may want a few hundred KB.
const int64_t kSplitBytes = [] {
  const char* v = std::getenv("LSS_SPLIT_QUERY_BYTES");
  return v ? std::max<int64_t>(0, std::atoll(v)) : std::numeric_limits<int64_t>::max();
}();
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

// The n best of scores[0, P) by (score desc, p asc) into out. `rows` is
// 0, 1, ..., P - 1 (next_topk_candidate takes ids).
template <typename S>
void top_partitions(const S* scores, int64_t P, int64_t n, int32_t* out, std::vector<Probe<S>>& all,
                    const int32_t* rows) {
  if (n <= kStreamingProbes) {
    Probe<S> best[kStreamingProbes];
    int64_t filled = 0;
    for (int64_t p = 0; p < P; ++p) {
      if constexpr (std::is_same_v<S, float>) {
        // Once full, skip 16 at a time to the next score that could enter
        // (NaN stops the skip too; it then fails the test below as -inf).
        if (filled == n) {
          p += next_topk_candidate(scores + p, rows + p, P - p, best[n - 1].score);
          if (p == P) break;
        }
      }
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
      // The reference's own operations (a GEMM, then the bias, added per row
      // as its top-n is taken: one pass, no extra parallel region), so the
      // scores are its bits.
      const at::Tensor sc = at::mm(xa, centroids.to(acc_type).t()).contiguous();
      at::Tensor ba;
      if (centroid_bias.has_value()) ba = centroid_bias->to(acc_type).contiguous();
      const acc* sp = sc.data_ptr<acc>();
      const acc* bp = ba.defined() ? ba.data_ptr<acc>() : nullptr;
      const int32_t* rows = iota_ids(P);
      // Selection tasks of >= ~2^17 scores: fewer threads woken for small batches.
      at::parallel_for(0, B, std::max<int64_t>(1, (int64_t(1) << 17) / P), [&](int64_t b0, int64_t b1) {
        std::vector<Probe<acc>> all;
        std::vector<acc> row(bp ? size_t(P) : 0);
        for (int64_t b = b0; b < b1; ++b) {
          const acc* s = sp + b * P;
          if (bp) {
            for (int64_t p = 0; p < P; ++p) row[size_t(p)] = s[p] + bp[p];
            s = row.data();
          }
          top_partitions(s, P, nprobe, op + b * nprobe, all, rows);
        }
      });
      return;
    }
    // One query: the row kernels, the centroids in their own dtype.
    const at::Tensor cc = centroids.contiguous();
    at::Tensor bc;
    if (centroid_bias.has_value()) bc = centroid_bias->contiguous();
    const scalar_t* cp = cc.data_ptr<scalar_t>();
    const scalar_t* bp = bc.defined() ? bc.data_ptr<scalar_t>() : nullptr;
    const acc* xp = xa.data_ptr<acc>();
    const int32_t* rows = iota_ids(P);
    thread_local std::vector<acc> buffer;
    buffer.resize(size_t(P));
    acc* scores = buffer.data();  // (inside the lambda, `buffer` would name each worker's own)
    const bool split = P * d * int64_t(sizeof(scalar_t)) >= kSplitBytes && at::get_num_threads() > 1;
    const int64_t grain = split ? std::max<int64_t>(256, (P + at::get_num_threads() - 1) / at::get_num_threads()) : P;
    at::parallel_for(0, P, grain, [&](int64_t p0, int64_t p1) {
      gathered_dots(xp, cp, bp, d, rows + p0, p1 - p0, scores + p0);
    });
    std::vector<Probe<acc>> all;
    top_partitions(scores, P, nprobe, op, all, rows);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) { m.impl("partition_probe", &partition_probe_cpu); }

}  // namespace lss::cpu
