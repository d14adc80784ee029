// CUDA kernels of gathered_logits and its backward (host side:
// gathered_logits_host.cpp; interface: launch.h). They work on a ragged list
// of (query row, label) entries, so bitmap_sparse_matmul's per-entry path
// and its backward run them too on the entries its bitmap decodes to.
#include "device_utils.cuh"

namespace lss::cuda {
namespace {

// ------------------------------------------------------ per-entry logits
// One warp per entry: the weight row is read once, coalesced, and the dot
// product sums in the CPU's order (warp_dot). Entries of a warp are
// contiguous, so the warp branches uniformly.
constexpr int kEntryWarps = 8;

template <typename scalar_t>
__global__ void candidate_logits_kernel(const acc_of<scalar_t>* __restrict__ x,
                                        const scalar_t* __restrict__ weight,
                                        const scalar_t* __restrict__ bias, int64_t d,
                                        int64_t num_labels, Entries e,
                                        scalar_t* __restrict__ out,
                                        unsigned long long* status) {
  using acc = acc_of<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warp = int64_t(blockIdx.x) * kEntryWarps + (threadIdx.x >> 5);
  const int64_t warps = int64_t(gridDim.x) * kEntryWarps;
  for (int64_t k = warp; k < e.nnz; k += warps) {
    const int64_t id = e.ids[k];
    acc v;
    if (id == -1) {
      v = neg_inf<acc>();
    } else if (!label_in_range(id, num_labels)) {
      if (lane == 0) flag_error(status, kBadId);
      v = quiet_nan<acc>();
    } else {
      v = warp_dot(x + entry_row(k, e.row_of, e.width) * d, weight + id * d, d, lane);
      if (bias != nullptr) v = add_rn(v, to_acc(bias[id]));
    }
    if (lane == 0) out[k] = from_acc<scalar_t>(v);
  }
}

// grad_x: one block per query row, a thread per column; the row's entries
// are visited in order (as the CPU's axpy loop), loads of the next entries
// issued ahead of the dependent multiply-adds.
constexpr int kGradXThreads = 128;
constexpr int kGradXAhead = 4;

template <typename scalar_t>
__global__ void candidate_grad_x_kernel(const acc_of<scalar_t>* __restrict__ grad,
                                        const scalar_t* __restrict__ weight, int64_t d,
                                        int64_t num_labels, const int64_t* __restrict__ row_begin,
                                        Entries e, scalar_t* __restrict__ grad_x,
                                        unsigned long long* status) {
  using acc = acc_of<scalar_t>;
  const int64_t b = blockIdx.x;
  const int64_t kb = row_begin ? row_begin[b] : b * e.width;
  const int64_t ke = row_begin ? row_begin[b + 1] : (b + 1) * e.width;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    acc s = 0;
    for (int64_t k0 = kb; k0 < ke; k0 += kGradXAhead) {
      acc g[kGradXAhead], w[kGradXAhead];
      bool use[kGradXAhead];
#pragma unroll
      for (int u = 0; u < kGradXAhead; ++u) {
        const int64_t k = k0 + u;
        use[u] = false;
        if (k < ke) {
          const int64_t id = e.ids[k];
          if (id >= 0 && id < num_labels) {
            use[u] = true;
            g[u] = grad[k];
            w[u] = to_acc(weight[id * d + j]);
          } else if (id != -1 && j == threadIdx.x && threadIdx.x == 0) {
            flag_error(status, kBadId);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kGradXAhead; ++u)
        if (use[u]) s = madd(g[u], w[u], s);
    }
    grad_x[b * d + j] = from_acc<scalar_t>(s);
  }
}

__global__ void label_keys_kernel(Entries e, int64_t num_labels, uint32_t* __restrict__ keys,
                                  int32_t* __restrict__ values, unsigned long long* status) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < e.nnz;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t id = e.ids[k];
    const bool ok = label_in_range(id, num_labels);
    if (!ok && id != -1) flag_error(status, kBadId);
    keys[k] = uint32_t(ok ? id : num_labels);
    values[k] = int32_t(k);
  }
}

// grad_W / grad_b from entries sorted by label (stably, so each label's
// entries keep their original order, the CPU's summation order): one warp per
// run of equal labels, lanes across columns.
template <typename scalar_t>
__global__ void candidate_grad_weight_kernel(const acc_of<scalar_t>* __restrict__ grad,
                                             const acc_of<scalar_t>* __restrict__ x, int64_t d,
                                             int64_t num_labels, Entries e,
                                             const uint32_t* __restrict__ keys,
                                             const int32_t* __restrict__ order,
                                             scalar_t* __restrict__ grad_w,
                                             scalar_t* __restrict__ grad_b) {
  using acc = acc_of<scalar_t>;
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kEntryWarps;
  for (int64_t s = int64_t(blockIdx.x) * kEntryWarps + (threadIdx.x >> 5); s < e.nnz;
       s += warps) {
    const uint32_t label = keys[s];
    if (int64_t(label) >= num_labels || (s > 0 && keys[s - 1] == label)) continue;
    int64_t end = s + 1;
    while (true) {  // first position past the run, found 32 keys at a time
      const int64_t p = end + lane;
      const bool differs = p >= e.nnz || keys[p] != label;
      const unsigned m = __ballot_sync(kFullMask, differs);
      if (m) {
        end += __ffs(int(m)) - 1;
        break;
      }
      end += 32;
    }
    const int64_t cols = grad_w != nullptr ? d : 1;  // grad_b alone needs one pass
    for (int64_t j0 = 0; j0 < cols; j0 += 32) {
      const int64_t j = j0 + lane;
      acc gw = 0, gb = 0;
      for (int64_t t = s; t < end; ++t) {
        const int64_t k = order[t];
        const acc g = grad[k];
        if (j < d) gw = madd(g, x[entry_row(k, e.row_of, e.width) * d + j], gw);
        gb = add_rn(gb, g);
      }
      if (grad_w != nullptr && j < d) grad_w[int64_t(label) * d + j] = from_acc<scalar_t>(gw);
      if (grad_b != nullptr && j0 == 0 && lane == 0) grad_b[label] = from_acc<scalar_t>(gb);
    }
  }
}

}  // namespace

