"""k-means for the partition index: Lloyd's iterations on a seeded sample
(an emptied centroid splits the largest cluster), then every row assigned
to its nearest centroid (L2): exactly, or where the
CPU multiplies bf16 natively and P >= 4,096, through a bf16 screen with an
fp32 rescoring of each row's best few (row_argmax.py), which differs only
on near-ties.

The assignment of N rows to P centroids is `N * P * D` multiply-adds, the
largest part of building a label-space index of many labels. Assigning
through a coarse level instead (each row compared with the centroids of
its few nearest coarse cells only) was measured and dropped: the rows it
misplaces are few but are the ones a MIPS probe needs, and the query's
label sat in its first 8 probed partitions less often (docs/scaling.md,
"Tried for 10^7 and dropped").

Everything is a function of the rows, the count and the generator: the
same call gives the same centroids and assignment on a given device, CPU
instruction set and thread count, whatever the row chunking.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..row_argmax import RowArgmax, screens_in_bf16

Tensor = torch.Tensor


def _scored(centroids: Tensor) -> Tensor:
    """[P, D + 1]: the centroids and -|c|^2 / 2, so that one GEMM against
    rows [v, 1] ranks centroids as -|v - c|^2 / 2 does."""
    c = centroids.to(torch.float32)
    return torch.cat([c, -0.5 * c.pow(2).sum(1, keepdim=True)], 1)


def nearest_centroid(v: Tensor, centroids: Tensor, block: int = 1 << 20, *,
                     bias: Optional[Tensor] = None) -> Tensor:
    """Index of the nearest centroid (L2) of every row of v (of [v, bias]
    where bias [n] is given: label vectors without an [N, d + 1] copy of
    the weights), int64 [n]: the
    best of [v, 1] against [c, -|c|^2/2] (row_argmax.py: exact, or screened
    in bf16 where the CPU has it and P >= 4,096), in row chunks of `block`
    scores (4 MB of fp32: the reductions then read a block still in cache;
    32K-row blocks of 64 MB made it memory-bound, docs/performance.md
    "0.9") but never fewer than 256 rows (a block of 256 x P scores past
    P = 4,096). Ties go to the smaller index; a row's result does not
    depend on the chunk. For the screen, rows and centroids are centred on
    the centroids' mean first (the same distances, smaller terms)."""
    n_all, p = v.shape[0], centroids.shape[0]
    out = torch.empty(n_all, dtype=torch.int64, device=v.device)
    if n_all == 0:
        return out
    c = centroids.to(torch.float32)
    d = v.shape[1]
    if c.shape[1] != d + (bias is not None):
        raise ValueError(f"nearest_centroid: centroids have {c.shape[1]} columns, the rows {d + (bias is not None)}")
    # Centred for the screen only: the exact path keeps exact ties exact.
    mean = c.mean(0) if screens_in_bf16(v.device, p) else None
    table = RowArgmax(_scored(c if mean is None else c - mean))
    chunk = min(n_all, max(256, block // max(1, p)))
    rows = torch.ones(chunk, c.shape[1] + 1, dtype=torch.float32, device=v.device)
    for s in range(0, n_all, chunk):
        n = min(chunk, n_all - s)
        # One pass per column block: the copy, or where the screen centres, the difference.
        if mean is None:
            rows[:n, :d] = v[s : s + n]
        else:
            torch.sub(v[s : s + n], mean[:d], out=rows[:n, :d])
        if bias is not None:
            rows[:n, d] = bias[s : s + n] if mean is None else bias[s : s + n] - mean[d]
        table.best(rows[:n], out=out[s : s + n])
    return out


def _sample(v: Tensor, k: int, sample: int, gen: torch.Generator, bias: Optional[Tensor] = None,
            among: Optional[Tensor] = None) -> Tensor:
    """A seeded sample of at most sample * k rows of v (of [v, bias]; of the
    rows `among` names, int64 [n], only), in row order, float32."""
    n = v.shape[0] if among is None else among.numel()
    pick = torch.randperm(n, generator=gen)[: min(n, max(k, sample * k))].to(v.device).sort().values
    if among is not None:
        pick = among[pick]
    d = v.shape[1]
    rows = torch.empty(pick.numel(), d + (bias is not None), dtype=torch.float32, device=v.device)
    block = 1 << 13  # rows gathered at a time: one copy of the sample, not two
    for s in range(0, pick.numel(), block):
        rows[s : s + block, :d] = v[pick[s : s + block]]
    if bias is not None:
        rows[:, d] = bias[pick]
    return rows


def _split_largest(c: Tensor, counts: Tensor) -> Tensor:
    """Every emptied centroid takes half of the then largest cluster (ties:
    the smaller index): that centroid c becomes c (1 + e s) and c (1 - e s),
    s alternating +-1 over the coordinates, e = 1/1024, so the next
    assignment splits its rows in two. An empty centroid is wasted list
    space, and under L2 the largest clusters of label vectors are where
    short vectors of unrelated directions pile up near the origin, whose
    mean scores low for every query (the MIPS probe misses them); FAISS's
    Clustering splits in the same way. A cluster of identical rows, or one
    centred on the origin, does not split so (its rows stay on one side,
    and the emptied centroid empties again). Returns c, updated in place."""
    empty = torch.nonzero(counts == 0).squeeze(1).tolist()
    if not empty:
        return c
    size = counts.clone()
    sign = torch.ones(c.shape[1], dtype=c.dtype, device=c.device)
    sign[1::2] = -1
    step = sign / 1024
    for e in empty:
        j = int(torch.argmax(size))
        if int(size[j]) < 2:
            break
        base = c[j].clone()
        c[e] = base * (1 + step)
        c[j] = base * (1 - step)
        size[e] = size[j] // 2
        size[j] -= size[e]
    return c


def _lloyd(s: Tensor, k: int, iters: int, gen: torch.Generator, split_empty: bool = True) -> Tensor:
    """Lloyd's k-means of the rows s, seeded by k distinct rows; after each
    update the emptied centroids split the largest clusters
    (_split_largest; split_empty=False keeps them where they were, as
    before 0.9.7: bench/partition_balance.py's baseline)."""
    c = s[torch.randperm(s.shape[0], generator=gen)[:k].to(s.device)].clone()
    for _ in range(iters):
        a = nearest_centroid(s, c)
        counts = torch.bincount(a, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, a, s)
        c = torch.where((counts > 0).unsqueeze(1), sums / counts.clamp(min=1).unsqueeze(1).to(c.dtype), c)
        if split_empty:
            c = _split_largest(c, counts)
    return c


def kmeans(v: Tensor, k: int, *, iters: int, sample: int, gen: torch.Generator, split_empty: bool = True,
           bias: Optional[Tensor] = None, among: Optional[Tensor] = None) -> Tensor:
    """Lloyd's k-means of the rows of v (float32 [n, D]; of [v, bias] where
    bias [n] is given, centroids [k, D + 1]; of the rows `among` names,
    int64 ascending, only: no copy of them first) on a seeded sample
    of at most sample * k rows, seeded by k distinct sample rows. (A smaller
    sample is cheaper but unbalances the clusters, so a query scans more
    rows at the same probes: the development measurement is in
    docs/performance.md, "Measurements moved out of code comments".)"""
    return _lloyd(_sample(v, k, sample, gen, bias, among), k, iters, gen, split_empty)
