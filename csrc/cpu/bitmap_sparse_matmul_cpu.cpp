// bitmap_sparse_matmul on the CPU: exact logits for every (b, label) whose bit
// is set in bitmap[b], packed row by row in ascending label order (the bitmap
// is the column index; row_ptr gives each row's slice).
//
// Two strategies, picked per call:
//  * per entry: one dot product per set bit (the gathered_logits core);
//  * union GEMM: when the rows' candidates overlap a lot, gather the union of
//    candidate rows of W once, run one dense GEMM [B, d] x [d, U], and keep
//    the entries the bitmap asks for. This reads each weight row once for the
//    whole batch instead of once per query.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <vector>

#include "candidate_rows.h"
#include "lss/arg_checks.h"

namespace lss::cpu {
namespace {

// A bitmap decoded into CSR entries.
struct DecodedBitmap {
  at::Tensor row_ptr;  // int64 [B + 1]
  at::Tensor cols;     // int32 [nnz], ascending within a row
  at::Tensor row_of;   // int32 [nnz]
};

DecodedBitmap decode_bitmap(const char* op, const at::Tensor& bitmap, int64_t num_labels) {
  const int64_t B = bitmap.size(0), words = bitmap.size(1);
  const at::Tensor bc = bitmap.contiguous();
  const uint32_t* bp = reinterpret_cast<const uint32_t*>(bc.data_ptr<int32_t>());
  at::Tensor row_ptr = at::empty({B + 1}, bitmap.options().dtype(at::kLong));
  int64_t* rp = row_ptr.data_ptr<int64_t>();
  const uint32_t tail = bitmap_last_word_mask(num_labels);
  std::atomic<bool> stray_bits{false};
  rp[0] = 0;
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint32_t* row = bp + b * words;
      int64_t c = 0;
      for (int64_t w = 0; w < words; ++w) c += popcount32(row[w]);
      if (words > 0 && (row[words - 1] & ~tail) != 0) stray_bits = true;
      rp[b + 1] = c;
    }
  });
  TORCH_CHECK_VALUE(!stray_bits, op, ": bitmap has bits set at label ids >= num_labels = ", num_labels);
  for (int64_t b = 0; b < B; ++b) rp[b + 1] += rp[b];
  const int64_t nnz = rp[B];
  TORCH_CHECK_VALUE(nnz < (int64_t(1) << 31), op, ": more than 2^31 - 1 candidates in one call");
  at::Tensor cols = at::empty({nnz}, bitmap.options());
  at::Tensor row_of = at::empty({nnz}, bitmap.options());
  int32_t* cp = cols.data_ptr<int32_t>();
  int32_t* rop = row_of.data_ptr<int32_t>();
  at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint32_t* row = bp + b * words;
      int64_t k = rp[b];
      for (int64_t w = 0; w < words; ++w) {
        uint32_t v = row[w];
        while (v) {
          cp[k] = int32_t(w * 32 + lowest_bit(v));
          rop[k] = int32_t(b);
          ++k;
          v &= v - 1;
        }
      }
    }
  });
  return {row_ptr, cols, row_of};
}

// Fraction of the union tile [B, U] that must be wanted for the GEMM path to
// win: a choice, not a measurement (no bench command measures the crossover;
// docs/performance.md, "Measurements moved out of code comments").
// LSS_UNION_GEMM_DENSITY overrides it.
double union_gemm_density() {
  static const double v = [] {
    const char* s = std::getenv("LSS_UNION_GEMM_DENSITY");
    return s ? std::atof(s) : 0.25;
  }();
  return v;
}

// Union of all rows' candidates as sorted label ids, plus, per 32-label word,
// how many union labels precede it (to find a label's column in the GEMM).
struct BitmapUnion {
  std::vector<uint32_t> words;
  std::vector<int64_t> prefix;
  at::Tensor labels;  // int64 [U]
};

BitmapUnion bitmap_union(const at::Tensor& bitmap) {
  const int64_t B = bitmap.size(0), W = bitmap.size(1);
  const at::Tensor bc = bitmap.contiguous();
  const uint32_t* bp = reinterpret_cast<const uint32_t*>(bc.data_ptr<int32_t>());
  BitmapUnion u;
  u.words.assign(size_t(W), 0u);
  at::parallel_for(0, W, 1024, [&](int64_t w0, int64_t w1) {
    for (int64_t b = 0; b < B; ++b)
      for (int64_t w = w0; w < w1; ++w) u.words[size_t(w)] |= bp[b * W + w];
  });
  u.prefix.assign(size_t(W) + 1, 0);
  for (int64_t w = 0; w < W; ++w) u.prefix[size_t(w) + 1] = u.prefix[size_t(w)] + popcount32(u.words[size_t(w)]);
  u.labels = at::empty({u.prefix[size_t(W)]}, bitmap.options().dtype(at::kLong));
  int64_t* lp = u.labels.data_ptr<int64_t>();
  for (int64_t w = 0, k = 0; w < W; ++w)
    for (uint32_t v = u.words[size_t(w)]; v; v &= v - 1) lp[k++] = w * 32 + lowest_bit(v);
  return u;
}

