// int8 code-row kernels of quantized_candidates: exact integer dots of an
// int8 query against contiguous int8 rows, then the fp32 score and its sort
// key (int8_dots.h). One kernel table, picked once at load time from
// vector_level() (so LSS_CPU_ISA=avx2|generic lowers it with the dot kernels):
//
//   AVX-512 VNNI  vpdpbusd: unsigned x signed bytes, so the codes are offset
//                 by +128 (xor 0x80) and 128 * sum(q) is taken off the sum
//   AVX-512 BW    codes widened to int16 (vpmovsxbw), vpmaddwd with q16
//   AVX2          vpmaddubsw of |q| and the codes signed by q (vpsignb),
//                 32 codes per instruction, no saturation (|values| <= 127)
//   generic       plain C++ (the compiler vectorises it for the baseline ISA)
//
// Several queries against one partition (score_code_rows_many): on VNNI
// the rows are repacked 16 at a time and scored for up to 8 queries per
// code load, the keys below each query's running threshold dropped in
// registers; the other paths score one query at a time and filter.
//
// LSS_CPU_ISA=avx512bw keeps AVX-512 but skips VNNI, so that path runs on a
// VNNI machine too (tests/test_quantized_candidates.py runs every path).
// Every path gives the same integers and, since the score is three fp32
// operations in a fixed order without FMA (LSS_NO_FMA), the same bits.
#include "int8_dots.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vector_math.h"
#include "x86_targets.h"  // LSS_TARGET_*, LSS_HAVE_X86_KERNELS

namespace lss::cpu {
namespace {

// Rows are scored in blocks of kBlock: their integer dots first, then their
// scores and keys in one vector pass.
constexpr int64_t kBlock = 16;
// No software prefetch inside a partition: its rows are one contiguous
// stream, which the hardware prefetcher follows (prefetching ahead cost time
// on L2-resident rows and gained nothing on L3 ones); the caller prefetches
// the start of the next partition.

inline bool id_ok(int32_t id, int64_t num_labels) { return id >= 0 && int64_t(id) < num_labels; }

// ------------------------------------------------------------------ generic
int32_t dot_generic(const int8_t* q, const int8_t* row, int64_t width) {
  int32_t s = 0;
  for (int64_t j = 0; j < width; ++j) s += int32_t(q[j]) * int32_t(row[j]);
  return s;
}

bool score_rows_generic(const QuantizedQuery& q, const int8_t* codes, const float* scales, const float* bias,
                        const int32_t* ids, int64_t n, int64_t num_labels, uint64_t* keys) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t acc = dot_generic(q.q, codes + i * q.width, q.width);
    ok &= id_ok(ids[i], num_labels);
    keys[i] = score_key(quantized_score(acc, q.scale, scales[i], bias[i]), ids[i]);
  }
  return ok;
}

int64_t keys_at_least_generic(const uint64_t* keys, int64_t n, uint64_t threshold, uint64_t* out) {
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {  // branch-free: which keys pass is unpredictable
    out[kept] = keys[i];
    kept += keys[i] >= threshold;
  }
  return kept;
}

#if defined(LSS_HAVE_X86_KERNELS)
LSS_X86_WARNINGS_OFF

// The same barrier as LSS_NO_FMA for a zmm (the "x" class stops at xmm15).
#define LSS_NO_FMA_ZMM(v) __asm__("" : "+v"(v))

// Four accumulators of 16 int32 lanes -> their four sums (exact: integer
// addition in any order).
LSS_TARGET_AVX512 inline __m128i reduce4_epi32(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// The order-preserving bits of 16 scores from their dots (score_key's high
// half): (float(acc) * scale_q) * code_scale + code_bias, -0 -> +0, NaN -> -inf.
LSS_TARGET_AVX512 inline __m512i ordered16(__m512i acc, float scale_q, __m512 code_scales, __m512 code_bias) {
  __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(scale_q));
  s = _mm512_mul_ps(s, code_scales);
  LSS_NO_FMA_ZMM(s);
  s = _mm512_add_ps(s, code_bias);
  s = _mm512_add_ps(s, _mm512_setzero_ps());
  s = _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q),
                         _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
  const __m512i bits = _mm512_castps_si512(s);
  return _mm512_xor_si512(bits, _mm512_or_si512(_mm512_srai_epi32(bits, 31), _mm512_set1_epi32(int32_t(0x80000000u))));
}

