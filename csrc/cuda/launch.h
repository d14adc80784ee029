// The boundary between the CUDA kernels and their host side, for every op.
//
// Per op, csrc/cuda/<op>_cuda.cu holds the kernels and their launchers (the
// functions declared here) and includes no torch header: they take raw
// device pointers, sizes and a stream, which keeps their compile time to
// seconds per architecture. csrc/cuda/<op>_host.cpp does everything that
// needs at::Tensor: argument checks (TORCH_CHECK, the same messages as the
// CPU kernels), allocation through the caching allocator, dtype conversion,
// device guards, reading back the device status word, and the op's
// TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) registration; host_utils.h holds
// the host helpers they share. Launchers used by several ops (the radix sort)
// are in common_cuda.cu.
//
//   op(s)                                       kernels                        host
//   hash_codes                                  hash_codes_cuda.cu             hash_codes_host.cpp
//   build_tables                                build_tables_cuda.cu           build_tables_host.cpp
//   bucket_lookup, bucket_lookup_bitmap         bucket_lookup_cuda.cu          bucket_lookup_host.cpp
//   gathered_logits (+ backward)                gathered_logits_cuda.cu        gathered_logits_host.cpp
//   bitmap_sparse_matmul (+ backward)           bitmap_sparse_matmul_cuda.cu   bitmap_sparse_matmul_host.cpp
//   topk_gathered, topk_packed                  topk_cuda.cu                   topk_host.cpp
//   quantized_candidates                        quantized_candidates_cuda.cu   quantized_candidates_host.cpp
//
// (<op>_host.cpp, not <op>_cuda.cpp: setuptools names an object file after
// its source without the extension, so x_cuda.cu and x_cuda.cpp would both
// compile to x_cuda.o.)
//
// Every launcher launches on the stream it is given and runs
// C10_CUDA_KERNEL_LAUNCH_CHECK() after each launch. Launchers with nothing to
// do (an empty grid) launch nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace lss::cuda {

// Storage dtype of a floating-point tensor. Accumulation is fp32 for every
// dtype but fp64, which accumulates in fp64 (as on the CPU).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// Bits of status[0], the device error word that kernels OR into when an input
// is malformed. Kernels never read out of bounds on malformed input: they skip
// the access, set a bit, and the host raises after reading the word back.
enum StatusBit : unsigned long long {
  kBadCode = 1,       // a code outside [0, 2^K)
  kBadRange = 2,      // a bucket's offsets decreasing, negative or past items.size(1)
  kBadItem = 4,       // a table item outside [0, num_labels)
  kBadId = 8,         // a candidate id outside [-1, num_labels) (< -1 for top-k)
  kBadRowPtr = 16,    // row_ptr is not the bitmap's prefix popcount
  kStrayBits = 32,    // bitmap bits at label ids >= num_labels
};

// Layout of the int64 status tensor every op allocates (zeroed).
constexpr int kStatusError = 0;  // StatusBit OR
constexpr int kStatusMax = 1;    // bucket_lookup: max retrieved items per query
constexpr int kStatusTiles = 2;  // bitmap_sparse_matmul: non-empty tiles
constexpr int kStatusNnz = 3;    // bitmap ops: row_ptr[B]
constexpr int kStatusColumns = 4;  // bitmap_sparse_matmul: non-empty 32-label columns
constexpr int kStatusWords = 5;

// ------------------------------------------------------ hash_codes_cuda.cu
// codes[b, l] = sum_j 2^j [<x[b], proj[l, j]> > 0]. x_acc is x converted to
// the accumulator type ([B, d] contiguous float, or double for fp64); proj is
// [L, K, d] contiguous in its storage dtype.
void hash_codes(DType proj_dtype, const void* x_acc, const void* proj, int64_t B, int64_t d,
                int64_t L, int64_t K, int32_t* codes, cudaStream_t stream);

// ---------------------------------------------------- build_tables_cuda.cu
// Histogram of codes [N, L] (row-major) into offsets [L, 2^bits + 1] (zeroed
// by the caller) at offsets[l, c + 1], then an in-place inclusive scan per
// table. Codes outside [0, 2^bits) are skipped and flagged kBadCode.
void build_offsets(const int32_t* codes, int64_t N, int64_t L, int bits, int32_t* offsets,
                   unsigned long long* status, cudaStream_t stream);

