// Host-side argument checks shared by the CPU kernels (csrc/cpu) and the CUDA
// host wrappers (csrc/cuda/*_host.cpp). Both validate the same
// preconditions with the same messages, so a malformed input fails
// identically on either device; keeping one copy keeps it that way. Also the
// allocation of the logits ops' backward outputs, the same on both.
//
// The validation contract (the one of lsskernels/_checks.py): a failed check
// raises the Python exception the Python checks raise for the same problem,
// with a message naming the op, the argument and what was expected:
//   TORCH_CHECK_TYPE  (TypeError)   a wrong dtype, or dtypes that must match and differ;
//   TORCH_CHECK_VALUE (ValueError)  a wrong shape, scalar argument, device or
//                                   tensor value (ids out of range, malformed
//                                   tables, lists or row pointers).
// Plain TORCH_CHECK (RuntimeError) is left for what is not the caller's
// input (a failed allocation or alignment, a size past an internal limit).
// The kernels' own value checks (in csrc/cpu and csrc/cuda) follow the same
// rule.
//
// Only shapes, dtypes and scalar arguments are checked here. Device checks,
// device-specific limits and scans of tensor values stay with each backend.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <limits>
#include <string_view>
#include <tuple>
#include <utility>

#include "lss/common.h"

namespace lss {

// ------------------------------------------------------------------ helpers
// The dtypes' Python names ("float32", "int64"), as the Python checks print them.
inline std::string_view dtype_name(at::ScalarType s) { return c10::getDtypeNames(s).first; }

// The floating-point dtypes every float input may have (_checks.FLOAT_DTYPES).
inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

// `name` is `ndim`-d (ValueError), described by `what` ("[B, d] floating point").
inline void check_ndim(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                       const char* what) {
  TORCH_CHECK_VALUE(t.dim() == ndim, op, ": ", name, " must be ", what, ", got shape ", t.sizes());
}

// `name` has dtype `want` (TypeError).
inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must have dtype in (", dtype_name(want),
                   "), got ", dtype_name(t.scalar_type()));
}

// `name` is `ndim`-d (ValueError, described by `what`) with dtype `want`
// (TypeError), checked in that order.
inline void check_tensor(const char* op, const char* name, const at::Tensor& t, int64_t ndim, const char* what,
                         at::ScalarType want) {
  check_ndim(op, name, t, ndim, what);
  check_dtype(op, name, t, want);
}

// Each named tensor is [n] (ValueError): `n_name` names n, `why` says why.
inline void check_lengths(const char* op,
                          std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors,
                          const char* n_name, int64_t n, const char* why) {
  for (const auto& [name, t] : tensors)
    TORCH_CHECK_VALUE(t->size(0) == n, op, ": ", name, " must be [", n_name, "] = [", n, "] (", why, "), got ",
                      t->sizes());
}

// `name` has a floating-point dtype (TypeError).
inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name,
                   " must have dtype in (float16, bfloat16, float32, float64), got ",
                   dtype_name(t.scalar_type()));
}

// `name` has the dtype of `ref_name` (TypeError).
inline void check_same_dtype(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                             const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
                   dtype_name(t.scalar_type()), " but ", ref_name, " has ", dtype_name(ref.scalar_type()),
                   "; they must match");
}

// An integer argument in [low, high] (ValueError); high = int64 max prints as inf.
inline void check_int_in(const char* op, const char* name, int64_t v, int64_t low,
                         int64_t high = std::numeric_limits<int64_t>::max()) {
  if (high == std::numeric_limits<int64_t>::max()) {
    TORCH_CHECK_VALUE(v >= low, op, ": ", name, " must be in [", low, ", inf], got ", v);
  } else {
    TORCH_CHECK_VALUE(v >= low && v <= high, op, ": ", name, " must be in [", low, ", ", high, "], got ", v);
  }
}

constexpr int64_t kMaxInt32 = (int64_t(1) << 31) - 1;

// ---------------------------------------------------------------- hash codes
inline void check_hash_codes(const at::Tensor& x, const at::Tensor& proj) {
  const char* op = "hash_codes";
  check_ndim(op, "x", x, 2, "[B, d] floating point");
  check_float(op, "x", x);
  check_ndim(op, "proj", proj, 3, "[L, K, d] floating point");
  check_float(op, "proj", proj);
  check_same_dtype(op, "proj", proj, "x", x);
  TORCH_CHECK_VALUE(proj.size(2) == x.size(1), op, ": proj must be [L, K, d] with d = x.shape[1] = ", x.size(1),
                    ", got ", proj.sizes());
  TORCH_CHECK_VALUE(proj.size(1) >= 1 && proj.size(1) <= kMaxBits, op,
                    ": proj.shape[1] (bits per table K) must be in [1, ", kMaxBits, "], got ", proj.size(1));
}

