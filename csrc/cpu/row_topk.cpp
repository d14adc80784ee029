// bf16_row_topk (row_topk.h): one streaming pass per row. The AVX-512 path
// compares 32 scores at a time against the current k-th best and looks at an
// entry only where one passes: past the first few hundred columns almost none
// does, so a row costs about one read of its scores (torch's amax + topk over
// the same block read it several times and reduce serially).
#include "row_topk.h"

#include <ATen/Parallel.h>

#include <cstring>
#include <limits>

#include "vector_math.h"
#include "x86_targets.h"

namespace lss::cpu {
namespace {

inline float bf16_value(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// The k best (score, column) seen so far, best first; strict comparisons, so
// of equal scores the earlier column stays.
struct Best {
  float score[kRowTopkMax];
  int64_t col[kRowTopkMax];
  int64_t k, n = 0;
  explicit Best(int64_t k_) : k(k_) {}
  float threshold() const { return n < k ? -std::numeric_limits<float>::infinity() : score[k - 1]; }
  void offer(float s, int64_t c) {
    if (!(s > threshold())) return;  // NaN and -inf never enter
    int64_t i = n < k ? n++ : k - 1;
    while (i > 0 && s > score[i - 1]) {
      score[i] = score[i - 1];
      col[i] = col[i - 1];
      --i;
    }
    score[i] = s;
    col[i] = c;
  }
  void write(int64_t* out) const {
    for (int64_t i = 0; i < k; ++i) out[i] = i < n ? col[i] : 0;
  }
};

void row_generic(const uint16_t* row, int64_t p, Best& best) {
  for (int64_t j = 0; j < p; ++j) best.offer(bf16_value(row[j]), j);
}

#if defined(LSS_HAVE_X86_KERNELS)
LSS_X86_WARNINGS_OFF
LSS_TARGET_AVX512 void row_avx512(const uint16_t* row, int64_t p, Best& best) {
  int64_t j = 0;
  for (; j + 32 <= p; j += 32) {
    const __m512i raw = _mm512_loadu_si512(reinterpret_cast<const void*>(row + j));
    // bf16 -> fp32: the 16 bits become the high half of each float.
    const __m512 lo = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw)), 16));
    const __m512 hi = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(raw, 1)), 16));
    const __m512 t = _mm512_set1_ps(best.threshold());
    const uint32_t pass = uint32_t(_mm512_cmp_ps_mask(lo, t, _CMP_GT_OQ)) |
                          (uint32_t(_mm512_cmp_ps_mask(hi, t, _CMP_GT_OQ)) << 16);
    // In column order; offer() re-checks against the threshold as it rises.
    for (uint32_t m = pass; m; m &= m - 1) {
      const int64_t c = j + __builtin_ctz(m);
      best.offer(bf16_value(row[c]), c);
    }
  }
  for (; j < p; ++j) best.offer(bf16_value(row[j]), j);
}
LSS_X86_WARNINGS_ON
#endif

}  // namespace

at::Tensor bf16_row_topk(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK_VALUE(scores.device().is_cpu() && scores.scalar_type() == at::kBFloat16 && scores.dim() == 2,
                    "bf16_row_topk: scores must be a 2-D bfloat16 CPU tensor, got ", scores.scalar_type(), " ",
                    scores.sizes(), " on ", scores.device());
  const int64_t n = scores.size(0), p = scores.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= kRowTopkMax && k <= p, "bf16_row_topk: k must be in [1, min(P, ",
                    kRowTopkMax, ")] with P = ", p, ", got ", k);
  const at::Tensor sc = scores.contiguous();
  at::Tensor out = at::empty({n, k}, scores.options().dtype(at::kLong));
  const uint16_t* base = reinterpret_cast<const uint16_t*>(sc.data_ptr<at::BFloat16>());
  int64_t* op = out.data_ptr<int64_t>();
#if defined(LSS_HAVE_X86_KERNELS)
  const bool avx512 = vector_level() >= 4;
#else
  const bool avx512 = false;
#endif
  at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      Best best(k);
#if defined(LSS_HAVE_X86_KERNELS)
      if (avx512) row_avx512(base + r * p, p, best);
      else row_generic(base + r * p, p, best);
#else
      (void)avx512;
      row_generic(base + r * p, p, best);
#endif
      best.write(op + r * k);
    }
  });
  return out;
}

}  // namespace lss::cpu
