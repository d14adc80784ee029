// Host-side argument checks shared by the CPU kernels (csrc/cpu) and the CUDA
// host wrappers (csrc/cuda/*_host.cpp). Both validate the same
// preconditions with the same messages, so a malformed input fails
// identically on either device; keeping one copy keeps it that way. Also the
// allocation of the logits ops' backward outputs, the same on both.
//
// Only shapes, dtypes and scalar arguments are checked here. Device checks,
// device-specific limits and scans of tensor values stay with each backend.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "lss/common.h"

namespace lss {

// ---------------------------------------------------------------- hash codes
inline void check_hash_codes(const at::Tensor& x, const at::Tensor& proj) {
  TORCH_CHECK(x.dim() == 2, "hash_codes: x must be [B, d], got ", x.sizes());
  TORCH_CHECK(proj.dim() == 3, "hash_codes: proj must be [L, K, d], got ", proj.sizes());
  TORCH_CHECK(proj.size(2) == x.size(1), "hash_codes: proj is [L, K, ", proj.size(2),
              "] but x has d = ", x.size(1));
  TORCH_CHECK(proj.size(1) >= 1 && proj.size(1) <= kMaxBits,
              "hash_codes: K (bits per table) must be in [1, ", kMaxBits, "], got ", proj.size(1));
  TORCH_CHECK(x.scalar_type() == proj.scalar_type(), "hash_codes: x and proj dtypes differ");
}

// -------------------------------------------------------------------- tables
inline void check_build_tables(const at::Tensor& codes, int64_t bits) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kInt,
              "build_tables: codes must be int32 [N, L], got ", codes.scalar_type(), " ",
              codes.sizes());
  TORCH_CHECK(bits >= 1 && bits <= kMaxBits, "build_tables: bits must be in [1, ", kMaxBits,
              "], got ", bits);
  TORCH_CHECK(codes.size(0) < (int64_t(1) << 31), "build_tables: at most 2^31 - 1 labels");
}

// The tables and query codes of bucket_lookup and bucket_lookup_bitmap.
inline void check_tables(const char* op, const at::Tensor& codes, const at::Tensor& offsets,
                         const at::Tensor& items, int64_t num_labels, int64_t min_hits) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kInt,
              op, ": codes must be int32 [B, L], got ", codes.scalar_type(), " ", codes.sizes());
  TORCH_CHECK(offsets.dim() == 2 && offsets.scalar_type() == at::kInt,
              op, ": offsets must be int32 [L, 2^K + 1], got ", offsets.scalar_type(), " ",
              offsets.sizes());
  TORCH_CHECK(items.dim() == 2 && items.scalar_type() == at::kInt,
              op, ": items must be int32 [L, T], got ", items.scalar_type(), " ", items.sizes());
  TORCH_CHECK(codes.size(1) == offsets.size(0) && items.size(0) == offsets.size(0),
              op, ": codes, offsets and items disagree on the number of tables: ",
              codes.size(1), ", ", offsets.size(0), ", ", items.size(0));
  const int64_t buckets = offsets.size(1) - 1;
  TORCH_CHECK(buckets >= 2 && (buckets & (buckets - 1)) == 0 && buckets <= (int64_t(1) << kMaxBits),
              op, ": offsets must have 2^K + 1 columns with 1 <= K <= ", kMaxBits, ", got ",
              offsets.size(1));
  TORCH_CHECK(codes.size(1) < kMaxTables, op, ": at most ", kMaxTables - 1, " tables");
  TORCH_CHECK(num_labels >= 0 && num_labels < (int64_t(1) << 31), op,
              ": num_labels must be in [0, 2^31), got ", num_labels);
  TORCH_CHECK(min_hits >= 1, op, ": min_hits must be >= 1, got ", min_hits);
}

inline void check_max_candidates(int64_t max_candidates) {
  TORCH_CHECK(max_candidates >= 1, "bucket_lookup: max_candidates must be >= 1, got ",
              max_candidates);
}

// -------------------------------------------------------------------- logits
// x [B, d], weight [N, d] and the optional bias [N] of the logits ops.
inline void check_dense_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be [B, d], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1), op,
              ": weight must be [N, d] with d = ", x.size(1), ", got ", weight.sizes());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), op, ": weight dtype ",
              weight.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(weight.size(0) < (int64_t(1) << 31), op, ": at most 2^31 - 1 labels");
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [N] = [",
                weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), op, ": bias dtype differs from x dtype");
  }
}

// Per-query candidate ids of gathered_logits(_backward): int32 [B, M].
inline void check_ids_shape(const char* op, const at::Tensor& x, const at::Tensor& ids) {
  TORCH_CHECK(ids.dim() == 2 && ids.size(0) == x.size(0) && ids.scalar_type() == at::kInt, op,
              ": ids must be int32 [B, M] with B = ", x.size(0), ", got ", ids.scalar_type(), " ",
              ids.sizes());
}