// -------------------------------------------------------------------- tables
inline void check_build_tables(const at::Tensor& codes, int64_t bits) {
  const char* op = "build_tables";
  check_tensor(op, "codes", codes, 2, "[N, L] int32 label codes", at::kInt);
  check_int_in(op, "bits", bits, 1, kMaxBits);
  TORCH_CHECK_VALUE(codes.size(0) <= kMaxInt32, op, ": codes: at most 2^31 - 1 labels, got ", codes.size(0));
}

// The tables and query codes of bucket_lookup and bucket_lookup_bitmap.
inline void check_tables(const char* op, const at::Tensor& codes, const at::Tensor& offsets,
                         const at::Tensor& items, int64_t num_labels, int64_t min_hits) {
  check_tensor(op, "codes", codes, 2, "[B, L] int32", at::kInt);
  check_tensor(op, "offsets", offsets, 2, "[L, 2^K + 1] int32", at::kInt);
  check_tensor(op, "items", items, 2, "[L, T] int32", at::kInt);
  TORCH_CHECK_VALUE(codes.size(1) == offsets.size(0) && items.size(0) == offsets.size(0), op,
                    ": codes [B, L], offsets [L, 2^K + 1] and items [L, T] disagree on L: ", codes.sizes(), ", ",
                    offsets.sizes(), ", ", items.sizes());
  const int64_t buckets = offsets.size(1) - 1;
  TORCH_CHECK_VALUE(buckets >= 2 && (buckets & (buckets - 1)) == 0 && buckets <= (int64_t(1) << kMaxBits), op,
                    ": offsets must be [L, 2^K + 1] with 1 <= K <= ", kMaxBits, ", got ", offsets.sizes());
  TORCH_CHECK_VALUE(codes.size(1) < kMaxTables, op, ": at most ", kMaxTables - 1, " tables, got ",
                    codes.size(1));
  check_int_in(op, "num_labels", num_labels, 0, kMaxInt32);
  check_int_in(op, "min_hits", min_hits, 1);
}

inline void check_max_candidates(const char* op, int64_t max_candidates) {
  check_int_in(op, "max_candidates", max_candidates, 1);
}

// -------------------------------------------------------------------- logits
// x [B, d], weight [N, d] and the optional bias [N] of the logits ops.
inline void check_dense_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias) {
  check_ndim(op, "x", x, 2, "[B, d] floating point");
  check_float(op, "x", x);
  check_ndim(op, "weight", weight, 2, "[N, d] floating point");
  check_float(op, "weight", weight);
  check_same_dtype(op, "weight", weight, "x", x);
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), op, ": weight must be [N, d] with d = x.shape[1] = ",
                    x.size(1), ", got ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) <= kMaxInt32, op, ": at most 2^31 - 1 labels, got ", weight.size(0));
  if (bias.has_value()) {
    check_ndim(op, "bias", *bias, 1, "[N] floating point");
    check_float(op, "bias", *bias);
    check_same_dtype(op, "bias", *bias, "x", x);
    TORCH_CHECK_VALUE(bias->size(0) == weight.size(0), op, ": bias must be [N] = [", weight.size(0),
                      "], got ", bias->sizes());
  }
}

// Per-query candidate ids of gathered_logits(_backward): int32 [B, M].
inline void check_ids_shape(const char* op, const at::Tensor& x, const at::Tensor& ids) {
  check_tensor(op, "ids", ids, 2, "[B, M] int32 label ids (-1 = padding)", at::kInt);
  TORCH_CHECK_VALUE(ids.size(0) == x.size(0), op, ": ids must be [B, M] with B = x.shape[0] = ", x.size(0),
                    ", got ", ids.sizes());
}

inline void check_gathered_grad(const at::Tensor& grad, const at::Tensor& ids) {
  TORCH_CHECK_VALUE(grad.sizes() == ids.sizes(), "gathered_logits_backward: grad must be ", ids.sizes(),
                    " (ids' shape), got ", grad.sizes());
}

