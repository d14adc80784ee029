// Host side of quantized_candidates on CUDA (kernels:
// quantized_candidates_cuda.cu; interface: launch.h; shared host helpers:
// host_utils.h): argument checks (lss/arg_checks.h, the preconditions of
// lsskernels/_checks.py), the device guard, the current stream, allocation
// through the caching allocator, the status read-back, and the chunking of
// queries over the key buffers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "host_utils.h"

namespace lss::cuda {
namespace {

// Keys (8 bytes each, two buffers) per chunk of queries in quantized_candidates.
constexpr int64_t kChunkKeys = int64_t(1) << 25;

// The shared checks (lss/arg_checks.h: shapes, dtypes, the code width
// kMaxCodeWidth whose int32 dots cannot overflow), then the devices.
void check_quantized_candidates(const at::Tensor& x, const at::Tensor& probes,
                                const at::Tensor& offsets, const at::Tensor& codes,
                                const at::Tensor& scales, const at::Tensor& bias,
                                const at::Tensor& ids, int64_t num_labels,
                                int64_t max_candidates) {
  lss::check_quantized_candidates(x, probes, offsets, codes, scales, bias, ids, num_labels, max_candidates);
  check_cuda("quantized_candidates", {&x, &probes, &offsets, &codes, &scales, &bias, &ids});
}

// codes with 16-byte aligned rows (the kernel's int4 loads): contiguous, and
// copied to a fresh allocation when its data pointer is not aligned.
at::Tensor aligned_codes(const at::Tensor& codes) {
  at::Tensor c = codes.contiguous();
  if (reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 != 0) c = c.clone(at::MemoryFormat::Contiguous);
  TORCH_CHECK(c.numel() == 0 || reinterpret_cast<uintptr_t>(c.data_ptr()) % 16 == 0,
              "quantized_candidates: could not align codes");
  return c;
}

std::tuple<at::Tensor, at::Tensor> quantized_candidates_cuda(
    const at::Tensor& x, const at::Tensor& probes, const at::Tensor& list_offsets,
    const at::Tensor& codes, const at::Tensor& code_scales, const at::Tensor& code_bias,
    const at::Tensor& list_ids, int64_t num_labels, int64_t max_candidates) {
  const char* op = "quantized_candidates";
  check_quantized_candidates(x, probes, list_offsets, codes, code_scales, code_bias, list_ids,
                             num_labels, max_candidates);
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = x.size(0), d = x.size(1), nprobe = probes.size(1), M = max_candidates;
  const auto int_opts = x.options().dtype(at::kInt), long_opts = x.options().dtype(at::kLong);
  at::Tensor out_ids = at::full({B, M}, -1, int_opts);
  at::Tensor counts = at::zeros({B}, int_opts);

  const at::Tensor pc = probes.contiguous(), oc = list_offsets.contiguous();
  const at::Tensor cc = aligned_codes(codes), sc = code_scales.contiguous(),
                   bc = code_bias.contiguous(), ic = list_ids.contiguous();
  const PartitionLists lists{oc.data_ptr<int32_t>(), oc.size(0) - 1, cc.data_ptr<int8_t>(),
                             cc.size(0), cc.size(1), sc.data_ptr<float>(), bc.data_ptr<float>(),
                             ic.data_ptr<int32_t>(), num_labels};

  // Pass 0: validate, and size every (query, probe) slot. One read-back
  // (status and the per-query totals together) before any list row is read.
  at::Tensor status = new_status(x);
  at::Tensor sizes = at::zeros({B, nprobe}, long_opts);
  partition_sizes(lists, pc.data_ptr<int32_t>(), B, nprobe, sizes.data_ptr<int64_t>(),
                  status_ptr(status), stream);
  const at::Tensor per_query = sizes.sum(1);
  const at::Tensor host = at::cat({status, per_query}).to(at::kCPU);
  const int64_t* h = host.data_ptr<int64_t>();
  const int64_t err = h[kStatusError];
  TORCH_CHECK_VALUE((err & kBadOffsets) == 0, op, ": list_offsets must be non-negative, non-decreasing "
                    "and at most codes.size(0) = ", lists.T);
  TORCH_CHECK_VALUE((err & kBadProbe) == 0, op, ": probes must be in [-1, P) = [-1, ", lists.P, ")");
  const int64_t* rows = h + kStatusWords;  // per query
  std::vector<int64_t> qoff(size_t(B) + 1, 0);
  for (int64_t b = 0; b < B; ++b) qoff[size_t(b) + 1] = qoff[size_t(b)] + rows[b];
  if (qoff[size_t(B)] == 0) return {out_ids, counts};

  const at::Tensor ends = sizes.reshape({-1}).cumsum(0);
  const at::Tensor slot_begin = (ends - sizes.reshape({-1})).contiguous();
  at::Tensor query_offsets = at::zeros({B + 1}, long_opts);
  query_offsets.slice(0, 1).copy_(per_query.cumsum(0));

  const at::Tensor xf = x.to(at::kFloat).contiguous();  // reference: x.to(float32)
  at::Tensor q = at::empty({B, lists.Dp}, x.options().dtype(at::kChar));
  at::Tensor qscale = at::empty({B}, x.options().dtype(at::kFloat));
  quantize_queries(xf.data_ptr<float>(), B, d, lists.Dp, q.data_ptr<int8_t>(),
                   qscale.data_ptr<float>(), stream);
  at::Tensor unique = at::zeros({B}, int_opts);

  // Chunks of whole queries with at most kChunkKeys keys (or one query).
  for (int64_t q0 = 0; q0 < B;) {
    int64_t q1 = q0 + 1;
    while (q1 < B && qoff[size_t(q1) + 1] - qoff[size_t(q0)] <= kChunkKeys) ++q1;
    const int64_t base = qoff[size_t(q0)], n = qoff[size_t(q1)] - base, segs = q1 - q0;
    if (n > 0) {
      const at::Tensor seg = (query_offsets.slice(0, q0, q1 + 1) - base).contiguous();
      const int64_t* segp = seg.data_ptr<int64_t>();
      at::Tensor keys_a = at::empty({n}, long_opts), keys_b = at::empty({n}, long_opts);
      auto* a = reinterpret_cast<uint64_t*>(keys_a.data_ptr<int64_t>());
      auto* bk = reinterpret_cast<uint64_t*>(keys_b.data_ptr<int64_t>());
      quantized_keys(lists, q.data_ptr<int8_t>(), qscale.data_ptr<float>(), pc.data_ptr<int32_t>(),
                     nprobe, slot_begin.data_ptr<int64_t>(), base, q0, q1, a, status_ptr(status),
                     stream);
      const size_t temp_bytes = segmented_sort_temp_bytes(n, segs, segp);
      at::Tensor temp = at::empty({int64_t(temp_bytes) + 1}, x.options().dtype(at::kByte));
      segmented_sort(temp.data_ptr(), temp_bytes, a, bk, n, segs, segp, stream);
      dedupe_keys(bk, a, segp, segs, unique.data_ptr<int32_t>() + q0, stream);
      segmented_sort(temp.data_ptr(), temp_bytes, a, bk, n, segs, segp, stream);
      write_candidates(bk, segp, unique.data_ptr<int32_t>() + q0, segs, M,
                       out_ids.data_ptr<int32_t>() + q0 * M, counts.data_ptr<int32_t>() + q0, stream);
    }
    q0 = q1;
  }
  if (!async_errors())
    TORCH_CHECK_VALUE((read_status(status)[kStatusError] & kBadListId) == 0, op,
                      ": list_ids of a probed row must be in [0, num_labels) = [0, ", num_labels, ")");
  return {out_ids, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("quantized_candidates", &quantized_candidates_cuda);
}

}  // namespace lss::cuda
