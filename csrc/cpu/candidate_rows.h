// The computational core shared by gathered_logits and bitmap_sparse_matmul on
// the CPU: exact logits for a ragged set of (query row, label id) entries, and
// their gradients. Both ops reduce to "entry k belongs to row row_of(k) and
// label ids[k]" (ids == -1 is padding), so one implementation serves both.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "lss/common.h"
#include "vector_math.h"

namespace lss::cpu {

struct CandidateEntries {
  const int32_t* ids;     // [nnz] label per entry, -1 = padding
  const int32_t* row_of;  // [nnz] query row per entry, or nullptr when fixed width
  int64_t width;          // entries per row when row_of == nullptr
  int64_t nnz;
  int64_t row(int64_t k) const { return entry_row(k, row_of, width); }
};

// Entries per gathered_dots call for bf16 / fp16 logits (see below).
constexpr int64_t kLogitBlock = 1024;

// out[k] = <x[row(k)], W[ids[k]]> + bias[ids[k]], -inf where ids[k] == -1.
// x_acc is x converted to the accumulator type, [B, d] contiguous. Entries
// are handed to gathered_dots one query row (segment) at a time.
template <typename scalar_t>
void candidate_logits_forward(const acc_t<scalar_t>* x_acc, const scalar_t* weight,
                              const scalar_t* bias, int64_t d, const CandidateEntries& e,
                              scalar_t* out) {
  using acc = acc_t<scalar_t>;
  // fp32 and fp64 logits are written in place; bf16 / fp16 ones go through a
  // small fp32 buffer and are rounded once, as before.
  constexpr bool kInPlace = std::is_same_v<acc, scalar_t>;
  // 256 entries per task: a batch-1 query (M = 2000) uses both cores, which
  // on an idle machine about halves its time. On a machine whose other core
  // is busy, waking the second OpenMP thread can instead cost milliseconds;
  // see docs/performance.md, "Measurements moved out of code comments".
  const int64_t grain = 256;
  at::parallel_for(0, e.nnz, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc> buffer(kInPlace ? 0 : kLogitBlock);
    int64_t k = begin;
    while (k < end) {
      const int64_t row = e.row(k);
      int64_t stop = k + 1;
      if (e.row_of) {
        while (stop < end && e.row_of[stop] == e.row_of[k]) ++stop;
      } else {
        stop = std::min(end, (row + 1) * e.width);
      }
      const acc* x = x_acc + row * d;
      if constexpr (kInPlace) {
        gathered_dots(x, weight, bias, d, e.ids + k, stop - k, out + k);
      } else {
        for (int64_t s = k; s < stop; s += kLogitBlock) {
          const int64_t n = std::min(kLogitBlock, stop - s);
          gathered_dots(x, weight, bias, d, e.ids + s, n, buffer.data());
          for (int64_t j = 0; j < n; ++j) out[s + j] = scalar_t(buffer[j]);
        }
      }
      k = stop;
    }
  });
}

// grad_x[b] = sum over entries k of row b: grad[k] * W[ids[k]].
template <typename scalar_t>
void candidate_logits_grad_x(const acc_t<scalar_t>* grad_acc, const scalar_t* weight, int64_t d,
                             int64_t rows, const int64_t* row_begin, const CandidateEntries& e,
                             acc_t<scalar_t>* grad_x) {
  const int64_t row_bytes = d * int64_t(sizeof(scalar_t));
  const int64_t distance = prefetch_distance(row_bytes);
  at::parallel_for(0, rows, 1, [&](int64_t rb, int64_t re) {
    for (int64_t b = rb; b < re; ++b) {
      auto* gx = grad_x + b * d;
      std::fill(gx, gx + d, acc_t<scalar_t>(0));
      const int64_t kb = row_begin ? row_begin[b] : b * e.width;
      const int64_t ke = row_begin ? row_begin[b + 1] : (b + 1) * e.width;
      for (int64_t k = kb; k < ke; ++k) {
        const int64_t ahead = k + distance;
        if (ahead < ke) prefetch_candidate<scalar_t>(weight, nullptr, d, row_bytes, e.ids[ahead]);
        const int32_t id = e.ids[k];
        if (id >= 0) axpy(grad_acc[k], weight + int64_t(id) * d, gx, d);
      }
    }
  });
}

