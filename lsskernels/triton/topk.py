"""topk_gathered and topk_packed: per-row top-k of candidate logits with the
contract's order (larger score first, NaN above every number, ties by smaller
label; -inf / -1 where a row has fewer than k candidates).

Kernel (fp16 / bf16 / fp32 scores, rows of at most TOPK_MAX_BLOCK = 4096)
-------------------------------------------------------------------------
One program per row (grid (B,)). Each candidate becomes one int64 key whose
ascending order is the contract's order:
    key = desc(score) << 31 | label          (label < 2^31)
where desc() maps the fp32 score (16-bit scores are widened exactly) to a
uint32 that decreases as the score increases: the usual sign-flip trick on
the IEEE bits, with every NaN mapped to the top (key 0) and -0.0 mapped to
+0.0 so that zeros tie and fall back to the label. Padding gets INT64_MAX.
tl.topk keeps the KP = min(next_pow2(k), BLOCK) smallest keys, already
sorted; scores and labels are decoded back from the keys (the map is a
bijection on the scores it keeps, so the scores come back bit-exact, except
that -0.0 comes back as +0.0 and NaN payloads are canonical).
topk_packed first decodes the label of every packed value with
bitmap_decode_kernel (see bitmap_sparse_matmul.py) and then runs the same kernel on
the ragged rows given by row_ptr.

Fallback (float64 scores, or rows longer than TOPK_MAX_BLOCK)
-------------------------------------------------------------
A composition of torch ops, exact by construction: padding gets score -inf
and label INT64_MAX, a stable sort by label, then a stable descending sort
by score (torch.sort ranks NaN above every number and keeps ties, -0.0 and
+0.0 included, in label order), then the first k columns.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .bitmap_sparse_matmul import BLOCK_N, decode_op, row_layout
from ._common import clamp_block, define_op, launch

Tensor = torch.Tensor

#: Widest row the kernel sorts in registers; wider rows use the torch fallback.
TOPK_MAX_BLOCK = 4096
_KEY_NONE = tl.constexpr(9223372036854775807)  # after every candidate key
_LABEL_NONE = torch.iinfo(torch.int64).max


@triton.jit
def topk_rows_kernel(scores_ptr, labels_ptr, row_ptr_ptr, out_scores_ptr, out_labels_ptr, M, k,
                     PACKED: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, PAD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    if PACKED:
        start = tl.load(row_ptr_ptr + b)
        width = tl.load(row_ptr_ptr + b + 1) - start
    else:
        start = b * M
        width = M + b * 0
    r = tl.arange(0, BLOCK)
    m = r < width
    s = tl.load(scores_ptr + start + r, mask=m, other=0.0).to(tl.float32)
    lab = tl.load(labels_ptr + start + r, mask=m, other=-1)
    valid = m & (lab >= 0)
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 ties with +0.0
    u = s.to(tl.uint32, bitcast=True)
    ordered = tl.where((u >> 31) != 0, ~u, u | 0x80000000)  # ascending in the score
    ordered = tl.where(s != s, 0xFFFFFFFF, ordered)  # NaN above everything
    desc = (~ordered).to(tl.int64)
    key = tl.where(valid, (desc << 31) | lab.to(tl.int64), _KEY_NONE)
    top = tl.topk(key, KP, descending=False)
    found = top != _KEY_NONE
    out_label = tl.where(found, top & 0x7FFFFFFF, -1)
    ordered = ~((top >> 31).to(tl.uint32))
    bits = tl.where((ordered >> 31) != 0, ordered & 0x7FFFFFFF, ~ordered)
    score = tl.where(found, bits.to(tl.float32, bitcast=True), float("-inf"))
    rk = tl.arange(0, KP)
    tl.store(out_scores_ptr + b * k + rk, score.to(out_scores_ptr.dtype.element_ty), mask=rk < k)
    tl.store(out_labels_ptr + b * k + rk, out_label, mask=rk < k)
    for k0 in range(KP, k, PAD):  # k beyond the block: fill only
        rp = k0 + tl.arange(0, PAD)
        tl.store(out_scores_ptr + b * k + rp,
                 tl.full([PAD], float("-inf"), dtype=tl.float32).to(out_scores_ptr.dtype.element_ty), mask=rp < k)
        tl.store(out_labels_ptr + b * k + rp, tl.full([PAD], -1, dtype=tl.int64), mask=rp < k)


def _warps(block: int) -> int:
    # as in bucket_lookup.py: more warps for bigger blocks
    return 4 if block <= 256 else (8 if block <= 1024 else 16)


def _topk_rows(scores: Tensor, labels: Tensor, row_ptr: Tensor, rows: int, k: int, width: int,
               packed: bool) -> Tuple[Tensor, Tensor]:
    scores, labels, row_ptr = scores.contiguous(), labels.contiguous(), row_ptr.contiguous()
    block = clamp_block(width, 16, TOPK_MAX_BLOCK)
    out_scores = torch.empty((rows, k), dtype=scores.dtype, device=scores.device)
    out_labels = torch.empty((rows, k), dtype=torch.int64, device=scores.device)
    m = 0 if packed else scores.shape[1]
    launch(topk_rows_kernel, (rows,), scores, labels, row_ptr, out_scores, out_labels, m, k,
           PACKED=packed, BLOCK=block, KP=min(clamp_block(k, 1, TOPK_MAX_BLOCK), block), PAD=128,
           num_warps=_warps(block))
    return out_scores, out_labels


topk_rows_op = define_op("topk_rows", _topk_rows)


def topk_rows_torch(scores: Tensor, labels: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The fallback: scores [B, M], labels int64 [B, M] (-1 = padding)."""
    batch, width = scores.shape
    valid = labels >= 0
    lab = torch.where(valid, labels.to(torch.int64), _LABEL_NONE)
    s = torch.where(valid, scores, torch.full_like(scores, float("-inf")))
    order = torch.sort(lab, dim=1, stable=True).indices
    s, lab = s.gather(1, order), lab.gather(1, order)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    s, lab = s.gather(1, order), lab.gather(1, order)
    n = min(k, width)
    out_scores = torch.full((batch, k), float("-inf"), dtype=scores.dtype, device=scores.device)
    out_labels = torch.full((batch, k), -1, dtype=torch.int64, device=scores.device)
    out_scores[:, :n] = s[:, :n]
    out_labels[:, :n] = torch.where(lab[:, :n] == _LABEL_NONE, -1, lab[:, :n])
    return out_scores, out_labels


