// CUDA kernels of quantized_candidates (host side: quantized_candidates_host.cpp,
// interface: launch.h). Bit-exact with
// lsskernels.reference.quantized_candidates.
//
// Algorithm (the host runs it over chunks of queries, see the host file)
//  0. partition_sizes_kernel / offsets_check_kernel: validate list_offsets
//     (non-negative, non-decreasing, <= T) and every probe (in [-1, P)), and
//     write the row count of each (query, probe slot). The host reads the
//     status word back and raises before anything reads a list row.
//  1. quantize_queries_kernel (one block per query): reference.quantize_queries
//     with the same fp32 operations: amax = max |x| (NaN when the row holds
//     a NaN, as torch.amax), scale = amax / 127 and inv = 127 / amax as
//     correctly rounded divisions (__fdiv_rn), then per entry v = x * inv
//     (__fmul_rn), NaN -> 0, clamp to [-127, 127], round half to even
//     (__float2int_rn). Clamping before rounding equals rounding before
//     clamping. q is int8 [B, Dp], zero past d.
//  2. quantized_keys_kernel (one block per (query, probe slot)): 8 lanes per
//     list row, each lane taking 16 bytes of the row per step (int4 loads)
//     and 4 __dp4a's, the 8 partial sums added with warp shuffles: the exact
//     int32 dot <q[b], codes[t]> over Dp (zeros past d in q make whatever
//     codes hold there irrelevant; |dot| <= 127^2 Dp < 2^31, checked on the
//     host). Then, with no FMA contraction possible,
//        score = __fadd_rn(__fmul_rn(__fmul_rn(__int2float_rn(dot), scale_q),
//                                    code_scales[t]), code_bias[t])
//     exactly the reference's float32 expression. Each row becomes the
//     label-major key (label << 32) | desc(score), where desc() is the fp32
//     order reversed (NaN counted as -inf, -0.0 as +0.0), written at the
//     row's slot of its query's segment.
//  3. CUB DeviceSegmentedSort of the keys, one segment per query: each
//     label's keys become adjacent, best score first.
//  4. dedupe_keys_kernel (one block per query): the first key of each label
//     run survives as the score-major key (desc(score) << 32) | label, the
//     rest become ~0 (after every real key); the survivors are counted.
//  5. A second segmented sort: keys in (score desc, label asc) order.
//  6. write_candidates_kernel: the first min(unique, M) labels, -1 after.
// Keys are unique per (label, score), so the sorts need not be stable and
// the result is deterministic.
#include <cub/device/device_segmented_sort.cuh>

#include "device_utils.cuh"
#include "launch.h"

namespace lss::cuda {
namespace {

constexpr uint64_t kEmptyKey = ~uint64_t(0);
constexpr float kLevels = float(kQuantLevels);  // lss/common.h: quantized values in [-kLevels, kLevels]
constexpr int kThreads = 256;
constexpr int kLanesPerRow = 8;                                   // 8 x 16 bytes per step
constexpr int kRowsPerWarp = 32 / kLanesPerRow;

// fp32 score -> uint32 that grows as the score falls; NaN ranks as -inf and
// -0.0 as +0.0. -inf maps to 0xFF800000, below kEmptyKey's halves.
__device__ __forceinline__ uint32_t desc_key(float s) {
  if (s != s) s = -INFINITY;
  if (s == 0.0f) s = 0.0f;
  const uint32_t u = __float_as_uint(s);
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return ~ascending;
}

__global__ void offsets_check_kernel(PartitionLists l, unsigned long long* status) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i <= l.P;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = l.offsets[i];
    const bool ok = v >= 0 && v <= l.T && (i == l.P || v <= int64_t(l.offsets[i + 1]));
    if (!ok) flag_error(status, kBadOffsets);
  }
}

__global__ void partition_sizes_kernel(PartitionLists l, const int32_t* __restrict__ probes,
                                       int64_t n, int64_t* __restrict__ sizes,
                                       unsigned long long* status) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = probes[e];
    int64_t size = 0;
    if (p < -1 || p >= l.P) {
      flag_error(status, kBadProbe);
    } else if (p >= 0) {
      const int64_t begin = l.offsets[p], end = l.offsets[p + 1];
      if (begin >= 0 && begin <= end && end <= l.T)
        size = end - begin;
      else
        flag_error(status, kBadOffsets);
    }
    sizes[e] = size;
  }
}

