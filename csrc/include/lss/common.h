// Per-element logic shared by the CPU kernels (csrc/cpu) and the CUDA kernels
// (csrc/cuda). Everything here is a small __host__ __device__ function so that
// the CPU tests exercise the exact code the GPU runs: bit layouts, candidate
// ordering and the bounds checks that keep a malformed table from reading out
// of bounds.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LSS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LSS_HOST_DEVICE inline
#endif

namespace lss {

// ---------------------------------------------------------------- hash codes
// A code is the integer whose bit j is 1 where <v, proj[l, j]> > 0. Codes are
// int32 and non-negative, so at most 30 bits per table.
constexpr int kMaxBits = 30;

// ------------------------------------------------------- partition lists
// Rows of int8 codes are padded to a multiple of kCodeAlign entries
// (Dp = d rounded up); codes and quantized queries use [-kQuantLevels, kQuantLevels].
constexpr int kCodeAlign = 32;
constexpr int kQuantLevels = 127;
// The widest codes row (a multiple of kCodeAlign) whose exact int32 dot
// cannot overflow: kQuantLevels^2 * Dp < 2^31.
constexpr int64_t kMaxCodeWidth =
    ((int64_t(1) << 31) - 1) / (int64_t(kQuantLevels) * kQuantLevels) / kCodeAlign * kCodeAlign;

LSS_HOST_DEVICE int32_t set_code_bit(int32_t code, int bit, float projection) {
  return projection > 0.0f ? (code | (int32_t(1) << bit)) : code;
}
LSS_HOST_DEVICE int32_t set_code_bit(int32_t code, int bit, double projection) {
  return projection > 0.0 ? (code | (int32_t(1) << bit)) : code;
}

// ------------------------------------------------------------------- bitmaps
// A candidate bitmap row holds label i at bit (i % 32) of int32 word i / 32.
LSS_HOST_DEVICE int64_t bitmap_words(int64_t num_labels) {
  return (num_labels + 31) / 32;
}
LSS_HOST_DEVICE int64_t bitmap_word_of(int64_t label) { return label >> 5; }
LSS_HOST_DEVICE uint32_t bitmap_mask_of(int64_t label) {
  return uint32_t(1) << (label & 31);
}
LSS_HOST_DEVICE bool bitmap_has(const int32_t* row, int64_t label) {
  return (uint32_t(row[bitmap_word_of(label)]) & bitmap_mask_of(label)) != 0;
}
// Bits above num_labels in the last word must be zero: otherwise a consumer
// would produce a label id >= num_labels.
LSS_HOST_DEVICE uint32_t bitmap_last_word_mask(int64_t num_labels) {
  const int tail = int(num_labels & 31);
  return tail == 0 ? 0xFFFFFFFFu : ((uint32_t(1) << tail) - 1u);
}

LSS_HOST_DEVICE int popcount32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_popcount(v);
#else
  int c = 0;
  while (v) { v &= v - 1; ++c; }
  return c;
#endif
}

LSS_HOST_DEVICE int lowest_bit(uint32_t v) {  // v != 0
#if defined(__CUDA_ARCH__)
  return __ffs(int(v)) - 1;
#elif defined(__GNUC__) || defined(__clang__)
  return __builtin_ctz(v);
#else
  int i = 0;
  while (!(v & 1u)) { v >>= 1; ++i; }
  return i;
#endif
}

// ------------------------------------------------------------ bucket lookup
// Candidates are ordered by more hits first, then ascending label id. One
// 64-bit key encodes that order so a plain ascending sort produces it.
// kMaxTables is the key's sentinel: an index holds at most kMaxTables - 1
// tables (lsskernels._C.limits()["max_tables"]).
constexpr int kMaxTables = 0xFFFF;

LSS_HOST_DEVICE uint64_t candidate_key(int hits, int32_t label) {
  return (uint64_t(uint32_t(kMaxTables - hits)) << 32) | uint64_t(uint32_t(label));
}
LSS_HOST_DEVICE int32_t candidate_label(uint64_t key) {
  return int32_t(uint32_t(key & 0xFFFFFFFFull));
}
LSS_HOST_DEVICE int candidate_hits(uint64_t key) {
  return kMaxTables - int(key >> 32);
}

// The [begin, end) slice of items[l] holding bucket `code` of table l, or
// false where the offsets are not a valid, in-bounds, non-decreasing range.
struct BucketRange {
  int64_t begin;
  int64_t end;
};
LSS_HOST_DEVICE bool bucket_range(const int32_t* table_offsets, int64_t code,
                                  int64_t items_per_table, BucketRange* out) {
  const int64_t begin = table_offsets[code];
  const int64_t end = table_offsets[code + 1];
  out->begin = begin;
  out->end = end;
  return begin >= 0 && begin <= end && end <= items_per_table;
}

LSS_HOST_DEVICE bool label_in_range(int64_t label, int64_t num_labels) {
  return label >= 0 && label < num_labels;
}
// Gathered ids may also be -1 (padding).
LSS_HOST_DEVICE bool candidate_id_valid(int64_t id, int64_t num_labels) {
  return id >= -1 && id < num_labels;
}

// ------------------------------------------------------------ dot products
// The CPU dot product (csrc/cpu/vector_math.cpp) keeps kDotLanes partial sums,
// lane j owning elements j, j + kDotLanes, ... of the full blocks, reduces them
// as a tree (lane j += lane j + off for off = 16, 8, 4, 2, 1), then adds the
// tail element by element. The CUDA warp dot (csrc/cuda/device_utils.cuh) maps
// one CPU lane to one CUDA lane and reduces with __shfl_down_sync in the same
// order, so both backends round the same way.
constexpr int kDotLanes = 32;

// ----------------------------------------------------------- candidate rows
// The query row of candidate entry k: row_of[k] for a ragged (bitmap-decoded)
// entry list, k / width for fixed-width per-query ids [B, width].
LSS_HOST_DEVICE int64_t entry_row(int64_t k, const int32_t* row_of, int64_t width) {
  return row_of ? int64_t(row_of[k]) : k / width;
}

// ---------------------------------------------------------------- top-k
// Order of the top-k: larger score first, ties by smaller label id, so the
// result is deterministic whatever the kernel's traversal order. NaN ranks
// above every number (as in torch.topk), which also keeps this a strict weak
// order that std::sort may rely on.
template <typename S>
LSS_HOST_DEVICE bool topk_before(S score_a, int64_t label_a, S score_b, int64_t label_b) {
  const bool nan_a = score_a != score_a, nan_b = score_b != score_b;
  if (nan_a || nan_b) return nan_a && (!nan_b || label_a < label_b);
  return score_a > score_b || (score_a == score_b && label_a < label_b);
}

}  // namespace lss
