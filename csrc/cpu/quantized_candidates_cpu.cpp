// quantized_candidates on the CPU: the max_candidates best labels of each
// query by int8 quantized score over the partitions it probes, bit for bit
// the reference (lsskernels/reference.py, quantized_candidates):
//
//   1. the query is quantized in fp32 exactly as reference.quantize_queries
//      (one scalar pass, shared by every ISA path);
//   2. each probed partition's rows (contiguous) are scored by the int8
//      kernels of int8_dots.cpp, which write one 64-bit sort key per row
//      (score desc, label asc, NaN as -inf);
//   3. the best M distinct labels are selected from the keys: a threshold
//      from a sample keeps ~2M keys (a vector filtering pass), whose best
//      ones are put in front (nth_element), sorted and walked, skipping a
//      label already taken (a per-thread bitmap of N bits; only the words of
//      taken labels are cleared afterwards). Where the kept keys run out of
//      distinct labels, the same walk runs over all keys.
//
// A batch is scored partition by partition, each partition for the queries
// that probe it together (run_batches), and its keys go to per-query sinks
// that drop the keys that can no longer win once they fill (compact_sink);
// at B == 1 the partitions are split across the threads only where
// LSS_SPLIT_QUERY_BYTES asks for it (below).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <memory>
#include <vector>

#include "int8_dots.h"
#include "lss/arg_checks.h"
#include "vector_math.h"