// ---------------------------------------------------------- common_cuda.cu
// Stable radix sort of (key, value) pairs on key bits [0, end_bit): the
// primitive behind build_tables (codes -> items) and the deterministic weight
// gradients (entries grouped by label, original order kept within a label).
size_t radix_sort_pairs_temp_bytes(int64_t n, int end_bit);
void radix_sort_pairs(void* temp, size_t temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                      const int32_t* values_in, int32_t* values_out, int64_t n, int end_bit,
                      cudaStream_t stream);

// values[i] = i for i < n.
void iota_int32(int32_t* values, int64_t n, cudaStream_t stream);

// --------------------------------------------------- bucket_lookup_cuda.cu
struct Tables {
  const int32_t* codes;    // [B, L] query codes
  int64_t B, L;
  const int32_t* offsets;  // [L, buckets + 1]
  int64_t buckets;         // 2^K
  const int32_t* items;    // [L, T]
  int64_t T;
  int64_t num_labels;
};

// Pass 1 of bucket_lookup: validates every bucket a query touches and every
// item in it (kBadCode / kBadRange / kBadItem), stores each query's retrieved
// item count (duplicates included) in retrieved[q] and its maximum in
// status[kStatusMax].
void lookup_prepass(const Tables& t, int64_t* retrieved, unsigned long long* status,
                    cudaStream_t stream);

// Largest power-of-two number of 64-bit keys the per-query shared-memory path
// sorts on this device (capped at 16384).
int64_t lookup_smem_capacity();

// Pass 2: candidates of each query, ordered by (more hits first, ascending id)
// and truncated to max_candidates; or, with bitmap != nullptr, every label with
// >= min_hits hits set in bitmap [B, words] (zeroed by the caller).
//  * smem path (scratch == nullptr): queries with retrieved <= capacity,
//    capacity a power of two <= lookup_smem_capacity();
//  * global path (scratch != nullptr): queries with retrieved > smem_capacity
//    among [q_begin, q_end), each sorting in scratch + (q - q_begin) * capacity.
struct LookupOut {
  int32_t* ids;     // [B, M] or nullptr
  int32_t* counts;  // [B] or nullptr
  int64_t M;
  int32_t* bitmap;  // [B, words] or nullptr
  int64_t words;
};
void lookup_candidates(const Tables& t, const int64_t* retrieved, int64_t min_hits,
                       const LookupOut& out, int64_t capacity, int64_t smem_capacity,
                       uint64_t* scratch, int64_t q_begin, int64_t q_end, cudaStream_t stream);

// bucket_lookup_bitmap with min_hits == 1: no counting needed, every item of
// every touched bucket sets its bit (validating as it goes).
void lookup_bitmap_any(const Tables& t, int32_t* bitmap, int64_t words,
                       unsigned long long* status, cudaStream_t stream);

// ------------------------------------------------- gathered_logits_cuda.cu
// (bitmap_sparse_matmul runs these too, on the entries its bitmap decodes to)
// Exact logits of a ragged set of (query row, label) entries: entry k has
// label ids[k] (-1 = padding -> -inf) and row row_of[k], or k / width when
// row_of == nullptr. out[k] = <x_acc[row], W[ids[k]]> + bias[ids[k]], in the
// storage dtype. Ids outside [-1, num_labels) give NaN and kBadId.
struct Entries {
  const int32_t* ids;
  const int32_t* row_of;  // nullptr: fixed width
  int64_t width;
  int64_t nnz;
};
void candidate_logits(DType dtype, const void* x_acc, const void* weight, const void* bias,
                      int64_t d, int64_t num_labels, const Entries& e, void* out,
                      unsigned long long* status, cudaStream_t stream);

// grad_x[b] = sum over entries k of row b, in k order: grad_acc[k] * W[ids[k]].
// Row b's entries are [row_begin[b], row_begin[b + 1]) or [b * width, (b + 1) * width).
// grad_x is written in the storage dtype.
void candidate_grad_x(DType dtype, const void* grad_acc, const void* weight, int64_t d,
                      int64_t num_labels, int64_t rows, const int64_t* row_begin,
                      const Entries& e, void* grad_x, unsigned long long* status,
                      cudaStream_t stream);