// Keys of 16 rows, rows 0-7 in lo and 8-15 in hi: ordered[i] << 32 | ~id[i].
LSS_TARGET_AVX512 inline void key_pairs16(__m512i ordered, __m512i id, __m512i* lo, __m512i* hi) {
  const __m512i low = _mm512_xor_si512(id, _mm512_set1_epi32(-1));
  const __m512i lo_idx = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi_idx = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  *lo = _mm512_permutex2var_epi32(low, lo_idx, ordered);
  *hi = _mm512_permutex2var_epi32(low, hi_idx, ordered);
}

// Whether every id of the lanes in m is in [0, num_labels) (num_labels <
// 2^31, checked by the op: the unsigned compare is the range test).
LSS_TARGET_AVX512 inline bool ids_ok16(__m512i id, __mmask16 m, int64_t num_labels) {
  return _mm512_mask_cmplt_epu32_mask(m, id, _mm512_set1_epi32(int32_t(num_labels))) == m;
}

// Scores and keys of up to 16 rows (lanes where `m` is set) from their dots.
LSS_TARGET_AVX512 inline bool keys16(__m512i acc, __mmask16 m, float scale_q, const float* scales,
                                     const float* bias, const int32_t* ids, int64_t num_labels, uint64_t* keys) {
  const __m512i id = _mm512_maskz_loadu_epi32(m, ids);
  __m512i lo, hi;
  key_pairs16(ordered16(acc, scale_q, _mm512_maskz_loadu_ps(m, scales), _mm512_maskz_loadu_ps(m, bias)), id, &lo, &hi);
  _mm512_mask_storeu_epi64(keys, __mmask8(m & 0xFF), lo);
  _mm512_mask_storeu_epi64(keys + 8, __mmask8(m >> 8), hi);
  return ids_ok16(id, m, num_labels);
}

// The keys >= the sink's threshold of 16 rows (lanes in m), appended to it
// (whole vectors stored: the sink has 8 keys of slack). A key is >= the
// threshold only if its score's bits are >= the threshold's high half: rows
// below that never become keys.
LSS_TARGET_AVX512 inline void keys16_to_sink(__m512i ordered, __m512i id, __mmask16 m, KeySink* sink) {
  const __mmask16 maybe = _mm512_mask_cmpge_epu32_mask(m, ordered, _mm512_set1_epi32(int32_t(sink->threshold >> 32)));
  if (!maybe) return;
  __m512i lo, hi;
  key_pairs16(ordered, id, &lo, &hi);
  const __m512i t = _mm512_set1_epi64(int64_t(sink->threshold));
  const __mmask8 pass_lo = _mm512_mask_cmpge_epu64_mask(__mmask8(maybe & 0xFF), lo, t);
  const __mmask8 pass_hi = _mm512_mask_cmpge_epu64_mask(__mmask8(maybe >> 8), hi, t);
  uint64_t* out = sink->keys + sink->count;
  _mm512_storeu_si512(out, _mm512_maskz_compress_epi64(pass_lo, lo));
  out += __builtin_popcount(pass_lo);
  _mm512_storeu_si512(out, _mm512_maskz_compress_epi64(pass_hi, hi));
  sink->count = (out - sink->keys) + __builtin_popcount(pass_hi);
}

// num_labels < 2^31 (checked by the op), so the unsigned compare is the
// [0, num_labels) test.

// ------------------------------------------------------------ AVX-512 VNNI
// 32 codes (offset by +128) against 32 query entries, 8 int32 partial sums.
LSS_TARGET_VNNI inline __m256i half_dot_vnni(const int8_t* r, __m256i q) {
  const __m256i c = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r)),
                                     _mm256_set1_epi8(char(0x80)));
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), c, q);
}