__global__ void __launch_bounds__(kThreads)
quantize_queries_kernel(const float* __restrict__ x, int64_t d, int64_t Dp,
                        int8_t* __restrict__ q, float* __restrict__ scale) {
  __shared__ float warp_max[kThreads / 32];
  __shared__ int warp_nan[kThreads / 32];
  const int64_t b = blockIdx.x;
  const float* row = x + b * d;
  float m = 0.0f;
  int nan = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    const float a = fabsf(row[j]);
    if (a != a)
      nan = 1;
    else
      m = fmaxf(m, a);
  }
  for (int off = 16; off > 0; off >>= 1) {
    m = fmaxf(m, __shfl_xor_sync(kFullMask, m, off));
    nan |= __shfl_xor_sync(kFullMask, nan, off);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    warp_max[warp] = m;
    warp_nan[warp] = nan;
  }
  __syncthreads();
  float amax = 0.0f;
  int any_nan = 0;
  for (int w = 0; w < int(blockDim.x >> 5); ++w) {  // max is exact: any order
    amax = fmaxf(amax, warp_max[w]);
    any_nan |= warp_nan[w];
  }
  if (any_nan) amax = __int_as_float(0x7FC00000);
  const float inv = amax > 0.0f ? __fdiv_rn(kLevels, amax) : 0.0f;
  for (int64_t j = threadIdx.x; j < Dp; j += blockDim.x) {
    int v = 0;
    if (j < d) {
      float s = __fmul_rn(row[j], inv);
      if (s != s) s = 0.0f;
      s = fminf(fmaxf(s, -kLevels), kLevels);
      v = __float2int_rn(s);  // round half to even
    }
    q[b * Dp + j] = int8_t(v);
  }
  if (threadIdx.x == 0) scale[b] = __fdiv_rn(amax, kLevels);
}

__device__ __forceinline__ int dot16(const int4& a, const int4& b, int acc) {
  acc = __dp4a(a.x, b.x, acc);
  acc = __dp4a(a.y, b.y, acc);
  acc = __dp4a(a.z, b.z, acc);
  return __dp4a(a.w, b.w, acc);
}

__global__ void __launch_bounds__(kThreads)
quantized_keys_kernel(PartitionLists l, const int8_t* __restrict__ q,
                      const float* __restrict__ scale, const int32_t* __restrict__ probes,
                      int64_t nprobe, const int64_t* __restrict__ slot_begin, int64_t key_base,
                      int64_t q_begin, uint64_t* __restrict__ keys, unsigned long long* status) {
  const int64_t e = q_begin * nprobe + blockIdx.x;  // (query, probe slot)
  const int64_t b = e / nprobe;
  const int64_t p = probes[e];
  if (p < 0 || p >= l.P) return;  // block-uniform; -1 (and, defensively, anything invalid)
  const int64_t begin = l.offsets[p], end = l.offsets[p + 1];
  if (!(begin >= 0 && begin <= end && end <= l.T)) return;  // rejected by the pre-pass
  uint64_t* out = keys + (slot_begin[e] - key_base);  // row t goes to out[t - begin]
  const float sq = scale[b];
  const int64_t chunks = l.Dp / 16;  // Dp % 32 == 0
  const int4* qrow = reinterpret_cast<const int4*>(q + b * l.Dp);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane % kLanesPerRow, slot = lane / kLanesPerRow;
  const int64_t rows_per_step = int64_t(blockDim.x >> 5) * kRowsPerWarp;
  unsigned long long bad = 0;
  // Every lane of a warp runs the same number of steps (the shuffles need
  // all 32): rows past `end` compute on row `begin` and store nothing.
  for (int64_t base = begin + int64_t(warp) * kRowsPerWarp; base < end; base += rows_per_step) {
    const int64_t t = base + slot;
    const bool active = t < end;
    const int4* crow = reinterpret_cast<const int4*>(l.codes + (active ? t : begin) * l.Dp);
    int acc = 0;
    for (int64_t c = sub; c < chunks; c += kLanesPerRow) acc = dot16(__ldg(crow + c), __ldg(qrow + c), acc);
    for (int off = kLanesPerRow / 2; off > 0; off >>= 1) acc += __shfl_xor_sync(kFullMask, acc, off);
    if (active && sub == 0) {
      const float s = __fadd_rn(__fmul_rn(__fmul_rn(__int2float_rn(acc), sq), l.scales[t]), l.bias[t]);
      const int64_t label = l.ids[t];
      if (label_in_range(label, l.num_labels)) {
        out[t - begin] = (uint64_t(uint32_t(label)) << 32) | uint64_t(desc_key(s));
      } else {
        out[t - begin] = kEmptyKey;
        bad |= kBadListId;
      }
    }
  }
  if (bad) flag_error(status, bad);
}