// A candidate bitmap: int32 [rows, ceil(num_labels / 32)].
inline void check_bitmap(const char* op, const at::Tensor& bitmap, int64_t rows, int64_t num_labels) {
  check_tensor(op, "bitmap", bitmap, 2, "int32 [B, ceil(N / 32)]", at::kInt);
  TORCH_CHECK_VALUE(bitmap.size(0) == rows && bitmap.size(1) == bitmap_words(num_labels), op,
                    ": bitmap must be int32 [B, ceil(N / 32)] = [", rows, ", ", bitmap_words(num_labels),
                    "], got shape ", bitmap.sizes());
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
  check_dtype(op, "row_ptr", row_ptr, at::kLong);
  TORCH_CHECK_VALUE(row_ptr.dim() == 1 && row_ptr.numel() == bitmap_row_ptr.numel() &&
                        at::equal(row_ptr.to(bitmap_row_ptr.device()), bitmap_row_ptr),
                    op, ": row_ptr does not match the bitmap");
  TORCH_CHECK_VALUE(grad_values.dim() == 1 && grad_values.numel() == nnz, op, ": grad_values must be [nnz] = [",
                    nnz, "], got ", grad_values.sizes());
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
  const char* op = "topk_gathered";
  check_ndim(op, "logits", logits, 2, "[B, M] floating point");
  check_float(op, "logits", logits);
  check_tensor(op, "ids", ids, 2, "[B, M] int32 label ids (-1 = padding)", at::kInt);
  TORCH_CHECK_VALUE(ids.sizes() == logits.sizes(), op, ": ids must have logits' shape ", logits.sizes(),
                    ", got ", ids.sizes());
  check_int_in(op, "k", k, 1);
}

// Shapes only: whether row_ptr matches the bitmap's popcounts is checked by
// each backend (on the host for the CPU, in the kernel for CUDA).
inline void check_topk_packed(const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& bitmap,
                              int64_t k) {
  const char* op = "topk_packed";
  check_ndim(op, "values", values, 1, "[nnz] floating point");
  check_float(op, "values", values);
  check_tensor(op, "row_ptr", row_ptr, 1, "int64 [B + 1]", at::kLong);
  check_tensor(op, "bitmap", bitmap, 2, "int32 [B, W]", at::kInt);
  TORCH_CHECK_VALUE(row_ptr.size(0) == bitmap.size(0) + 1, op, ": row_ptr must be [B + 1] = [",
                    bitmap.size(0) + 1, "], got ", row_ptr.sizes());
  check_int_in(op, "k", k, 1);
}

// ---------------------------------------------------------------- partitions
// Shapes and dtypes of the partition lists (codes rows padded to Dp, a
// multiple of 32 with d <= Dp < d + 32, d the width of x). The offsets'
// values, the probes' values and the list ids are checked by each backend as
// it reads them.
// code_dim: the width the codes are of where it is not x's (under a code
// projection), else -1.
inline void check_partition_lists(const char* op, const at::Tensor& x, const at::Tensor& list_offsets,
                                  const at::Tensor& codes, const at::Tensor& code_scales,
                                  const at::Tensor& code_bias, const at::Tensor& list_ids, int64_t num_labels,
                                  int64_t code_dim = -1) {
  check_ndim(op, "x", x, 2, "[B, d] floating point");
  check_float(op, "x", x);
  check_tensor(op, "list_offsets", list_offsets, 1, "int32 [P + 1]", at::kInt);
  check_tensor(op, "codes", codes, 2, "int8 [T, Dp]", at::kChar);
  check_tensor(op, "code_scales", code_scales, 1, "float32 [T]", at::kFloat);
  check_tensor(op, "code_bias", code_bias, 1, "float32 [T]", at::kFloat);
  check_tensor(op, "list_ids", list_ids, 1, "int32 [T]", at::kInt);
  const int64_t d = code_dim < 0 ? x.size(1) : code_dim, T = codes.size(0), Dp = codes.size(1);
  const char* what = code_dim < 0 ? "d" : "the code width r";
  TORCH_CHECK_VALUE(Dp % kCodeAlign == 0 && d <= Dp && Dp < d + kCodeAlign, op, ": codes must be int8 [T, Dp] with Dp = ",
                    what, " rounded up to a multiple of ", kCodeAlign, " (", what, " = ", d, ": Dp = ",
                    (d + kCodeAlign - 1) / kCodeAlign * kCodeAlign, "), got ", codes.sizes());
  TORCH_CHECK_VALUE(Dp <= kMaxCodeWidth, op, ": codes rows of ", Dp,
                    " entries could overflow the int32 dot product; at most ", kMaxCodeWidth, " supported");
  TORCH_CHECK_VALUE(T <= kMaxInt32, op, ": at most 2^31 - 1 code rows, got ", T);
  check_lengths(op, {{"code_scales", &code_scales}, {"code_bias", &code_bias}, {"list_ids", &list_ids}}, "T", T,
                "one entry per row of codes");
  TORCH_CHECK_VALUE(list_offsets.size(0) >= 2, op, ": list_offsets must be int32 [P + 1] with P >= 1, got ",
                    list_offsets.sizes());
  check_int_in(op, "num_labels", num_labels, 1, kMaxInt32);
}