// Dots of four rows: sum_j (c_j + 128) * q_j - 128 * sum(q). kWidth > 0
// compiles it for that row length (the query stays in registers).
template <int64_t kWidth>
LSS_TARGET_VNNI inline __m128i dot4_vnni(const int8_t* q, const int8_t* r0, const int8_t* r1, const int8_t* r2,
                                         const int8_t* r3, int64_t runtime_width, __m128i offset) {
  const int64_t width = kWidth > 0 ? kWidth : runtime_width;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  int64_t j = 0;
  for (; j + 64 <= width; j += 64) {
    const __m512i qv = _mm512_loadu_si512(q + j);
    a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512(r0 + j), flip), qv);
    a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_loadu_si512(r1 + j), flip), qv);
    a2 = _mm512_dpbusd_epi32(a2, _mm512_xor_si512(_mm512_loadu_si512(r2 + j), flip), qv);
    a3 = _mm512_dpbusd_epi32(a3, _mm512_xor_si512(_mm512_loadu_si512(r3 + j), flip), qv);
  }
  if (j < width) {  // width % 64 == 32: the query is zero-padded, the rows end here
    const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + j));
    a0 = _mm512_add_epi32(a0, _mm512_zextsi256_si512(half_dot_vnni(r0 + j, qv)));
    a1 = _mm512_add_epi32(a1, _mm512_zextsi256_si512(half_dot_vnni(r1 + j, qv)));
    a2 = _mm512_add_epi32(a2, _mm512_zextsi256_si512(half_dot_vnni(r2 + j, qv)));
    a3 = _mm512_add_epi32(a3, _mm512_zextsi256_si512(half_dot_vnni(r3 + j, qv)));
  }
  return _mm_sub_epi32(reduce4_epi32(a0, a1, a2, a3), offset);
}

// ------------------------------------------------------------- AVX-512 BW
LSS_TARGET_AVX512 inline __m512i wide32(const int8_t* r) {
  return _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r)));
}

template <int64_t kWidth>
LSS_TARGET_AVX512 inline __m128i dot4_avx512bw(const int16_t* q16, const int8_t* r0, const int8_t* r1,
                                               const int8_t* r2, const int8_t* r3, int64_t runtime_width) {
  const int64_t width = kWidth > 0 ? kWidth : runtime_width;
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t j = 0; j < width; j += 32) {  // width is a multiple of 32
    const __m512i qv = _mm512_loadu_si512(q16 + j);
    a0 = _mm512_add_epi32(a0, _mm512_madd_epi16(wide32(r0 + j), qv));
    a1 = _mm512_add_epi32(a1, _mm512_madd_epi16(wide32(r1 + j), qv));
    a2 = _mm512_add_epi32(a2, _mm512_madd_epi16(wide32(r2 + j), qv));
    a3 = _mm512_add_epi32(a3, _mm512_madd_epi16(wide32(r3 + j), qv));
  }
  return reduce4_epi32(a0, a1, a2, a3);
}

// The AVX-512 row loop: blocks of 16 rows, four dots at a time, the scores
// and keys of a block in one vector pass (masked in the last block). One
// body, two functions: the BW one must be compiled without VNNI enabled, or
// the compiler could fuse its vpmaddwd + vpaddd into VNNI's vpdpwssd.
#define LSS_AVX512_BLOCK(DOT4, R, MASK)                                                                 \
  {                                                                                                     \
    __m512i acc = _mm512_castsi128_si512(DOT4(R(0), R(1), R(2), R(3)));                                 \
    acc = _mm512_inserti32x4(acc, DOT4(R(4), R(5), R(6), R(7)), 1);                                     \
    acc = _mm512_inserti32x4(acc, DOT4(R(8), R(9), R(10), R(11)), 2);                                   \
    acc = _mm512_inserti32x4(acc, DOT4(R(12), R(13), R(14), R(15)), 3);                                 \
    ok &= keys16(acc, MASK, q.scale, scales + b, bias + b, ids + b, num_labels, keys + b);              \
  }
