// CUDA kernels of bitmap_sparse_matmul (host side:
// bitmap_sparse_matmul_host.cpp; interface: launch.h): the bitmap's row_ptr,
// non-empty columns and decoding, and the tiled logits (SIMT and tensor
// cores). The per-entry path and the backward run gathered_logits_cuda.cu's
// kernels on the decoded entries.
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <mma.h>

#include "device_utils.cuh"

namespace lss::cuda {
namespace {

constexpr int kBitmapThreads = 256;

__global__ void bitmap_row_counts_kernel(const int32_t* __restrict__ bitmap, int64_t words,
                                         int64_t num_labels, int64_t* __restrict__ row_ptr,
                                         unsigned long long* status) {
  using Reduce = cub::BlockReduce<int64_t, kBitmapThreads>;
  __shared__ typename Reduce::TempStorage tmp;
  const int64_t b = blockIdx.x;
  const uint32_t* row = reinterpret_cast<const uint32_t*>(bitmap) + b * words;
  int64_t c = 0;
  for (int64_t w = threadIdx.x; w < words; w += kBitmapThreads) c += popcount32(row[w]);
  if (threadIdx.x == 0 && words > 0 && (row[words - 1] & ~bitmap_last_word_mask(num_labels)) != 0)
    flag_error(status, kStrayBits);
  const int64_t total = Reduce(tmp).Sum(c);
  if (threadIdx.x == 0) row_ptr[b + 1] = total;
}

// Single-block inclusive scan of row_ptr[1..B] (256 threads: at 1024 the
// int64 block scan needs more registers than the launch bounds allow and spills).
constexpr int kScanThreads = 256;
__global__ void __launch_bounds__(kScanThreads)
    row_ptr_scan_kernel(int64_t* row_ptr, int64_t B, unsigned long long* status) {
  using Scan = cub::BlockScan<int64_t, kScanThreads>;
  __shared__ typename Scan::TempStorage tmp;
  __shared__ int64_t carry;
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int64_t base = 0; base < B; base += kScanThreads) {
    const int64_t i = base + threadIdx.x;
    int64_t v = i < B ? row_ptr[1 + i] : 0, total;
    Scan(tmp).InclusiveSum(v, v, total);
    const int64_t c = carry;
    if (i < B) row_ptr[1 + i] = v + c;
    __syncthreads();
    if (threadIdx.x == 0) carry = c + total;
    __syncthreads();
  }
  if (threadIdx.x == 0) status[kStatusNnz] = (unsigned long long)carry;
}

// One thread per column (bitmap word): ORs the column's words tile by tile
// (reads coalesced across threads), counts its non-empty tiles.
__global__ void bitmap_columns_kernel(const int32_t* __restrict__ bitmap, int64_t B,
                                      int64_t words, int64_t* __restrict__ columns,
                                      unsigned long long* status) {
  for (int64_t w = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; w < words;
       w += int64_t(gridDim.x) * blockDim.x) {
    unsigned long long tiles = 0;
    int32_t any = 0;
    for (int64_t b = 0; b < B; ++b) {
      any |= bitmap[b * words + w];
      if ((b + 1) % kTileRows == 0 || b + 1 == B) {
        tiles += any != 0;
        any = 0;
      }
    }
    if (tiles) {
      atomicAdd(status + kStatusTiles, tiles);
      columns[atomicAdd(status + kStatusColumns, 1ull)] = w;
    }
  }
}

__global__ void bitmap_decode_kernel(const int32_t* __restrict__ bitmap, int64_t words,
                                     const int64_t* __restrict__ row_ptr,
                                     int32_t* __restrict__ cols, int32_t* __restrict__ row_of,
                                     int32_t* __restrict__ word_rank) {
  using Scan = cub::BlockScan<int32_t, kBitmapThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int64_t b = blockIdx.x;
  const uint32_t* row = reinterpret_cast<const uint32_t*>(bitmap) + b * words;
  int64_t running = 0;  // set bits of this row before the current chunk
  for (int64_t base = 0; base < words; base += kBitmapThreads) {
    const int64_t w = base + threadIdx.x;
    uint32_t v = w < words ? row[w] : 0u;
    int32_t before, total;
    Scan(tmp).ExclusiveSum(popcount32(v), before, total);
    if (w < words) {
      if (word_rank != nullptr) word_rank[b * words + w] = int32_t(running + before);
      if (cols != nullptr) {
        int64_t k = row_ptr[b] + running + before;
        for (; v; v &= v - 1, ++k) {
          cols[k] = int32_t(w * 32 + lowest_bit(v));
          row_of[k] = int32_t(b);
        }
      }
    }
    running += total;
    __syncthreads();  // tmp is reused by the next chunk
  }
}

// --------------------------------------------------------------- tile path
// Writes tile entry (r, c) if its bit is set. Shared by both tile kernels.
template <typename scalar_t>
__device__ __forceinline__ void emit_tile_entry(acc_of<scalar_t> v, int64_t b, int c, int64_t w,
                                                const int32_t* bitmap, int64_t words,
                                                const int64_t* row_ptr, const int32_t* word_rank,
                                                const scalar_t* bias, scalar_t* values) {
  const uint32_t word = uint32_t(bitmap[b * words + w]);
  const uint32_t mask = uint32_t(1) << c;
  if (!(word & mask)) return;
  const int64_t label = w * 32 + c;
  if (bias != nullptr) v = add_rn(v, to_acc(bias[label]));
  values[row_ptr[b] + word_rank[b * words + w] + popcount32(word & (mask - 1u))] =
      from_acc<scalar_t>(v);
}

// SIMT tile: 128 threads, thread (g = tid / 32, c = tid % 32) owns label c and
// rows g * 16 .. g * 16 + 15 of the 64-row tile; x and W chunks of kSimtChunk
// columns are staged in shared memory in the accumulator type. The block
// walks the row tiles of its column (blockIdx.x indexes the column list).
constexpr int kTileThreads = 128;
constexpr int kSimtChunk = 32;

// True when row tile b0 of column w has a bit set (block-uniform; needs
// blockDim.x >= kTileRows).
__device__ __forceinline__ bool tile_nonempty(const int32_t* bitmap, int64_t B, int64_t words,
                                              int64_t b0, int64_t w) {
  int32_t word = 0;
  if (threadIdx.x < kTileRows && b0 + threadIdx.x < B) word = bitmap[(b0 + threadIdx.x) * words + w];
  return __syncthreads_or(word != 0) != 0;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    tile_simt_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                     const scalar_t* __restrict__ bias, int64_t B, int64_t d, int64_t num_labels,
                     const int32_t* __restrict__ bitmap, int64_t words,
                     const int64_t* __restrict__ row_ptr, const int32_t* __restrict__ word_rank,
                     const int64_t* __restrict__ columns, scalar_t* __restrict__ values) {
  using acc = acc_of<scalar_t>;
  __shared__ acc xs[kTileRows][kSimtChunk + 1];
  __shared__ acc ws[32][kSimtChunk + 1];
  const int64_t w = columns[blockIdx.x];
  const int c = threadIdx.x & 31, g = threadIdx.x >> 5;
  for (int64_t b0 = 0; b0 < B; b0 += kTileRows) {
    if (!tile_nonempty(bitmap, B, words, b0, w)) continue;
    acc s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0;
    for (int64_t k0 = 0; k0 < d; k0 += kSimtChunk) {
      for (int e = threadIdx.x; e < kTileRows * kSimtChunk; e += kTileThreads) {
        const int r = e / kSimtChunk, k = e % kSimtChunk;
        const int64_t b = b0 + r, col = k0 + k;
        xs[r][k] = (b < B && col < d) ? to_acc(x[b * d + col]) : acc(0);
      }
      for (int e = threadIdx.x; e < 32 * kSimtChunk; e += kTileThreads) {
        const int n = e / kSimtChunk, k = e % kSimtChunk;
        const int64_t label = w * 32 + n, col = k0 + k;
        ws[n][k] = (label < num_labels && col < d) ? to_acc(weight[label * d + col]) : acc(0);
      }
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < kSimtChunk; ++k) {
        const acc wv = ws[c][k];
#pragma unroll
        for (int i = 0; i < 16; ++i) s[i] = madd(xs[g * 16 + i][k], wv, s[i]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int64_t b = b0 + g * 16 + i;
      if (b < B)
        emit_tile_entry<scalar_t>(s[i], b, c, w, bitmap, words, row_ptr, word_rank, bias, values);
    }
  }
}

// Tensor-core tile (fp16 / bf16, sm_80+): 4 warps, warp i computes rows
// 16 i .. 16 i + 15 against the 32 labels as two 16x16x16 WMMA accumulators
// in fp32; chunks of kWmmaChunk columns are staged (zero-padded) in shared
// memory, so any B, N, d and alignment work. Walks its column's row tiles
// like the SIMT kernel.
constexpr int kWmmaChunk = 64;
constexpr int kWmmaLd = kWmmaChunk + 8;  // 16-bit elements; keeps fragment rows 32-byte aligned
constexpr int kWmmaOutLd = 32 + 4;

template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    tile_wmma_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ weight,
                     const scalar_t* __restrict__ bias, int64_t B, int64_t d, int64_t num_labels,
                     const int32_t* __restrict__ bitmap, int64_t words,
                     const int64_t* __restrict__ row_ptr, const int32_t* __restrict__ word_rank,
                     const int64_t* __restrict__ columns, scalar_t* __restrict__ values) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  constexpr int kStageBytes = (kTileRows + 32) * kWmmaLd * 2;
  constexpr int kOutBytes = kTileRows * kWmmaOutLd * 4;
  __shared__ __align__(128) unsigned char smem[kStageBytes > kOutBytes ? kStageBytes : kOutBytes];
  scalar_t* xs = reinterpret_cast<scalar_t*>(smem);
  scalar_t* ws = xs + kTileRows * kWmmaLd;
  float* out = reinterpret_cast<float*>(smem);

