// CUDA kernels of hash_codes, build_tables, bucket_lookup and
// bucket_lookup_bitmap (host side: ops_cuda.cpp).
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include "device_utils.cuh"

namespace lss::cuda {
namespace {

// ------------------------------------------------------------- hash codes
// One warp per (query, table); the K projections run one after another, each
// a warp dot in the CPU's summation order (so codes match the CPU bit for bit
// on an FMA CPU, projections within rounding of 0 included).
constexpr int kWarpsPerBlock = 8;

template <typename acc, typename scalar_t>
__global__ void hash_codes_kernel(const acc* __restrict__ x, const scalar_t* __restrict__ proj,
                                  int64_t B, int64_t d, int64_t L, int64_t K,
                                  int32_t* __restrict__ codes) {
  const int lane = threadIdx.x & 31;
  const int64_t e = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (e >= B * L) return;  // warp-uniform
  const int64_t b = e / L, l = e % L;
  int32_t code = 0;
  for (int64_t j = 0; j < K; ++j) {
    const acc p = warp_dot(x + b * d, proj + (l * K + j) * d, d, lane);
    code = set_code_bit(code, int(j), p);
  }
  if (lane == 0) codes[e] = code;
}

// ------------------------------------------------------------------ tables
__global__ void histogram_kernel(const int32_t* __restrict__ codes, int64_t N, int64_t L,
                                 int64_t buckets, int32_t* __restrict__ offsets,
                                 unsigned long long* status) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < N * L;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = codes[e], l = e % L;
    if (c < 0 || c >= buckets) {
      flag_error(status, kBadCode);
      continue;
    }
    atomicAdd(offsets + l * (buckets + 1) + c + 1, 1);
  }
}

// In-place inclusive scan of `rows` rows of `len` elements (stride `stride`),
// one block per row, in chunks of the block size.
constexpr int kScanThreads = 512;
template <typename T>
__global__ void __launch_bounds__(kScanThreads) scan_rows_kernel(T* data, int64_t len, int64_t stride) {
  using Scan = cub::BlockScan<T, kScanThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ T carry;
  T* row = data + int64_t(blockIdx.x) * stride;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < len; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    T v = i < len ? row[i] : T(0), total;
    Scan(tmp).InclusiveSum(v, v, total);
    const T c = carry;
    if (i < len) row[i] = v + c;
    __syncthreads();
    if (threadIdx.x == 0) carry = c + total;
    __syncthreads();
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    v[i] = int32_t(i);
}

// ----------------------------------------------------------- bucket lookup
// The bucket of query q in table l, or false if the code or the offsets are
// malformed (bucket_range is the CPU kernel's check).
__device__ __forceinline__ bool query_bucket(const Tables& t, int64_t q, int64_t l,
                                             BucketRange* r, unsigned long long* bad) {
  const int64_t code = t.codes[q * t.L + l];
  if (code < 0 || code >= t.buckets) {
    *bad |= kBadCode;
    return false;
  }
  if (!bucket_range(t.offsets + l * (t.buckets + 1), code, t.T, r)) {
    *bad |= kBadRange;
    return false;
  }
  return true;
}

constexpr int kPrepassThreads = 256;
__global__ void lookup_prepass_kernel(Tables t, int64_t* __restrict__ retrieved,
                                      unsigned long long* status) {
  const int64_t q = blockIdx.x;
  unsigned long long bad = 0;
  int64_t total = 0;
  for (int64_t l = 0; l < t.L; ++l) {
    BucketRange r;
    if (!query_bucket(t, q, l, &r, &bad)) continue;
    const int32_t* items = t.items + l * t.T;
    for (int64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x)
      if (!label_in_range(items[i], t.num_labels)) bad |= kBadItem;
    total += r.end - r.begin;
  }
  if (bad) flag_error(status, bad);
  if (threadIdx.x == 0) {
    retrieved[q] = total;
    atomicMax(status + kStatusMax, (unsigned long long)total);
  }
}

// Keys of the per-query sort. Pass 1 sorts raw labels (high word 0); after
// run-length counting, a run's first key becomes candidate_key(hits, label)
// (high word kMaxTables - hits, in [1, kMaxTables - 1]) or, below min_hits,
// kRejected | label; the rest become kEmpty. Pass 2 sorts candidates into
// (more hits, ascending id) order, rejected and empty keys last.
constexpr uint64_t kEmpty = ~uint64_t(0);
constexpr uint64_t kRejected = uint64_t(0xFFFFFFFFu) << 32;