#define LSS_AVX512_ROW_LOOP(DOT4)                                                                       \
  const int64_t width = kWidth > 0 ? kWidth : q.width;                                                  \
  bool ok = true;                                                                                       \
  int64_t b = 0;                                                                                        \
  for (; b + kBlock <= n; b += kBlock) {                                                                \
    const int8_t* base = codes + b * width;                                                             \
    LSS_AVX512_BLOCK(DOT4, LSS_ROW_FULL, __mmask16(0xFFFF))                                             \
  }                                                                                                     \
  if (b < n) {                                                                                          \
    const int64_t last = n - 1 - b;                                                                     \
    const int8_t* base = codes + b * width;                                                             \
    LSS_AVX512_BLOCK(DOT4, LSS_ROW_TAIL, __mmask16((1u << (n - b)) - 1u))                               \
  }                                                                                                     \
  return ok;
// Row i of the block; in the partial last block rows past the end repeat the
// last row (read, never stored).
#define LSS_ROW_FULL(i) (base + (i) * width)
#define LSS_ROW_TAIL(i) (base + std::min<int64_t>((i), last) * width)

template <int64_t kWidth>
LSS_TARGET_VNNI bool score_rows_vnni(const QuantizedQuery& q, const int8_t* codes, const float* scales,
                                     const float* bias, const int32_t* ids, int64_t n, int64_t num_labels,
                                     uint64_t* keys) {
  const __m128i offset = _mm_set1_epi32(128 * q.sum);
#define LSS_DOT4_VNNI(a, b, c, d) dot4_vnni<kWidth>(q.q, a, b, c, d, width, offset)
  LSS_AVX512_ROW_LOOP(LSS_DOT4_VNNI)
#undef LSS_DOT4_VNNI
}

// ------------------------------------------ AVX-512 VNNI, many queries
// Several queries against one partition's rows: each block of 16 rows is
// repacked once, its 4-byte groups of the 16 rows side by side (offset by
// +128), so that one vpdpbusd adds 4 entries of all 16 rows' dots for one
// query (the query's 4 bytes broadcast). No per-row horizontal sums, and
// each code vector is loaded once for up to kGroup queries. The integers
// are dot4_vnni's: sum_j (c_j + 128) * q_j - 128 * sum(q).
constexpr int kGroup = 8;

// packed[g * 16 + r] = bytes 4g..4g+3 of row min(r, rows - 1), each + 128:
// 16 x 16 transposes of 4-byte words (unpack 32, unpack 64, two 128-bit
// lane shuffles), 64 bytes of each row at a time.
LSS_TARGET_VNNI inline void pack16_vnni(const int8_t* codes, int64_t rows, int64_t width, int32_t* packed) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const int64_t words = width / 4;
  const int8_t* row[16];
  for (int i = 0; i < 16; ++i) row[i] = codes + std::min<int64_t>(i, rows - 1) * width;
  for (int64_t c = 0; c < words; c += 16) {
    const int64_t cols = std::min<int64_t>(16, words - c);
    const __mmask16 m = cols == 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1u);
    __m512i r[16], t[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) r[i] = _mm512_xor_si512(_mm512_maskz_loadu_epi32(m, row[i] + 4 * c), flip);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {  // lane k of t[2i], t[2i + 1]: rows 2i, 2i + 1 of words 4k..4k + 3
      t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {  // lane k of r[4i + j]: rows 4i..4i + 3 of word 4k + j
      r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
      r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
      r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
      r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {  // word 4k + j of all 16 rows: lane k of r[j], r[4 + j], r[8 + j], r[12 + j]
      const __m512i a = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x88), b = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xDD);
      const __m512i e = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x88);
      const __m512i f = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xDD);
      t[j] = _mm512_shuffle_i32x4(a, e, 0x88);
      t[8 + j] = _mm512_shuffle_i32x4(a, e, 0xDD);
      t[4 + j] = _mm512_shuffle_i32x4(b, f, 0x88);
      t[12 + j] = _mm512_shuffle_i32x4(b, f, 0xDD);
    }
    if (cols == 16) {
#pragma GCC unroll 16
      for (int w = 0; w < 16; ++w) _mm512_storeu_si512(packed + 16 * (c + w), t[w]);
    } else {
#pragma GCC unroll 16
      for (int w = 0; w < 16; ++w)
        if (w < cols) _mm512_storeu_si512(packed + 16 * (c + w), t[w]);
    }
  }
}

