"""Pure-PyTorch reference implementations of every lsskernels op: the ground
truth every kernel is tested against, and the fallback where the compiled
extension is missing.

They favour obviousness over speed. Accumulation is in float32 (float64 for
float64 inputs), results are returned in the input dtype, and the orderings
(candidates: more hits first, then ascending id; top-k: larger score first,
then smaller id) are the contracts the kernels must reproduce bit for bit.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ._checks import CODE_ALIGN, QUANT_LEVELS  # noqa: F401  (defined once, in csrc/include/lss/common.h)

Tensor = torch.Tensor


def augmented_labels(weight: Tensor, bias: Optional[Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """The bias-augmented label vectors [w, b], [N, d + 1] (b = 0 without a
    bias): a query [x, 1] scores them by its logits. The one definition
    (partitions' k-means, SimHash's MIPS transform, the benchmarks' ANN indexes)."""
    w = weight.detach().to(dtype)
    b = bias.detach().to(dtype) if bias is not None else w.new_zeros(w.shape[0])
    return torch.cat([w, b.unsqueeze(1)], 1)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulator dtype of the kernels: fp64 stays fp64, the rest is fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def projections(x: Tensor, proj: Tensor) -> Tensor:
    """<x[b], proj[l, j]> as [B, L, K] in the accumulator dtype."""
    acc = acc_dtype(x.dtype)
    return torch.einsum("bd,lkd->blk", x.to(acc), proj.to(acc))


def hash_codes(x: Tensor, proj: Tensor) -> Tensor:
    """codes[b, l] = sum_j 2^j [<x[b], proj[l, j]> > 0], int32 [B, L]."""
    bits = (projections(x, proj) > 0).to(torch.int64)
    weights = torch.pow(2, torch.arange(proj.shape[1], device=x.device, dtype=torch.int64))
    return (bits * weights).sum(-1).to(torch.int32)


def build_tables(codes: Tensor, bits: int) -> Tuple[Tensor, Tensor]:
    """CSR tables from label codes [N, L]: offsets int32 [L, 2^bits + 1],
    items int32 [L, N], labels ascending within a bucket."""
    n, num_tables = codes.shape
    buckets = 1 << bits
    offsets = torch.zeros(num_tables, buckets + 1, dtype=torch.int32, device=codes.device)
    items = torch.empty(num_tables, n, dtype=torch.int32, device=codes.device)
    label_ids = torch.arange(n, device=codes.device, dtype=torch.int64)
    for table in range(num_tables):
        c = codes[:, table].to(torch.int64)
        # Sort by (code, label): stable sort on code of ascending labels.
        order = torch.sort(c, stable=True).indices
        items[table] = label_ids[order].to(torch.int32)
        counts = torch.bincount(c, minlength=buckets)
        offsets[table, 1:] = torch.cumsum(counts, 0).to(torch.int32)
    return offsets, items


def _query_candidates(codes_row: Tensor, offsets: Tensor, items: Tensor, min_hits: int):
    """Labels with at least min_hits hits for one query, ordered by (hits
    desc, id asc), and their hit counts."""
    pieces = []
    for table in range(codes_row.shape[0]):
        code = int(codes_row[table])
        begin, end = int(offsets[table, code]), int(offsets[table, code + 1])
        pieces.append(items[table, begin:end].to(torch.int64))
    retrieved = torch.cat(pieces) if pieces else items.new_empty(0, dtype=torch.int64)
    labels, hits = torch.unique(retrieved, sorted=True, return_counts=True)
    keep = hits >= min_hits
    labels, hits = labels[keep], hits[keep]
    order = torch.sort(-hits, stable=True).indices  # ids already ascending
    return labels[order], hits[order]


def bucket_lookup(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                  max_candidates: int, min_hits: int = 1) -> Tuple[Tensor, Tensor]:
    """ids int32 [B, M] (-1 padded) and counts int32 [B]."""
    batch = codes.shape[0]
    ids = torch.full((batch, max_candidates), -1, dtype=torch.int32, device=codes.device)
    counts = torch.zeros(batch, dtype=torch.int32, device=codes.device)
    for b in range(batch):
        labels, _ = _query_candidates(codes[b], offsets, items, min_hits)
        labels = labels[:max_candidates]
        ids[b, : labels.numel()] = labels.to(torch.int32)
        counts[b] = labels.numel()
    return ids, counts


def bitmap_from_ids(ids: Tensor, num_labels: int) -> Tensor:
    """Candidate bitmap int32 [B, ceil(N / 32)] of -1 padded ids [B, M]."""
    batch = ids.shape[0]
    valid = ids >= 0
    rows = torch.arange(batch, device=ids.device).unsqueeze(1).expand_as(ids)
    return pack_bitmap_pairs(rows[valid], ids[valid], batch, num_labels)


def pack_bitmap_pairs(rows: Tensor, labels: Tensor, batch: int, num_labels: int) -> Tensor:
    """The one bitmap packer: (row, label) pairs (repeats allowed) -> int32
    [batch, ceil(num_labels / 32)], label i at bit i % 32 of word i // 32."""
    rows, labels = rows.to(torch.int64), labels.to(torch.int64)
    key = torch.unique(rows * max(num_labels, 1) + labels)  # each bit once, so a sum is an OR
    rows, labels = key // max(num_labels, 1), key % max(num_labels, 1)
    acc = torch.zeros((batch, (num_labels + 31) // 32), dtype=torch.int64, device=labels.device)
    acc.index_put_((rows, labels >> 5), torch.ones_like(labels) << (labels & 31), accumulate=True)
    # Reinterpret the low 32 bits as a signed int32.
    return torch.where(acc >= 2**31, acc - 2**32, acc).to(torch.int32)


def pack_bitmap(dense: Tensor) -> Tensor:
    """bool [B, N] -> int32 [B, ceil(N / 32)], label i at bit i % 32 of word i // 32."""
    rows, labels = dense.nonzero(as_tuple=True)
    return pack_bitmap_pairs(rows, labels, dense.shape[0], dense.shape[1])


def unpack_bitmap(bitmap: Tensor, num_labels: int) -> Tensor:
    """int32 [B, W] -> bool [B, num_labels]."""
    shifts = torch.arange(32, device=bitmap.device, dtype=torch.int64)
    bits = (bitmap.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmap.shape[0], -1)[:, :num_labels].to(torch.bool)


def bucket_lookup_bitmap(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                         min_hits: int = 1) -> Tensor:
    """Every label with at least min_hits hits, as a bitmap (no truncation)."""
    batch = codes.shape[0]
    dense = torch.zeros(batch, num_labels, dtype=torch.bool, device=codes.device)
    for b in range(batch):
        labels, _ = _query_candidates(codes[b], offsets, items, min_hits)
        dense[b, labels] = True
    return pack_bitmap(dense)


def gathered_logits(x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor) -> Tensor:
    """logits[b, m] = <x[b], W[ids[b, m]]> + bias[ids[b, m]]; -inf at ids == -1.
    Differentiable through plain PyTorch ops."""
    acc = acc_dtype(x.dtype)
    valid = ids >= 0
    safe = ids.clamp(min=0).to(torch.int64)
    rows = weight[safe].to(acc)  # [B, M, d]
    logits = torch.einsum("bd,bmd->bm", x.to(acc), rows)
    if bias is not None:
        logits = logits + bias[safe].to(acc)
    logits = logits.masked_fill(~valid, float("-inf"))
    return logits.to(x.dtype)


def bitmap_sparse_matmul(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                         bitmap: Tensor) -> Tuple[Tensor, Tensor]:
    """(values [nnz], row_ptr int64 [B + 1]): exact logits of every set bit,
    packed row by row in ascending label order."""
    acc = acc_dtype(x.dtype)
    dense = unpack_bitmap(bitmap, weight.shape[0])
    rows, cols = dense.nonzero(as_tuple=True)  # row-major: ascending labels per row
    values = (x.to(acc)[rows] * weight.to(acc)[cols]).sum(-1)
    if bias is not None:
        values = values + bias.to(acc)[cols]
    row_ptr = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=x.device)
    row_ptr[1:] = torch.cumsum(dense.sum(1), 0)
    return values.to(x.dtype), row_ptr


def _topk_rows(scores: Tensor, labels: Tensor, valid: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Row-wise top-k of (score, label) pairs with the kernels' order: larger
    score first (NaN above all), ties by smaller label; -inf / -1 fill."""
    batch = scores.shape[0]
    out_scores = torch.full((batch, k), float("-inf"), dtype=scores.dtype, device=scores.device)
    out_labels = torch.full((batch, k), -1, dtype=torch.int64, device=scores.device)
    for b in range(batch):
        s, lab = scores[b][valid[b]], labels[b][valid[b]].to(torch.int64)
        by_label = torch.sort(lab, stable=True).indices
        s, lab = s[by_label], lab[by_label]
        # torch.sort ranks NaN above every number, as the kernels do.
        by_score = torch.sort(s, descending=True, stable=True).indices
        s, lab = s[by_score], lab[by_score]
        n = min(k, s.numel())
        out_scores[b, :n] = s[:n]
        out_labels[b, :n] = lab[:n]
    return out_scores, out_labels


def topk_gathered(logits: Tensor, ids: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Top-k over gathered logits [B, M] with their ids (-1 = padding)."""
    return _topk_rows(logits, ids, ids >= 0, k)


def topk_packed(values: Tensor, row_ptr: Tensor, bitmap: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Top-k per row over packed values whose labels are the bitmap's set bits."""
    batch = bitmap.shape[0]
    dense = unpack_bitmap(bitmap, bitmap.shape[1] * 32)
    width = int(dense.sum(1).max()) if batch else 0
    scores = torch.full((batch, max(width, 1)), float("-inf"), dtype=values.dtype, device=values.device)
    labels = torch.full((batch, max(width, 1)), -1, dtype=torch.int64, device=values.device)
    for b in range(batch):
        cols = dense[b].nonzero(as_tuple=True)[0]
        n = cols.numel()
        scores[b, :n] = values[int(row_ptr[b]) : int(row_ptr[b + 1])]
        labels[b, :n] = cols
    return _topk_rows(scores, labels, labels >= 0, k)


# --------------------------------------------------------------------------
# The partition family's ops (PartitionIndex in lsskernels/partition/index.py; built and fitted in lsskernels/partition/fit.py).
# --------------------------------------------------------------------------


def quantize_queries(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of each query row: (q int8 [B, d], scale
    float32 [B]) with x ~ q * scale. In float32: amax = max |x|, scale = amax
    / 127 and inv = 127 / amax (both correctly rounded divisions), q =
    round_half_even(x * inv) clamped to [-127, 127];
    a row with amax == 0 (or amax not finite) gets inv = 0 where amax == 0;
    NaN products become 0. Kernels reproduce these float32 operations
    exactly, so the integer dot products below are bit-exact everywhere."""
    xf = x.to(torch.float32)
    amax = xf.abs().amax(1) if xf.shape[1] else xf.new_zeros(xf.shape[0])
    scale = amax / QUANT_LEVELS
    # A tensor / tensor division: correctly rounded, as the kernels' 127.0f / amax
    # (torch turns the scalar form `127 / amax` into (1 / amax) * 127).
    inv = torch.where(amax > 0, torch.full_like(amax, QUANT_LEVELS) / amax, torch.zeros_like(amax))
    scaled = torch.nan_to_num(xf * inv.unsqueeze(1), nan=0.0, posinf=QUANT_LEVELS, neginf=-QUANT_LEVELS)
    q = torch.round(scaled).clamp(-QUANT_LEVELS, QUANT_LEVELS).to(torch.int8)
    return q, scale


def _rank_desc(scores: Tensor, ids: Tensor) -> Tensor:
    """Permutation sorting (scores desc, ids asc); NaN scores count as -inf."""
    # (posinf / neginf given explicitly: by default nan_to_num would also
    # replace +-inf by the largest / lowest finite value, ranking NaN below -inf)
    s = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    by_id = torch.sort(ids, stable=True).indices
    return by_id[torch.sort(s[by_id], descending=True, stable=True).indices]


def quantized_candidates(x: Tensor, probes: Tensor, list_offsets: Tensor, codes: Tensor, code_scales: Tensor,
                         code_bias: Tensor, list_ids: Tensor, num_labels: int,
                         max_candidates: int) -> Tuple[Tensor, Tensor]:
    """The max_candidates best labels of each query by quantized score over
    the partitions it probes: (ids int32 [B, M], -1 padded; counts int32 [B]).

    Partition p holds rows t in [list_offsets[p], list_offsets[p + 1]) of
    codes int8 [T, Dp] (Dp a multiple of 32, >= d; entries past d are
    ignored), code_scales / code_bias float32 [T] and list_ids int32 [T]. The
    score of row t is, in float32 and in this order,

        (float(sum_j q[j] * codes[t, j]) * scale_q) * code_scales[t] + code_bias[t]

    with (q, scale_q) = quantize_queries(x) and the integer sum exact (int32).
    A label listed in several probed partitions counts once, with its best
    score. Order: score desc, then id asc (NaN counts as -inf); probes of -1
    are skipped."""
    B, d = x.shape
    q, qscale = quantize_queries(x)
    qi = torch.zeros(B, codes.shape[1], dtype=torch.int32, device=x.device)
    qi[:, :d] = q.to(torch.int32)
    ids_out = torch.full((B, max_candidates), -1, dtype=torch.int32, device=x.device)
    counts = torch.zeros(B, dtype=torch.int32, device=x.device)
    off = list_offsets.to(torch.int64)
    for b in range(B):
        rows = [torch.arange(int(off[p]), int(off[p + 1]), device=x.device) for p in probes[b].tolist() if p >= 0]
        rows = torch.cat(rows) if rows else torch.empty(0, dtype=torch.int64, device=x.device)
        if rows.numel() == 0:
            continue
        acc = (codes[rows].to(torch.int32) * qi[b]).sum(1, dtype=torch.int32)
        score = (acc.to(torch.float32) * qscale[b]) * code_scales[rows] + code_bias[rows]
        labels = list_ids[rows].to(torch.int64)
        order = _rank_desc(score, labels)
        labels = labels[order]
        # First occurrence of each label in (score desc, id asc) order = its best score.
        uniq, inverse = torch.unique(labels, return_inverse=True)
        pos = torch.arange(labels.numel(), device=x.device)
        first_pos = torch.full((uniq.numel(),), labels.numel(), device=x.device).scatter_reduce_(
            0, inverse, pos, "amin")
        kept = labels[first_pos[inverse] == pos][:max_candidates]
        ids_out[b, : kept.numel()] = kept.to(torch.int32)
        counts[b] = kept.numel()
    return ids_out, counts


def code_queries(x: Tensor, code_proj: Optional[Tensor]) -> Tensor:
    """The queries as projected codes see them: x @ code_proj in float32, or x
    itself without a projection (None or empty)."""
    return x if code_proj is None or code_proj.numel() == 0 else x.to(torch.float32) @ code_proj


def probe_list(num_partitions: int, device) -> Tuple[Tensor, Tensor]:
    """The centroid codes as one partition list: offsets [0, P] and ids
    0 .. P - 1 (int32), so the probe is a quantized_candidates call."""
    return (torch.tensor([0, num_partitions], dtype=torch.int32, device=device),
            torch.arange(num_partitions, dtype=torch.int32, device=device))


def quantized_probe(x: Tensor, centroid_codes: Tensor, centroid_scales: Tensor, centroid_bias: Tensor,
                    nprobe: int) -> Tensor:
    """The nprobe best partitions by int8 score, int32 [B, nprobe]: the
    centroid codes scored like list rows (quantized_candidates over one list
    of the P centroids, centroid_bias as the rows' bias), best first, ties by
    smaller partition."""
    offsets, ids = probe_list(centroid_codes.shape[0], x.device)
    one_list = torch.zeros(x.shape[0], 1, dtype=torch.int32, device=x.device)
    return quantized_candidates(x, one_list, offsets, centroid_codes, centroid_scales, centroid_bias, ids,
                                centroid_codes.shape[0], nprobe)[0]


def partition_predict_topk(x: Tensor, centroid_codes: Tensor, centroid_scales: Tensor, centroid_bias: Tensor,
                           list_offsets: Tensor, codes: Tensor, code_scales: Tensor, code_bias: Tensor,
                           list_ids: Tensor, weight: Tensor, bias: Optional[Tensor], num_labels: int, nprobe: int,
                           max_candidates: int, k: int, code_proj: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The partition family's whole predict: probe (quantized_probe) ->
    quantized candidates -> exact logits of the max_candidates best -> top-k
    (scores in x's dtype, labels int64 [B, k]). Under a code projection
    (code_proj float32 [d, r], non-empty) the candidates are scored with the
    code queries x @ code_proj."""
    probes = quantized_probe(x, centroid_codes, centroid_scales, centroid_bias, nprobe)
    ids, _ = quantized_candidates(code_queries(x, code_proj), probes, list_offsets, codes, code_scales, code_bias,
                                  list_ids, num_labels, max_candidates)
    return topk_gathered(gathered_logits(x, weight, bias, ids), ids, k)