__global__ void __launch_bounds__(kThreads)
dedupe_keys_kernel(const uint64_t* __restrict__ sorted, uint64_t* __restrict__ out,
                   const int64_t* __restrict__ seg_offsets, int32_t* __restrict__ unique) {
  __shared__ int kept;
  const int64_t s = blockIdx.x;
  const int64_t begin = seg_offsets[s], end = seg_offsets[s + 1];
  if (threadIdx.x == 0) kept = 0;
  __syncthreads();
  int mine = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const uint64_t k = sorted[i];
    const uint32_t label = uint32_t(k >> 32);
    const bool first = k != kEmptyKey && (i == begin || uint32_t(sorted[i - 1] >> 32) != label);
    out[i] = first ? ((k << 32) | uint64_t(label)) : kEmptyKey;
    mine += first;
  }
  if (mine) atomicAdd(&kept, mine);  // an integer count: order does not matter
  __syncthreads();
  if (threadIdx.x == 0) unique[s] = kept;
}

__global__ void write_candidates_kernel(const uint64_t* __restrict__ sorted,
                                        const int64_t* __restrict__ seg_offsets,
                                        const int32_t* __restrict__ unique, int64_t M,
                                        int32_t* __restrict__ ids, int32_t* __restrict__ counts) {
  const int64_t s = blockIdx.x;
  const int64_t begin = seg_offsets[s];
  const int64_t n = unique[s] < M ? int64_t(unique[s]) : M;
  for (int64_t i = threadIdx.x; i < M; i += blockDim.x)
    ids[s * M + i] = i < n ? int32_t(uint32_t(sorted[begin + i])) : -1;
  if (threadIdx.x == 0) counts[s] = int32_t(n);
}

}  // namespace

// ============================================================== launchers
void partition_sizes(const PartitionLists& l, const int32_t* probes, int64_t B, int64_t nprobe,
                     int64_t* sizes, unsigned long long* status, cudaStream_t stream) {
  offsets_check_kernel<<<grid_for(l.P + 1, 256, 1024), 256, 0, stream>>>(l, status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (B * nprobe == 0) return;
  partition_sizes_kernel<<<grid_for(B * nprobe, 256, 65536), 256, 0, stream>>>(l, probes, B * nprobe,
                                                                              sizes, status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void quantize_queries(const float* x, int64_t B, int64_t d, int64_t Dp, int8_t* q, float* scale,
                      cudaStream_t stream) {
  if (B == 0) return;
  quantize_queries_kernel<<<unsigned(B), kThreads, 0, stream>>>(x, d, Dp, q, scale);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void quantized_keys(const PartitionLists& l, const int8_t* q, const float* scale,
                    const int32_t* probes, int64_t nprobe, const int64_t* slot_begin,
                    int64_t key_base, int64_t q_begin, int64_t q_end, uint64_t* keys,
                    unsigned long long* status, cudaStream_t stream) {
  const int64_t blocks = (q_end - q_begin) * nprobe;
  if (blocks <= 0) return;
  quantized_keys_kernel<<<unsigned(blocks), kThreads, 0, stream>>>(
      l, q, scale, probes, nprobe, slot_begin, key_base, q_begin, keys, status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

size_t segmented_sort_temp_bytes(int64_t n, int64_t segments, const int64_t* seg_offsets) {
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceSegmentedSort::SortKeys(
      nullptr, bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr), n,
      segments, seg_offsets, seg_offsets + 1));
  return bytes;
}

void segmented_sort(void* temp, size_t temp_bytes, const uint64_t* keys_in, uint64_t* keys_out,
                    int64_t n, int64_t segments, const int64_t* seg_offsets, cudaStream_t stream) {
  if (n == 0 || segments == 0) return;
  C10_CUDA_CHECK(cub::DeviceSegmentedSort::SortKeys(temp, temp_bytes, keys_in, keys_out, n, segments,
                                                    seg_offsets, seg_offsets + 1, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void dedupe_keys(const uint64_t* sorted, uint64_t* out, const int64_t* seg_offsets,
                 int64_t segments, int32_t* unique, cudaStream_t stream) {
  if (segments == 0) return;
  dedupe_keys_kernel<<<unsigned(segments), kThreads, 0, stream>>>(sorted, out, seg_offsets, unique);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void write_candidates(const uint64_t* sorted, const int64_t* seg_offsets, const int32_t* unique,
                      int64_t segments, int64_t M, int32_t* ids, int32_t* counts,
                      cudaStream_t stream) {
  if (segments == 0) return;
  write_candidates_kernel<<<unsigned(segments), kThreads, 0, stream>>>(sorted, seg_offsets, unique,
                                                                      M, ids, counts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lss::cuda