namespace lss::cpu {
namespace {

constexpr float kLevels = float(kQuantLevels);  // reference.QUANT_LEVELS

// Per-thread buffers, reused across calls. `seen` is all zero between
// queries: the selection clears exactly the words it set.
struct Span {
  int64_t begin, end, pos;  // rows [begin, end) of codes, keys from pos
  int64_t part;             // the partition
};

struct Scratch {
  std::vector<Span> spans;
  std::vector<uint64_t> keys, cand, sample, seen;
  std::vector<int8_t> q;
  std::vector<int16_t> q16;
  std::vector<int32_t> taken;  // labels taken by a sink's compaction
};

Scratch& thread_scratch() {
  thread_local Scratch s;
  return s;
}

// reference.quantize_queries for one row, in the same fp32 operations:
// amax = max |x| (NaN if any x is NaN), scale = amax / 127,
// inv = 127 / amax where amax > 0 (a correctly rounded division, as in the
// reference, CUDA and Triton) else 0, q = clamp(round_half_even(x * inv)),
// NaN -> 0. q and q16 are zero-padded to `padded` entries.
void quantize_row(const float* x, int64_t d, int64_t padded, int8_t* q, int16_t* q16, int32_t* sum, float* scale) {
  float amax = 0.0f;
  bool nan = false;
  for (int64_t j = 0; j < d; ++j) {
    const float a = std::fabs(x[j]);
    nan |= a != a;
    amax = a > amax ? a : amax;
  }
  if (nan) amax = std::numeric_limits<float>::quiet_NaN();
  *scale = amax / kLevels;
  const float inv = amax > 0.0f ? kLevels / amax : 0.0f;
  int32_t total = 0;
  for (int64_t j = 0; j < d; ++j) {
    float v = x[j] * inv;
    if (v != v) v = 0.0f;
    // Clamping before rounding is the same as after (127 is an integer and
    // rounding is monotone); within [-127, 127] adding and subtracting 1.5 *
    // 2^23 rounds to the nearest integer, ties to even (fp32, round-to-nearest).
    v = std::min(kLevels, std::max(-kLevels, v));
    v = (v + 12582912.0f) - 12582912.0f;
    q[j] = int8_t(v);
    q16[j] = int16_t(q[j]);
    total += q[j];
  }
  for (int64_t j = d; j < padded; ++j) {
    q[j] = 0;
    q16[j] = 0;
  }
  *sum = total;
}

// Walks keys sorted best first, appending each label not taken yet to out
// until it holds M; returns the new count.
// *last (if given) is the key of the last label taken.
int64_t take_distinct(const uint64_t* keys, int64_t n, uint64_t* seen, int32_t* out, int64_t count, int64_t M,
                      uint64_t* last) {
  for (int64_t i = 0; i < n && count < M; ++i) {
    const int32_t id = key_label(keys[i]);
    uint64_t& word = seen[id >> 6];
    const uint64_t bit = uint64_t(1) << (id & 63);
    if (word & bit) continue;
    word |= bit;
    out[count++] = id;
    if (last) *last = keys[i];
  }
  return count;
}

void clear_taken(uint64_t* seen, const int32_t* out, int64_t count) {
  for (int64_t i = 0; i < count; ++i) seen[out[i] >> 6] = 0;
}

// The best-first walk over keys[0, n): the next block of best keys is put
// in front (nth_element), sorted and walked, the block growing until M
// distinct labels are taken or the keys run out. Returns the count; *last
// (if given) is the key of the last label taken.
int64_t take_best(uint64_t* keys, int64_t n, int64_t M, uint64_t* seen, int32_t* out, uint64_t* last = nullptr) {
  const std::greater<uint64_t> before;
  int64_t count = 0, start = 0, stop = std::min(n, M);
  for (;;) {
    if (stop < n) std::nth_element(keys + start, keys + stop, keys + n, before);
    std::sort(keys + start, keys + stop, before);
    count = take_distinct(keys + start, stop - start, seen, out, count, M, last);
    if (count == M || stop == n) return count;
    start = stop;
    stop = std::min(n, stop + std::max(2 * (M - count), stop / 2));
  }
}

// Above this many keys per wanted label (plus the sample), a threshold
// filters the keys before the exact walk.
constexpr int64_t kPrefilterRatio = 4;
constexpr int64_t kSamples = 256;

// A key that about `want` + a few of keys[0, R) are >= (the rank-th best
// of evenly spaced samples; all of them pass where want >= R); R > kSamples.
uint64_t sampled_threshold(const uint64_t* keys, int64_t R, int64_t want, Scratch& s) {
  const int64_t rank = std::min<int64_t>(kSamples, (want * kSamples + R - 1) / R + 4);
  uint64_t* sample = s.sample.data();
  for (int64_t i = 0; i < kSamples; ++i) sample[i] = keys[(i * R) / kSamples];
  std::nth_element(sample, sample + rank - 1, sample + kSamples, std::greater<uint64_t>());
  return sample[rank - 1];
}

// The M best distinct labels of keys[0, R) (larger key first) into out;
// returns how many (min(M, distinct labels)). Reorders keys.
int64_t select_distinct(uint64_t* keys, int64_t R, int64_t M, Scratch& s, int32_t* out) {
  uint64_t* seen = s.seen.data();
  if (R > kPrefilterRatio * M + kSamples) {
    // A threshold from a sample, then one filtering pass and the walk over
    // the keys that pass only.
    uint64_t* cand = s.cand.data();
    const int64_t kept = keys_at_least(keys, R, sampled_threshold(keys, R, 2 * M, s), cand);
    if (kept >= M) {
      const int64_t count = take_best(cand, kept, M, seen, out);
      if (count == M || kept == R) return count;
      // Too many repeated labels among them: start over on all keys.
      clear_taken(seen, out, count);
    }
  }
  return take_best(keys, R, M, seen, out);
}

// Everything one query needs, shared by the threads.
struct Problem {
  const float* x;  // [B, d] fp32
  const int32_t* probes;
  const int32_t* offsets;
  const int8_t* codes;
  const float* scales;
  const float* bias;
  const int32_t* ids;
  int64_t d, width, nprobe, P, T, N, M;
};

// The probed partitions of query b, checked as they are read: probes in
// [-1, P), offsets 0 <= off[p] <= off[p + 1] <= T. -1 probes are skipped.
int64_t probed_spans(const Problem& pr, int64_t b, std::vector<Span>& spans) {
  spans.clear();
  int64_t rows = 0;
  for (int64_t i = 0; i < pr.nprobe; ++i) {
    const int32_t p = pr.probes[b * pr.nprobe + i];
    if (p == -1) continue;
    TORCH_CHECK_VALUE(p >= 0 && p < pr.P, "quantized_candidates: probes must be -1 or in [0, P = ", pr.P, "), got ", p);
    const int64_t lo = pr.offsets[p], hi = pr.offsets[p + 1];
    TORCH_CHECK_VALUE(lo >= 0 && lo <= hi && hi <= pr.T, "quantized_candidates: list_offsets must be non-decreasing in [0, T = ",
                pr.T, "]; partition ", p, " is [", lo, ", ", hi, ")");
    spans.push_back({lo, hi, rows, p});
    rows += hi - lo;
  }
  return rows;
}

inline void prefetch_span(const Problem& pr, const Span& sp) {
  const int64_t rows = std::min<int64_t>(sp.end - sp.begin, 32);
  prefetch_row(pr.codes + sp.begin * pr.width, rows * pr.width);
  prefetch_row(pr.scales + sp.begin, rows * 4);
  prefetch_row(pr.bias + sp.begin, rows * 4);
  prefetch_row(pr.ids + sp.begin, rows * 4);
}

bool score_span(const Problem& pr, const QuantizedQuery& q, const Span& sp, uint64_t* keys) {
  return score_code_rows(q, pr.codes + sp.begin * pr.width, pr.scales + sp.begin, pr.bias + sp.begin,
                         pr.ids + sp.begin, sp.end - sp.begin, pr.N, keys + sp.pos);
}

// The selection's buffers for a query of `rows` keys.
void size_selection(Scratch& s, const Problem& pr, int64_t rows) {
  if (int64_t(s.cand.size()) < rows + 8) s.cand.resize(size_t(rows + 8));
  if (int64_t(s.sample.size()) < kSamples) s.sample.resize(size_t(kSamples));
  const int64_t words = (pr.N + 63) / 64;
  if (int64_t(s.seen.size()) < words) s.seen.resize(size_t(words), 0);
}

int64_t padded_width(const Problem& pr) { return (pr.width + 63) / 64 * 64; }

void size_scratch(Scratch& s, const Problem& pr, int64_t rows) {
  if (int64_t(s.keys.size()) < rows) s.keys.resize(size_t(rows));
  size_selection(s, pr, rows);
  const int64_t padded = padded_width(pr);
  if (int64_t(s.q.size()) < padded) {
    s.q.resize(size_t(padded));
    s.q16.resize(size_t(padded));
  }
}

// Bytes of probed rows from which a B == 1 call splits its partitions across
// the threads: LSS_SPLIT_QUERY_BYTES, default never. Waking a second OpenMP
// thread on a busy core costs a time slice, far more than a batch-1 query
// takes on one thread (docs/performance.md, "Measurements moved out of code
// comments"); on an idle machine a threshold
// of a few hundred KB may pay.
const int64_t kSplitBytes = [] {
  const char* v = std::getenv("LSS_SPLIT_QUERY_BYTES");
  return v ? std::max<int64_t>(0, std::atoll(v)) : std::numeric_limits<int64_t>::max();
}();

// Query b quantized into q8 / q16 (padded entries each), as the kernels read it.
QuantizedQuery make_query(const Problem& pr, int64_t b, int8_t* q8, int16_t* q16, int64_t padded) {
  QuantizedQuery q;
  quantize_row(pr.x + b * pr.d, pr.d, padded, q8, q16, &q.sum, &q.scale);
  q.q = q8;
  q.q16 = q16;
  q.width = pr.width;
  return q;
}

// The M best distinct labels of one query's keys into out (-1 padded) and its count.
void select_into(const Problem& pr, uint64_t* keys, int64_t rows, Scratch& s, int32_t* out, int32_t* out_count) {
  size_selection(s, pr, rows);
  const int64_t count = select_distinct(keys, rows, pr.M, s, out);
  clear_taken(s.seen.data(), out, count);
  std::fill(out + count, out + pr.M, -1);
  *out_count = int32_t(count);
}

// A batch of one, start to end; its partitions may be split across the threads.
void run_query(const Problem& pr, int32_t* out_ids, int32_t* out_count) {
  Scratch& s = thread_scratch();
  std::vector<Span>& spans = s.spans;
  const int64_t rows = probed_spans(pr, 0, spans);
  size_scratch(s, pr, rows);
  const QuantizedQuery q = make_query(pr, 0, s.q.data(), s.q16.data(), int64_t(s.q.size()));
  uint64_t* keys = s.keys.data();
  bool ok = true;
  if (rows * pr.width >= kSplitBytes && spans.size() > 1 && at::get_num_threads() > 1) {
    std::atomic<bool> good{true};
    at::parallel_for(0, int64_t(spans.size()), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        if (i + 1 < i1) prefetch_span(pr, spans[size_t(i + 1)]);
        if (!score_span(pr, q, spans[size_t(i)], keys)) good = false;
      }
    });
    ok = good;
  } else {
    for (size_t i = 0; i < spans.size(); ++i) {
      if (i + 1 < spans.size()) prefetch_span(pr, spans[i + 1]);
      ok &= score_span(pr, q, spans[i], keys);
    }
  }
  TORCH_CHECK_VALUE(ok, "quantized_candidates: list_ids of the probed partitions must be in [0, num_labels = ", pr.N, ")");
  select_into(pr, keys, rows, s, out_ids, out_count);
}