// ============================================================== launchers
void candidate_logits(DType dtype, const void* x_acc, const void* weight, const void* bias,
                      int64_t d, int64_t num_labels, const Entries& e, void* out,
                      unsigned long long* status, cudaStream_t stream) {
  if (e.nnz == 0) return;
  dispatch_dtype(dtype, [&]<typename scalar_t>() {
    candidate_logits_kernel<scalar_t>
        <<<grid_for(e.nnz, kEntryWarps, 1 << 20), kEntryWarps * 32, 0, stream>>>(
            static_cast<const acc_of<scalar_t>*>(x_acc), static_cast<const scalar_t*>(weight),
            static_cast<const scalar_t*>(bias), d, num_labels, e, static_cast<scalar_t*>(out),
            status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void candidate_grad_x(DType dtype, const void* grad_acc, const void* weight, int64_t d,
                      int64_t num_labels, int64_t rows, const int64_t* row_begin,
                      const Entries& e, void* grad_x, unsigned long long* status,
                      cudaStream_t stream) {
  if (rows == 0 || d == 0) return;
  const int threads = d >= kGradXThreads ? kGradXThreads : int((d + 31) / 32 * 32);
  dispatch_dtype(dtype, [&]<typename scalar_t>() {
    candidate_grad_x_kernel<scalar_t><<<unsigned(rows), threads, 0, stream>>>(
        static_cast<const acc_of<scalar_t>*>(grad_acc), static_cast<const scalar_t*>(weight), d,
        num_labels, row_begin, e, static_cast<scalar_t*>(grad_x), status);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void label_keys(const Entries& e, int64_t num_labels, uint32_t* keys, int32_t* values,
                unsigned long long* status, cudaStream_t stream) {
  if (e.nnz == 0) return;
  label_keys_kernel<<<grid_for(e.nnz, 256, 65536), 256, 0, stream>>>(e, num_labels, keys, values,
                                                                    status);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void candidate_grad_weight(DType dtype, const void* grad_acc, const void* x_acc, int64_t d,
                           int64_t num_labels, const Entries& e, const uint32_t* sorted_keys,
                           const int32_t* sorted_entries, void* grad_w, void* grad_b,
                           cudaStream_t stream) {
  if (e.nnz == 0) return;
  dispatch_dtype(dtype, [&]<typename scalar_t>() {
    candidate_grad_weight_kernel<scalar_t>
        <<<grid_for(e.nnz, kEntryWarps, 1 << 20), kEntryWarps * 32, 0, stream>>>(
            static_cast<const acc_of<scalar_t>*>(grad_acc),
            static_cast<const acc_of<scalar_t>*>(x_acc), d, num_labels, e, sorted_keys,
            sorted_entries, static_cast<scalar_t*>(grad_w), static_cast<scalar_t*>(grad_b));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace lss::cuda