// Keys of one packed block (rows b.. of the lanes in m) for NQ queries.
template <int NQ, int64_t kWidth>
LSS_TARGET_VNNI inline bool block_many_vnni(const QuantizedQuery* const* qs, const int32_t* packed,
                                            int64_t runtime_width, __mmask16 m, const float* scales,
                                            const float* bias, const int32_t* ids, int64_t num_labels,
                                            KeySink* const* sinks, int64_t b) {
  const int64_t groups = (kWidth > 0 ? kWidth : runtime_width) / 4;
  __m512i acc[NQ];
  for (int k = 0; k < NQ; ++k) acc[k] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    const __m512i c = _mm512_loadu_si512(packed + 16 * g);
    for (int k = 0; k < NQ; ++k) {
      int32_t q4;
      std::memcpy(&q4, qs[k]->q + 4 * g, sizeof(q4));
      acc[k] = _mm512_dpbusd_epi32(acc[k], c, _mm512_set1_epi32(q4));
    }
  }
  const __m512i id = _mm512_maskz_loadu_epi32(m, ids + b);
  const __m512 code_scales = _mm512_maskz_loadu_ps(m, scales + b), code_bias = _mm512_maskz_loadu_ps(m, bias + b);
  for (int k = 0; k < NQ; ++k) {
    const __m512i dots = _mm512_sub_epi32(acc[k], _mm512_set1_epi32(128 * qs[k]->sum));
    keys16_to_sink(ordered16(dots, qs[k]->scale, code_scales, code_bias), id, m, sinks[k]);
  }
  return ids_ok16(id, m, num_labels);
}

template <int64_t kWidth>
LSS_TARGET_VNNI bool score_rows_many_vnni(const QuantizedQuery* const* qs, int64_t nq, const int8_t* codes,
                                          const float* scales, const float* bias, const int32_t* ids, int64_t n,
                                          int64_t num_labels, KeySink* const* sinks) {
  const int64_t width = kWidth > 0 ? kWidth : qs[0]->width;
  const int64_t blocks = (n + 15) / 16, block_words = 4 * width;  // 16 rows of width / 4 words
  // All blocks packed first, then queries outer, rows inner.
  thread_local std::vector<int32_t> packed;
  if (int64_t(packed.size()) < blocks * block_words) packed.resize(size_t(blocks * block_words));
  for (int64_t j = 0; j < blocks; ++j)
    pack16_vnni(codes + 16 * j * width, std::min<int64_t>(16, n - 16 * j), width, packed.data() + j * block_words);
  bool ok = true;
  for (int64_t k0 = 0; k0 < nq; k0 += kGroup) {
    const QuantizedQuery* const* g = qs + k0;
    KeySink* const* out = sinks + k0;
    const int64_t group = std::min<int64_t>(kGroup, nq - k0);
    for (int64_t j = 0; j < blocks; ++j) {
      const int64_t b = 16 * j, rows = std::min<int64_t>(16, n - b);
      const __mmask16 m = rows == 16 ? __mmask16(0xFFFF) : __mmask16((1u << rows) - 1u);
      const int32_t* block = packed.data() + j * block_words;
      switch (group) {
#define LSS_MANY_CASE(NQ)                                                                            \
  case NQ:                                                                                           \
    ok &= block_many_vnni<NQ, kWidth>(g, block, width, m, scales, bias, ids, num_labels, out, b); \
    break;
        LSS_MANY_CASE(1) LSS_MANY_CASE(2) LSS_MANY_CASE(3) LSS_MANY_CASE(4)
        LSS_MANY_CASE(5) LSS_MANY_CASE(6) LSS_MANY_CASE(7) LSS_MANY_CASE(8)
#undef LSS_MANY_CASE
      }
    }
  }
  return ok;
}

