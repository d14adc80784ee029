// hash_codes on the CPU: codes[b, l] = sum_j 2^j [<x[b], proj[l, j]> > 0].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "lss/arg_checks.h"
#include "lss/common.h"
#include "vector_math.h"

namespace lss::cpu {

at::Tensor hash_codes_cpu(const at::Tensor& x, const at::Tensor& proj) {
  check_hash_codes(x, proj);
  TORCH_CHECK_VALUE(x.device().is_cpu() && proj.device().is_cpu(), "hash_codes: the CPU kernel got x on ", x.device(),
                    " and proj on ", proj.device(), "; all inputs must be on the same device");

  const int64_t B = x.size(0), d = x.size(1), L = proj.size(0), K = proj.size(1);
  at::Tensor codes = at::empty({B, L}, x.options().dtype(at::kInt));
  if (B == 0 || L == 0) return codes;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "hash_codes_cpu", [&] {
    using acc = acc_t<scalar_t>;
    // The query side is converted once to the accumulator type; projections
    // stay in their storage dtype and are converted inside the dot product.
    const at::Tensor xa = x.to(c10::CppTypeToScalarType<acc>::value).contiguous();
    const at::Tensor pc = proj.contiguous();
    const acc* xp = xa.data_ptr<acc>();
    const scalar_t* pp = pc.data_ptr<scalar_t>();
    int32_t* out = codes.data_ptr<int32_t>();
    // About 32K multiply-adds per task: a batch-1 query with many tables
    // (L = 64, K = 14, d = 130: 116K) still uses both cores.
    const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, K * d));
    at::parallel_for(0, B * L, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / L, l = i % L;
        const acc* xb = xp + b * d;
        const scalar_t* pl = pp + l * K * d;
        int32_t code = 0;
        int64_t j = 0;
        for (; j + 4 <= K; j += 4) {  // four projections at a time (dot4)
          const scalar_t* ps[4] = {pl + j * d, pl + (j + 1) * d, pl + (j + 2) * d, pl + (j + 3) * d};
          acc p[4];
          dot4(xb, ps, d, p);
          for (int t = 0; t < 4; ++t) code = set_code_bit(code, int(j + t), p[t]);
        }
        for (; j < K; ++j) code = set_code_bit(code, int(j), dot(xb, pl + j * d, d));
        out[i] = code;
      }
    });
  });
  return codes;
}

TORCH_LIBRARY_IMPL(lsskernels, CPU, m) { m.impl("hash_codes", &hash_codes_cpu); }

}  // namespace lss::cpu
