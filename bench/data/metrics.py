"""Evaluation metrics of the benchmarks: full dense inference's top-1 and
precision at 1 against single- or multi-label rows."""

from __future__ import annotations

import math

import torch

__all__ = ["dense_top1", "hits_at_1", "dense_precision_at_1"]


@torch.no_grad()
def dense_top1(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    chunk: int = 1024,
    max_tile_elements: int = 1 << 24,
) -> torch.Tensor:
    """``argmax(x @ weight.T + bias, dim=1)`` without materialising ``[n, N]``:
    queries in chunks of ``chunk``, labels in tiles so one block holds at most
    ``max_tile_elements`` logits.  Ties go to the lowest label id."""
    n, num_labels = x.shape[0], weight.shape[0]
    out = torch.empty(n, dtype=torch.int64, device=x.device)
    tile = max(1, max_tile_elements // max(1, chunk))
    for s in range(0, n, chunk):
        xs = x[s : s + chunk]
        best_val = torch.full((xs.shape[0],), -math.inf, dtype=torch.float32, device=x.device)
        best_id = torch.zeros(xs.shape[0], dtype=torch.int64, device=x.device)
        for t in range(0, num_labels, tile):
            logits = xs @ weight[t : t + tile].T
            if bias is not None:
                logits += bias[t : t + tile]
            val, idx = logits.max(dim=1)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_id = torch.where(better, idx + t, best_id)
        out[s : s + chunk] = best_id
    return out


def hits_at_1(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool ``[n]``: is ``pred[i]`` one of row ``i``'s labels (``y`` is
    ``[n]`` or ``[n, m]`` padded with -1)?"""
    pred = pred.to(torch.int64)
    if y.dim() == 1:
        return (pred == y) & (y >= 0)
    return ((y == pred.unsqueeze(1)) & (y >= 0)).any(dim=1)


def dense_precision_at_1(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 1024,
) -> float:
    """P@1 of full dense inference ``argmax(x @ weight.T + bias)`` against
    labels ``y`` (``[n]``, or ``[n, m]`` padded with -1: a hit is any label),
    computed in chunks so memory stays O(chunk * tile)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"dense_precision_at_1: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        return float("nan")
    pred = dense_top1(weight, bias, x, chunk=chunk)
    return hits_at_1(pred, y.to(pred.device)).double().mean().item()