template <int64_t kWidth>
LSS_TARGET_AVX512 bool score_rows_avx512bw(const QuantizedQuery& q, const int8_t* codes, const float* scales,
                                           const float* bias, const int32_t* ids, int64_t n, int64_t num_labels,
                                           uint64_t* keys) {
#define LSS_DOT4_BW(a, b, c, d) dot4_avx512bw<kWidth>(q.q16, a, b, c, d, width)
  LSS_AVX512_ROW_LOOP(LSS_DOT4_BW)
#undef LSS_DOT4_BW
}
#undef LSS_AVX512_ROW_LOOP
#undef LSS_AVX512_BLOCK
#undef LSS_ROW_FULL
#undef LSS_ROW_TAIL

// 32 keys per step; the rare vectors with passing keys are compressed.
LSS_TARGET_AVX512 int64_t keys_at_least_avx512(const uint64_t* keys, int64_t n, uint64_t threshold,
                                               uint64_t* out) {
  const __m512i t = _mm512_set1_epi64(int64_t(threshold));
  int64_t kept = 0, i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512i v[4];
    __mmask8 m[4];
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm512_loadu_si512(keys + i + 8 * j);
      m[j] = _mm512_cmpge_epu64_mask(v[j], t);
    }
    if (!(m[0] | m[1] | m[2] | m[3])) continue;
    for (int j = 0; j < 4; ++j) {
      _mm512_storeu_si512(out + kept, _mm512_maskz_compress_epi64(m[j], v[j]));
      kept += __builtin_popcount(m[j]);
    }
  }
  return kept + keys_at_least_generic(keys + i, n - i, threshold, out + kept);
}

// ------------------------------------------------------------------- AVX2
LSS_TARGET_AVX2 inline __m128i reduce4_epi32_avx2(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
  const __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(a0, a1), _mm256_unpackhi_epi32(a0, a1));
  const __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(a2, a3), _mm256_unpackhi_epi32(a2, a3));
  const __m256i u = _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
  return _mm_add_epi32(_mm256_castsi256_si128(u), _mm256_extracti128_si256(u, 1));
}

// Exact int8 dots without widening the codes: vpmaddubsw multiplies |q|
// (unsigned) by the codes carrying q's sign (vpsignb) and adds pairs into
// int16, which cannot saturate (|q|, |code| <= 127: 2 * 127 * 127 = 32258);
// vpmaddwd with ones widens the pairs to int32. Three instructions per 32
// codes of a row instead of six for vpmovsxbw + vpmaddwd + add per 16.
LSS_TARGET_AVX2 inline __m256i dot32_avx2(__m256i acc, const int8_t* r, __m256i qv, __m256i qa, __m256i ones) {
  const __m256i c = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r)), qv);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(qa, c), ones));
}

template <int64_t kWidth>
LSS_TARGET_AVX2 inline __m128i dot4_avx2(const int8_t* q, const int8_t* r0, const int8_t* r1, const int8_t* r2,
                                         const int8_t* r3, int64_t runtime_width) {
  const int64_t width = kWidth > 0 ? kWidth : runtime_width;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t j = 0; j < width; j += 32) {
    const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + j));
    const __m256i qa = _mm256_abs_epi8(qv);
    a0 = dot32_avx2(a0, r0 + j, qv, qa, ones);
    a1 = dot32_avx2(a1, r1 + j, qv, qa, ones);
    a2 = dot32_avx2(a2, r2 + j, qv, qa, ones);
    a3 = dot32_avx2(a3, r3 + j, qv, qa, ones);
  }
  return reduce4_epi32_avx2(a0, a1, a2, a3);
}