inline void check_gathered_grad(const at::Tensor& grad, const at::Tensor& ids) {
  TORCH_CHECK(grad.sizes() == ids.sizes(), "gathered_logits_backward: grad must be ", ids.sizes(),
              ", got ", grad.sizes());
}

// A candidate bitmap: int32 [rows, ceil(num_labels / 32)].
inline void check_bitmap(const char* op, const at::Tensor& bitmap, int64_t rows,
                         int64_t num_labels) {
  TORCH_CHECK(bitmap.dim() == 2 && bitmap.scalar_type() == at::kInt && bitmap.size(0) == rows &&
                  bitmap.size(1) == bitmap_words(num_labels),
              op, ": bitmap must be int32 [B, ceil(N / 32)] = [", rows, ", ",
              bitmap_words(num_labels), "], got ", bitmap.scalar_type(), " ", bitmap.sizes());
}

// x, weight, bias and bitmap of bitmap_sparse_matmul (bias nullopt for its
// backward).
inline void check_bitmap_sparse_matmul(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, const at::Tensor& bitmap) {
  check_dense_args(op, x, weight, bias);
  check_bitmap(op, bitmap, x.size(0), weight.size(0));
}

// row_ptr and grad_values of bitmap_sparse_matmul_backward, against the
// bitmap's own row_ptr [B + 1] and nnz as the backend decoded them (on its
// device).
inline void check_bitmap_backward(const char* op, const at::Tensor& grad_values, const at::Tensor& row_ptr,
                                  const at::Tensor& bitmap_row_ptr, int64_t nnz) {
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.numel() == bitmap_row_ptr.numel() &&
                  row_ptr.scalar_type() == at::kLong &&
                  at::equal(row_ptr.to(bitmap_row_ptr.device()), bitmap_row_ptr),
              op, ": row_ptr does not match the bitmap");
  TORCH_CHECK(grad_values.dim() == 1 && grad_values.numel() == nnz, op,
              ": grad_values must be [nnz] = [", nnz, "], got ", grad_values.sizes());
}

// The outputs of gathered_logits_backward and bitmap_sparse_matmul_backward:
// grad_x [B, d] (zeros when zero_x, else to be written in full), grad_weight
// [N, d] and grad_bias [N] as zeros (rows no candidate touches stay 0), and
// an empty tensor for each one not needed.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> new_input_grads(const at::Tensor& x, const at::Tensor& weight,
                                                                      bool need_x, bool need_weight, bool need_bias,
                                                                      bool zero_x) {
  // A separate empty tensor per output: outputs must not alias each other.
  const std::vector<int64_t> x_shape{x.size(0), x.size(1)};
  return {need_x ? (zero_x ? at::zeros(x_shape, x.options()) : at::empty(x_shape, x.options()))
                 : at::empty({0}, x.options()),
          need_weight ? at::zeros_like(weight, at::MemoryFormat::Contiguous) : at::empty({0}, weight.options()),
          need_bias ? at::zeros({weight.size(0)}, weight.options()) : at::empty({0}, weight.options())};
}

// --------------------------------------------------------------------- top-k
inline void check_topk_gathered(const at::Tensor& logits, const at::Tensor& ids, int64_t k) {
  TORCH_CHECK(logits.dim() == 2, "topk_gathered: logits must be [B, M], got ", logits.sizes());
  TORCH_CHECK(ids.scalar_type() == at::kInt && ids.sizes() == logits.sizes(),
              "topk_gathered: ids must be int32 ", logits.sizes(), ", got ", ids.scalar_type(), " ",
              ids.sizes());
  TORCH_CHECK(k >= 1, "topk_gathered: k must be >= 1, got ", k);
}

// Shapes only: whether row_ptr matches the bitmap's popcounts is checked by
// each backend (on the host for the CPU, in the kernel for CUDA).
inline void check_topk_packed(const at::Tensor& values, const at::Tensor& row_ptr,
                              const at::Tensor& bitmap, int64_t k) {
  TORCH_CHECK(values.dim() == 1, "topk_packed: values must be [nnz], got ", values.sizes());
  TORCH_CHECK(bitmap.dim() == 2 && bitmap.scalar_type() == at::kInt,
              "topk_packed: bitmap must be int32 [B, W], got ", bitmap.scalar_type(), " ",
              bitmap.sizes());
  const int64_t B = bitmap.size(0);
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.numel() == B + 1 && row_ptr.scalar_type() == at::kLong,
              "topk_packed: row_ptr must be int64 [B + 1] = [", B + 1, "], got ",
              row_ptr.scalar_type(), " ", row_ptr.sizes());
  TORCH_CHECK(k >= 1, "topk_packed: k must be >= 1, got ", k);
}

