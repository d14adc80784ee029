// Host side of the partition family's CUDA kernels (partition_probe_cuda.cu,
// quantized_candidates_cuda.cu; interface: partition_launch.h): argument
// checks (TORCH_CHECK, the preconditions of lsskernels/_checks.py), the device
// guard, the current stream, allocation through the caching allocator, the
// status read-back, and the TORCH_LIBRARY_IMPL(lsskernels, CUDA, m)
// registration of partition_probe and quantized_candidates.
// (partition_predict_topk is a composite of these and the logits / top-k ops:
// no CUDA kernel of its own.)
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "host_utils.h"
#include "partition_launch.h"

namespace lss::cuda {
namespace {

constexpr int64_t kCodeAlign = 32;  // reference.CODE_ALIGN
constexpr int64_t kQuantLevels = 127;
// Widest codes row whose exact int32 dot cannot overflow: 127^2 Dp < 2^31.
constexpr int64_t kMaxCodeWidth = ((int64_t(1) << 31) - 1) / (kQuantLevels * kQuantLevels) /
                                  kCodeAlign * kCodeAlign;
// Keys (8 bytes each, two buffers) per chunk of queries in quantized_candidates.
constexpr int64_t kChunkKeys = int64_t(1) << 25;

bool is_float(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

// ----------------------------------------------------------- partition_probe
void check_partition_probe(const at::Tensor& x, const at::Tensor& centroids,
                           const c10::optional<at::Tensor>& bias, int64_t nprobe) {
  const char* op = "partition_probe";
  TORCH_CHECK(x.dim() == 2 && is_float(x), op, ": x must be [B, d] floating point, got ",
              x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(centroids.dim() == 2 && centroids.size(1) == x.size(1), op,
              ": centroids must be [P, d] with d = x.size(1) = ", x.size(1), ", got ",
              centroids.sizes());
  TORCH_CHECK(centroids.scalar_type() == x.scalar_type(), op, ": centroids dtype ",
              centroids.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(centroids.size(0) >= 1, op, ": centroids must hold at least one partition");
  TORCH_CHECK(centroids.size(0) < (int64_t(1) << 31), op, ": at most 2^31 - 1 partitions");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == centroids.size(0), op,
                ": centroid_bias must be [P] = [", centroids.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), op,
                ": centroid_bias dtype differs from x dtype");
    check_cuda(op, {&x, &centroids, &*bias});
  } else {
    check_cuda(op, {&x, &centroids});
  }
  TORCH_CHECK(nprobe >= 1 && nprobe <= centroids.size(0), op, ": nprobe must be in [1, P] = [1, ",
              centroids.size(0), "], got ", nprobe);
}

at::Tensor partition_probe_cuda(const at::Tensor& x, const at::Tensor& centroids,
                                const c10::optional<at::Tensor>& centroid_bias, int64_t nprobe) {
  check_partition_probe(x, centroids, centroid_bias, nprobe);
  const char* op = "partition_probe";
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = x.size(0), d = x.size(1), P = centroids.size(0);
  at::Tensor probes = at::empty({B, nprobe}, x.options().dtype(at::kInt));
  if (B == 0) return probes;
  const DType dt = dtype_of(op, x);
  const at::ScalarType acc = acc_type(x.scalar_type());
  const at::Tensor xa = x.to(acc).contiguous(), cc = centroids.contiguous();
  at::Tensor bc;
  if (centroid_bias.has_value()) bc = centroid_bias->contiguous();
  at::Tensor scores = at::empty({B, P}, x.options().dtype(acc));
  partition_scores(dt, xa.data_ptr(), cc.data_ptr(), raw(bc), B, d, P, scores.data_ptr(), stream);
  const int64_t n = next_pow2_host(P);
  const int64_t smem_cap = probe_smem_capacity(dt);
  if (n <= smem_cap) {
    probe_select(dt, scores.data_ptr(), B, P, nprobe, n, nullptr, 0, B, probes.data_ptr<int32_t>(),
                 stream);
    return probes;
  }
  // P above the shared-memory capacity: sort in global scratch, <= 256 MiB of rows at a time.
  TORCH_CHECK(n <= (int64_t(1) << 30), op, ": P = ", P, " partitions is too many");
  const int64_t per_row = int64_t(probe_scratch_bytes_per_row(dt, n));
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 28) / per_row);
  at::Tensor scratch = at::empty({std::min(rows, B) * per_row}, x.options().dtype(at::kByte));
  for (int64_t r0 = 0; r0 < B; r0 += rows)
    probe_select(dt, scores.data_ptr(), B, P, nprobe, n, scratch.data_ptr(), r0,
                 std::min(B, r0 + rows), probes.data_ptr<int32_t>(), stream);
  return probes;
}