// Scores and keys of 8 rows; `rows` < 8 in a partial block goes through the
// scalar twin (quantized_score + score_key: the same fp32 operations).
LSS_TARGET_AVX2 inline bool keys8_avx2(__m256i acc, int64_t rows, float scale_q, const float* scales,
                                       const float* bias, const int32_t* ids, int64_t num_labels, uint64_t* keys) {
  if (rows < 8) {
    alignas(32) int32_t a[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(a), acc);
    bool ok = true;
    for (int64_t i = 0; i < rows; ++i) {
      ok &= id_ok(ids[i], num_labels);
      keys[i] = score_key(quantized_score(a[i], scale_q, scales[i], bias[i]), ids[i]);
    }
    return ok;
  }
  __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(scale_q));
  s = _mm256_mul_ps(s, _mm256_loadu_ps(scales));
  LSS_NO_FMA(s);
  s = _mm256_add_ps(s, _mm256_loadu_ps(bias));
  s = _mm256_add_ps(s, _mm256_setzero_ps());
  s = _mm256_blendv_ps(s, _mm256_set1_ps(-std::numeric_limits<float>::infinity()), _mm256_cmp_ps(s, s, _CMP_UNORD_Q));
  const __m256i bits = _mm256_castps_si256(s);
  const __m256i ordered =
      _mm256_xor_si256(bits, _mm256_or_si256(_mm256_srai_epi32(bits, 31), _mm256_set1_epi32(int32_t(0x80000000u))));
  const __m256i id = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ids));
  // 0 <= id < num_labels <= 2^31 - 1, as signed compares.
  const __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), id),
                                      _mm256_cmpgt_epi32(id, _mm256_set1_epi32(int32_t(num_labels - 1))));
  const __m256i low = _mm256_xor_si256(id, _mm256_set1_epi32(-1));
  // unpack within 128-bit lanes gives keys 0,1,4,5 / 2,3,6,7; permute them back to row order.
  const __m256i k0 = _mm256_unpacklo_epi32(low, ordered), k1 = _mm256_unpackhi_epi32(low, ordered);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys), _mm256_permute2x128_si256(k0, k1, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + 4), _mm256_permute2x128_si256(k0, k1, 0x31));
  return _mm256_testz_si256(bad, bad);
}

template <int64_t kWidth>
LSS_TARGET_AVX2 bool score_rows_avx2(const QuantizedQuery& q, const int8_t* codes, const float* scales,
                                     const float* bias, const int32_t* ids, int64_t n, int64_t num_labels,
                                     uint64_t* keys) {
  const int64_t width = kWidth > 0 ? kWidth : q.width;
  bool ok = true;
  for (int64_t b = 0; b < n; b += 8) {
    const int64_t rows = std::min<int64_t>(8, n - b);
    const int8_t* r[8];
    for (int64_t i = 0; i < 8; ++i) r[i] = codes + (b + std::min<int64_t>(i, rows - 1)) * width;
    const __m128i lo = dot4_avx2<kWidth>(q.q, r[0], r[1], r[2], r[3], width);
    const __m128i hi = rows > 4 ? dot4_avx2<kWidth>(q.q, r[4], r[5], r[6], r[7], width) : lo;
    ok &= keys8_avx2(_mm256_set_m128i(hi, lo), rows, q.scale, scales + b, bias + b, ids + b, num_labels, keys + b);
  }
  return ok;
}

LSS_X86_WARNINGS_ON
#endif  // LSS_HAVE_X86_KERNELS

// ------------------------------------------------------------------ table
using ScoreRowsFn = bool (*)(const QuantizedQuery&, const int8_t*, const float*, const float*, const int32_t*,
                             int64_t, int64_t, uint64_t*);

using KeysAtLeastFn = int64_t (*)(const uint64_t*, int64_t, uint64_t, uint64_t*);

using ScoreManyFn = bool (*)(const QuantizedQuery* const*, int64_t, const int8_t*, const float*, const float*,
                             const int32_t*, int64_t, int64_t, KeySink* const*);

