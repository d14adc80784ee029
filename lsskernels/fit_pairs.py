"""What every family's fit() shares, one home: the (query, label) pairs
(argument checks, the label matrix, dropping non-finite queries), the
options check, the dense layer's top-k / P@1 on the pairs, whether a label
is among a query's candidates and the label recall of an index, the capped
"best per bucket" selection of label-superior insertion, and the progress
lines fit() prints.

Families' fits (lsskernels/partition/fit.py, lsskernels/simhash/fit.py) import
from here; this module imports no family.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch

from . import _checks as checks
from .row_argmax import RowArgmax

Tensor = torch.Tensor


def labels_matrix(labels: Tensor, n: int, num_labels: int, name: str = "labels") -> Tensor:
    """labels int64/int32 [n] or [n, m] (-1 padded) as int64 [n, m], checked
    (errors call the argument `name`)."""
    checks.tensor(name, labels, None, (torch.int64, torch.int32), "int64 [n] or [n, m] (-1 padded)")
    if labels.dim() not in (1, 2) or labels.shape[0] != n:
        raise ValueError(f"{name} must be [n] or [n, m] with n = queries.shape[0] = {n}, got {tuple(labels.shape)}")
    y = labels.to(torch.int64)
    y = y.unsqueeze(1) if y.dim() == 1 else y
    if y.numel() and (int(y.min()) < -1 or int(y.max()) >= num_labels):
        raise ValueError(f"{name} must be in [0, {num_labels}) or -1 (padding), got min {int(y.min())}, max {int(y.max())}")
    if y.numel() and not bool((y >= 0).any(1).all()):
        raise ValueError(f"every query needs at least one label (a row of {name} is all -1)")
    return y


def fit_options(options_class: type, options: dict, family: str):
    """options_class(**options): the family's fit options, refusing with a
    TypeError any option that is not one of its fields."""
    valid = options_class.__dataclass_fields__
    unknown = set(options) - set(valid)
    if unknown:
        raise TypeError(f"fit() got unknown options {sorted(unknown)} for the {family} family; valid: {sorted(valid)}")
    return options_class(**options)


def fit_pairs(queries: Tensor, labels: Tensor, num_labels: int, dim: int, device,
              labels_name: str = "labels") -> Tuple[Tensor, Tensor]:
    """The checked pairs on device: (queries [n', d], labels int64 [n', m]),
    the pairs whose query has a NaN or infinite entry dropped with a warning
    (one NaN query gives k-means a NaN centroid, which every query then
    probes). Raises ValueError for malformed or empty input."""
    checks.tensor("queries", queries, 2, checks.FLOAT_DTYPES, f"[n, {dim}] floating point")
    if queries.shape[1] != dim:
        raise ValueError(f"queries must be [n, in_features = {dim}], got {tuple(queries.shape)}")
    if queries.shape[0] == 0:
        raise ValueError("queries is empty: fit() needs at least one (query, label) pair")
    queries = queries.to(device)
    y = labels_matrix(labels, queries.shape[0], num_labels, labels_name).to(device)
    # A block of rows at a time: torch.isfinite makes float temporaries of the whole input.
    ok = torch.cat([torch.isfinite(queries[s : s + 8192]).all(1) for s in range(0, queries.shape[0], 8192)])
    dropped = int((~ok).sum())
    if dropped:
        if dropped == queries.shape[0]:
            raise ValueError("queries: every fit query has a NaN or infinite entry")
        warnings.warn(f"fit(): dropped {dropped} of {queries.shape[0]} (query, label) pairs whose query has a NaN "
                      "or infinite entry", RuntimeWarning, stacklevel=4)
        queries, y = queries[ok], y[ok]
    return queries, y


def among_labels(ids: Tensor, y: Tensor) -> Tensor:
    """bool [n, M]: whether each of ids [n, M] (int, -1 padded) is one of its
    row's labels y int64 [n, m] (-1 padded; padding matches nothing)."""
    return ((ids.to(torch.int64).unsqueeze(2) == y.unsqueeze(1)) & (y.unsqueeze(1) >= 0)).any(2)


