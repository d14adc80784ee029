// Host side of the CUDA kernels: argument checks (the CPU kernels' checks from
// lss/arg_checks.h, plus the device checks), allocation through the caching
// allocator, the device guard, the current stream, reading back the device
// status word, and the TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) registration.
// The kernels themselves are in tables.cu, logits.cu and topk.cu (interface:
// launch.h); the helpers shared with partition_ops_cuda.cpp are in
// host_utils.h.
//
// Value checks (codes, ids, table contents, row_ptr) run inside the kernels,
// which never read out of bounds on malformed input: they skip the access and
// OR a bit into a device status word. The host reads that word back after the
// launch (one device-to-host copy, which synchronizes the stream) and raises
// the CPU kernel's error. Ops whose output size depends on the data
// (bucket_lookup's scratch, bitmap_sparse_matmul's nnz) read it back anyway;
// for the others (gathered_logits and its backward, the top-k ops),
// LSS_CUDA_ASYNC_ERRORS=1 skips the read-back: no sync, still no
// out-of-bounds access, but malformed entries give NaN / -1 instead of an
// error.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdlib>
#include <initializer_list>

#include "host_utils.h"
#include "launch.h"
#include "lss/arg_checks.h"
#include "lss/common.h"

namespace lss::cuda {
namespace {

double tile_density() {
  static const double v = [] {
    const char* s = std::getenv("LSS_CUDA_TILE_DENSITY");
    return s ? std::atof(s) : 0.03;
  }();
  return v;
}

template <typename T> T* ptr(const at::Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }
uint32_t* as_u32(const at::Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }

int bit_width(int64_t v) {  // bits needed for values in [0, v]
  int b = 1;
  while (b < 63 && (int64_t(1) << b) <= v) ++b;
  return b;
}

// ------------------------------------------------------------- hash codes
at::Tensor hash_codes_cuda(const at::Tensor& x, const at::Tensor& proj) {
  check_hash_codes(x, proj);
  check_cuda("hash_codes", {&x, &proj});
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), d = x.size(1), L = proj.size(0), K = proj.size(1);
  at::Tensor codes = at::empty({B, L}, x.options().dtype(at::kInt));
  if (B == 0 || L == 0) return codes;
  const DType dt = dtype_of("hash_codes", x);
  const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
  const at::Tensor pc = proj.contiguous();
  hash_codes(dt, xa.data_ptr(), pc.data_ptr(), B, d, L, K, codes.data_ptr<int32_t>(),
             current_stream());
  return codes;
}

// ------------------------------------------------------------------ tables
std::tuple<at::Tensor, at::Tensor> build_tables_cuda(const at::Tensor& codes, int64_t bits) {
  check_build_tables(codes, bits);
  check_cuda("build_tables", {&codes});
  const c10::cuda::CUDAGuard guard(codes.device());
  const int64_t N = codes.size(0), L = codes.size(1), buckets = int64_t(1) << bits;
  const cudaStream_t stream = current_stream();
  at::Tensor offsets = at::zeros({L, buckets + 1}, codes.options());
  at::Tensor items = at::empty({L, N}, codes.options());
  if (L == 0) return {offsets, items};
  at::Tensor status = new_status(codes);
  const at::Tensor cc = codes.contiguous();
  build_offsets(cc.data_ptr<int32_t>(), N, L, int(bits), offsets.data_ptr<int32_t>(),
                status_ptr(status), stream);
  if (N > 0) {
    // Per table, a stable radix sort of the label ids 0..N-1 by code: each
    // bucket comes out in ascending label order.
    const at::Tensor by_table = cc.t().contiguous();  // [L, N]
    at::Tensor ids = at::empty({N}, codes.options());
    at::Tensor keys_out = at::empty({N}, codes.options());
    iota_int32(ids.data_ptr<int32_t>(), N, stream);
    const size_t temp_bytes = radix_sort_pairs_temp_bytes(N, int(bits));
    at::Tensor temp = at::empty({int64_t(temp_bytes) + 1}, codes.options().dtype(at::kByte));
    for (int64_t l = 0; l < L; ++l)
      radix_sort_pairs(temp.data_ptr(), temp_bytes, as_u32(by_table) + l * N, as_u32(keys_out),
                       ids.data_ptr<int32_t>(), items.data_ptr<int32_t>() + l * N, N, int(bits),
                       stream);
  }
  TORCH_CHECK(read_status(status)[kStatusError] == 0,
              "build_tables: codes must be in [0, 2^bits) = [0, ", buckets, ")");
  return {offsets, items};
}

// The shared checks (lss/arg_checks.h), then the devices.
void check_tables(const char* op, const at::Tensor& codes, const at::Tensor& offsets,
                  const at::Tensor& items, int64_t num_labels, int64_t min_hits) {
  lss::check_tables(op, codes, offsets, items, num_labels, min_hits);
  check_cuda(op, {&codes, &offsets, &items});
}

void raise_malformed(const char* op, int64_t err) {
  TORCH_CHECK(err == 0, op, ": malformed tables: a code is outside [0, 2^K), a bucket's offsets "
              "are decreasing or past items.size(1), or an item is outside [0, num_labels)");
}

// Runs the candidate pass over every query: the shared-memory path for
// queries retrieving up to its capacity, then the global-memory fallback, in
// chunks of at most 2^25 keys (256 MiB) of scratch, for the rest.
void run_lookup(const char* op, const Tables& t, const at::Tensor& retrieved, int64_t max_retrieved,
                int64_t min_hits, const LookupOut& out, const at::Tensor& like,
                cudaStream_t stream) {
  if (t.B == 0) return;
  TORCH_CHECK(max_retrieved <= (int64_t(1) << 30), op, ": a query retrieves ", max_retrieved,
              " items (with duplicates); at most 2^30 are supported");
  const int64_t smem_cap = std::max<int64_t>(
      32, std::min<int64_t>(next_pow2_host(max_retrieved), lookup_smem_capacity()));
  lookup_candidates(t, retrieved.data_ptr<int64_t>(), min_hits, out, smem_cap, smem_cap, nullptr, 0,
                    t.B, stream);
  if (max_retrieved <= smem_cap) return;
  const int64_t cap = next_pow2_host(max_retrieved);
  const int64_t slots = std::max<int64_t>(1, (int64_t(1) << 25) / cap);
  at::Tensor scratch = at::empty({std::min(slots, t.B) * cap}, like.options().dtype(at::kLong));
  for (int64_t q0 = 0; q0 < t.B; q0 += slots)
    lookup_candidates(t, retrieved.data_ptr<int64_t>(), min_hits, out, cap, smem_cap,
                      reinterpret_cast<uint64_t*>(scratch.data_ptr<int64_t>()), q0,
                      std::min(t.B, q0 + slots), stream);
}

Tables make_tables(const at::Tensor& codes, const at::Tensor& offsets, const at::Tensor& items,
                   int64_t num_labels) {
  return Tables{codes.data_ptr<int32_t>(), codes.size(0), codes.size(1),
                offsets.data_ptr<int32_t>(), offsets.size(1) - 1, items.data_ptr<int32_t>(),
                items.size(1), num_labels};
}

std::tuple<at::Tensor, at::Tensor> bucket_lookup_cuda(const at::Tensor& codes,
                                                      const at::Tensor& offsets,
                                                      const at::Tensor& items, int64_t num_labels,
                                                      int64_t max_candidates, int64_t min_hits) {
  const char* op = "bucket_lookup";
  check_tables(op, codes, offsets, items, num_labels, min_hits);
  check_max_candidates(max_candidates);
  const c10::cuda::CUDAGuard guard(codes.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = codes.size(0), M = max_candidates;
  const at::Tensor cc = codes.contiguous(), oc = offsets.contiguous(), ic = items.contiguous();
  at::Tensor ids = at::empty({B, M}, codes.options());
  at::Tensor counts = at::empty({B}, codes.options());
  if (B == 0) return {ids, counts};
  const Tables t = make_tables(cc, oc, ic, num_labels);
  at::Tensor status = new_status(codes);
  at::Tensor retrieved = at::empty({B}, codes.options().dtype(at::kLong));
  lookup_prepass(t, retrieved.data_ptr<int64_t>(), status_ptr(status), stream);
  const auto st = read_status(status);
  raise_malformed(op, st[kStatusError]);
  const LookupOut out{ids.data_ptr<int32_t>(), counts.data_ptr<int32_t>(), M, nullptr, 0};
  run_lookup(op, t, retrieved, st[kStatusMax], min_hits, out, codes, stream);
  return {ids, counts};
}

at::Tensor bucket_lookup_bitmap_cuda(const at::Tensor& codes, const at::Tensor& offsets,
                                     const at::Tensor& items, int64_t num_labels,
                                     int64_t min_hits) {
  const char* op = "bucket_lookup_bitmap";
  check_tables(op, codes, offsets, items, num_labels, min_hits);
  const c10::cuda::CUDAGuard guard(codes.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = codes.size(0), words = bitmap_words(num_labels);
  const at::Tensor cc = codes.contiguous(), oc = offsets.contiguous(), ic = items.contiguous();
  at::Tensor bitmap = at::zeros({B, words}, codes.options());
  if (B == 0) return bitmap;
  const Tables t = make_tables(cc, oc, ic, num_labels);
  at::Tensor status = new_status(codes);
  if (min_hits == 1) {
    lookup_bitmap_any(t, bitmap.data_ptr<int32_t>(), words, status_ptr(status), stream);
    raise_malformed(op, read_status(status)[kStatusError]);
    return bitmap;
  }
  at::Tensor retrieved = at::empty({B}, codes.options().dtype(at::kLong));
  lookup_prepass(t, retrieved.data_ptr<int64_t>(), status_ptr(status), stream);
  const auto st = read_status(status);
  raise_malformed(op, st[kStatusError]);
  const LookupOut out{nullptr, nullptr, 0, bitmap.data_ptr<int32_t>(), words};
  run_lookup(op, t, retrieved, st[kStatusMax], min_hits, out, codes, stream);
  return bitmap;
}

// ----------------------------------------------------------------- logits
// The shared checks (lss/arg_checks.h), then the devices and the dtypes the
// kernels are built for.
void check_dense_args(const char* op, const at::Tensor& x, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& bias) {
  lss::check_dense_args(op, x, weight, bias);
  if (bias.has_value()) {
    check_cuda(op, {&x, &weight, &*bias});
  } else {
    check_cuda(op, {&x, &weight});
  }
  dtype_of(op, x);
}

void check_ids(const char* op, const at::Tensor& x, const at::Tensor& ids) {
  check_ids_shape(op, x, ids);
  TORCH_CHECK(ids.numel() < (int64_t(1) << 31), op, ": at most 2^31 - 1 candidates per call");
  check_cuda(op, {&x, &ids});
}

void raise_bad_ids(const char* op, const at::Tensor& status, int64_t num_labels) {
  if (async_errors()) return;
  TORCH_CHECK(read_status(status)[kStatusError] == 0, op, ": ids must be -1 (padding) or in [0, ",
              num_labels, ")");
}

at::Tensor gathered_logits_cuda(const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& ids) {
  const char* op = "gathered_logits";
  check_dense_args(op, x, weight, bias);
  check_ids(op, x, ids);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), d = x.size(1), M = ids.size(1), N = weight.size(0);
  at::Tensor out = at::empty({B, M}, x.options());
  if (B * M == 0) return out;
  const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
  const at::Tensor wc = weight.contiguous(), idc = ids.contiguous();
  at::Tensor bc;
  if (bias.has_value()) bc = bias->contiguous();
  at::Tensor status = new_status(x);
  candidate_logits(dtype_of(op, x), xa.data_ptr(), wc.data_ptr(), raw(bc), d, N,
                   Entries{idc.data_ptr<int32_t>(), nullptr, M, B * M}, out.data_ptr(),
                   status_ptr(status), current_stream());
  raise_bad_ids(op, status, N);
  return out;
}

// grad_W / grad_b of a list of entries: group the entries by label with a
// stable radix sort (the CPU's summation order within a label), then one warp
// per label.
void grad_weight_bias(DType dt, const at::Tensor& grad_acc, const at::Tensor& x, int64_t N,
                      const Entries& e, at::Tensor* gw, at::Tensor* gb, unsigned long long* status,
                      cudaStream_t stream) {
  const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
  const auto opts = x.options().dtype(at::kInt);
  at::Tensor keys = at::empty({e.nnz}, opts), order = at::empty({e.nnz}, opts);
  at::Tensor keys_sorted = at::empty({e.nnz}, opts), order_sorted = at::empty({e.nnz}, opts);
  label_keys(e, N, as_u32(keys), order.data_ptr<int32_t>(), status, stream);
  const int end_bit = bit_width(N);
  const size_t temp_bytes = radix_sort_pairs_temp_bytes(e.nnz, end_bit);
  at::Tensor temp = at::empty({int64_t(temp_bytes) + 1}, x.options().dtype(at::kByte));
  radix_sort_pairs(temp.data_ptr(), temp_bytes, as_u32(keys), as_u32(keys_sorted),
                   order.data_ptr<int32_t>(), order_sorted.data_ptr<int32_t>(), e.nnz, end_bit,
                   stream);
  candidate_grad_weight(dt, grad_acc.data_ptr(), xa.data_ptr(), x.size(1), N, e,
                        as_u32(keys_sorted), order_sorted.data_ptr<int32_t>(),
                        gw ? gw->data_ptr() : nullptr, gb ? gb->data_ptr() : nullptr, stream);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gathered_logits_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& ids,
    bool need_x, bool need_weight, bool need_bias) {
  const char* op = "gathered_logits_backward";
  check_dense_args(op, x, weight, c10::nullopt);
  check_ids(op, x, ids);
  check_gathered_grad(grad, ids);
  check_cuda(op, {&x, &grad});
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = x.size(0), d = x.size(1), M = ids.size(1), N = weight.size(0);
  at::Tensor gx = need_x ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::empty({0}, x.options());
  at::Tensor gw = need_weight ? at::zeros_like(weight, at::MemoryFormat::Contiguous) : at::empty({0}, weight.options());
  at::Tensor gb = need_bias ? at::zeros({N}, weight.options()) : at::empty({0}, weight.options());
  if (B * M == 0) {
    if (need_x) gx.zero_();
    return {gx, gw, gb};
  }
  const DType dt = dtype_of(op, x);
  const at::Tensor ga = grad.to(acc_type(x.scalar_type())).contiguous();
  const at::Tensor wc = weight.contiguous(), idc = ids.contiguous();
  const Entries e{idc.data_ptr<int32_t>(), nullptr, M, B * M};
  at::Tensor status = new_status(x);
  if (need_x)
    candidate_grad_x(dt, ga.data_ptr(), wc.data_ptr(), d, N, B, nullptr, e, gx.data_ptr(),
                     status_ptr(status), stream);
  if (need_weight || need_bias)
    grad_weight_bias(dt, ga, x, N, e, need_weight ? &gw : nullptr, need_bias ? &gb : nullptr,
                     status_ptr(status), stream);
  raise_bad_ids(op, status, N);
  return {gx, gw, gb};
}

// ----------------------------------------------------------------- bitmaps
// row_ptr of a bitmap, and its nnz; raises on bits past num_labels.
struct RowPtr {
  at::Tensor row_ptr;
  int64_t nnz = 0;
  int64_t tiles = 0;    // non-empty [kTileRows x 32] tiles
  int64_t columns = 0;  // non-empty 32-label columns, listed in column_list
  at::Tensor column_list;
};
RowPtr bitmap_row_ptr_checked(const char* op, const at::Tensor& bc, int64_t num_labels,
                              bool find_tiles, cudaStream_t stream) {
  const int64_t B = bc.size(0), words = bc.size(1);
  RowPtr r;
  r.row_ptr = at::zeros({B + 1}, bc.options().dtype(at::kLong));
  at::Tensor status = new_status(bc);
  bitmap_row_ptr(bc.data_ptr<int32_t>(), B, words, num_labels, r.row_ptr.data_ptr<int64_t>(),
                 status_ptr(status), stream);
  if (find_tiles) {
    r.column_list = at::empty({words}, bc.options().dtype(at::kLong));
    bitmap_columns(bc.data_ptr<int32_t>(), B, words, r.column_list.data_ptr<int64_t>(),
                   status_ptr(status), stream);
  }
  const auto st = read_status(status);
  TORCH_CHECK(st[kStatusError] == 0, op, ": bitmap has bits set at label ids >= num_labels = ",
              num_labels);
  r.nnz = st[kStatusNnz];
  r.tiles = st[kStatusTiles];
  r.columns = st[kStatusColumns];
  TORCH_CHECK(r.nnz < (int64_t(1) << 31), op, ": more than 2^31 - 1 candidates in one call");
  return r;
}

// Bitmap rows at or above this use the tile path when dense enough.
constexpr int64_t kTileMinRows = 16;

std::tuple<at::Tensor, at::Tensor> bitmap_sparse_matmul_cuda(const at::Tensor& x,
                                                             const at::Tensor& weight,
                                                             const c10::optional<at::Tensor>& bias,
                                                             const at::Tensor& bitmap) {
  const char* op = "bitmap_sparse_matmul";
  check_dense_args(op, x, weight, bias);
  const int64_t B = x.size(0), d = x.size(1), N = weight.size(0);
  check_bitmap(op, bitmap, B, N);
  check_cuda(op, {&x, &bitmap});
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const at::Tensor bc = bitmap.contiguous();
  const int64_t words = bc.size(1);
  RowPtr r = bitmap_row_ptr_checked(op, bc, N, B >= kTileMinRows, stream);
  at::Tensor values = at::empty({r.nnz}, x.options());
  if (r.nnz == 0) return {values, r.row_ptr};
  const DType dt = dtype_of(op, x);
  const at::Tensor wc = weight.contiguous();
  at::Tensor bias_c;
  if (bias.has_value()) bias_c = bias->contiguous();
  // Tiles pay off where they are dense enough (a model, not a measurement:
  // see docs/gpu.md); LSS_CUDA_TILE_DENSITY overrides the threshold.
  const bool use_tiles = B >= kTileMinRows && r.tiles > 0 &&
                         double(r.nnz) >= tile_density() * double(r.tiles) * kTileRows * 32;
  if (use_tiles) {
    at::Tensor word_rank = at::empty({B, words}, bc.options());
    bitmap_decode(bc.data_ptr<int32_t>(), B, words, r.row_ptr.data_ptr<int64_t>(), nullptr, nullptr,
                  word_rank.data_ptr<int32_t>(), stream);
    const at::Tensor xc = x.contiguous();
    bitmap_tile_logits(dt, xc.data_ptr(), wc.data_ptr(), raw(bias_c), B, d, N,
                       bc.data_ptr<int32_t>(), words, r.row_ptr.data_ptr<int64_t>(),
                       word_rank.data_ptr<int32_t>(), r.column_list.data_ptr<int64_t>(),
                       r.columns, values.data_ptr(), stream);
  } else {
    at::Tensor cols = at::empty({r.nnz}, bc.options()), row_of = at::empty({r.nnz}, bc.options());
    bitmap_decode(bc.data_ptr<int32_t>(), B, words, r.row_ptr.data_ptr<int64_t>(),
                  cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), nullptr, stream);
    const at::Tensor xa = x.to(acc_type(x.scalar_type())).contiguous();
    at::Tensor status = new_status(x);  // decoded ids are always in range
    candidate_logits(dt, xa.data_ptr(), wc.data_ptr(), raw(bias_c), d, N,
                     Entries{cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), 0, r.nnz},
                     values.data_ptr(), status_ptr(status), stream);
  }
  return {values, r.row_ptr};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bitmap_sparse_matmul_backward_cuda(
    const at::Tensor& grad_values, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& bitmap, const at::Tensor& row_ptr, bool need_x, bool need_weight,
    bool need_bias) {
  const char* op = "bitmap_sparse_matmul_backward";
  check_dense_args(op, x, weight, c10::nullopt);
  const int64_t B = x.size(0), d = x.size(1), N = weight.size(0);
  check_bitmap(op, bitmap, B, N);
  check_cuda(op, {&x, &bitmap, &row_ptr, &grad_values});
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = current_stream();
  const at::Tensor bc = bitmap.contiguous();
  const int64_t words = bc.size(1);
  RowPtr r = bitmap_row_ptr_checked(op, bc, N, false, stream);
  TORCH_CHECK(row_ptr.dim() == 1 && row_ptr.numel() == B + 1 && row_ptr.scalar_type() == at::kLong &&
                  at::equal(row_ptr, r.row_ptr),
              op, ": row_ptr does not match the bitmap");
  TORCH_CHECK(grad_values.dim() == 1 && grad_values.numel() == r.nnz, op,
              ": grad_values must be [nnz] = [", r.nnz, "], got ", grad_values.sizes());
  at::Tensor gx = need_x ? at::zeros({B, d}, x.options()) : at::empty({0}, x.options());
  at::Tensor gw = need_weight ? at::zeros_like(weight, at::MemoryFormat::Contiguous) : at::empty({0}, weight.options());
  at::Tensor gb = need_bias ? at::zeros({N}, weight.options()) : at::empty({0}, weight.options());
  if (r.nnz == 0) return {gx, gw, gb};
  const DType dt = dtype_of(op, x);
  at::Tensor cols = at::empty({r.nnz}, bc.options()), row_of = at::empty({r.nnz}, bc.options());
  bitmap_decode(bc.data_ptr<int32_t>(), B, words, r.row_ptr.data_ptr<int64_t>(),
                cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), nullptr, stream);
  const Entries e{cols.data_ptr<int32_t>(), row_of.data_ptr<int32_t>(), 0, r.nnz};
  const at::Tensor ga = grad_values.to(acc_type(x.scalar_type())).contiguous();
  at::Tensor status = new_status(x);  // decoded ids are always in range
  if (need_x) {
    const at::Tensor wc = weight.contiguous();
    candidate_grad_x(dt, ga.data_ptr(), wc.data_ptr(), d, N, B, r.row_ptr.data_ptr<int64_t>(), e,
                     gx.data_ptr(), status_ptr(status), stream);
  }
  if (need_weight || need_bias)
    grad_weight_bias(dt, ga, x, N, e, need_weight ? &gw : nullptr, need_bias ? &gb : nullptr,
                     status_ptr(status), stream);
  return {gx, gw, gb};
}

