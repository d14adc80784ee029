// Host-side helpers shared by the CUDA host files (csrc/cuda/<op>_host.cpp):
// dtype mapping, device and argument checks, the current stream and the
// device status word. Torch headers are fine here: only .cpp host files
// include this (the .cu kernels see launch.h alone).
//
// Argument checks are the CPU kernels' (lss/arg_checks.h) plus the device
// checks, with the same exception types (ValueError / TypeError). Value checks (codes, ids, table contents, row_ptr, probes, list
// offsets) run inside the kernels, which never read out of bounds on
// malformed input: they skip the access and OR a bit into a device status
// word. The host reads that word back after the launch (one device-to-host
// copy, which synchronizes the stream) and raises the CPU kernel's error.
// Ops whose output size depends on the data (bucket_lookup's scratch,
// bitmap_sparse_matmul's nnz, quantized_candidates' key buffers) read it back
// anyway; for the others (gathered_logits and its backward, the top-k ops,
// quantized_candidates' list ids), LSS_CUDA_ASYNC_ERRORS=1 skips the
// read-back: no sync, still no out-of-bounds access, but malformed entries
// give NaN / -1 instead of an error.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cstdlib>
#include <initializer_list>

#include "launch.h"
#include "lss/arg_checks.h"
#include "lss/common.h"

namespace lss::cuda {

inline DType dtype_of(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK_TYPE(false, op, ": unsupported dtype ", dtype_name(t.scalar_type()),
                              " (float16, bfloat16, float32 or float64)");
  }
}

inline at::ScalarType acc_type(at::ScalarType s) { return s == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_cuda(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  const at::Tensor& first = **tensors.begin();
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK_VALUE(t->is_cuda(), op, ": CUDA kernel got a tensor on ", t->device(),
                      "; all inputs must be on the same device");
    TORCH_CHECK_VALUE(t->device() == first.device(), op, ": tensors on ", first.device(), " and ",
                      t->device(), "; all inputs must be on the same device");
  }
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline at::Tensor new_status(const at::Tensor& like) {
  return at::zeros({kStatusWords}, like.options().dtype(at::kLong));
}
inline unsigned long long* status_ptr(at::Tensor& status) {
  return reinterpret_cast<unsigned long long*>(status.data_ptr<int64_t>());
}
// One device-to-host copy; synchronizes the current stream.
inline std::array<int64_t, kStatusWords> read_status(const at::Tensor& status) {
  const at::Tensor h = status.to(at::kCPU);
  std::array<int64_t, kStatusWords> v{};
  for (int i = 0; i < kStatusWords; ++i) v[size_t(i)] = h.data_ptr<int64_t>()[i];
  return v;
}
// LSS_CUDA_ASYNC_ERRORS=1: skip the status read-back where an op does not
// need it for its output size (no sync; malformed entries still never read
// out of bounds).
inline bool async_errors() {
  static const bool v = [] {
    const char* s = std::getenv("LSS_CUDA_ASYNC_ERRORS");
    return s != nullptr && s[0] == '1';
  }();
  return v;
}

inline const void* raw(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

inline int64_t next_pow2_host(int64_t v) {
  int64_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

inline uint32_t* as_u32(const at::Tensor& t) {
  return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>());
}

inline bool is_float(const at::Tensor& t) { return is_float_dtype(t.scalar_type()); }

// x, weight, bias of the logits ops: the shared checks (lss/arg_checks.h),
// then the devices and the dtypes the kernels are built for.
inline void check_dense_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias) {
  lss::check_dense_args(op, x, weight, bias);
  if (bias.has_value()) {
    check_cuda(op, {&x, &weight, &*bias});
  } else {
    check_cuda(op, {&x, &weight});
  }
  dtype_of(op, x);
}

// grad_W / grad_b of a list of entries (gathered_logits_backward, and
// bitmap_sparse_matmul_backward on its decoded bitmap): the entries grouped
// by label with a stable radix sort (the CPU's summation order within a
// label), then one warp per label. gw / gb may be null. Defined in
// gathered_logits_host.cpp.
void grad_weight_bias(DType dt, const at::Tensor& grad_acc, const at::Tensor& x, int64_t N,
                      const Entries& e, at::Tensor* gw, at::Tensor* gb, unsigned long long* status,
                      cudaStream_t stream);

}  // namespace lss::cuda