  const int64_t w = columns[blockIdx.x];
  const int warp = threadIdx.x >> 5;
  const scalar_t zero = from_acc<scalar_t>(0.0f);
  for (int64_t b0 = 0; b0 < B; b0 += kTileRows) {
    if (!tile_nonempty(bitmap, B, words, b0, w)) continue;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> accum[2];
    wmma::fill_fragment(accum[0], 0.0f);
    wmma::fill_fragment(accum[1], 0.0f);
    for (int64_t k0 = 0; k0 < d; k0 += kWmmaChunk) {
      for (int e = threadIdx.x; e < kTileRows * kWmmaChunk; e += kTileThreads) {
        const int r = e / kWmmaChunk, k = e % kWmmaChunk;
        const int64_t b = b0 + r, col = k0 + k;
        xs[r * kWmmaLd + k] = (b < B && col < d) ? x[b * d + col] : zero;
      }
      for (int e = threadIdx.x; e < 32 * kWmmaChunk; e += kTileThreads) {
        const int n = e / kWmmaChunk, k = e % kWmmaChunk;
        const int64_t label = w * 32 + n, col = k0 + k;
        ws[n * kWmmaLd + k] = (label < num_labels && col < d) ? weight[label * d + col] : zero;
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kWmmaChunk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, scalar_t, wmma::row_major> a;
        wmma::load_matrix_sync(a, xs + warp * 16 * kWmmaLd + kk, kWmmaLd);
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          // B[k][n] = W[label n][k]: the staged W rows are B in column-major order.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, scalar_t, wmma::col_major> bf;
          wmma::load_matrix_sync(bf, ws + n * 16 * kWmmaLd + kk, kWmmaLd);
          wmma::mma_sync(accum[n], a, bf, accum[n]);
        }
      }
      __syncthreads();
    }
    // The staging buffers are free now: the fp32 tile goes where they were.
    wmma::store_matrix_sync(out + warp * 16 * kWmmaOutLd, accum[0], kWmmaOutLd,
                            wmma::mem_row_major);
    wmma::store_matrix_sync(out + warp * 16 * kWmmaOutLd + 16, accum[1], kWmmaOutLd,
                            wmma::mem_row_major);
    __syncthreads();
    for (int e = threadIdx.x; e < kTileRows * 32; e += kTileThreads) {
      const int r = e / 32, c = e % 32;
      const int64_t b = b0 + r;
      if (b < B)
        emit_tile_entry<scalar_t>(out[r * kWmmaOutLd + c], b, c, w, bitmap, words, row_ptr,
                                  word_rank, bias, values);
    }
    __syncthreads();  // out is staging space again for the next row tile
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // the host only launches this kernel on sm_80+
#endif
}

