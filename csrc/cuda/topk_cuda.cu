// CUDA kernels of topk_gathered and topk_packed (host side: topk_host.cpp;
// interface: launch.h).
//
// One block per row streams the row's candidates through a buffer of
// `capacity` (score, label) slots. The buffer's first k slots hold the best k
// seen so far, sorted; new candidates are appended only if they beat the k-th
// (lss::topk_before, the CPU's order: larger score first, NaN above all, ties
// by smaller label), and when the buffer could overflow it is sorted with a
// block bitonic sort and cut back to k. capacity >= 2 k + kTopkThreads, so a
// flush admits at least half a buffer of new candidates. The result does not
// depend on the order candidates arrive in, so it is deterministic.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "device_utils.cuh"

namespace lss::cuda {
namespace {

template <typename acc>
struct TopkState {
  int fill;  // slots in use
  int full;  // the first k slots hold k candidates, threshold valid
  acc thr_score;
  int32_t thr_label;
};

template <typename acc>
struct TopkBuffer {
  acc* score;
  int32_t* label;  // -1: empty slot
  int64_t capacity;
  int64_t k;
  TopkState<acc>* st;

  __device__ static bool better(acc sa, int32_t la, acc sb, int32_t lb) {
    if (la < 0) return false;
    if (lb < 0) return true;
    return topk_before(sa, int64_t(la), sb, int64_t(lb));
  }

  __device__ void init() {
    if (threadIdx.x == 0) {
      st->fill = 0;
      st->full = 0;
    }
    __syncthreads();
  }

  // Sorts the buffer and keeps the best k. All threads call it.
  __device__ void flush() {
    __syncthreads();
    const int64_t n = st->fill;
    const int64_t m = next_pow2(n);
    for (int64_t i = n + threadIdx.x; i < m; i += blockDim.x) {
      score[i] = acc(0);
      label[i] = -1;
    }
    __syncthreads();
    acc* s = score;
    int32_t* l = label;
    block_bitonic_sort(
        m, [s, l](int64_t a, int64_t b) { return better(s[a], l[a], s[b], l[b]); },
        [s, l](int64_t a, int64_t b) {
          const acc ts = s[a];
          s[a] = s[b];
          s[b] = ts;
          const int32_t tl = l[a];
          l[a] = l[b];
          l[b] = tl;
        });
    if (threadIdx.x == 0) {
      const int64_t keep = n < k ? n : k;
      st->fill = int(keep);
      if (keep == k) {
        st->full = 1;
        st->thr_score = s[k - 1];
        st->thr_label = l[k - 1];
      }
    }
    __syncthreads();
  }

  // Each thread offers at most one candidate. All threads call it.
  __device__ void offer(bool has, acc s, int32_t l) {
    if (has && (!st->full || better(s, l, st->thr_score, st->thr_label))) {
      const int p = atomicAdd(&st->fill, 1);
      score[p] = s;
      label[p] = l;
    }
    __syncthreads();
    const bool must_flush = st->fill + int64_t(blockDim.x) > capacity;
    // Every thread must have read fill before any thread's next offer can
    // change it, or threads could disagree on must_flush and diverge at
    // flush()'s barriers.
    __syncthreads();
    if (must_flush) flush();
  }

