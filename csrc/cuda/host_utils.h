// Host-side helpers shared by the CUDA host files (ops_cuda.cpp,
// partition_ops_cuda.cpp): dtype mapping, device checks, the current stream
// and the device status word. Torch headers are fine here: only .cpp host
// files include this (the .cu kernels see launch.h alone).
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>

#include <array>
#include <cstdlib>
#include <initializer_list>

#include "launch.h"

namespace lss::cuda {

inline DType dtype_of(const char* op, const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t.scalar_type(),
                         " (float16, bfloat16, float32 or float64)");
  }
}

inline at::ScalarType acc_type(at::ScalarType s) { return s == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_cuda(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  const at::Tensor& first = **tensors.begin();
  for (const at::Tensor* t : tensors) {
    TORCH_CHECK(t->is_cuda(), op, ": CUDA kernel got a tensor on ", t->device());
    TORCH_CHECK(t->device() == first.device(), op, ": tensors on ", first.device(), " and ",
                t->device());
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

}  // namespace lss::cuda
