"""CSR hash tables: building them from label codes and validating them.

Layout, per table l: bucket c holds items[l, offsets[l, c] : offsets[l, c + 1]],
label ids ascending. offsets is int32 [L, 2^K + 1] starting at 0; items is
int32 [L, T] where T >= offsets[l, -1] for every table, the tail padded with
-1 (tables may differ in size once label-superior insertion puts a label in
several buckets of one table).
"""
from __future__ import annotations

import torch

from .. import _checks as checks
from .. import _ops

Tensor = torch.Tensor


def validate_tables(offsets: Tensor, items: Tensor, num_labels: int, bits: int | None = None) -> None:
    """Raise ValueError unless (offsets, items) are well-formed tables over
    num_labels labels: what a loaded state_dict must satisfy before any
    kernel reads it."""
    checks.tensor("offsets", offsets, 2, (torch.int32,), "int32 [L, 2^K + 1]")
    checks.tensor("items", items, 2, (torch.int32,), "int32 [L, T]")
    num_tables, width = offsets.shape
    buckets = width - 1
    if buckets < 2 or buckets & (buckets - 1) or buckets > 1 << checks.MAX_BITS:
        raise ValueError(f"offsets must be [L, 2^K + 1] with 1 <= K <= {checks.MAX_BITS}, got {tuple(offsets.shape)}")
    if bits is not None and buckets != 1 << bits:
        raise ValueError(f"offsets must be [L, 2^{bits} + 1] for bits={bits}, got {tuple(offsets.shape)}")
    if items.shape[0] != num_tables:
        raise ValueError(f"items must be [L, T] with L = {num_tables}, got {tuple(items.shape)}")
    off = offsets.to(torch.int64)
    if num_tables and bool((off[:, 0] != 0).any()):
        raise ValueError("offsets[:, 0] must be 0")
    if bool((off[:, 1:] < off[:, :-1]).any()):
        raise ValueError("offsets must be non-decreasing along each table")
    if num_tables and int(off[:, -1].max()) > items.shape[1]:
        raise ValueError(f"offsets[:, -1] (items per table) must be <= items.shape[1] = {items.shape[1]}, "
                         f"got {int(off[:, -1].max())}")
    used = torch.arange(items.shape[1], device=items.device).unsqueeze(0) < off[:, -1:].to(items.device)
    it = items.to(torch.int64)
    if bool(((it < 0) | (it >= num_labels))[used].any()):
        raise ValueError(f"items must be label ids in [0, num_labels = {num_labels}) within each table's used range")


def build_label_tables(codes: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Tables holding each label once per table, in the bucket of its code."""
    return _ops.build_tables(codes, bits)


def bucket_size_stats(offsets: Tensor) -> dict:
    """Mean / max / empty-fraction of bucket sizes, for logs and docs."""
    sizes = (offsets[:, 1:] - offsets[:, :-1]).to(torch.float64)
    return {
        "mean": float(sizes.mean()) if sizes.numel() else 0.0,
        "max": int(sizes.max()) if sizes.numel() else 0,
        "empty_fraction": float((sizes == 0).to(torch.float64).mean()) if sizes.numel() else 0.0,
    }
