"""CSR hash tables: building them from label codes and validating them.

Layout, per table l: bucket c holds items[l, offsets[l, c] : offsets[l, c + 1]],
label ids ascending. offsets is int32 [L, 2^K + 1] starting at 0; items is
int32 [L, T] where T >= offsets[l, -1] for every table, the tail padded with
-1 (tables may differ in size once label-superior insertion puts a label in
several buckets of one table).
"""
from __future__ import annotations

from typing import List, Sequence

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


def tables_from_buckets(bucket_lists: Sequence[Sequence[Tensor]], bits: int, device=None) -> tuple[Tensor, Tensor]:
    """Tables from explicit bucket contents: bucket_lists[l][c] is an int tensor
    of label ids for bucket c of table l (sorted and deduplicated here). Used by
    label-superior insertion, where a label may sit in several buckets."""
    buckets = 1 << bits
    offsets_rows: List[Tensor] = []
    items_rows: List[Tensor] = []
    for table in bucket_lists:
        if len(table) != buckets:
            raise ValueError(f"each table needs 2^bits = {buckets} buckets, got {len(table)}")
        cleaned = [torch.unique(b.to(torch.int64)) for b in table]
        sizes = torch.tensor([c.numel() for c in cleaned], dtype=torch.int64)
        offsets_rows.append(torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)]))
        items_rows.append(torch.cat(cleaned) if cleaned else torch.empty(0, dtype=torch.int64))
    width = max((r.numel() for r in items_rows), default=0)
    items = torch.full((len(items_rows), width), -1, dtype=torch.int32)
    for l, r in enumerate(items_rows):
        items[l, : r.numel()] = r.to(torch.int32)
    offsets = torch.stack(offsets_rows).to(torch.int32) if offsets_rows else torch.zeros(0, buckets + 1, dtype=torch.int32)
    return offsets.to(device), items.to(device)


def bucket_size_stats(offsets: Tensor) -> dict:
    """Mean / max / empty-fraction of bucket sizes, for logs and docs."""
    sizes = (offsets[:, 1:] - offsets[:, :-1]).to(torch.float64)
    return {
        "mean": float(sizes.mean()) if sizes.numel() else 0.0,
        "max": int(sizes.max()) if sizes.numel() else 0,
        "empty_fraction": float((sizes == 0).to(torch.float64).mean()) if sizes.numel() else 0.0,
    }
