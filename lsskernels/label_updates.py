"""Labels added and removed without a rebuild (LSSLinear.add_labels /
remove_labels), for the partition family.

* **Add**: each new label goes to its own partition as a rebuild would
  place it (label space: the nearest centroid of [w, b]; query space: the
  partition where its logit stands out, label_homes), with its int8 code;
  the optional (query, label) pairs spill it into the first
  `index.spill_probes` partitions its queries probe, as wide as fit()
  spilled the lists (none where the fit kept no spill). Only the new rows are
  encoded; the lists are merged (O(T) memory moves, no k-means). Under a
  code projection the codes are centred on the mean label, which the new
  rows move: every row is re-encoded then (O(T d), still no k-means).
* **Remove**: every list entry of the labels goes at once (O(T)), so no
  tombstone is ever scanned; the label ids stay (their rows stay in the
  weight, masked): ids the caller holds keep their meaning. compact()
  drops the rows and renumbers, when the caller asks.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _checks as checks
from .fit_pairs import fit_pairs, labels_matrix
from .partition.fit import label_homes
from .partition.kmeans import nearest_centroid
from .partition.index import PartitionIndex
from .reference import augmented_labels

Tensor = torch.Tensor


def keeps_lists(index) -> bool:
    """Whether index is of the family that keeps label lists (the
    partitions family): the one that can add, drop and renumber labels."""
    return hasattr(index, "drop_labels")


def require_lists(index, what: str) -> None:
    """Refuse `what` (add_labels, remove_labels, compact: "what()") with a
    TypeError unless index is of the family that keeps label lists (the
    partitions family); LSSLinear and ShardedLSSLinear alike."""
    if not keeps_lists(index):
        raise TypeError(f"{what}() needs the partitions family; this layer's index is {index.family!r}")


def check_new_labels(weight: Tensor, bias: Optional[Tensor], queries: Optional[Tensor],
                     query_labels: Optional[Tensor], *, dim: int, has_bias: bool, num_labels: int, device):
    """The checks of add_labels' arguments (LSSLinear and ShardedLSSLinear
    alike): returns (n, queries, query_labels) with the pairs checked and
    their non-finite queries dropped (fit_pairs), or (n, None, None)."""
    checks.tensor("weight", weight, 2, checks.FLOAT_DTYPES, f"[n, in_features = {dim}] floating point")
    if weight.shape[1] != dim or weight.shape[0] < 1:
        raise ValueError(f"weight must be [n >= 1, in_features = {dim}], got {tuple(weight.shape)}")
    n = weight.shape[0]
    if bias is not None:
        if not has_bias:
            raise ValueError("bias given, but the layer has no bias")
        checks.tensor("bias", bias, 1, checks.FLOAT_DTYPES, f"[n = {n}] floating point")
        if bias.shape[0] != n:
            raise ValueError(f"bias must be [n = {n}], got {tuple(bias.shape)}")
    if (queries is None) != (query_labels is None):
        raise ValueError("queries and query_labels go together: give both or neither")
    if not bool(torch.isfinite(weight).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
        raise ValueError("weight and bias of the added labels must be finite")
    if num_labels + n > 2**31 - 1:
        raise ValueError(f"at most 2^31 - 1 labels; {num_labels} + {n} is more")
    if queries is not None:
        queries, query_labels = fit_pairs(queries, query_labels, n, dim, device, "query_labels")
    return n, queries, query_labels


@torch.no_grad()
def add_to_index(index: PartitionIndex, weight: Tensor, bias: Optional[Tensor], first: int,
                 queries: Optional[Tensor], query_labels: Optional[Tensor]) -> int:
    """List labels first .. N-1 of (weight, bias) (the grown layer's) in the
    index; returns the spilled entries added. query_labels index the new
    rows (0 = label `first`), int64 [n] or [n, m] padded with -1; they
    spill index.spill_probes wide (0: not at all)."""
    n_all = weight.shape[0]
    new = torch.arange(first, n_all, device=weight.device)
    if index.space == "labels":
        c = torch.cat([index.centroids, index.centroid_bias.unsqueeze(1)], 1)
        home = nearest_centroid(augmented_labels(weight[first:], bias[first:] if bias is not None else None), c)
    else:
        home = label_homes(weight, bias, index.centroids, rows=new)
    part, label = home, new
    spilled = 0
    if queries is not None and index.spill_probes > 0:
        local = labels_matrix(query_labels, queries.shape[0], n_all - first).to(weight.device)
        y = torch.where(local >= 0, local + first, -1)
        width = min(index.spill_probes, index.num_partitions)
        probes = index.probe(queries.to(weight.device).to(torch.float32), width).to(torch.int64)  # [n, s]
        p = probes.unsqueeze(2).expand(-1, -1, y.shape[1])
        lab = y.unsqueeze(1).expand_as(p)
        valid = lab >= 0
        p, lab = p[valid], lab[valid]
        keep = home[lab - first] != p
        key = torch.unique(p[keep] * n_all + lab[keep])
        sp, sl = key // n_all, key % n_all
        part, label = torch.cat([part, sp]), torch.cat([label, sl])
        spilled = int(sp.numel())
    if index.code_proj.numel():
        # Projected codes are centred on the mean label: re-encode every row.
        index.add_rows(part, label, *index.codec.encode(weight, bias, label, proj=index.code_proj), num_labels=n_all)
        index.sync(weight, bias)
        return spilled
    index.add_rows(part, label, *index.codec.encode(weight, bias, label), num_labels=n_all)
    return spilled