// ------------------------------------------------------------------- top-k
// Runs a top-k launcher over all rows: shared-memory buffers when
// 2 k' + kTopkThreads fits (k' = k capped by the most candidates a row can
// have), else global scratch, in chunks of at most 256 MiB.
template <typename Launch>
void run_topk(const char* op, DType dt, int64_t B, int64_t k, int64_t max_per_row,
              const at::Tensor& like, Launch&& launch) {
  if (B == 0) return;
  const int64_t kk = std::min(k, std::max<int64_t>(max_per_row, 1));
  const int64_t smem_cap = topk_smem_capacity(dt);
  if (2 * kk + kTopkThreads <= smem_cap) {
    launch(smem_cap, nullptr, int64_t(0), B);
    return;
  }
  const int64_t cap = next_pow2_host(2 * kk + kTopkThreads);
  TORCH_CHECK(cap <= (int64_t(1) << 30), op, ": k = ", k, " is too large");
  const int64_t per_row = int64_t(topk_scratch_bytes_per_row(dt, cap));
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 28) / per_row);
  at::Tensor scratch = at::empty({std::min(rows, B) * per_row}, like.options().dtype(at::kByte));
  for (int64_t r0 = 0; r0 < B; r0 += rows) launch(cap, scratch.data_ptr(), r0, std::min(B, r0 + rows));
}