// Batches, partition-major: each probed partition's rows are scored for
// the queries of the batch that probe it together, while they are in cache
// (score_code_rows_many), instead of being streamed from memory once per
// query. Each query's keys go to a sink per thread that keeps only the keys
// that can still be among its best M distinct labels: when a sink runs out
// of room, the key of its M-th best distinct label becomes its threshold
// and the keys below it are dropped (compact_sink), so that a batch that
// probes most partitions does not write and re-read 8 bytes per row and
// query. The selection over a query's sinks gives the bits of a selection
// over all its keys: a key a sink dropped lies below the keys of M distinct
// labels (of that sink), so neither it nor its label can be among the best
// M; every other key is kept, and keys are totally ordered.
struct QuerySink {
  KeySink sink{nullptr, 0, 0};
  int64_t size = 0;              // keys sink.keys has room for (8 of them slack)
  std::vector<uint64_t> grown;   // its keys once they outgrow the first place
};

// The sinks' first places, one stretch per (thread slot, query), kept
// across calls (no page faults per call; never shrunk). Not zeroed: a page
// is touched only where a thread writes keys, so the slots of threads that
// never score a query's partitions cost address space, not memory. Its size
// is bounded by kBatchBlock queries (quantized_candidates_cpu).
struct SinkArena {
  std::unique_ptr<uint64_t[]> keys;
  int64_t size = 0;
  uint64_t* reserve(int64_t n) {
    if (n > size) {
      keys.reset();  // freed first: its keys need not survive
      keys.reset(new uint64_t[size_t(n)]);
      size = n;
    }
    return keys.get();
  }
};