struct Int8Kernels {
  ScoreRowsFn any = &score_rows_generic;
  ScoreRowsFn w64 = nullptr, w128 = nullptr, w256 = nullptr;  // compiled for that row width
  const char* name = "generic";
  KeysAtLeastFn at_least = &keys_at_least_generic;
  // Several queries at once (VNNI only; elsewhere nullptr: one query at a time).
  ScoreManyFn many_any = nullptr, many128 = nullptr;
  ScoreRowsFn for_width(int64_t w) const {
    const ScoreRowsFn fixed = w == 64 ? w64 : w == 128 ? w128 : w == 256 ? w256 : nullptr;
    return fixed ? fixed : any;
  }
  ScoreManyFn many_for_width(int64_t w) const { return w == 128 && many128 ? many128 : many_any; }
};

Int8Kernels pick_int8_kernels() {
  Int8Kernels k;
#if defined(LSS_HAVE_X86_KERNELS)
  const int level = vector_level();
  const char* forced = std::getenv("LSS_CPU_ISA");
  __builtin_cpu_init();
  const bool vnni = level >= 4 && __builtin_cpu_supports("avx512vnni") &&
                    !(forced && std::strcmp(forced, "avx512bw") == 0);
  if (vnni) {
    k = {&score_rows_vnni<0>, &score_rows_vnni<64>, &score_rows_vnni<128>, &score_rows_vnni<256>, "avx512-vnni",
         &keys_at_least_avx512, &score_rows_many_vnni<0>, &score_rows_many_vnni<128>};
  } else if (level >= 4) {
    k = {&score_rows_avx512bw<0>, &score_rows_avx512bw<64>, &score_rows_avx512bw<128>,
         &score_rows_avx512bw<256>, "avx512bw", &keys_at_least_avx512};
  } else if (level >= 3) {
    k = {&score_rows_avx2<0>, &score_rows_avx2<64>, &score_rows_avx2<128>, &score_rows_avx2<256>, "avx2"};
  }
#endif
  return k;
}

const Int8Kernels kernels = pick_int8_kernels();

}  // namespace

bool score_code_rows(const QuantizedQuery& q, const int8_t* codes, const float* code_scales, const float* code_bias,
                     const int32_t* ids, int64_t n, int64_t num_labels, uint64_t* keys) {
  if (n <= 0) return true;
  return kernels.for_width(q.width)(q, codes, code_scales, code_bias, ids, n, num_labels, keys);
}

bool score_code_rows_many(const QuantizedQuery* const* qs, int64_t nq, const int8_t* codes, const float* code_scales,
                          const float* code_bias, const int32_t* ids, int64_t n, int64_t num_labels,
                          KeySink* const* sinks) {
  if (n <= 0 || nq <= 0) return true;
  const ScoreManyFn many = kernels.many_for_width(qs[0]->width);
  if (many && nq >= kManyQueries) return many(qs, nq, codes, code_scales, code_bias, ids, n, num_labels, sinks);
  // One query at a time: straight into a sink without a threshold, else
  // into a buffer that stays in cache, then the keys >= the threshold.
  thread_local std::vector<uint64_t> block;
  bool ok = true;
  for (int64_t k = 0; k < nq; ++k) {
    KeySink& sink = *sinks[k];
    if (sink.threshold == 0) {
      ok &= score_code_rows(*qs[k], codes, code_scales, code_bias, ids, n, num_labels, sink.keys + sink.count);
      sink.count += n;
      continue;
    }
    if (int64_t(block.size()) < n) block.resize(size_t(n));
    ok &= score_code_rows(*qs[k], codes, code_scales, code_bias, ids, n, num_labels, block.data());
    sink.count += kernels.at_least(block.data(), n, sink.threshold, sink.keys + sink.count);
  }
  return ok;
}

int64_t keys_at_least(const uint64_t* keys, int64_t n, uint64_t threshold, uint64_t* out) {
  return kernels.at_least(keys, n, threshold, out);
}

const char* int8_isa() { return kernels.name; }

}  // namespace lss::cpu