std::tuple<at::Tensor, at::Tensor> bitmap_sparse_matmul_cpu(const at::Tensor& x,
                                                            const at::Tensor& weight,
                                                            const c10::optional<at::Tensor>& bias,
                                                            const at::Tensor& bitmap) {
  check_bitmap_sparse_matmul("bitmap_sparse_matmul", x, weight, bias, bitmap);
  const int64_t B = x.size(0), d = x.size(1), N = weight.size(0);
  DecodedBitmap dec = decode_bitmap("bitmap_sparse_matmul", bitmap, N);
  const int64_t nnz = dec.cols.numel();
  at::Tensor values = at::empty({nnz}, x.options());
  if (nnz == 0) return {values, dec.row_ptr};

  BitmapUnion u;
  bool use_gemm = false;
  if (B >= 4) {
    u = bitmap_union(bitmap);
    const double tile = double(B) * double(u.labels.numel());
    use_gemm = double(nnz) >= union_gemm_density() * tile;
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bitmap_sparse_matmul_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr auto acc_type = c10::CppTypeToScalarType<acc>::value;
    const at::Tensor xa = x.to(acc_type).contiguous();
    scalar_t* vp = values.data_ptr<scalar_t>();
    if (use_gemm) {
      at::Tensor wu = weight.index_select(0, u.labels).to(acc_type);
      at::Tensor tile = at::mm(xa, wu.t());  // [B, U], fp32 (fp64) accumulation
      if (bias.has_value()) tile.add_(bias->index_select(0, u.labels).to(acc_type));
      tile = tile.contiguous();
      const acc* tp = tile.data_ptr<acc>();
      const int64_t U = u.labels.numel();
      const int32_t* cols = dec.cols.data_ptr<int32_t>();
      const int32_t* rows = dec.row_of.data_ptr<int32_t>();
      at::parallel_for(0, nnz, 4096, [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t label = cols[k], w = bitmap_word_of(label);
          const uint32_t below = u.words[size_t(w)] & (bitmap_mask_of(label) - 1u);
          const int64_t col = u.prefix[size_t(w)] + popcount32(below);
          vp[k] = scalar_t(tp[int64_t(rows[k]) * U + col]);
        }
      });
    } else {
      const at::Tensor wc = weight.contiguous();
      at::Tensor bc;
      if (bias.has_value()) bc = bias->contiguous();
      const CandidateEntries e{dec.cols.data_ptr<int32_t>(), dec.row_of.data_ptr<int32_t>(), 0, nnz};
      candidate_logits_forward<scalar_t>(xa.data_ptr<acc>(), wc.data_ptr<scalar_t>(),
                                         bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, d, e, vp);
    }
  });
  return {values, dec.row_ptr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmap_sparse_matmul_backward_cpu(
    const at::Tensor& grad_values, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bitmap, const at::Tensor& row_ptr, bool need_x, bool need_weight,
    bool need_bias) {
  const char* op = "bitmap_sparse_matmul_backward";
  check_bitmap_sparse_matmul(op, x, weight, c10::nullopt, bitmap);
  const int64_t N = weight.size(0);
  DecodedBitmap dec = decode_bitmap(op, bitmap, N);
  const int64_t nnz = dec.cols.numel();
  check_bitmap_backward(op, grad_values, row_ptr, dec.row_ptr, nnz);
  auto [gx, gw, gb] = new_input_grads(x, weight, need_x, need_weight, need_bias, /*zero_x=*/true);
  if (nnz == 0) return {gx, gw, gb};
  const CandidateEntries e{dec.cols.data_ptr<int32_t>(), dec.row_of.data_ptr<int32_t>(), 0, nnz};
  candidate_logits_backward(grad_values, x, weight, dec.row_ptr.data_ptr<int64_t>(), e, gx, gw, gb, need_x,
                            need_weight, need_bias);
  return {gx, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) {
  m.impl("bitmap_sparse_matmul", &bitmap_sparse_matmul_cpu);
  m.impl("bitmap_sparse_matmul_backward", &bitmap_sparse_matmul_backward_cpu);
}

}  // namespace lss::cpu