SinkArena& sink_arena() {
  thread_local SinkArena arena;
  return arena;
}

// Keys a sink holds before its first compaction, for a query of `rows`
// probed rows: all of them up to 8,192 (64 KB: a compaction costs a few
// microseconds, more than the writes it would save there), else 4M + 1,024
// (a small sink that stays in cache, compacted to ~2M keys: room for most
// of it).
int64_t first_sink_size(int64_t rows, int64_t M) { return rows <= 8192 ? rows : std::min(rows, 4 * M + 1024); }

// Drops the keys of a sink below a threshold that the keys of M distinct
// labels of the sink reach, and makes it the sink's threshold: a sampled one
// that about 2M keys pass, or 4M, 8M, ... (copies of the same labels: spill),
// the first whose keys hold M distinct labels (counted), else the key of the
// M-th best distinct label. Thresholds only rise (every key held is >= the
// last one). Fewer than M distinct labels: nothing changes.
void compact_sink(QuerySink& q, const Problem& pr, Scratch& s) {
  KeySink& k = q.sink;
  const int64_t n = k.count, M = pr.M;
  size_selection(s, pr, n);
  if (int64_t(s.taken.size()) < M) s.taken.resize(size_t(M));
  uint64_t* work = s.cand.data();
  uint64_t* seen = s.seen.data();
  for (int64_t want = 2 * M; n > kSamples && 2 * want <= n; want *= 2) {
    const uint64_t t = sampled_threshold(k.keys, n, want, s);
    const int64_t kept = keys_at_least(k.keys, n, t, work);
    const int64_t distinct = take_distinct(work, kept, seen, s.taken.data(), 0, M, nullptr);
    clear_taken(seen, s.taken.data(), distinct);
    if (distinct == M) {
      std::copy(work, work + kept, k.keys);
      k.count = kept;
      k.threshold = t;
      return;
    }
  }
  std::copy(k.keys, k.keys + n, work);
  uint64_t last = 0;
  const int64_t got = take_best(work, n, M, seen, s.taken.data(), &last);
  clear_taken(seen, s.taken.data(), got);
  if (got < M) return;
  k.threshold = last;
  k.count = keys_at_least(work, n, last, k.keys);
}

// Room in q's sink for n more keys (+ the 8 of slack the vector stores need).
void make_room(QuerySink& q, int64_t n, const Problem& pr, Scratch& s) {
  KeySink& k = q.sink;
  if (k.count + n + 8 <= q.size) return;
  if (k.count >= pr.M) compact_sink(q, pr, s);
  // Grown where the compaction left it more than half full (many copies
  // of the same labels) or the keys do not fit.
  if (k.count + n + 8 > q.size || 2 * k.count > q.size) {
    const int64_t size = std::max(2 * q.size, k.count + n + 8);
    std::vector<uint64_t> grown(static_cast<size_t>(size));
    std::copy(k.keys, k.keys + k.count, grown.data());
    q.grown.swap(grown);
    k.keys = q.grown.data();
    q.size = size;
  }
}

