// build_tables on the CPU: CSR hash tables from label codes [N, L].
//
// Tables are CSR per table: offsets int32 [L, 2^K + 1] and items int32 [L, N];
// bucket c of table l is items[l, offsets[l, c] : offsets[l, c + 1]], labels
// ascending (a counting sort per table). bucket_lookup_cpu.cpp reads them.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "lss/arg_checks.h"

namespace lss::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> build_tables_cpu(const at::Tensor& codes, int64_t bits) {
  check_build_tables(codes, bits);
  const int64_t N = codes.size(0), L = codes.size(1), buckets = int64_t(1) << bits;
  const at::Tensor c = codes.t().contiguous();  // [L, N]: one table per row
  const int32_t* cp = c.data_ptr<int32_t>();
  std::atomic<bool> bad_code{false};
  at::parallel_for(0, N * L, 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      if (cp[i] < 0 || cp[i] >= buckets) bad_code = true;
  });
  TORCH_CHECK_VALUE(!bad_code, "build_tables: codes values must be in [0, ", buckets, ") (0 <= code < 2^bits, bits = ",
                    bits, ")");

  at::Tensor offsets = at::zeros({L, buckets + 1}, codes.options());
  at::Tensor items = at::empty({L, N}, codes.options());
  int32_t* op = offsets.data_ptr<int32_t>();
  int32_t* ip = items.data_ptr<int32_t>();
  // Counting sort per table; labels are visited in ascending order, so each
  // bucket comes out ascending.
  at::parallel_for(0, L, 1, [&](int64_t lb, int64_t le) {
    std::vector<int32_t> cursor;
    for (int64_t l = lb; l < le; ++l) {
      const int32_t* tc = cp + l * N;
      int32_t* to = op + l * (buckets + 1);
      for (int64_t n = 0; n < N; ++n) ++to[tc[n] + 1];
      for (int64_t b = 0; b < buckets; ++b) to[b + 1] += to[b];
      cursor.assign(to, to + buckets);
      int32_t* ti = ip + l * N;
      for (int64_t n = 0; n < N; ++n) ti[cursor[tc[n]]++] = int32_t(n);
    }
  });
  return {offsets, items};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) { m.impl("build_tables", &build_tables_cpu); }

}  // namespace lss::cpu
