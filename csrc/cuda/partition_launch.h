// The boundary between the CUDA kernels of the partition family
// (partition_probe_cuda.cu, quantized_candidates_cuda.cu) and their host side
// (partition_ops_cuda.cpp), in the pattern of launch.h: raw device pointers,
// sizes and a stream, no torch header. Every launcher launches on the stream
// it is given, runs C10_CUDA_KERNEL_LAUNCH_CHECK() after each launch and
// launches nothing when there is nothing to do.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "launch.h"

namespace lss::cuda {

// Bits of status[kStatusError] set by the partition kernels (after
// launch.h's StatusBit values).
enum PartitionStatusBit : unsigned long long {
  kBadProbe = 64,     // a probe outside [-1, P)
  kBadOffsets = 128,  // list_offsets negative, decreasing, or past codes.size(0)
  kBadListId = 256,   // a list_ids entry of a probed row outside [0, num_labels)
};

// ---------------------------------------------------------- partition_probe
// scores[b, p] = <x_acc[b], centroids[p]> + bias[p] (bias may be null) in
// the accumulator type (float, double for fp64), as lss::cuda::warp_dot sums
// it (the CPU dot product's order), stored in canonical form: NaN -> -inf,
// -0.0 -> +0.0 (equal to their replacements in the probe order).
void partition_scores(DType dtype, const void* x_acc, const void* centroids, const void* bias,
                      int64_t B, int64_t d, int64_t P, void* scores, cudaStream_t stream);

// Largest power-of-two number of (score, p) pairs the shared-memory
// selection sorts per query on this device (capped at 16384).
int64_t probe_smem_capacity(DType dtype);
// Bytes of global scratch per query for a selection of `capacity` pairs.
size_t probe_scratch_bytes_per_row(DType dtype, int64_t capacity);

// probes[b, :nprobe] = the nprobe best p of scores[b, :P] (canonical scores,
// larger first, ties by smaller p) for rows [r_begin, r_end). capacity is a
// power of two >= P: shared memory when scratch is null (capacity <=
// probe_smem_capacity), else scratch + (b - r_begin) * per-row bytes.
void probe_select(DType dtype, const void* scores, int64_t B, int64_t P, int64_t nprobe,
                  int64_t capacity, void* scratch, int64_t r_begin, int64_t r_end,
                  int32_t* probes, cudaStream_t stream);

// ----------------------------------------------------- quantized_candidates
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