// Queries of one run_batches call (docs/performance.md, "0.9.8").
constexpr int64_t kBatchBlock = 1024;

void run_batches(const Problem& pr, int64_t B, int32_t* out_ids, int32_t* out_count) {
  // Every query's spans (checked), in probe order, and its number of rows.
  std::vector<Span> spans, one;
  std::vector<int64_t> first_span(size_t(B + 1), 0), rows(size_t(B), 0);
  for (int64_t b = 0; b < B; ++b) {
    rows[size_t(b)] = probed_spans(pr, b, one);
    spans.insert(spans.end(), one.begin(), one.end());
    first_span[size_t(b + 1)] = int64_t(spans.size());
  }
  const int64_t padded = padded_width(pr);
  std::vector<int8_t> q8(size_t(B * padded));
  std::vector<int16_t> q16(size_t(B * padded));
  std::vector<QuantizedQuery> qs(static_cast<size_t>(B));
  at::parallel_for(0, B, 64, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      qs[size_t(b)] = make_query(pr, b, q8.data() + b * padded, q16.data() + b * padded, padded);
  });
  // The (query, span) pairs of every partition, partitions in id order.
  std::vector<int64_t> part_start(size_t(pr.P + 1), 0);
  for (const Span& sp : spans) ++part_start[size_t(sp.part + 1)];
  for (int64_t p = 0; p < pr.P; ++p) part_start[size_t(p + 1)] += part_start[size_t(p)];
  std::vector<int64_t> fill(part_start.begin(), part_start.end() - 1);
  std::vector<std::pair<int32_t, int64_t>> entries(size_t(part_start[size_t(pr.P)]));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = first_span[size_t(b)]; t < first_span[size_t(b + 1)]; ++t)
      entries[size_t(fill[size_t(spans[size_t(t)].part)]++)] = {int32_t(b), t};
  // Work units: a partition's entries, in runs of at most `run` queries, so
  // that a partition probed by most of the batch (the probe's one list of
  // centroids above all) is shared by the threads instead of kept by one.
  const int64_t threads = at::get_num_threads();
  const int64_t run = std::max<int64_t>(1, (part_start[size_t(pr.P)] + 8 * threads - 1) / (8 * threads));
  // The first entry of each unit, then the end: a unit ends where the next
  // begins (the next run of its partition, or the next non-empty partition).
  std::vector<int64_t> units;
  for (int64_t p = 0; p < pr.P; ++p)
    for (int64_t e = part_start[size_t(p)]; e < part_start[size_t(p + 1)]; e += run) units.push_back(e);
  const int64_t num_units = int64_t(units.size());
  units.push_back(part_start[size_t(pr.P)]);
  // One sink per (thread slot, query), first in the arena (first_sink_size).
  std::vector<QuerySink> sinks(size_t(threads * B));
  std::vector<int64_t> place(size_t(B + 1), 0);
  for (int64_t b = 0; b < B; ++b) place[size_t(b + 1)] = place[size_t(b)] + first_sink_size(rows[size_t(b)], pr.M) + 8;
  uint64_t* arena = sink_arena().reserve(threads * place[size_t(B)]);
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t b = 0; b < B; ++b) {
      QuerySink& q = sinks[size_t(t * B + b)];
      q.sink.keys = arena + t * place[size_t(B)] + place[size_t(b)];
      q.size = place[size_t(b + 1)] - place[size_t(b)];
    }
  // Units are handed out one at a time (partition sizes differ a lot).
  std::atomic<int64_t> next{0};
  std::atomic<bool> good{true};
  at::parallel_for(0, threads, 1, [&](int64_t slot, int64_t) {
    Scratch& s = thread_scratch();
    QuerySink* mine = sinks.data() + slot * B;
    std::vector<const QuantizedQuery*> unit_queries;
    std::vector<KeySink*> unit_sinks;
    bool ok = true;
    for (int64_t u; (u = next.fetch_add(1)) < num_units;) {
      // A unit's entries are all of one partition: its rows, scored for the
      // unit's queries together.
      const Span& sp = spans[size_t(entries[size_t(units[size_t(u)])].second)];
      const int64_t n = sp.end - sp.begin;
      unit_queries.clear();
      unit_sinks.clear();
      for (int64_t e = units[size_t(u)]; e < units[size_t(u + 1)]; ++e) {
        const int64_t b = entries[size_t(e)].first;
        QuerySink& q = mine[b];
        make_room(q, n, pr, s);
        unit_queries.push_back(&qs[size_t(b)]);
        unit_sinks.push_back(&q.sink);
      }
      ok &= score_code_rows_many(unit_queries.data(), int64_t(unit_queries.size()), pr.codes + sp.begin * pr.width,
                                 pr.scales + sp.begin, pr.bias + sp.begin, pr.ids + sp.begin, n, pr.N,
                                 unit_sinks.data());
    }
    if (!ok) good = false;
  });
  TORCH_CHECK_VALUE(good.load(), "quantized_candidates: list_ids of the probed partitions must be in [0, num_labels = ", pr.N,
              ")");
  // Each query's keys: its one non-empty sink, or its sinks' keys together.
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    Scratch& s = thread_scratch();
    std::vector<uint64_t> merged;
    for (int64_t b = b0; b < b1; ++b) {
      int64_t filled = 0, total = 0;
      QuerySink* only = nullptr;
      for (int64_t t = 0; t < threads; ++t) {
        QuerySink& q = sinks[size_t(t * B + b)];
        if (q.sink.count == 0) continue;
        ++filled;
        total += q.sink.count;
        only = &q;
      }
      uint64_t* keys = only ? only->sink.keys : nullptr;
      if (filled > 1) {
        merged.clear();
        for (int64_t t = 0; t < threads; ++t) {
          const KeySink& k = sinks[size_t(t * B + b)].sink;
          merged.insert(merged.end(), k.keys, k.keys + k.count);
        }
        keys = merged.data();
      }
      select_into(pr, keys, total, s, out_ids + b * pr.M, out_count + b);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantized_candidates_cpu(const at::Tensor& x, const at::Tensor& probes,
                                                            const at::Tensor& list_offsets, const at::Tensor& codes,
                                                            const at::Tensor& code_scales, const at::Tensor& code_bias,
                                                            const at::Tensor& list_ids, int64_t num_labels,
                                                            int64_t max_candidates) {
  check_quantized_candidates(x, probes, list_offsets, codes, code_scales, code_bias, list_ids, num_labels,
                             max_candidates);
  const int64_t B = x.size(0), M = max_candidates;
  at::Tensor ids = at::empty({B, M}, x.options().dtype(at::kInt));
  at::Tensor counts = at::empty({B}, x.options().dtype(at::kInt));
  if (B == 0) return {ids, counts};
  // The reference quantizes in fp32: fp64 rounds to fp32 first, 16-bit types widen exactly.
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor pc = probes.contiguous(), oc = list_offsets.contiguous(), cc = codes.contiguous();
  const at::Tensor sc = code_scales.contiguous(), bc = code_bias.contiguous(), ic = list_ids.contiguous();
  const Problem pr{xf.data_ptr<float>(), pc.data_ptr<int32_t>(), oc.data_ptr<int32_t>(), cc.data_ptr<int8_t>(),
                   sc.data_ptr<float>(), bc.data_ptr<float>(), ic.data_ptr<int32_t>(), x.size(1), codes.size(1),
                   probes.size(1), list_offsets.size(0) - 1, codes.size(0), num_labels, M};
  int32_t* ip = ids.data_ptr<int32_t>();
  int32_t* cp = counts.data_ptr<int32_t>();
  if (B == 1) {
    run_query(pr, ip, cp);
    return {ids, counts};
  }
  // Blocks of kBatchBlock queries (a query's result does not depend on its
  // batch): the arena and the per-call buffers are sized by the block, not
  // by B (one call of 32,768 queries left ~450 MB resident in the arena).
  for (int64_t b0 = 0; b0 < B; b0 += kBatchBlock) {
    Problem block = pr;
    block.x = pr.x + b0 * pr.d;
    block.probes = pr.probes + b0 * pr.nprobe;
    run_batches(block, std::min(kBatchBlock, B - b0), ip + b0 * M, cp + b0);
  }
  return {ids, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) { m.impl("quantized_candidates", &quantized_candidates_cpu); }

}  // namespace lss::cpu