// Keys for grouping entries by label: key[k] = ids[k] for a label, num_labels
// for padding (and for a bad id, flagged kBadId); value[k] = k.
void label_keys(const Entries& e, int64_t num_labels, uint32_t* keys, int32_t* values,
                unsigned long long* status, cudaStream_t stream);

// grad_W[i] = sum, in original entry order, of grad_acc[k] * x_acc[row(k)] over
// the entries of label i, and grad_b[i] = sum of those grad_acc[k]; from the
// entries sorted by label (label_keys + radix_sort_pairs). Rows of untouched
// labels are left alone (the caller zeroes them). Either output may be null.
void candidate_grad_weight(DType dtype, const void* grad_acc, const void* x_acc, int64_t d,
                           int64_t num_labels, const Entries& e, const uint32_t* sorted_keys,
                           const int32_t* sorted_entries, void* grad_w, void* grad_b,
                           cudaStream_t stream);

// -------------------------------------------- bitmap_sparse_matmul_cuda.cu
// Bitmap rows [B, words] -> row_ptr[b + 1] = popcount of row b, then an
// inclusive scan (row_ptr[0] is zeroed by the caller); status[kStatusNnz] =
// row_ptr[B]; stray bits past num_labels flag kStrayBits.
void bitmap_row_ptr(const int32_t* bitmap, int64_t B, int64_t words, int64_t num_labels,
                    int64_t* row_ptr, unsigned long long* status, cudaStream_t stream);

// A tile is kTileRows query rows x 32 labels (one bitmap word). Columns
// (bitmap words) with any bit set in any row are appended to columns
// (capacity words), their count in status[kStatusColumns]; the number of
// non-empty tiles goes to status[kStatusTiles]. Order is arbitrary; results
// do not depend on it.
constexpr int kTileRows = 64;
void bitmap_columns(const int32_t* bitmap, int64_t B, int64_t words, int64_t* columns,
                    unsigned long long* status, cudaStream_t stream);

// Decodes the bitmap with its row_ptr: cols[k] (label) and row_of[k] of every
// set bit in row-major order, and/or word_rank[b, w] = set bits of row b
// before word w. Any output may be null.
void bitmap_decode(const int32_t* bitmap, int64_t B, int64_t words, const int64_t* row_ptr,
                   int32_t* cols, int32_t* row_of, int32_t* word_rank, cudaStream_t stream);

// Tiled bitmap_sparse_matmul: one block per non-empty column walks its row
// tiles, skips the empty ones, computes each other one as a dense
// [kTileRows x 32] product (tensor cores for fp16/bf16 on sm_80+, fp32/fp64
// SIMT otherwise) and writes the entries whose bit is set to
// values[row_ptr[b] + word_rank[b, w] + rank of the bit in its word]. A
// column's 32 weight rows are re-read only from L1/L2 across its row tiles, so
// the weight matrix streams from memory about once per call.
void bitmap_tile_logits(DType dtype, const void* x, const void* weight, const void* bias,
                        int64_t B, int64_t d, int64_t num_labels, const int32_t* bitmap,
                        int64_t words, const int64_t* row_ptr, const int32_t* word_rank,
                        const int64_t* columns, int64_t num_columns, void* values,
                        cudaStream_t stream);

// ------------------------------------------------------------ topk_cuda.cu
// Rows handled per launch by the top-k kernels: a buffer of `capacity` (a
// power of two >= 2 k + kTopkThreads) candidates per row, in shared memory
// when scratch is null (capacity == topk_smem_capacity(dtype)), else in
// scratch (capacity * (sizeof(acc) + 4) bytes per row, rows [r_begin, r_end)).
constexpr int kTopkThreads = 256;
int64_t topk_smem_capacity(DType dtype);
size_t topk_scratch_bytes_per_row(DType dtype, int64_t capacity);

// scores [B, k] (storage dtype), labels int64 [B, k]; ids < -1 flag kBadId.
void topk_gathered(DType dtype, const void* logits, const int32_t* ids, int64_t B, int64_t M,
                   int64_t k, int64_t capacity, void* scratch, int64_t r_begin, int64_t r_end,
                   void* scores, int64_t* labels, unsigned long long* status,
                   cudaStream_t stream);