// ------------------------------------------------------ quantized_candidates
void check_quantized_candidates(const at::Tensor& x, const at::Tensor& probes,
                                const at::Tensor& offsets, const at::Tensor& codes,
                                const at::Tensor& scales, const at::Tensor& bias,
                                const at::Tensor& ids, int64_t num_labels,
                                int64_t max_candidates) {
  const char* op = "quantized_candidates";
  TORCH_CHECK(x.dim() == 2 && is_float(x), op, ": x must be [B, d] floating point, got ",
              x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(probes.dim() == 2 && probes.scalar_type() == at::kInt && probes.size(0) == x.size(0),
              op, ": probes must be int32 [B, nprobe] with B = ", x.size(0), ", got ",
              probes.scalar_type(), " ", probes.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kInt && offsets.size(0) >= 2, op,
              ": list_offsets must be int32 [P + 1] with P >= 1, got ", offsets.scalar_type(), " ",
              offsets.sizes());
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kChar, op,
              ": codes must be int8 [T, Dp], got ", codes.scalar_type(), " ", codes.sizes());
  const int64_t d = x.size(1), T = codes.size(0), Dp = codes.size(1);
  TORCH_CHECK(Dp % kCodeAlign == 0 && d <= Dp && Dp < d + kCodeAlign, op,
              ": codes must be int8 [T, Dp] with Dp = d rounded up to a multiple of ", kCodeAlign,
              " (d = ", d, "), got ", codes.sizes());
  TORCH_CHECK(Dp <= kMaxCodeWidth, op, ": codes rows of ", Dp,
              " entries could overflow the int32 dot product; at most ", kMaxCodeWidth,
              " supported");
  TORCH_CHECK(T < (int64_t(1) << 31), op, ": at most 2^31 - 1 list rows");
  for (const auto& [name, t, dtype] :
       {std::tuple<const char*, const at::Tensor*, at::ScalarType>{"code_scales", &scales, at::kFloat},
        {"code_bias", &bias, at::kFloat},
        {"list_ids", &ids, at::kInt}})
    TORCH_CHECK(t->dim() == 1 && t->size(0) == T && t->scalar_type() == dtype, op, ": ", name,
                " must be ", dtype, " [T] = [", T, "] (one entry per row of codes), got ",
                t->scalar_type(), " ", t->sizes());
  TORCH_CHECK(num_labels >= 1 && num_labels < (int64_t(1) << 31), op,
              ": num_labels must be in [1, 2^31), got ", num_labels);
  TORCH_CHECK(max_candidates >= 1, op, ": max_candidates must be >= 1, got ", max_candidates);
  check_cuda(op, {&x, &probes, &offsets, &codes, &scales, &bias, &ids});
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
  TORCH_CHECK((err & kBadOffsets) == 0, op, ": list_offsets must be non-negative, non-decreasing "
              "and at most codes.size(0) = ", lists.T);
  TORCH_CHECK((err & kBadProbe) == 0, op, ": probes must be in [-1, P) = [-1, ", lists.P, ")");
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
    TORCH_CHECK((read_status(status)[kStatusError] & kBadListId) == 0, op,
                ": list_ids of a probed row must be in [0, num_labels) = [0, ", num_labels, ")");
  return {out_ids, counts};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("partition_probe", &partition_probe_cuda);
  m.impl("quantized_candidates", &quantized_candidates_cuda);
}

}  // namespace lss::cuda
