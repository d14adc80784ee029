// The one place where the schemas of torch.ops.lsskernels are declared.
// Kernels register per dispatch key: CPU kernels in csrc/cpu/*_cpu.cpp,
// CUDA kernels in csrc/cuda/<op>_host.cpp (the host wrapper; the kernels
// themselves are in csrc/cuda/<op>_cuda.cu), composites of the ops in
// csrc/*predict_topk.cpp (CompositeImplicitAutograd);
// fake kernels and autograd are registered from Python (lsskernels/_ops.py).
#include <torch/library.h>

TORCH_LIBRARY(lsskernels, m) {
  // codes[b, l] = sum_j 2^j [<x[b], proj[l, j]> > 0]      -> int32 [B, L]
  m.def("hash_codes(Tensor x, Tensor proj) -> Tensor");
  // CSR tables: offsets int32 [L, 2^bits + 1], items int32 [L, N]
  m.def("build_tables(Tensor codes, int bits) -> (Tensor, Tensor)");
  // ids int32 [B, M] (-1 padded; more hits first, then ascending id), counts int32 [B]
  m.def(
      "bucket_lookup(Tensor codes, Tensor offsets, Tensor items, int num_labels, "
      "int max_candidates, int min_hits) -> (Tensor, Tensor)");
  // bitmap int32 [B, ceil(num_labels / 32)]
  m.def(
      "bucket_lookup_bitmap(Tensor codes, Tensor offsets, Tensor items, "
      "int num_labels, int min_hits) -> Tensor");
  // logits [B, M] in x's dtype, -inf where ids == -1
  m.def("gathered_logits(Tensor x, Tensor weight, Tensor? bias, Tensor ids) -> Tensor");
  // (grad_x, grad_weight, grad_bias); a gradient not asked for is an empty tensor
  m.def(
      "gathered_logits_backward(Tensor grad, Tensor x, Tensor weight, Tensor ids, "
      "bool need_x, bool need_weight, bool need_bias) -> (Tensor, Tensor, Tensor)");
  // (values [nnz] packed row by row in ascending label order, row_ptr int64 [B + 1])
  m.def(
      "bitmap_sparse_matmul(Tensor x, Tensor weight, Tensor? bias, Tensor bitmap) "
      "-> (Tensor, Tensor)");
  m.def(
      "bitmap_sparse_matmul_backward(Tensor grad_values, Tensor x, Tensor weight, "
      "Tensor bitmap, Tensor row_ptr, bool need_x, bool need_weight, bool need_bias) "
      "-> (Tensor, Tensor, Tensor)");
  // (scores [B, k] in logits' dtype, labels int64 [B, k]); -inf / -1 where fewer than k
  m.def("topk_gathered(Tensor logits, Tensor ids, int k) -> (Tensor, Tensor)");
  m.def("topk_packed(Tensor values, Tensor row_ptr, Tensor bitmap, int k) -> (Tensor, Tensor)");
  // LSSLinear.predict in one call: hash_codes of [x, 1, 0] -> bucket_lookup ->
  // gathered_logits -> topk_gathered (a composite, csrc/predict_topk.cpp)
  m.def(
      "predict_topk(Tensor x, Tensor query_proj, Tensor offsets, Tensor items, Tensor weight, "
      "Tensor? bias, int num_labels, int max_candidates, int min_hits, int k) -> (Tensor, Tensor)");
  // The partition family (lsskernels/partition/; its probe is quantized_probe,
  // a quantized_candidates call over the centroid codes).
  // Quantized scoring of the probed lists (int8 codes, int8 queries, exact
  // integer dots): ids int32 [B, M] (-1 padded; score desc, id asc), counts int32 [B]
  m.def(
      "quantized_candidates(Tensor x, Tensor probes, Tensor list_offsets, Tensor codes, "
      "Tensor code_scales, Tensor code_bias, Tensor list_ids, int num_labels, int max_candidates) "
      "-> (Tensor, Tensor)");
  // The partition family's predict in one call (a composite): the probe is
  // quantized_candidates over one list of the P centroid codes (int8 [P, Dp],
  // scales and bias float32 [P]), then quantized_candidates over the probed
  // lists -> gathered_logits -> topk_gathered. code_proj float32 [d, r]: the
  // list codes are of U^T (w - mean w), scored with x @ U.
  m.def(
      "partition_predict_topk(Tensor x, Tensor centroid_codes, Tensor centroid_scales, Tensor centroid_bias, "
      "Tensor list_offsets, Tensor codes, Tensor code_scales, Tensor code_bias, Tensor list_ids, Tensor weight, "
      "Tensor? bias, int num_labels, int nprobe, int max_candidates, int k, Tensor? code_proj=None) "
      "-> (Tensor, Tensor)");
}