inline void check_quantized_candidates(const at::Tensor& x, const at::Tensor& probes,
                                       const at::Tensor& list_offsets, const at::Tensor& codes,
                                       const at::Tensor& code_scales, const at::Tensor& code_bias,
                                       const at::Tensor& list_ids, int64_t num_labels, int64_t max_candidates) {
  const char* op = "quantized_candidates";
  check_partition_lists(op, x, list_offsets, codes, code_scales, code_bias, list_ids, num_labels);
  check_tensor(op, "probes", probes, 2, "[B, nprobe] int32 partition ids (-1 = skip)", at::kInt);
  TORCH_CHECK_VALUE(probes.size(0) == x.size(0), op, ": probes must be [B, nprobe] with B = x.shape[0] = ",
                    x.size(0), ", got ", probes.sizes());
  check_max_candidates(op, max_candidates);
}

// The arguments of the composite partition_predict_topk
// (csrc/partition_predict_topk.cpp), checked up front so that a bad one is
// named as the caller passed it rather than as an argument of the op it is
// handed to (_checks.partition_predict_topk_args). The ops it calls check
// everything again, values included.
inline void check_partition_predict_topk(const at::Tensor& x, const at::Tensor& centroid_codes,
                                         const at::Tensor& centroid_scales, const at::Tensor& centroid_bias,
                                         const at::Tensor& list_offsets, const at::Tensor& codes,
                                         const at::Tensor& code_scales, const at::Tensor& code_bias,
                                         const at::Tensor& list_ids, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias, int64_t num_labels, int64_t nprobe,
                                         int64_t max_candidates, int64_t k,
                                         const c10::optional<at::Tensor>& code_proj) {
  const char* op = "partition_predict_topk";
  // The probe's centroid codes: int8 [P, Dp], scales and bias float32 [P].
  check_ndim(op, "x", x, 2, "[B, d] floating point");
  check_float(op, "x", x);
  check_tensor(op, "centroid_codes", centroid_codes, 2, "int8 [P, Dp]", at::kChar);
  check_tensor(op, "centroid_scales", centroid_scales, 1, "float32 [P]", at::kFloat);
  check_tensor(op, "centroid_bias", centroid_bias, 1, "float32 [P]", at::kFloat);
  const int64_t d = x.size(1), P = centroid_codes.size(0), width = centroid_codes.size(1);
  TORCH_CHECK_VALUE(P >= 1 && width % kCodeAlign == 0 && d <= width && width < d + kCodeAlign, op,
                    ": centroid_codes must be int8 [P, Dp] with P >= 1 and Dp = d rounded up to a multiple of ",
                    kCodeAlign, " (d = ", d, ": Dp = ", (d + kCodeAlign - 1) / kCodeAlign * kCodeAlign, "), got ",
                    centroid_codes.sizes());
  check_lengths(op, {{"centroid_scales", &centroid_scales}, {"centroid_bias", &centroid_bias}}, "P", P,
                "one entry per centroid code");
  check_int_in(op, "nprobe", nprobe, 1, P);
  // The code projection: none (or empty), or float32 [d, r] with 1 <= r <= d.
  int64_t code_dim = -1;
  if (code_proj.has_value() && code_proj->defined() && code_proj->numel() != 0) {
    check_tensor(op, "code_proj", *code_proj, 2, "float32 [d, r] or None", at::kFloat);
    TORCH_CHECK_VALUE(code_proj->size(0) == d && code_proj->size(1) >= 1 && code_proj->size(1) <= d, op,
                      ": code_proj must be float32 [d = ", d, ", r] with 1 <= r <= d, or None; got ",
                      code_proj->sizes());
    code_dim = code_proj->size(1);
  }
  check_partition_lists(op, x, list_offsets, codes, code_scales, code_bias, list_ids, num_labels, code_dim);
  TORCH_CHECK_VALUE(list_offsets.size(0) == P + 1, op, ": list_offsets must be int32 [P + 1] = [", P + 1,
                    "] (P = centroid_codes.shape[0]), got ", list_offsets.sizes());
  check_dense_args(op, x, weight, bias);
  TORCH_CHECK_VALUE(num_labels <= weight.size(0), op, ": num_labels must be <= weight.shape[0] = ", weight.size(0),
                    " (list ids index the weight rows), got ", num_labels);
  check_max_candidates(op, max_candidates);
  check_int_in(op, "k", k, 1);
}

}  // namespace lss