def _use_kernel(dtype: torch.dtype, width: int) -> bool:
    return dtype != torch.float64 and width <= TOPK_MAX_BLOCK


def topk_gathered(logits: Tensor, ids: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """(scores [B, k] in logits' dtype, labels int64 [B, k])."""
    batch, width = logits.shape
    ids = ids.to(torch.int32)
    if batch == 0 or not _use_kernel(logits.dtype, width):
        return topk_rows_torch(logits, ids, k)
    return topk_rows_op(logits, ids, ids.new_zeros((1,), dtype=torch.int64), batch, k, width, False)


def topk_packed(values: Tensor, row_ptr: Tensor, bitmap: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Top-k per row of bitmap_sparse_matmul's packed output."""
    batch, words = bitmap.shape
    num_labels = words * 32
    if num_labels >= 2**31:
        raise ValueError(f"topk_packed: bitmap rows cover {num_labels} labels, at most 2^31 - 1 supported")
    block_n = BLOCK_N
    _, tile_prefix, own_row_ptr = row_layout(bitmap, num_labels, block_n)
    if own_row_ptr[-1].item() != values.numel() or not torch.equal(own_row_ptr, row_ptr.to(torch.int64)):
        raise ValueError("topk_packed: row_ptr does not match the bitmap's row popcounts "
                         f"(or values.numel() = {values.numel()} is not the bitmap's popcount)")
    nnz = values.numel()
    cols = decode_op(bitmap, own_row_ptr, tile_prefix, num_labels, nnz, block_n)
    width = int((own_row_ptr[1:] - own_row_ptr[:-1]).max()) if batch else 0
    if batch and _use_kernel(values.dtype, width):
        return topk_rows_op(values, cols, own_row_ptr, batch, k, width, True)
    # fallback: ragged rows padded into [B, width]
    counts = own_row_ptr[1:] - own_row_ptr[:-1]
    rows = torch.repeat_interleave(torch.arange(batch, device=values.device), counts, output_size=nnz)
    pos = torch.arange(nnz, device=values.device) - own_row_ptr[:-1][rows]
    scores = torch.full((batch, max(width, 1)), float("-inf"), dtype=values.dtype, device=values.device)
    labels = torch.full((batch, max(width, 1)), -1, dtype=torch.int64, device=values.device)
    scores[rows, pos] = values
    labels[rows, pos] = cols.to(torch.int64)
    return topk_rows_torch(scores, labels, k)


def aot_specs():
    specs = []
    for dt, block, packed in (("fp16", 256, False), ("bf16", 256, True), ("fp32", 1024, True),
                              ("fp32", 4096, False)):
        specs.append(dict(
            kernel=topk_rows_kernel, name=f"topk_rows[{dt},{'packed' if packed else 'gathered'},{block}]",
            tensor_cores=False,
            signature={"scores_ptr": f"*{dt}", "labels_ptr": "*i32", "row_ptr_ptr": "*i64",
                       "out_scores_ptr": f"*{dt}", "out_labels_ptr": "*i64", "M": "i32", "k": "i32"},
            constexprs=dict(PACKED=packed, BLOCK=block, KP=16, PAD=128), num_warps=_warps(block)))
    return specs