  template <typename scalar_t>
  __device__ void write(int64_t row, scalar_t* scores, int64_t* labels) {
    const int64_t n = st->fill;
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
      scores[row * k + i] = from_acc<scalar_t>(i < n ? score[i] : neg_inf<acc>());
      labels[row * k + i] = i < n ? int64_t(label[i]) : -1;
    }
  }
};

template <typename acc>
__device__ TopkBuffer<acc> make_buffer(unsigned char* smem, unsigned char* scratch,
                                       int64_t capacity, int64_t k, TopkState<acc>* st) {
  unsigned char* base =
      scratch ? scratch + int64_t(blockIdx.x) * capacity * int64_t(sizeof(acc) + 4) : smem;
  TopkBuffer<acc> buf;
  buf.score = reinterpret_cast<acc*>(base);
  buf.label = reinterpret_cast<int32_t*>(base + capacity * int64_t(sizeof(acc)));
  buf.capacity = capacity;
  buf.k = k;
  buf.st = st;
  return buf;
}

// No __launch_bounds__ on the top-k kernels: with it ptxas aims at 8 blocks
// per SM, caps them at 32 registers and spills; unbounded they need 32-47
// (fine for their 256 threads).
template <typename scalar_t>
__global__ void topk_gathered_kernel(const scalar_t* __restrict__ logits,
                                     const int32_t* __restrict__ ids, int64_t M,
                                     int64_t k, int64_t capacity, unsigned char* scratch,
                                     int64_t r_begin, scalar_t* __restrict__ scores,
                                     int64_t* __restrict__ labels, unsigned long long* status) {
  using acc = acc_of<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ TopkState<acc> st;
  const int64_t row = r_begin + blockIdx.x;
  TopkBuffer<acc> buf = make_buffer<acc>(smem, scratch, capacity, k, &st);
  buf.init();
  for (int64_t base = 0; base < M; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    bool has = false;
    acc s = 0;
    int32_t id = -1;
    if (i < M) {
      id = ids[row * M + i];
      if (id >= 0) {
        has = true;
        s = to_acc(logits[row * M + i]);
      } else if (id != -1) {
        flag_error(status, kBadId);
      }
    }
    buf.offer(has, s, id);
  }
  buf.flush();
  buf.write(row, scores, labels);
}

template <typename scalar_t>
__global__ void topk_packed_kernel(const scalar_t* __restrict__ values, int64_t nnz,
                                   const int64_t* __restrict__ row_ptr,
                                   const int32_t* __restrict__ bitmap, int64_t B, int64_t words,
                                   int64_t k, int64_t capacity, unsigned char* scratch,
                                   int64_t r_begin, scalar_t* __restrict__ scores,
                                   int64_t* __restrict__ labels, unsigned long long* status) {
  using acc = acc_of<scalar_t>;
  using Reduce = cub::BlockReduce<int64_t, kTopkThreads>;
  using Scan = cub::BlockScan<int32_t, kTopkThreads>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ TopkState<acc> st;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ int row_ok;
  const int64_t row = r_begin + blockIdx.x;
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(bitmap) + row * words;
  TopkBuffer<acc> buf = make_buffer<acc>(smem, scratch, capacity, k, &st);
  buf.init();

  // row_ptr must be the prefix popcount of the bitmap: it is what keeps the
  // value reads of this row inside [row_ptr[row], row_ptr[row + 1]) c [0, nnz).
  int64_t c = 0;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) c += popcount32(bits[w]);
  const int64_t count = Reduce(tmp.reduce).Sum(c);
  const int64_t begin = row_ptr[row], end = row_ptr[row + 1];
  if (threadIdx.x == 0) {
    bool ok = begin >= 0 && end - begin == count && end <= nnz;
    if (row == 0 && begin != 0) ok = false;
    if (row == B - 1 && end != nnz) ok = false;
    row_ok = ok;
    if (!ok) flag_error(status, kBadRowPtr);
  }
  __syncthreads();
  if (row_ok) {
    int64_t running = 0;
    for (int64_t base = 0; base < words; base += blockDim.x) {
      const int64_t w = base + threadIdx.x;
      uint32_t v = w < words ? bits[w] : 0u;
      int32_t before, total;
      Scan(tmp.scan).ExclusiveSum(popcount32(v), before, total);
      int64_t idx = begin + running + before;
      while (__syncthreads_or(v != 0u)) {
        const bool has = v != 0u;
        acc s = 0;
        int32_t label = -1;
        if (has) {
          label = int32_t(w * 32 + lowest_bit(v));
          s = to_acc(values[idx++]);
          v &= v - 1u;
        }
        buf.offer(has, s, label);
      }
      running += total;
      __syncthreads();
    }
  }
  buf.flush();
  buf.write(row, scores, labels);
}

}  // namespace

// ============================================================== launchers
int64_t topk_smem_capacity(DType dtype) { return dtype == DType::kFloat64 ? 2048 : 4096; }

size_t topk_scratch_bytes_per_row(DType dtype, int64_t capacity) {
  return size_t(capacity) * ((dtype == DType::kFloat64 ? sizeof(double) : sizeof(float)) + 4);
}

void topk_gathered(DType dtype, const void* logits, const int32_t* ids, int64_t B, int64_t M,
                   int64_t k, int64_t capacity, void* scratch, int64_t r_begin, int64_t r_end,
                   void* scores, int64_t* labels, unsigned long long* status,
                   cudaStream_t stream) {
  (void)B;
  if (r_end <= r_begin) return;
  const size_t smem = scratch ? 0 : topk_scratch_bytes_per_row(dtype, capacity);
  dispatch_dtype(dtype, [&]<typename scalar_t>() {
    topk_gathered_kernel<scalar_t><<<unsigned(r_end - r_begin), kTopkThreads, smem, stream>>>(
        static_cast<const scalar_t*>(logits), ids, M, k, capacity,
        static_cast<unsigned char*>(scratch), r_begin, static_cast<scalar_t*>(scores), labels,
        status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void topk_packed(DType dtype, const void* values, int64_t nnz, const int64_t* row_ptr,
                 const int32_t* bitmap, int64_t B, int64_t words, int64_t k, int64_t capacity,
                 void* scratch, int64_t r_begin, int64_t r_end, void* scores, int64_t* labels,
                 unsigned long long* status, cudaStream_t stream) {
  if (r_end <= r_begin) return;
  const size_t smem = scratch ? 0 : topk_scratch_bytes_per_row(dtype, capacity);
  dispatch_dtype(dtype, [&]<typename scalar_t>() {
    topk_packed_kernel<scalar_t><<<unsigned(r_end - r_begin), kTopkThreads, smem, stream>>>(
        static_cast<const scalar_t*>(values), nnz, row_ptr, bitmap, B, words, k, capacity,
        static_cast<unsigned char*>(scratch), r_begin, static_cast<scalar_t*>(scores), labels,
        status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lss::cuda
