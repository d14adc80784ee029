// Quantized scoring of int8 code rows against an int8 query, for
// quantized_candidates (csrc/cpu/quantized_candidates_cpu.cpp). The kernels
// (AVX-512 VNNI, AVX-512 BW, AVX2, generic) live in int8_dots.cpp, one table
// picked once at load time like the dot kernels of vector_math.cpp, and every
// one of them gives the same bits: the integer dots are exact, and the score
//
//   (float(acc) * scale_q) * code_scales[t] + code_bias[t]
//
// is three fp32 operations in that order, never contracted into an FMA (the
// compiler is kept from fusing the last multiply and add; see LSS_NO_FMA).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace lss::cpu {

// One quantized query, as the kernels read it. q is zero-padded to a multiple
// of 64 entries past `width`; q16 holds the same values as int16 (the
// AVX-512 BW kernel widens the codes to int16 and madds). sum is the sum of q,
// which the VNNI kernel needs for its unsigned-operand offset.
struct QuantizedQuery {
  const int8_t* q;
  const int16_t* q16;
  int64_t width;  // Dp: codes per row, a multiple of 32
  int32_t sum;
  float scale;
};

// Keeps the compiler from contracting `v * w + u` into an FMA across this
// point: v has to exist, rounded, in a register. (-ffp-contract=off would do
// the same for the whole file; setup.py has no per-file flags, and this also
// holds for a user's CMake build with other flags.)
#if defined(__GNUC__) || defined(__clang__)
#define LSS_NO_FMA(v) __asm__("" : "+x"(v))
#else
#define LSS_NO_FMA(v) ((void)0)
#endif

// A 64-bit key whose unsigned order is the candidate order: larger score
// first (NaN counts as -inf, -0 as +0), then smaller label id. The high half
// is the score's bits mapped to an order-preserving uint32, the low half
// ~label (labels are >= 0).
inline uint64_t score_key(float score, int32_t label) {
  score = score + 0.0f;  // -0 -> +0; not an identity the compiler may drop
  if (score != score) score = -std::numeric_limits<float>::infinity();
  uint32_t bits;
  std::memcpy(&bits, &score, sizeof(bits));
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (uint64_t(ordered) << 32) | uint64_t(~uint32_t(label));
}

inline int32_t key_label(uint64_t key) { return int32_t(~uint32_t(key & 0xFFFFFFFFu)); }

// The score of one row from its exact integer dot, in the reference's order.
inline float quantized_score(int32_t acc, float scale_q, float code_scale, float code_bias) {
  float s = float(acc) * scale_q;
  s = s * code_scale;
  LSS_NO_FMA(s);
  return s + code_bias;
}

// keys[i] = score_key(score of row i, ids[i]) for the n contiguous rows
// codes[i * q.width ...], i < n. Returns false if some ids[i] is outside
// [0, num_labels) (its key is then meaningless). Reads rows, scales, bias and
// ids of exactly those n rows.
bool score_code_rows(const QuantizedQuery& q, const int8_t* codes, const float* code_scales,
                     const float* code_bias, const int32_t* ids, int64_t n, int64_t num_labels, uint64_t* keys);

// Where one query's keys go when a batch scores several queries per
// partition: appended at keys[count...], only those >= threshold (the
// selection's running bound: no key below it can be among the best M
// distinct labels; 0 keeps all). keys must have room for count + n + 8.
struct KeySink {
  uint64_t* keys;
  int64_t count;
  uint64_t threshold;
};

// score_code_rows for nq queries against the same n rows (one partition
// probed by several queries of a batch), each query's keys appended to its
// sink (those >= its threshold, in row order). Where the VNNI kernel runs and
// nq >= kManyQueries, the rows are repacked once and scored for the queries
// together, and keys below the threshold never leave the registers
// (int8_dots.cpp); otherwise one score_code_rows per query, then filtered.
constexpr int64_t kManyQueries = 4;
bool score_code_rows_many(const QuantizedQuery* const* qs, int64_t nq, const int8_t* codes, const float* code_scales,
                          const float* code_bias, const int32_t* ids, int64_t n, int64_t num_labels,
                          KeySink* const* sinks);

// Copies the keys >= threshold of keys[0, n) to out, in order; returns how
// many. out must have room for n + 8 keys (the AVX-512 path stores whole
// vectors). The selection's filtering pass: ~5% of the keys pass.
int64_t keys_at_least(const uint64_t* keys, int64_t n, uint64_t threshold, uint64_t* out);

// Name of the int8 kernel picked on this machine ("avx512-vnni", ...).
const char* int8_isa();

}  // namespace lss::cpu
