"""The (query, label) pairs every family's fit() learns from, one home:
argument checks, the label matrix, dropping non-finite queries, the dense
layer's P@1 on them, and the progress line fit() prints.

Families' fits (lsskernels/partition/fit.py, lsskernels/training.py) import
from here; this module imports no family.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch

from . import _checks as checks

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
    ok = torch.isfinite(queries).all(1)
    dropped = int((~ok).sum())
    if dropped:
        if dropped == queries.shape[0]:
            raise ValueError("queries: every fit query has a NaN or infinite entry")
        warnings.warn(f"fit(): dropped {dropped} of {queries.shape[0]} (query, label) pairs whose query has a NaN "
                      "or infinite entry", RuntimeWarning, stacklevel=4)
        queries, y = queries[ok], y[ok]
    return queries, y


@torch.no_grad()
def dense_hits(weight: Tensor, bias: Optional[Tensor], queries: Tensor, y: Tensor, chunk: int = 256) -> Tensor:
    """bool [n]: whether the full dense layer's top-1 is one of each pair's labels."""
    out = torch.empty(queries.shape[0], dtype=torch.bool, device=queries.device)
    for s in range(0, queries.shape[0], chunk):
        top = torch.nn.functional.linear(queries[s : s + chunk].to(weight.dtype), weight, bias).argmax(1)
        out[s : s + chunk] = (top.unsqueeze(1) == y[s : s + chunk]).any(1)
    return out


def dense_precision(weight: Tensor, bias: Optional[Tensor], queries: Tensor, y: Tensor, chunk: int = 256) -> float:
    """P@1 of the full dense layer on the pairs."""
    return float(dense_hits(weight, bias, queries, y, chunk).double().mean()) if queries.shape[0] else 0.0


def fit_logger(enabled: bool):
    """print(f"LSS fit: {text}") when enabled (PartitionFitConfig / FitConfig progress)."""
    def log(text: str) -> None:
        if enabled:
            print(f"LSS fit: {text}", flush=True)

    return log
