// Host side of bucket_lookup and bucket_lookup_bitmap on CUDA (kernels:
// bucket_lookup_cuda.cu; interface: launch.h; shared host helpers:
// host_utils.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "host_utils.h"

namespace lss::cuda {
namespace {

// The shared checks (lss/arg_checks.h), then the devices.
void check_tables(const char* op, const at::Tensor& codes, const at::Tensor& offsets,
                  const at::Tensor& items, int64_t num_labels, int64_t min_hits) {
  lss::check_tables(op, codes, offsets, items, num_labels, min_hits);
  check_cuda(op, {&codes, &offsets, &items});
}

void raise_malformed(const char* op, int64_t err) {
  TORCH_CHECK_VALUE(err == 0, op, ": malformed tables: a code is outside [0, 2^K), a bucket's offsets "
              "are decreasing or past items.size(1), or an item is outside [0, num_labels)");
}

// Runs the candidate pass over every query: the shared-memory path for
// queries retrieving up to its capacity, then the global-memory fallback, in
// chunks of at most 2^25 keys (256 MiB) of scratch, for the rest.
void run_lookup(const char* op, const Tables& t, const at::Tensor& retrieved, int64_t max_retrieved,
                int64_t min_hits, const LookupOut& out, const at::Tensor& like,
                cudaStream_t stream) {
  if (t.B == 0) return;
  TORCH_CHECK_VALUE(max_retrieved <= (int64_t(1) << 30), op, ": a query retrieves ", max_retrieved,
              " items (with duplicates); at most 2^30 are supported");
  const int64_t smem_cap = std::max<int64_t>(
      32, std::min<int64_t>(next_pow2_host(max_retrieved), lookup_smem_capacity()));
  lookup_candidates(t, retrieved.data_ptr<int64_t>(), min_hits, out, smem_cap, smem_cap, nullptr, 0,
                    t.B, stream);
  if (max_retrieved <= smem_cap) return;
  const int64_t cap = next_pow2_host(max_retrieved);
  const int64_t slots = std::max<int64_t>(1, (int64_t(1) << 25) / cap);
  at::Tensor scratch = at::empty({std::min(slots, t.B) * cap}, like.options().dtype(at::kLong));
  for (int64_t q0 = 0; q0 < t.B; q0 += slots)
    lookup_candidates(t, retrieved.data_ptr<int64_t>(), min_hits, out, cap, smem_cap,
                      reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>()), q0,
                      std::min(t.B, q0 + slots), stream);
}

Tables make_tables(const at::Tensor& codes, const at::Tensor& offsets, const at::Tensor& items,
                   int64_t num_labels) {
  return Tables{codes.data_ptr<int32_t>(), codes.size(0), codes.size(1),
                offsets.data_ptr<int32_t>(), offsets.size(1) - 1, items.data_ptr<int32_t>(),
                items.size(1), num_labels};
}

std::tuple<at::Tensor, at::Tensor> bucket_lookup_cuda(const at::Tensor& codes,
                                                      const at::Tensor& offsets,
                                                      const at::Tensor& items, int64_t num_labels,
                                                      int64_t max_candidates, int64_t min_hits) {
  const char* op = "bucket_lookup";
  check_tables(op, codes, offsets, items, num_labels, min_hits);
  check_max_candidates(op, max_candidates);
  const c10::cuda::CUDAGuard guard(codes.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = codes.size(0), M = max_candidates;
  const at::Tensor cc = codes.contiguous(), oc = offsets.contiguous(), ic = items.contiguous();
  at::Tensor ids = at::empty({B, M}, codes.options());
  at::Tensor counts = at::empty({B}, codes.options());
  if (B == 0) return {ids, counts};
  const Tables t = make_tables(cc, oc, ic, num_labels);
  at::Tensor status = new_status(codes);
  at::Tensor retrieved = at::empty({B}, codes.options().dtype(at::kLong));
  lookup_prepass(t, retrieved.data_ptr<int64_t>(), status_ptr(status), stream);
  const auto st = read_status(status);
  raise_malformed(op, st[kStatusError]);
  const LookupOut out{ids.data_ptr<int32_t>(), counts.data_ptr<int32_t>(), M, nullptr, 0};
  run_lookup(op, t, retrieved, st[kStatusMax], min_hits, out, codes, stream);
  return {ids, counts};
}

at::Tensor bucket_lookup_bitmap_cuda(const at::Tensor& codes, const at::Tensor& offsets,
                                     const at::Tensor& items, int64_t num_labels,
                                     int64_t min_hits) {
  const char* op = "bucket_lookup_bitmap";
  check_tables(op, codes, offsets, items, num_labels, min_hits);
  const c10::cuda::CUDAGuard guard(codes.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = codes.size(0), words = bitmap_words(num_labels);
  const at::Tensor cc = codes.contiguous(), oc = offsets.contiguous(), ic = items.contiguous();
  at::Tensor bitmap = at::zeros({B, words}, codes.options());
  if (B == 0) return bitmap;
  const Tables t = make_tables(cc, oc, ic, num_labels);
  at::Tensor status = new_status(codes);
  if (min_hits == 1) {
    lookup_bitmap_any(t, bitmap.data_ptr<int32_t>(), words, status_ptr(status), stream);
    raise_malformed(op, read_status(status)[kStatusError]);
    return bitmap;
  }
  at::Tensor retrieved = at::empty({B}, codes.options().dtype(at::kLong));
  lookup_prepass(t, retrieved.data_ptr<int64_t>(), status_ptr(status), stream);
  const auto st = read_status(status);
  raise_malformed(op, st[kStatusError]);
  const LookupOut out{nullptr, nullptr, 0, bitmap.data_ptr<int32_t>(), words};
  run_lookup(op, t, retrieved, st[kStatusMax], min_hits, out, codes, stream);
  return bitmap;
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("bucket_lookup", &bucket_lookup_cuda);
  m.impl("bucket_lookup_bitmap", &bucket_lookup_bitmap_cuda);
}

}  // namespace lss::cuda
