// bucket_lookup and bucket_lookup_bitmap on the CPU (the tables come from
// build_tables_cpu.cpp).
//
// Tables are CSR per table: offsets int32 [L, 2^K + 1] and items int32 [L, T];
// bucket c of table l is items[l, offsets[l, c] : offsets[l, c + 1]], labels
// ascending. Every bucket a query touches is range-checked and every label it
// reads is checked against num_labels, so a malformed table raises instead of
// reading out of bounds.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "lss/arg_checks.h"
#include "lss/common.h"

namespace lss::cpu {
namespace {

// Per-thread hit counters indexed by label, kept all-zero between queries so
// a query costs O(items it reads), not O(num_labels).
struct HitCounter {
  std::vector<uint16_t> hits;
  std::vector<int32_t> touched;
  void reserve(int64_t num_labels) {
    if (int64_t(hits.size()) < num_labels) hits.assign(size_t(num_labels), 0);
  }
  void clear() {
    for (int32_t id : touched) hits[size_t(id)] = 0;
    touched.clear();
  }
};
thread_local HitCounter tls_counter;

// Counts, for one query, how many of its L buckets hold each label. Returns
// false (after leaving the counter clean) on an out-of-bounds table.
bool count_hits(HitCounter& counter, const int32_t* query_codes, int64_t L,
                const int32_t* offsets, int64_t offsets_stride, const int32_t* items,
                int64_t items_per_table, int64_t num_labels, int64_t buckets) {
  for (int64_t l = 0; l < L; ++l) {
    const int64_t code = query_codes[l];
    BucketRange r;
    if (code < 0 || code >= buckets ||
        !bucket_range(offsets + l * offsets_stride, code, items_per_table, &r)) {
      counter.clear();
      return false;
    }
    const int32_t* table_items = items + l * items_per_table;
    for (int64_t i = r.begin; i < r.end; ++i) {
      const int32_t id = table_items[i];
      if (!label_in_range(id, num_labels)) {
        counter.clear();
        return false;
      }
      if (counter.hits[size_t(id)]++ == 0) counter.touched.push_back(id);
    }
  }
  return true;
}

// The first M touched labels in (hits desc, id asc) order, by a counting
// sort on hits (at most L + 1 levels) and a sort of ids within each level
// kept: cheaper than sorting (hits, id) keys over everything touched (the
// lookup's main cost at batch 1 with L = 64 tables).
struct CandidateOrder {
  std::vector<int64_t> level_count, level_start;
  std::vector<int32_t> ids;
  int64_t write_first(const HitCounter& counter, int64_t min_hits, int64_t M, int32_t* out) {
    // Hits are at most L for well-formed tables; sizing by the largest seen
    // keeps a bucket with repeated labels from indexing past the levels.
    int64_t top = 0;
    for (int32_t id : counter.touched) top = std::max<int64_t>(top, counter.hits[size_t(id)]);
    level_count.assign(size_t(top) + 1, 0);
    for (int32_t id : counter.touched) ++level_count[counter.hits[size_t(id)]];
    // Levels from top down to `lowest` are kept; `lowest` may be cut at M.
    int64_t kept = 0, lowest = top + 1;
    for (int64_t h = top; h >= std::max<int64_t>(min_hits, 1) && kept < M; --h) {
      kept += level_count[size_t(h)];
      lowest = h;
    }
    if (lowest > top) return 0;
    // level_start[h] ends up at the start of level h's segment (filled backwards).
    level_start.assign(size_t(top) + 2, 0);
    for (int64_t h = top; h >= lowest; --h) level_start[size_t(h)] = level_start[size_t(h) + 1] + level_count[size_t(h)];
    ids.resize(size_t(level_start[size_t(lowest)]));
    for (int32_t id : counter.touched) {
      const int64_t h = counter.hits[size_t(id)];
      if (h >= lowest) ids[size_t(--level_start[size_t(h)])] = id;
    }
    int64_t n = 0;
    for (int64_t h = top; h >= lowest && n < M; --h) {
      auto begin = ids.begin() + level_start[size_t(h)];
      auto end = begin + level_count[size_t(h)];
      const int64_t take = std::min<int64_t>(level_count[size_t(h)], M - n);
      if (take < end - begin) std::nth_element(begin, begin + take, end);
      std::sort(begin, begin + take);
      std::copy(begin, begin + take, out + n);
      n += take;
    }
    return n;
  }
};
thread_local CandidateOrder tls_order;

std::tuple<at::Tensor, at::Tensor> bucket_lookup_cpu(const at::Tensor& codes,
                                                     const at::Tensor& offsets,
                                                     const at::Tensor& items, int64_t num_labels,
                                                     int64_t max_candidates, int64_t min_hits) {
  check_tables("bucket_lookup", codes, offsets, items, num_labels, min_hits);
  check_max_candidates("bucket_lookup", max_candidates);
  const int64_t B = codes.size(0), L = codes.size(1), M = max_candidates;
  const int64_t buckets = offsets.size(1) - 1, T = items.size(1);
  const at::Tensor cc = codes.contiguous(), oc = offsets.contiguous(), ic = items.contiguous();
  at::Tensor ids = at::empty({B, M}, codes.options());
  at::Tensor counts = at::empty({B}, codes.options());
  const int32_t* cp = cc.data_ptr<int32_t>();
  const int32_t* op = oc.data_ptr<int32_t>();
  const int32_t* ip = ic.data_ptr<int32_t>();
  int32_t* idp = ids.data_ptr<int32_t>();
  int32_t* cntp = counts.data_ptr<int32_t>();
  std::atomic<bool> malformed{false};

  at::parallel_for(0, B, 1, [&](int64_t qb, int64_t qe) {
    HitCounter& counter = tls_counter;
    counter.reserve(num_labels);
    CandidateOrder& order = tls_order;
    for (int64_t q = qb; q < qe; ++q) {
      int32_t* out = idp + q * M;
      int64_t n = 0;
      if (count_hits(counter, cp + q * L, L, op, buckets + 1, ip, T, num_labels, buckets)) {
        n = order.write_first(counter, min_hits, M, out);
        counter.clear();
      } else {
        malformed = true;
      }
      for (int64_t i = n; i < M; ++i) out[i] = -1;
      cntp[q] = int32_t(n);
    }
  });
  TORCH_CHECK_VALUE(!malformed, "bucket_lookup: malformed tables: a code is outside [0, 2^K), a "
              "bucket's offsets are decreasing or past items.size(1), or an item is outside "
              "[0, num_labels)");
  return {ids, counts};
}

at::Tensor bucket_lookup_bitmap_cpu(const at::Tensor& codes, const at::Tensor& offsets,
                                    const at::Tensor& items, int64_t num_labels,
                                    int64_t min_hits) {
  check_tables("bucket_lookup_bitmap", codes, offsets, items, num_labels, min_hits);
  const int64_t B = codes.size(0), L = codes.size(1);
  const int64_t buckets = offsets.size(1) - 1, T = items.size(1);
  const int64_t words = bitmap_words(num_labels);
  const at::Tensor cc = codes.contiguous(), oc = offsets.contiguous(), ic = items.contiguous();
  at::Tensor bitmap = at::zeros({B, words}, codes.options());
  const int32_t* cp = cc.data_ptr<int32_t>();
  const int32_t* op = oc.data_ptr<int32_t>();
  const int32_t* ip = ic.data_ptr<int32_t>();
  int32_t* bp = bitmap.data_ptr<int32_t>();
  std::atomic<bool> malformed{false};

  at::parallel_for(0, B, 1, [&](int64_t qb, int64_t qe) {
    HitCounter& counter = tls_counter;
    counter.reserve(num_labels);
    for (int64_t q = qb; q < qe; ++q) {
      uint32_t* row = reinterpret_cast<uint32_t*>(bp + q * words);
      if (!count_hits(counter, cp + q * L, L, op, buckets + 1, ip, T, num_labels, buckets)) {
        malformed = true;
        continue;
      }
      for (int32_t id : counter.touched)
        if (counter.hits[size_t(id)] >= min_hits) row[bitmap_word_of(id)] |= bitmap_mask_of(id);
      counter.clear();
    }
  });
  TORCH_CHECK_VALUE(!malformed, "bucket_lookup_bitmap: malformed tables: a code is outside [0, 2^K), "
              "a bucket's offsets are decreasing or past items.size(1), or an item is outside "
              "[0, num_labels)");
  return bitmap;
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) {
  m.impl("bucket_lookup", &bucket_lookup_cpu);
  m.impl("bucket_lookup_bitmap", &bucket_lookup_bitmap_cpu);
}

}  // namespace lss::cpu