std::tuple<at::Tensor, at::Tensor> topk_gathered_cuda(const at::Tensor& logits,
                                                      const at::Tensor& ids, int64_t k) {
  const char* op = "topk_gathered";
  check_topk_gathered(logits, ids, k);
  check_cuda(op, {&logits, &ids});
  const DType dt = dtype_of(op, logits);
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = current_stream();
  const int64_t B = logits.size(0), M = logits.size(1);
  at::Tensor scores = at::empty({B, k}, logits.options());
  at::Tensor labels = at::empty({B, k}, logits.options().dtype(at::kLong));
  if (B == 0) return {scores, labels};
  const at::Tensor lc = logits.contiguous(), ic = ids.contiguous();
  at::Tensor status = new_status(logits);
  run_topk(op, dt, B, k, M, logits, [&](int64_t cap, void* scratch, int64_t r0, int64_t r1) {
    topk_gathered(dt, lc.data_ptr(), ic.data_ptr<int32_t>(), B, M, k, cap, scratch, r0, r1,
                  scores.data_ptr(), labels.data_ptr<int64_t>(), status_ptr(status), stream);
  });
  if (!async_errors())
    TORCH_CHECK(read_status(status)[kStatusError] == 0,
                "topk_gathered: ids must be -1 (padding) or >= 0");
  return {scores, labels};
}