def labels_found(ids: Tensor, y: Tensor) -> Tensor:
    """bool [n]: whether a label of each row of y [n, m] is among its ids [n, M]
    (a query's candidates, or its top-k)."""
    if ids.shape[1] * y.shape[1] <= 64:
        return among_labels(ids, y).any(1)
    # Each id looked up in its row's sorted labels: O(n (M log m + m log m))
    # instead of the [n, M, m] comparison (a calibration's M = 256
    # candidates against WordNet's up to 28 labels per query); sorting the
    # few labels, not the M ids. Padding (-1) sorts first and never matches
    # an id >= 0; a padded id (-1) is masked.
    ids = ids.to(torch.int64)
    s = y.sort(1).values
    at = torch.searchsorted(s, ids).clamp_(max=s.shape[1] - 1)
    return ((s.gather(1, at) == ids) & (ids >= 0)).any(1)


@torch.no_grad()
def label_recall(candidates: Callable[[Tensor], Tuple[Tensor, Tensor]], queries: Tensor, y: Tensor,
                 batch: int = 1024) -> Tuple[float, float]:
    """(fraction of queries with a label among their candidates, mean
    candidates per query). candidates(x) -> (ids [b, M], counts [b]) for a
    batch of the queries (LSSLinear.candidates, or an index's with its budget)."""
    hits, cands = 0, 0.0
    for start in range(0, queries.shape[0], batch):
        ids, counts = candidates(queries[start : start + batch])
        hits += int(labels_found(ids, y[start : start + batch]).sum())
        cands += float(counts.to(torch.float64).sum())
    n = max(1, queries.shape[0])
    return hits / n, cands / n


# Labels per block of dense logits: a [chunk, N] block would be 10 GB at
# N = 10^7 and chunk = 256. A block of 2^14 labels holds its table (fp32
# and bf16, 13 MB at d = 128) and a [256, 2^14] score block (8 MB in bf16)
# whatever N; 2^16 held ~1.7x a 10^5-label layer's weights in fit().
LABEL_BLOCK = 1 << 14


def _label_blocks(weight: Tensor, bias: Optional[Tensor]):
    for j in range(0, weight.shape[0], LABEL_BLOCK):
        yield j, weight[j : j + LABEL_BLOCK], None if bias is None else bias[j : j + LABEL_BLOCK]


@torch.no_grad()
def dense_topk(weight: Tensor, bias: Optional[Tensor], queries: Tensor, k: int, chunk: int = 256) -> Tensor:
    """The full dense layer's top-k labels for each query, int64 [n, k], in
    chunks of queries and blocks of labels (LABEL_BLOCK)."""
    out = torch.empty(queries.shape[0], k, dtype=torch.int64, device=queries.device)
    for s in range(0, queries.shape[0], chunk):
        xq = queries[s : s + chunk].to(weight.dtype)
        best_v = best_i = None
        for j, w, b in _label_blocks(weight, bias):  # one block (a plain top-k) up to LABEL_BLOCK labels
            v, i = torch.topk(torch.nn.functional.linear(xq, w, b), min(k, w.shape[0]) if j else k, dim=1)
            i += j
            if best_v is not None:
                v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
                v, pick = torch.topk(v, k, dim=1)
                i = i.gather(1, pick)
            best_v, best_i = v, i
        out[s : s + chunk] = best_i
    return out


