// bf16_row_topk: the column ids of each row's k largest entries of a bf16
// score block, for fit()'s bf16 screen (lsskernels/row_argmax.py). A CPU
// helper of fit(), exposed through the extension module, not a torch op: the
// screen runs only on CPUs with AVX-512 BF16 (a CUDA fit takes the exact fp32
// path, where torch's reductions are fast).
#pragma once

#include <ATen/ATen.h>

namespace lss::cpu {

// The most ids a row keeps: the screen keeps 4.
constexpr int64_t kRowTopkMax = 16;

// scores: bf16 [n, P], contiguous, on the CPU; 1 <= k <= min(P, kRowTopkMax).
// Returns int64 [n, k]: each row's k largest entries' columns, larger score
// first, ties to the smaller column; NaN and -inf entries never enter, and a
// row with fewer than k other entries is filled with column 0. The AVX-512
// and generic paths give the same ids (LSS_CPU_ISA picks, as for the dots).
at::Tensor bf16_row_topk(const at::Tensor& scores, int64_t k);

}  // namespace lss::cpu