// ---------------------------------------------------------------- partitions
inline void check_partition_probe(const at::Tensor& x, const at::Tensor& centroids,
                                  const c10::optional<at::Tensor>& centroid_bias, int64_t nprobe) {
  TORCH_CHECK(x.dim() == 2 && at::isFloatingType(x.scalar_type()),
              "partition_probe: x must be floating point [B, d], got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(centroids.dim() == 2 && centroids.size(1) == x.size(1) && centroids.size(0) >= 1,
              "partition_probe: centroids must be [P, d] with P >= 1 and d = ", x.size(1), ", got ",
              centroids.sizes());
  TORCH_CHECK(centroids.scalar_type() == x.scalar_type(), "partition_probe: centroids dtype ",
              centroids.scalar_type(), " differs from x dtype ", x.scalar_type());
  TORCH_CHECK(centroids.size(0) < (int64_t(1) << 31), "partition_probe: at most 2^31 - 1 partitions");
  if (centroid_bias.has_value()) {
    TORCH_CHECK(centroid_bias->dim() == 1 && centroid_bias->size(0) == centroids.size(0),
                "partition_probe: centroid_bias must be [P] = [", centroids.size(0), "], got ",
                centroid_bias->sizes());
    TORCH_CHECK(centroid_bias->scalar_type() == x.scalar_type(),
                "partition_probe: centroid_bias dtype differs from x dtype");
  }
  TORCH_CHECK(nprobe >= 1 && nprobe <= centroids.size(0), "partition_probe: nprobe must be in [1, P = ",
              centroids.size(0), "], got ", nprobe);
}

// Shapes and dtypes of the partition lists (codes rows padded to Dp, a
// multiple of 32 with d <= Dp < d + 32). The offsets' values, the probes'
// values and the list ids are checked by each backend as it reads them.
inline void check_partition_lists(const char* op, const at::Tensor& x, const at::Tensor& list_offsets,
                                  const at::Tensor& codes, const at::Tensor& code_scales,
                                  const at::Tensor& code_bias, const at::Tensor& list_ids, int64_t num_labels) {
  TORCH_CHECK(x.dim() == 2 && at::isFloatingType(x.scalar_type()), op,
              ": x must be floating point [B, d], got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(list_offsets.dim() == 1 && list_offsets.scalar_type() == at::kInt && list_offsets.size(0) >= 2, op,
              ": list_offsets must be int32 [P + 1] with P >= 1, got ", list_offsets.scalar_type(), " ",
              list_offsets.sizes());
  const int64_t d = x.size(1);
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kChar && codes.size(1) % kCodeAlign == 0 &&
                  codes.size(1) >= d && codes.size(1) < d + kCodeAlign,
              op, ": codes must be int8 [T, Dp] with Dp = d = ", d, " rounded up to a multiple of ", kCodeAlign, ", got ",
              codes.scalar_type(), " ", codes.sizes());
  const int64_t T = codes.size(0);
  TORCH_CHECK(T < (int64_t(1) << 31), op, ": at most 2^31 - 1 code rows");
  TORCH_CHECK(code_scales.dim() == 1 && code_scales.size(0) == T && code_scales.scalar_type() == at::kFloat, op,
              ": code_scales must be float32 [T] = [", T, "], got ", code_scales.scalar_type(), " ",
              code_scales.sizes());
  TORCH_CHECK(code_bias.dim() == 1 && code_bias.size(0) == T && code_bias.scalar_type() == at::kFloat, op,
              ": code_bias must be float32 [T] = [", T, "], got ", code_bias.scalar_type(), " ", code_bias.sizes());
  TORCH_CHECK(list_ids.dim() == 1 && list_ids.size(0) == T && list_ids.scalar_type() == at::kInt, op,
              ": list_ids must be int32 [T] = [", T, "], got ", list_ids.scalar_type(), " ", list_ids.sizes());
  TORCH_CHECK(num_labels >= 1 && num_labels < (int64_t(1) << 31), op,
              ": num_labels must be in [1, 2^31), got ", num_labels);
}

inline void check_quantized_candidates(const at::Tensor& x, const at::Tensor& probes,
                                       const at::Tensor& list_offsets, const at::Tensor& codes,
                                       const at::Tensor& code_scales, const at::Tensor& code_bias,
                                       const at::Tensor& list_ids, int64_t num_labels, int64_t max_candidates) {
  check_partition_lists("quantized_candidates", x, list_offsets, codes, code_scales, code_bias, list_ids,
                        num_labels);
  TORCH_CHECK(probes.dim() == 2 && probes.size(0) == x.size(0) && probes.scalar_type() == at::kInt,
              "quantized_candidates: probes must be int32 [B, nprobe] with B = ", x.size(0), ", got ",
              probes.scalar_type(), " ", probes.sizes());
  TORCH_CHECK(max_candidates >= 1, "quantized_candidates: max_candidates must be >= 1, got ", max_candidates);
}

}  // namespace lss
