"""The int8 codec of the partition family, one home: how label rows and
centroids become the codes, scales and biases the quantized kernels read
(csrc/cpu/quantized_candidates_cpu.cpp and its CUDA and Triton twins).

A row w is coded as round(w * 127 / max|w|) with one float32 scale per row
(w ~ codes * scale); the bias is kept exactly in float32. Codes are padded
to a multiple of CODE_ALIGN with zeros. Everything here is derived from the
weights (no learning): the index re-derives it whenever the weights change.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _checks as checks
from ..reference import QUANT_LEVELS

Tensor = torch.Tensor


code_width = checks.code_width  # bytes per code row


def encode_rows(weight: Tensor, bias: Optional[Tensor], ids: Tensor, chunk: int = 1 << 16,
                proj: Optional[Tensor] = None):
    """int8 codes [T, Dp] (Dp = d rounded up to 32, zero tail), scales and
    biases float32 [T] of the labels ids (int64 [T]): w ~ codes * scale.
    With proj ([d, r], non-empty) the coded vectors are proj^T (w - mean w)
    (Dp = r rounded up): the mean shifts every label's score by the same
    <x, mean>, so rankings are those of proj proj^T w. A label listed in
    several partitions (spill) is encoded once and its row copied."""
    if ids.numel() > weight.shape[0] // 2:
        labels, where = torch.unique(ids, return_inverse=True)
        codes, scales, code_bias = encode_labels(weight, bias, labels, chunk, proj)
        return codes[where], scales[where], code_bias[where]
    return encode_labels(weight, bias, ids, chunk, proj)


def quantize_rows_into(rows: Tensor, codes: Tensor, scales: Tensor) -> None:
    """Symmetric int8 codes of float32 rows [n, d], one scale per row (rows ~
    codes * scale), written into codes [n, >= d] (the tail stays as it is) and
    scales [n]."""
    d = rows.shape[1]
    amax = rows.abs().amax(1) if d else rows.new_zeros(rows.shape[0])
    inv = torch.where(amax > 0, torch.full_like(amax, QUANT_LEVELS) / amax, torch.zeros_like(amax))
    codes[:, :d] = torch.round(rows * inv.unsqueeze(1)).clamp(-QUANT_LEVELS, QUANT_LEVELS).to(torch.int8)
    scales.copy_(amax / QUANT_LEVELS)


def probe_codes(centroids: Tensor) -> Tuple[Tensor, Tensor]:
    """The centroids as the probe scores them: int8 codes [P, Dp] (Dp = d
    rounded up to 32) and scales float32 [P] of centroids - their mean. The
    mean shifts every partition's score by the same <x, mean>, so the ranking
    is that of <x, c> + centroid_bias up to int8 rounding, and centering makes
    the codes' rounding small against the differences between partitions."""
    c = centroids.detach().to(torch.float32)
    width = code_width(c.shape[1])
    codes = torch.zeros(c.shape[0], width, dtype=torch.int8, device=c.device)
    scales = torch.empty(c.shape[0], dtype=torch.float32, device=c.device)
    quantize_rows_into(c - c.mean(0), codes, scales)
    return codes, scales


def encode_labels(weight: Tensor, bias: Optional[Tensor], ids: Tensor, chunk: int, proj: Optional[Tensor]):
    """Codes, scales and biases of the labels ids (int64 [T]), each encoded
    from its own row (see encode_rows)."""
    project = proj is not None and proj.numel() > 0
    d = proj.shape[1] if project else weight.shape[1]
    mean = weight.detach().to(torch.float32).mean(0) if project else None
    width = code_width(d)
    codes = torch.zeros(ids.numel(), width, dtype=torch.int8, device=weight.device)
    scales = torch.empty(ids.numel(), dtype=torch.float32, device=weight.device)
    for s in range(0, ids.numel(), chunk):
        w = weight.detach()[ids[s : s + chunk]].to(torch.float32)
        if project:
            w = (w - mean) @ proj
        quantize_rows_into(w, codes[s : s + chunk], scales[s : s + chunk])
    code_bias = (bias.detach()[ids].to(torch.float32) if bias is not None
                 else torch.zeros(ids.numel(), dtype=torch.float32, device=weight.device))
    return codes, scales, code_bias
