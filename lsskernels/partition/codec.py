"""The int8 codec of the partition family, one home: how label rows and
centroids become the codes, scales and biases the quantized kernels read
(csrc/cpu/quantized_candidates_cpu.cpp and its CUDA and Triton twins), the
scan ops that read them, and what a code row costs (bytes_per_row, which the
calibration's cost model prices: lsskernels/partition/calibration.py).

``Int8Codec`` is the codec as one object (``INT8``, the partition index's
codec); a second format (4-bit, say) is one more class with the same
methods and its ops. The free functions are the int8 codec's own steps,
kept as functions for the callers that need one of them alone (the probe's
centroid codes: lsskernels/partition/probe.py).

A row w is coded as round(w * 127 / max|w|) with one float32 scale per row
(w ~ codes * scale); the bias is kept exactly in float32. Codes are padded
to a multiple of CODE_ALIGN with zeros. Everything here is derived from the
weights (no learning): the index re-derives it whenever the weights change.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _checks as checks
from .. import _ops
from ..reference import QUANT_LEVELS

# Label rows encoded together: two float32 [chunk, d] temporaries (the
# gathered rows and the scaled copy), 4 MB each at d = 128, whatever N
# (65,536 rows made them 1.3x a 10^5-label layer's weights).
ENCODE_CHUNK = 1 << 13

Tensor = torch.Tensor


code_width = checks.code_width  # bytes per code row


def encode_rows(weight: Tensor, bias: Optional[Tensor], ids: Tensor, chunk: int = ENCODE_CHUNK,
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
    # max |w| = max(max w, -min w) (NaN if any w is NaN; amax and amin apart
    # are faster than aminmax on CPU) and one [n, d] temporary, rounded and
    # clamped in place: each fresh [n, d] tensor costs more than the
    # arithmetic (docs/performance.md).
    if d:
        amax = torch.maximum(rows.amax(1), rows.amin(1).neg_()).abs_()
    else:
        amax = rows.new_zeros(rows.shape[0])
    inv = torch.where(amax > 0, torch.full_like(amax, QUANT_LEVELS) / amax, torch.zeros_like(amax))
    codes[:, :d] = (rows * inv.unsqueeze(1)).round_().clamp_(-QUANT_LEVELS, QUANT_LEVELS)
    scales.copy_(amax / QUANT_LEVELS)


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


class Int8Codec:
    """Symmetric int8 codes, one float32 scale per row, the bias kept exactly
    in float32 (the module docstring). What the partition index asks of a
    codec: encode rows, the codes' dtype and bytes per row, check stored
    codes, and the scan ops over them (the candidates scan and the fused
    native predict)."""

    name = "int8"
    dtype = torch.int8
    levels = QUANT_LEVELS

    def bytes_per_row(self, code_dim: int) -> int:
        """Bytes of one code row of code_dim dimensions (d rounded up to
        CODE_ALIGN): the width of the codes buffer, and what the cost model
        (calibration.scan_cost / setting_cost) prices per scanned row."""
        return code_width(code_dim)

    def encode(self, weight: Tensor, bias: Optional[Tensor], ids: Tensor, proj: Optional[Tensor] = None,
               chunk: int = ENCODE_CHUNK):
        """(codes, scales, biases) of the labels ids: encode_rows."""
        return encode_rows(weight, bias, ids, chunk, proj)

    def encode_labels(self, weight: Tensor, bias: Optional[Tensor], ids: Tensor, proj: Optional[Tensor] = None,
                      chunk: int = ENCODE_CHUNK):
        """(codes, scales, biases) of the labels ids, each from its own row: encode_labels."""
        return encode_labels(weight, bias, ids, chunk, proj)

    def quantize_into(self, rows: Tensor, codes: Tensor, scales: Tensor) -> None:
        """Code float32 rows into codes / scales in place: quantize_rows_into."""
        quantize_rows_into(rows, codes, scales)

    def check_codes(self, codes: Tensor) -> None:
        """Raise ValueError unless stored codes are in the symmetric range the int8 dots assume."""
        if codes.numel() and int(codes.min()) < -QUANT_LEVELS:
            raise ValueError(f"codes must be in [-{QUANT_LEVELS}, {QUANT_LEVELS}]")

    def scan(self, q: Tensor, probes: Tensor, list_offsets: Tensor, codes: Tensor, code_scales: Tensor,
             code_bias: Tensor, list_ids: Tensor, num_labels: int, max_candidates: int,
             backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """The max_candidates best labels of each query q (as the codes see it)
        by quantized score over its probed lists: _ops.quantized_candidates."""
        return _ops.quantized_candidates(q, probes, list_offsets, codes, code_scales, code_bias, list_ids,
                                         num_labels, max_candidates, backend=backend)

    def has_fused_kernel(self, device_type: str) -> bool:
        """Whether this build has the native kernels fused_predict composes for device_type."""
        return _ops.has_native_kernel("quantized_candidates", device_type)

    @property
    def fused_predict(self):
        """The native op probe -> scan -> exact rerank -> top-k in one call
        (csrc/partition_predict_topk.cpp), for the index's own buffers; in
        eager mode through its unboxed door (_ops.unboxed: a batch-1
        predict pays the call's fixed cost on every query)."""
        if torch.compiler.is_compiling():
            return torch.ops.lsskernels.partition_predict_topk.default
        return _ops.unboxed("partition_predict_topk")


INT8 = Int8Codec()