__device__ __forceinline__ uint32_t key_label(uint64_t k) { return uint32_t(k); }

constexpr int kLookupThreads = 512;  // most threads a lookup block is launched with

// One block per query. keys: shared memory (smem path) or this query's slice
// of global scratch (fallback); capacity: keys available there.
__global__ void __launch_bounds__(kLookupThreads) lookup_candidates_kernel(Tables t, const int64_t* __restrict__ retrieved,
                                         int64_t min_hits, LookupOut out, int64_t capacity,
                                         int64_t smem_capacity, uint64_t* scratch,
                                         int64_t q_begin) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int accepted;
  const int64_t q = q_begin + blockIdx.x;
  const int64_t R = retrieved[q];
  uint64_t* keys;
  if (scratch == nullptr) {
    if (R > capacity) return;  // block-uniform: left to the global path
    keys = reinterpret_cast<uint64_t*>(smem_raw);
  } else {
    if (R <= smem_capacity || R > capacity) return;  // done by the smem path
    keys = scratch + int64_t(blockIdx.x) * capacity;
  }
  const int64_t n = next_pow2(R);

  // Gather every retrieved label (duplicates across tables included).
  int64_t pos = 0;
  unsigned long long bad = 0;
  for (int64_t l = 0; l < t.L && pos < R; ++l) {
    BucketRange r;
    if (!query_bucket(t, q, l, &r, &bad)) continue;
    int64_t size = r.end - r.begin;
    if (size > R - pos) size = R - pos;  // never past this query's slice
    const int32_t* items = t.items + l * t.T + r.begin;
    for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
      const int32_t id = items[i];
      keys[pos + i] = label_in_range(id, t.num_labels) ? uint64_t(uint32_t(id)) : kEmpty;
    }
    pos += size;
  }
  for (int64_t i = pos + threadIdx.x; i < n; i += blockDim.x) keys[i] = kEmpty;
  if (threadIdx.x == 0) accepted = 0;
  __syncthreads();

  auto less = [keys](int64_t a, int64_t b) { return keys[a] < keys[b]; };
  auto swap = [keys](int64_t a, int64_t b) {
    const uint64_t v = keys[a];
    keys[a] = keys[b];
    keys[b] = v;
  };
  block_bitonic_sort(n, less, swap);

  // Run-length count. Only the high word of a run's first key is rewritten
  // here (one 64-bit store), and other threads only compare low words, so the
  // counting reads stay consistent.
  for (int64_t i = threadIdx.x; i < R; i += blockDim.x) {
    const uint64_t k = keys[i];
    if (k == kEmpty) continue;
    const uint32_t label = key_label(k);
    if (i > 0 && key_label(keys[i - 1]) == label) continue;
    int64_t j = i + 1;
    while (j < R && key_label(keys[j]) == label) ++j;
    const int64_t hits = j - i;
    if (out.bitmap != nullptr) {
      if (hits >= min_hits)
        atomicOr(out.bitmap + q * out.words + bitmap_word_of(label), int(bitmap_mask_of(label)));
    } else if (hits >= min_hits) {
      // More than kMaxTables - 1 hits needs duplicated items within buckets;
      // clamping keeps such a label ahead of the others and the key valid.
      keys[i] = candidate_key(hits < kMaxTables ? int(hits) : kMaxTables - 1, int32_t(label));
      atomicAdd(&accepted, 1);
    } else {
      keys[i] = kRejected | label;
    }
  }
  __syncthreads();
  if (out.bitmap != nullptr) return;
  for (int64_t i = threadIdx.x; i < R; i += blockDim.x) {
    const uint32_t high = uint32_t(keys[i] >> 32);
    if (high == 0u || high == 0xFFFFFFFFu) keys[i] = kEmpty;
  }
  __syncthreads();
  block_bitonic_sort(n, less, swap);
  const int64_t count = accepted < out.M ? accepted : out.M;
  for (int64_t i = threadIdx.x; i < out.M; i += blockDim.x)
    out.ids[q * out.M + i] = i < count ? candidate_label(keys[i]) : -1;
  if (threadIdx.x == 0) out.counts[q] = int32_t(count);
}

