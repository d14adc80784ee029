// Host side of bitmap_sparse_matmul and its backward on CUDA (kernels:
// bitmap_sparse_matmul_cuda.cu, and for the per-entry path and the backward
// gathered_logits_cuda.cu's entry kernels; interface: launch.h; shared host
// helpers: host_utils.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>

#include "host_utils.h"

namespace lss::cuda {
namespace {

double tile_density() {
  static const double v = [] {
    const char* s = std::getenv("LSS_CUDA_TILE_DENSITY");
    return s ? std::atof(s) : 0.03;
  }();
  return v;
}

// row_ptr of a bitmap, and its nnz; raises on bits past num_labels.
struct RowPtr {
  at::Tensor row_ptr;
  int64_t nnz = 0;
  int64_t tiles = 0;    // non-empty [kTileRows x 32] tiles
  int64_t columns = 0;  // non-empty 32-label columns, listed in column_list
  at::Tensor column_list;
};
RowPtr bitmap_row_ptr_checked(const char* op, const at::Tensor& bc, int64_t num_labels,
                              bool find_tiles, cudaStream_t stream) {
  const int64_t B = bc.size(0), words = bc.size(1);
  RowPtr r;
  r.row_ptr = at::zeros({B + 1}, bc.options().dtype(at::kLong));
  at::Tensor status = new_status(bc);
  bitmap_row_ptr(bc.data_ptr<int32_t>(), B, words, num_labels, r.row_ptr.data_ptr<int64_t>(),
                 status_ptr(status), stream);
  if (find_tiles) {
    r.column_list = at::empty({words}, bc.options().dtype(at::kLong));
    bitmap_columns(bc.data_ptr<int32_t>(), B, words, r.column_list.data_ptr<int64_t>(),
                   status_ptr(status), stream);
  }
  const auto st = read_status(status);
  TORCH_CHECK_VALUE(st[kStatusError] == 0, op, ": bitmap has bits set at label ids >= num_labels = ",
              num_labels);
  r.nnz = st[kStatusNnz];
  r.tiles = st[kStatusTiles];
  r.columns = st[kStatusColumns];
  TORCH_CHECK_VALUE(r.nnz < (int64_t(1) << 31), op, ": more than 2^31 - 1 candidates in one call");
  return r;
}

// Bitmap rows at or above this use the tile path when dense enough.
constexpr int64_t kTileMinRows = 16;

std::tuple<at::Tensor, at::Tensor> bitmap_sparse_matmul_cuda(const at::Tensor& x,
                                                             const at::Tensor& weight,
                                                             const c10::optional<at::Tensor>& bias,
                                                             const at::Tensor& bitmap) {
  const char* op = "bitmap_sparse_matmul";
  check_bitmap_sparse_matmul(op, x, weight, bias, bitmap);
  const int64_t B = x.size(0), d = x.size(1), N = weight.size(0);
  check_cuda(op, {&x, &bitmap});
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const at::Tensor bc = bitmap.contiguous();
  const int64_t words = bc.size(1);
  RowPtr r = bitmap_row_ptr_checked(op, bc, N, B >= kTileMinRows, stream);
  at::Tensor values = at::empty({r.nnz}, x.options());
  if (r.nnz == 0) return {values, r.row_ptr};
  const DType dt = dtype_of(op, x);
  const at::Tensor wc = weight.contiguous();
  at::Tensor bias_c;
  if (bias.has_value()) bias_c = bias->contiguous();
  // Tiles pay off where they are dense enough (a model, not a measurement:
  // see docs/gpu.md); LSS_CUDA_TILE_DENSITY overrides the threshold.
  const bool use_tiles = B >= kTileMinRows && r.tiles > 0 &&
                         double(r.nnz) >= tile_density() * double(r.tiles) * kTileRows * 32;
  if (use_tiles) {
    at::Tensor word_rank = at::empty({B, words}, bc.options());
    bitmap_decode(bc.data_ptr<int32_t>(), B, words, r.row_ptr.data_ptr<int64_t>(), nullptr, nullptr,
                  word_rank.data_ptr<int32_t>(), stream);
    const at::Tensor xc = x.contiguous();
    bitmap_tile_logits(dt, xc.data_ptr(), wc.data_ptr(), raw(bias_c), B, d, N,
                       bc.data_ptr<int32_t>(), words, r.row_ptr.data_ptr<int64_t>(),
                       word_rank.data_ptr<int32_t>(), r.column_list.data_ptr<int64_t>(),
                       r.columns, values.data_ptr(), stream);
  } else {
    at::Tensor cols = at::empty({r.nnz}, bc.options()), row_of = at::empty({r.nnz}, bc.options());
    bitmap_decode(bc.data_ptr<int32_t>(), B, words, r.row_ptr.data_ptr<int64_t>(),
                  cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), nullptr, stream);
    const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
    at::Tensor status = new_status(x);  // decoded ids are always in range
    candidate_logits(dt, xa.data_ptr(), wc.data_ptr(), raw(bias_c), d, N,
                     Entries{cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), 0, r.nnz},
                     values.data_ptr(), status_ptr(status), stream);
  }
  return {values, r.row_ptr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmap_sparse_matmul_backward_cuda(
    const at::Tensor& grad_values, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bitmap, const at::Tensor& row_ptr, bool need_x, bool need_weight,
    bool need_bias) {
  const char* op = "bitmap_sparse_matmul_backward";
  check_bitmap_sparse_matmul(op, x, weight, c10::nullopt, bitmap);
  const int64_t B = x.size(0), d = x.size(1), N = weight.size(0);
  check_cuda(op, {&x, &bitmap, &row_ptr, &grad_values});
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const at::Tensor bc = bitmap.contiguous();
  const int64_t words = bc.size(1);
  RowPtr r = bitmap_row_ptr_checked(op, bc, N, false, stream);
  check_bitmap_backward(op, grad_values, row_ptr, r.row_ptr, r.nnz);
  auto [gx, gw, gb] = new_input_grads(x, weight, need_x, need_weight, need_bias, /*zero_x=*/true);
  if (r.nnz == 0) return {gx, gw, gb};
  const DType dt = dtype_of(op, x);
  at::Tensor cols = at::empty({r.nnz}, bc.options()), row_of = at::empty({r.nnz}, bc.options());
  bitmap_decode(bc.data_ptr<int32_t>(), B, words, r.row_ptr.data_ptr<int64_t>(),
                cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), nullptr, stream);
  const Entries e{cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), 0, r.nnz};
  const at::Tensor ga = grad_values.to(acc_type(x.scalar_type())).contiguous();
  at::Tensor status = new_status(x);  // decoded ids are always in range
  if (need_x) {
    const at::Tensor wc = weight.contiguous();
    candidate_grad_x(dt, ga.data_ptr(), wc.data_ptr(), d, N, B, r.row_ptr.data_ptr<int64_t>(), e,
                     gx.data_ptr(), status_ptr(status), stream);
  }
  if (need_weight || need_bias)
    grad_weight_bias(dt, ga, x, N, e, need_weight ? &gw : nullptr, need_bias ? &gb : nullptr,
                     status_ptr(status), stream);
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("bitmap_sparse_matmul", &bitmap_sparse_matmul_cuda);
  m.impl("bitmap_sparse_matmul_backward", &bitmap_sparse_matmul_backward_cuda);
}

}  // namespace lss::cuda