std::tuple<at::Tensor, at::Tensor> topk_packed_cuda(const at::Tensor& values,
                                                    const at::Tensor& row_ptr,
                                                    const at::Tensor& bitmap, int64_t k) {
  const char* op = "topk_packed";
  check_topk_packed(values, row_ptr, bitmap, k);
  const int64_t B = bitmap.size(0), W = bitmap.size(1);
  TORCH_CHECK(W < (int64_t(1) << 26), "topk_packed: the CUDA kernel supports label ids < 2^31 "
              "(bitmap.size(1) < 2^26), got ", W, " words");
  check_cuda(op, {&values, &row_ptr, &bitmap});
  const DType dt = dtype_of(op, values);
  const c10::cuda::CUDAGuard guard(values.device());
  const cudaStream_t stream = current_stream();
  const at::Tensor vc = values.contiguous(), rc = row_ptr.contiguous(), bc = bitmap.contiguous();
  at::Tensor scores = at::empty({B, k}, values.options());
  at::Tensor labels = at::empty({B, k}, values.options().dtype(at::kLong));
  if (B == 0) {  // no row to check it: row_ptr = [0] and no values
    TORCH_CHECK(rc.item<int64_t>() == 0 && values.numel() == 0,
                "topk_packed: row_ptr must start at 0 and end at values.numel() = ", values.numel());
    return {scores, labels};
  }
  at::Tensor status = new_status(values);
  run_topk(op, dt, B, k, W * 32, values, [&](int64_t cap, void* scratch, int64_t r0, int64_t r1) {
    topk_packed(dt, vc.data_ptr(), vc.numel(), rc.data_ptr<int64_t>(), bc.data_ptr<int32_t>(), B,
                W, k, cap, scratch, r0, r1, scores.data_ptr(), labels.data_ptr<int64_t>(),
                status_ptr(status), stream);
  });
  if (!async_errors())
    TORCH_CHECK(read_status(status)[kStatusError] == 0,
                "topk_packed: row_ptr must start at 0, end at values.numel() = ", values.numel(),
                " and match the bitmap's row popcounts");
  return {scores, labels};
}

}  // namespace

TORCH_LIBRARY_IMPL(lsskernels, CUDA, m) {
  m.impl("hash_codes", &hash_codes_cuda);
  m.impl("build_tables", &build_tables_cuda);
  m.impl("bucket_lookup", &bucket_lookup_cuda);
  m.impl("bucket_lookup_bitmap", &bucket_lookup_bitmap_cuda);
  m.impl("gathered_logits", &gathered_logits_cuda);
  m.impl("gathered_logits_backward", &gathered_logits_backward_cuda);
  m.impl("bitmap_sparse_matmul", &bitmap_sparse_matmul_cuda);
  m.impl("bitmap_sparse_matmul_backward", &bitmap_sparse_matmul_backward_cuda);
  m.impl("topk_gathered", &topk_gathered_cuda);
  m.impl("topk_packed", &topk_packed_cuda);
}

}  // namespace lss::cuda