int device_major() {
  int device = 0, major = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major;
}

}  // namespace

// ============================================================== launchers
void bitmap_row_ptr(const int32_t* bitmap, int64_t B, int64_t words, int64_t num_labels,
                    int64_t* row_ptr, unsigned long long* status, cudaStream_t stream) {
  if (B == 0) return;
  bitmap_row_counts_kernel<<<unsigned(B), kBitmapThreads, 0, stream>>>(bitmap, words, num_labels,
                                                                      row_ptr, status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  row_ptr_scan_kernel<<<1, kScanThreads, 0, stream>>>(row_ptr, B, status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bitmap_columns(const int32_t* bitmap, int64_t B, int64_t words, int64_t* columns,
                    unsigned long long* status, cudaStream_t stream) {
  if (B == 0 || words == 0) return;
  bitmap_columns_kernel<<<grid_for(words, 256), 256, 0, stream>>>(bitmap, B, words, columns,
                                                                 status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bitmap_decode(const int32_t* bitmap, int64_t B, int64_t words, const int64_t* row_ptr,
                   int32_t* cols, int32_t* row_of, int32_t* word_rank, cudaStream_t stream) {
  if (B == 0) return;
  bitmap_decode_kernel<<<unsigned(B), kBitmapThreads, 0, stream>>>(bitmap, words, row_ptr, cols,
                                                                  row_of, word_rank);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bitmap_tile_logits(DType dtype, const void* x, const void* weight, const void* bias,
                        int64_t B, int64_t d, int64_t num_labels, const int32_t* bitmap,
                        int64_t words, const int64_t* row_ptr, const int32_t* word_rank,
                        const int64_t* columns, int64_t num_columns, void* values,
                        cudaStream_t stream) {
  if (num_columns == 0) return;
  const bool tensor_cores =
      (dtype == DType::kFloat16 || dtype == DType::kBFloat16) && device_major() >= 8;
  dispatch_dtype(dtype, [&]<typename scalar_t>() {
    auto* xp = static_cast<const scalar_t*>(x);
    auto* wp = static_cast<const scalar_t*>(weight);
    auto* bp = static_cast<const scalar_t*>(bias);
    auto* vp = static_cast<scalar_t*>(values);
    if constexpr (sizeof(scalar_t) == 2) {
      if (tensor_cores) {
        tile_wmma_kernel<scalar_t><<<unsigned(num_columns), kTileThreads, 0, stream>>>(
            xp, wp, bp, B, d, num_labels, bitmap, words, row_ptr, word_rank, columns, vp);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
      }
    }
    tile_simt_kernel<scalar_t><<<unsigned(num_columns), kTileThreads, 0, stream>>>(
        xp, wp, bp, B, d, num_labels, bitmap, words, row_ptr, word_rank, columns, vp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lss::cuda