// Rows whose row_ptr does not match their popcount flag kBadRowPtr and are
// not read (they get -inf / -1).
void topk_packed(DType dtype, const void* values, int64_t nnz, const int64_t* row_ptr,
                 const int32_t* bitmap, int64_t B, int64_t words, int64_t k, int64_t capacity,
                 void* scratch, int64_t r_begin, int64_t r_end, void* scores, int64_t* labels,
                 unsigned long long* status, cudaStream_t stream);

// ======================================================= partition family
// Bits of status[kStatusError] set by the partition kernels (after the
// StatusBit values above).
enum PartitionStatusBit : unsigned long long {
  kBadProbe = 64,     // a probe outside [-1, P)
  kBadOffsets = 128,  // list_offsets negative, decreasing, or past codes.size(0)
  kBadListId = 256,   // a list_ids entry of a probed row outside [0, num_labels)
};

// -------------------------------------------- quantized_candidates_cuda.cu
struct PartitionLists {
  const int32_t* offsets;  // [P + 1]
  int64_t P;
  const int8_t* codes;     // [T, Dp], rows 16-byte aligned (Dp % 32 == 0)
  int64_t T, Dp;
  const float* scales;     // [T]
  const float* bias;       // [T]
  const int32_t* ids;      // [T]
  int64_t num_labels;
};

// Pre-pass: flags kBadOffsets unless 0 <= offsets[0] <= ... <= offsets[P] <= T,
// and writes sizes[b, j] = rows of partition probes[b, j] (0 for -1; 0 and
// kBadProbe for a probe outside [-1, P); 0 and kBadOffsets for a range that
// is not inside [0, T)).
void partition_sizes(const PartitionLists& l, const int32_t* probes, int64_t B, int64_t nprobe,
                     int64_t* sizes, unsigned long long* status, cudaStream_t stream);

// reference.quantize_queries on x (fp32 [B, d]): q int8 [B, Dp], zero past
// d, and scale fp32 [B], with the same fp32 operations.
void quantize_queries(const float* x, int64_t B, int64_t d, int64_t Dp, int8_t* q, float* scale,
                      cudaStream_t stream);

// Label-major keys of every probed row of queries [q_begin, q_end):
// (label << 32) | desc(score), written to keys[slot_begin[b * nprobe + j] -
// key_base + (t - offsets[p])]. desc() maps the fp32 score (canonical) to a
// uint32 that grows as the score falls. A list_ids entry outside
// [0, num_labels) gives the empty key ~0 and kBadListId. The probes and
// their ranges must have passed partition_sizes.
void quantized_keys(const PartitionLists& l, const int8_t* q, const float* scale,
                    const int32_t* probes, int64_t nprobe, const int64_t* slot_begin,
                    int64_t key_base, int64_t q_begin, int64_t q_end, uint64_t* keys,
                    unsigned long long* status, cudaStream_t stream);

// Ascending sort of uint64 keys within each of `segments` segments, segment
// s being [seg_offsets[s], seg_offsets[s + 1]) (CUB DeviceSegmentedSort).
size_t segmented_sort_temp_bytes(int64_t n, int64_t segments, const int64_t* seg_offsets);
void segmented_sort(void* temp, size_t temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                    int64_t n, int64_t segments, const int64_t* seg_offsets, cudaStream_t stream);

// On label-major keys sorted per segment: keeps each label's first key (its
// best score) as the score-major key (desc(score) << 32) | label, replaces
// the others by ~0, and writes unique[s] = labels kept in segment s.
void dedupe_keys(const uint64_t* sorted, uint64_t* out, const int64_t* seg_offsets,
                 int64_t segments, int32_t* unique, cudaStream_t stream);

// On score-major keys sorted per segment: ids[s, i] = label of key i for
// i < min(unique[s], M), else -1; counts[s] = min(unique[s], M).
void write_candidates(const uint64_t* sorted, const int64_t* seg_offsets, const int32_t* unique,
                      int64_t segments, int64_t M, int32_t* ids, int32_t* counts,
                      cudaStream_t stream);

}  // namespace lss::cuda