// bucket_lookup_bitmap with min_hits == 1: every valid item sets its bit.
__global__ void lookup_bitmap_any_kernel(Tables t, int32_t* __restrict__ bitmap, int64_t words,
                                         unsigned long long* status) {
  const int64_t q = blockIdx.x;
  unsigned long long bad = 0;
  int32_t* row = bitmap + q * words;
  for (int64_t l = 0; l < t.L; ++l) {
    BucketRange r;
    if (!query_bucket(t, q, l, &r, &bad)) continue;
    const int32_t* items = t.items + l * t.T;
    for (int64_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
      const int32_t id = items[i];
      if (label_in_range(id, t.num_labels))
        atomicOr(row + bitmap_word_of(id), int(bitmap_mask_of(id)));
      else
        bad |= kBadItem;
    }
  }
  if (bad) flag_error(status, bad);
}

}  // namespace

// =================================================================== host
void hash_codes(DType proj_dtype, const void* x_acc, const void* proj, int64_t B, int64_t d,
                int64_t L, int64_t K, int32_t* codes, cudaStream_t stream) {
  if (B * L == 0) return;
  dispatch_dtype(proj_dtype, [&]<typename scalar_t>() {
    using acc = acc_of<scalar_t>;
    hash_codes_kernel<acc, scalar_t><<<grid_for(B * L, kWarpsPerBlock), kWarpsPerBlock * 32, 0, stream>>>(
        static_cast<const acc*>(x_acc), static_cast<const scalar_t*>(proj), B, d, L, K, codes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void build_offsets(const int32_t* codes, int64_t N, int64_t L, int bits, int32_t* offsets,
                   unsigned long long* status, cudaStream_t stream) {
  if (L == 0) return;
  const int64_t buckets = int64_t(1) << bits;
  if (N > 0) {
    histogram_kernel<<<grid_for(N * L, 256, 65536), 256, 0, stream>>>(codes, N, L, buckets,
                                                                     offsets, status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  scan_rows_kernel<int32_t><<<unsigned(L), kScanThreads, 0, stream>>>(offsets, buckets + 1,
                                                                      buckets + 1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

size_t radix_sort_pairs_temp_bytes(int64_t n, int end_bit) {
  size_t bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), int(n), 0, end_bit));
  return bytes;
}

void radix_sort_pairs(void* temp, size_t temp_bytes, const uint32_t* keys_in, uint32_t* keys_out,
                      const int32_t* values_in, int32_t* values_out, int64_t n, int end_bit,
                      cudaStream_t stream) {
  if (n == 0) return;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, values_in,
                                                 values_out, int(n), 0, end_bit, stream));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void iota_int32(int32_t* values, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  iota_kernel<<<grid_for(n, 256, 65536), 256, 0, stream>>>(values, n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void lookup_prepass(const Tables& t, int64_t* retrieved, unsigned long long* status,
                    cudaStream_t stream) {
  if (t.B == 0) return;
  lookup_prepass_kernel<<<unsigned(t.B), kPrepassThreads, 0, stream>>>(t, retrieved, status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int64_t lookup_smem_capacity() {
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  int64_t cap = 16384;
  while (cap > 256 && cap * int64_t(sizeof(uint64_t)) + 1024 > optin) cap >>= 1;
  return cap;
}

void lookup_candidates(const Tables& t, const int64_t* retrieved, int64_t min_hits,
                       const LookupOut& out, int64_t capacity, int64_t smem_capacity,
                       uint64_t* scratch, int64_t q_begin, int64_t q_end, cudaStream_t stream) {
  if (q_end <= q_begin) return;
  const int threads = capacity <= 1024 ? 256 : kLookupThreads;
  size_t smem = 0;
  if (scratch == nullptr) {
    smem = size_t(capacity) * sizeof(uint64_t);
    if (smem > 48 * 1024)
      C10_CUDA_CHECK(cudaFuncSetAttribute(lookup_candidates_kernel,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  }
  lookup_candidates_kernel<<<unsigned(q_end - q_begin), threads, smem, stream>>>(
      t, retrieved, min_hits, out, capacity, smem_capacity, scratch, q_begin);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void lookup_bitmap_any(const Tables& t, int32_t* bitmap, int64_t words,
                       unsigned long long* status, cudaStream_t stream) {
  if (t.B == 0) return;
  lookup_bitmap_any_kernel<<<unsigned(t.B), 256, 0, stream>>>(t, bitmap, words, status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lss::cuda