@torch.no_grad()
def dense_top1(weight: Tensor, bias: Optional[Tensor], queries: Tensor, chunk: int = 256, *,
               screen: Optional[bool] = None) -> Tensor:
    """The full dense layer's argmax label for each query, int64 [n]
    (ties: the smaller label, as argmax), in chunks of queries and blocks of
    labels (LABEL_BLOCK). A float32 weight goes through RowArgmax, screen
    as RowArgmax takes it: None (default) a bf16 screen with fp32
    rescoring where row_argmax.screens_in_bf16 (the calibration's dense
    top-1 was most of its time at 10^7 labels), else exact; False always
    exact (a report's reference); other dtypes through F.linear in their
    own precision."""
    out = torch.empty(queries.shape[0], dtype=torch.int64, device=queries.device)
    if weight.dtype != torch.float32:
        return _dense_top1_linear(weight, bias, queries, chunk, out)
    # Label blocks outside, queries inside: one block's tables at a time.
    rows = torch.cat([queries.to(torch.float32), queries.new_ones(queries.shape[0], 1, dtype=torch.float32)], 1)
    best_v = torch.empty(queries.shape[0], dtype=torch.float32, device=queries.device)
    for j, w, b in _label_blocks(weight, bias):
        table = RowArgmax(w.detach(), screen=screen, bias=b.detach() if b is not None else w.new_zeros(w.shape[0]))
        for s in range(0, queries.shape[0], chunk):
            v, i = table.best(rows[s : s + chunk])
            if j == 0:
                best_v[s : s + chunk], out[s : s + chunk] = v, i
            else:
                better = v > best_v[s : s + chunk]  # strict: a tie keeps the earlier block's smaller label
                best_v[s : s + chunk] = torch.where(better, v, best_v[s : s + chunk])
                out[s : s + chunk] = torch.where(better, i + j, out[s : s + chunk])
    return out


def _dense_top1_linear(weight: Tensor, bias: Optional[Tensor], queries: Tensor, chunk: int, out: Tensor) -> Tensor:
    for s in range(0, queries.shape[0], chunk):
        xq = queries[s : s + chunk].to(weight.dtype)
        best_v = best_i = None
        for j, w, b in _label_blocks(weight, bias):
            logits = torch.nn.functional.linear(xq, w, b)
            i = logits.argmax(1)
            v = logits.gather(1, i.unsqueeze(1)).squeeze(1)
            i += j
            if best_v is None:
                best_v, best_i = v, i
            else:
                better = v > best_v  # strict: a tie keeps the earlier block's smaller label
                best_v, best_i = torch.where(better, v, best_v), torch.where(better, i, best_i)
        out[s : s + chunk] = best_i
    return out


@torch.no_grad()
def dense_hits(weight: Tensor, bias: Optional[Tensor], queries: Tensor, y: Tensor, chunk: int = 256) -> Tensor:
    """bool [n]: whether the full dense layer's top-1 is one of each pair's labels."""
    top = dense_top1(weight, bias, queries, chunk)
    return (top.unsqueeze(1) == y).any(1)


def dense_precision(weight: Tensor, bias: Optional[Tensor], queries: Tensor, y: Tensor, chunk: int = 256) -> float:
    """P@1 of the full dense layer on the pairs."""
    return float(dense_hits(weight, bias, queries, y, chunk).double().mean()) if queries.shape[0] else 0.0


def best_per_group(group: Tensor, score: Tensor, num_groups: int, cap: int) -> Tensor:
    """Which entries to keep when each group (a bucket, a partition) keeps at
    most cap: its best by score, ties to the earlier entry. group int64 [T]
    in [0, num_groups), score [T]. Returns the kept entries' positions,
    int64, ordered by (group, score desc, position). Label-superior
    insertion's cap: entries made by torch.unique of (group, label) keys
    come sorted by (group, label), so ties go to the smaller label."""
    # A stable sort by score, then a stable sort by group, gives
    # (group, score desc, position).
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    g = group[order]
    counts = torch.bincount(g, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - starts[g]
    return order[rank < cap]


def fit_logger(enabled: bool):
    """The one progress logger of every fit: log(text) prints
    f"LSS fit: {text}" when enabled (the fit options' progress field)."""
    def log(text: str) -> None:
        if enabled:
            print(f"LSS fit: {text}", flush=True)

    return log
