// CUDA kernels of bucket_lookup and bucket_lookup_bitmap (host side:
// bucket_lookup_host.cpp; interface: launch.h).
#include "device_utils.cuh"

namespace lss::cuda {
namespace {

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

// ============================================================== launchers
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