// grad_W[i] = sum over entries k with ids[k] == i: grad[k] * x[row(k)], and
// grad_b[i] = sum of those grad[k]. Entries are bucketed by label first
// (counting sort), so each touched row is written by one thread, in a fixed
// order: deterministic, no atomics, and untouched rows stay zero.
template <typename scalar_t>
void candidate_logits_grad_weight(const acc_t<scalar_t>* grad_acc, const acc_t<scalar_t>* x_acc,
                                  int64_t d, int64_t num_labels, const CandidateEntries& e,
                                  scalar_t* grad_w, scalar_t* grad_b) {
  using acc = acc_t<scalar_t>;
  std::vector<int64_t> start(size_t(num_labels) + 1, 0);
  for (int64_t k = 0; k < e.nnz; ++k)
    if (e.ids[k] >= 0) ++start[size_t(e.ids[k]) + 1];
  for (int64_t i = 0; i < num_labels; ++i) start[size_t(i) + 1] += start[size_t(i)];
  std::vector<int64_t> order(static_cast<size_t>(start[size_t(num_labels)]));
  {
    std::vector<int64_t> cursor(start.begin(), start.end() - 1);
    for (int64_t k = 0; k < e.nnz; ++k)
      if (e.ids[k] >= 0) order[size_t(cursor[size_t(e.ids[k])]++)] = k;
  }
  at::parallel_for(0, num_labels, 1024, [&](int64_t lb, int64_t le) {
    std::vector<acc> row(static_cast<size_t>(d));
    for (int64_t i = lb; i < le; ++i) {
      const int64_t sb = start[size_t(i)], se = start[size_t(i) + 1];
      if (sb == se) continue;
      std::fill(row.begin(), row.end(), acc(0));
      acc gb = 0;
      for (int64_t s = sb; s < se; ++s) {
        const int64_t k = order[size_t(s)];
        axpy(grad_acc[k], x_acc + e.row(k) * d, row.data(), d);
        gb += grad_acc[k];
      }
      if (grad_w) {
        scalar_t* gw = grad_w + i * d;
        for (int64_t j = 0; j < d; ++j) gw[j] = scalar_t(row[size_t(j)]);
      }
      if (grad_b) grad_b[i] = scalar_t(gb);
    }
  });
}

// The backward of gathered_logits and bitmap_sparse_matmul on their entries:
// grad (one value per entry) in the accumulator type, then grad_x (row_begin:
// each row's first entry, [rows + 1], or null for fixed-width rows) and
// grad_weight / grad_bias into the outputs of new_input_grads
// (lss/arg_checks.h), where asked for.
inline void candidate_logits_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                      const int64_t* row_begin, const CandidateEntries& e, at::Tensor& gx,
                                      at::Tensor& gw, at::Tensor& gb, bool need_x, bool need_weight,
                                      bool need_bias) {
  const int64_t B = x.size(0), d = x.size(1), N = weight.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "candidate_logits_backward_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr auto acc_type = c10::CppTypeToScalarType<acc>::value;
    const at::Tensor ga = grad.to(acc_type).contiguous();
    const at::Tensor wc = weight.contiguous();
    if (need_x) {
      at::Tensor gxa = at::empty({B, d}, x.options().dtype(acc_type));
      candidate_logits_grad_x<scalar_t>(ga.data_ptr<acc>(), wc.data_ptr<scalar_t>(), d, B, row_begin, e,
                                        gxa.data_ptr<acc>());
      gx.copy_(gxa);
    }
    if (need_weight || need_bias) {
      const at::Tensor xa = x.to(acc_type).contiguous();
      candidate_logits_grad_weight<scalar_t>(ga.data_ptr<acc>(), xa.data_ptr<acc>(), d, N, e,
                                             need_weight ? gw.data_ptr<scalar_t>() : nullptr,
                                             need_bias ? gb.data_ptr<scalar_t>() : nullptr);
    }
  });
}

}  // namespace lss::cpu
