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

Tensor = torch.Tensor


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
    dense = torch.zeros(batch, num_labels, dtype=torch.bool, device=ids.device)
    valid = ids >= 0
    rows = torch.arange(batch, device=ids.device).unsqueeze(1).expand_as(ids)
    dense[rows[valid], ids[valid].to(torch.int64)] = True
    return pack_bitmap(dense)


def pack_bitmap(dense: Tensor) -> Tensor:
    """bool [B, N] -> int32 [B, ceil(N / 32)], label i at bit i % 32 of word i // 32."""
    batch, n = dense.shape
    words = (n + 31) // 32
    padded = torch.zeros(batch, words * 32, dtype=torch.int64, device=dense.device)
    padded[:, :n] = dense.to(torch.int64)
    weights = torch.pow(2, torch.arange(32, device=dense.device, dtype=torch.int64))
    packed = (padded.view(batch, words, 32) * weights).sum(-1)
    # Reinterpret the low 32 bits as a signed int32.
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


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
