"""quantized_candidates: the max_candidates best labels of each query by int8
quantized score over the partitions it probes, bit-exact with
lsskernels.reference.quantized_candidates: ids int32 [B, M] (-1 padded;
score desc, then id asc, NaN counting as -inf; a label listed in several
probed partitions counts once, with its best score) and counts int32 [B].

Partition p holds rows t in [list_offsets[p], list_offsets[p + 1]) of codes
int8 [T, Dp] (Dp a multiple of 32, >= d), code_scales / code_bias float32
[T] and list_ids int32 [T]. The score of row t for query b is, in float32
and in this order,

    (float(sum_j q[b, j] * codes[t, j]) * scale_q[b]) * code_scales[t] + code_bias[t]

Kernels (Triton)
----------------
quantize_queries_kernel (grid (B,)): reference.quantize_queries, the same
    fp32 operations: amax = max |x| (NaN if the row holds one), scale = amax
    / 127 and inv = 127 / amax (correctly rounded divisions, div_rn),
    q = round-half-even(clamp(x * inv, -127, 127)) with NaN products -> 0
    (clamping before rounding is the same as after; rounding is libdevice
    rint on a GPU, and adding and subtracting 1.5 * 2^23 under the
    interpreter, both exact half-even rounding for |v| <= 127). q is
    written as int8 [B, Dp], zero past d, so the dot below may run over all
    of Dp and ignore whatever codes hold there.
quantized_scores_kernel (grid (B, nprobe)): program (b, j) walks partition
    probes[b, j] (nothing for -1) in [BLOCK_R, BLOCK_D] tiles of codes,
    accumulating the integer dot with q[b] exactly in int32 (elementwise
    int32 products, tl.sum; exact whatever the order, |sum| <= 127^2 Dp <
    2^31 for Dp <= 133,120), then the score with explicitly rounded fp32
    multiplies and add (inline PTX mul.rn.f32 / add.rn.f32 on a GPU: never
    contracted into an FMA, subnormals kept; plain fp32 numpy ops under the
    interpreter), and stores score and list_ids[t] at its slot in flat
    [total] buffers: query b's pairs are contiguous, slot (b, j) starting at
    the exclusive prefix sum of the probed partition sizes. (tl.dot on int8
    does not fit here: each program has one query vector.)

Selection and dedupe: torch ops on the device, after the kernels
----------------------------------------------------------------
The flat (query, label, score) triples are canonicalised (NaN -> -inf,
-0.0 -> +0.0: equal to their replacements in the order), reduced to one
entry per (query, label) with torch.unique + scatter_reduce("amax") (the
best score; exact, order-independent), ordered (query, score desc, label
asc) by two stable sorts of the unique entries (already in (query, label)
order), ranked within each query, and the first M per query are scattered
into the -1-filled ids. Syncs: one for the total size of the flat buffers,
one for the structural checks and one inside torch.unique.

Preconditions are checked before anything is read (ValueError): probes in
[-1, P), list_offsets non-negative, non-decreasing and <= T, and (after the
scoring kernel) every list_ids entry of a probed row in [0, num_labels).
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._common import INTERPRET, cdiv, clamp_block, define_op, launch

Tensor = torch.Tensor

from .._checks import CODE_ALIGN, QUANT_LEVELS  # noqa: E402  (defined once, in csrc/include/lss/common.h)
#: Largest Dp whose int32 dot cannot overflow: 127 * 127 * Dp < 2^31.
MAX_CODE_WIDTH = ((2**31 - 1) // (QUANT_LEVELS * QUANT_LEVELS)) // CODE_ALIGN * CODE_ALIGN
_ROUND = tl.constexpr(12582912.0)  # 1.5 * 2^23: (v + R) - R rounds v half-even to an integer, |v| < 2^22


# fp32 multiply and add, each rounded on its own: PTX mul.rn / add.rn (an
# explicit rounding modifier forbids ptxas to contract them into an fma, and
# no .ftz: subnormals are kept, as on the CPU). libdevice's mul_rn / add_rn
# would not do: Triton links libdevice with flush-to-zero on (mul.rn.ftz).
# Under the interpreter, plain numpy float32 operations (never fused).
@triton.jit
def _mul_rn(a, b, PTX: tl.constexpr):
    if PTX:
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return a * b


@triton.jit
def _add_rn(a, b, PTX: tl.constexpr):
    if PTX:
        return tl.inline_asm_elementwise("add.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return a + b


@triton.jit
def _rint(v, PTX: tl.constexpr):
    """Round half to even (v finite, |v| <= 127): cvt.rni on a GPU."""
    if PTX:
        return libdevice.rint(v)
    else:
        return (v + _ROUND) - _ROUND


@triton.jit
def quantize_queries_kernel(x_ptr, q_ptr, scale_ptr, d, Dp, PTX: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    amax = tl.zeros([], dtype=tl.float32)
    nan = tl.zeros([], dtype=tl.int32)
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        v = tl.load(x_ptr + b * d + rd, mask=rd < d, other=0.0).to(tl.float32)
        a = tl.abs(v)
        nan = tl.maximum(nan, tl.max((a != a).to(tl.int32), axis=0))
        amax = tl.maximum(amax, tl.max(tl.where(a != a, 0.0, a), axis=0))
    amax = tl.where(nan != 0, float("nan"), amax)
    levels = tl.full([], 127.0, tl.float32)
    scale = tl.math.div_rn(amax, levels)
    inv = tl.where(amax > 0.0, tl.math.div_rn(levels, tl.where(amax > 0.0, amax, 1.0)), 0.0)
    for d0 in range(0, Dp, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        v = tl.load(x_ptr + b * d + rd, mask=rd < d, other=0.0).to(tl.float32)
        s = v * inv
        s = tl.where(s != s, 0.0, s)
        s = tl.minimum(tl.maximum(s, -127.0), 127.0)
        r = _rint(s, PTX)
        tl.store(q_ptr + b * Dp + rd, r.to(tl.int8), mask=rd < Dp)
    tl.store(scale_ptr + b, scale)


@triton.jit
def quantized_scores_kernel(q_ptr, scale_ptr, probes_ptr, offsets_ptr, codes_ptr, cs_ptr, cb_ptr, ids_ptr,
                            slot_ptr, scores_ptr, labels_ptr, nprobe, Dp,
                            PTX: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1).to(tl.int64)
    p = tl.load(probes_ptr + b * nprobe + j).to(tl.int64)
    # (checked by the host: probes in [-1, P), offsets monotone and <= T)
    begin = tl.load(offsets_ptr + tl.where(p >= 0, p, 0)).to(tl.int64)
    end = tl.load(offsets_ptr + tl.where(p >= 0, p, 0) + 1).to(tl.int64)
    end = tl.where(p >= 0, end, begin)
    dst = tl.load(slot_ptr + b * nprobe + j) - begin
    scale = tl.load(scale_ptr + b)
    for r0 in range(begin, end, BLOCK_R):
        rr = r0 + tl.arange(0, BLOCK_R)
        r_mask = rr < end
        acc = tl.zeros([BLOCK_R], dtype=tl.int32)
        for d0 in range(0, Dp, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            d_mask = rd < Dp
            qv = tl.load(q_ptr + b * Dp + rd, mask=d_mask, other=0).to(tl.int32)
            ct = tl.load(codes_ptr + rr[:, None] * Dp + rd[None, :], mask=r_mask[:, None] & d_mask[None, :], other=0)
            acc += tl.sum(ct.to(tl.int32) * qv[None, :], axis=1)
        cs = tl.load(cs_ptr + rr, mask=r_mask, other=0.0)
        cb = tl.load(cb_ptr + rr, mask=r_mask, other=0.0)
        score = _add_rn(_mul_rn(_mul_rn(acc.to(tl.float32), scale, PTX), cs, PTX), cb, PTX)
        label = tl.load(ids_ptr + rr, mask=r_mask, other=-1)
        tl.store(scores_ptr + dst + rr, score, mask=r_mask)
        tl.store(labels_ptr + dst + rr, label, mask=r_mask)


def _quantize_blocks() -> dict:
    return dict(BLOCK_D=32 if INTERPRET else 256)


def _score_blocks() -> dict:
    return dict(BLOCK_R=16, BLOCK_D=32) if INTERPRET else dict(BLOCK_R=32, BLOCK_D=128)


def _quantize_queries(x: Tensor, width: int) -> Tuple[Tensor, Tensor]:
    """(q int8 [B, width], zero past d; scale float32 [B])."""
    if INTERPRET and x.dtype == torch.bfloat16:
        # The interpreter widens bfloat16 subnormals wrongly (a GPU's
        # conversion is an exact shift): widen them with torch instead.
        x = x.to(torch.float32)
    x = x.contiguous()
    batch, d = x.shape
    q = torch.empty((batch, width), dtype=torch.int8, device=x.device)
    scale = torch.empty((batch,), dtype=torch.float32, device=x.device)
    launch(quantize_queries_kernel, (batch,), x, q, scale, d, width, PTX=not INTERPRET, num_warps=4,
           **_quantize_blocks())
    return q, scale


def _quantized_scores(q: Tensor, scale: Tensor, probes: Tensor, list_offsets: Tensor, codes: Tensor,
                      code_scales: Tensor, code_bias: Tensor, list_ids: Tensor, slots: Tensor,
                      total: int) -> Tuple[Tensor, Tensor]:
    """(scores float32 [total], labels int32 [total]) of every probed row."""
    probes, codes = probes.contiguous(), codes.contiguous()
    batch, nprobe = probes.shape
    scores = torch.empty((total,), dtype=torch.float32, device=q.device)
    labels = torch.empty((total,), dtype=torch.int32, device=q.device)
    if total:
        launch(quantized_scores_kernel, (batch, nprobe), q, scale, probes, list_offsets.contiguous(), codes,
               code_scales.contiguous(), code_bias.contiguous(), list_ids.contiguous(), slots, scores, labels,
               nprobe, codes.shape[1], PTX=not INTERPRET, num_warps=4, **_score_blocks())
    return scores, labels


quantize_queries_op = define_op("quantize_queries", _quantize_queries)
quantized_scores_op = define_op("quantized_scores", _quantized_scores)


def quantize_queries(x: Tensor) -> Tuple[Tensor, Tensor]:
    """reference.quantize_queries on the Triton kernel: (q int8 [B, d], scale float32 [B])."""
    q, scale = quantize_queries_op(x, x.shape[1])
    return q, scale


def _check_lists(probes: Tensor, list_offsets: Tensor, rows: int, width: int) -> None:
    parts = list_offsets.shape[0] - 1
    bad_offsets = (list_offsets[0] < 0) | (list_offsets[-1] > rows) | (list_offsets[1:] < list_offsets[:-1]).any()
    bad_probes = ((probes < -1) | (probes >= parts)).any() if probes.numel() else torch.zeros((), dtype=torch.bool)
    bad = torch.stack([bad_offsets.to(probes.device), bad_probes.to(probes.device)]).tolist()  # one sync
    if bad[0]:
        raise ValueError(f"quantized_candidates: list_offsets must be non-negative, non-decreasing and at most "
                         f"codes.shape[0] = {rows}")
    if bad[1]:
        raise ValueError(f"quantized_candidates: probes must be in [-1, P) = [-1, {parts})")
    if width > MAX_CODE_WIDTH:
        raise ValueError(f"quantized_candidates: codes rows of {width} int8 entries could overflow the int32 "
                         f"dot product; at most {MAX_CODE_WIDTH} supported")


def quantized_candidates(x: Tensor, probes: Tensor, list_offsets: Tensor, codes: Tensor, code_scales: Tensor,
                         code_bias: Tensor, list_ids: Tensor, num_labels: int,
                         max_candidates: int) -> Tuple[Tensor, Tensor]:
    """(ids int32 [B, M], counts int32 [B]): the Triton quantize and scoring
    kernels, then selection and dedupe with torch ops on the device (see the
    module docstring)."""
    batch = x.shape[0]
    dev = x.device
    probes = probes.to(torch.int32)
    rows, width = codes.shape
    ids = torch.full((batch, max_candidates), -1, dtype=torch.int32, device=dev)
    counts = torch.zeros((batch,), dtype=torch.int32, device=dev)
    if batch == 0 or probes.shape[1] == 0:
        return ids, counts
    _check_lists(probes, list_offsets, rows, width)

    off = list_offsets.to(torch.int64)
    p = probes.to(torch.int64)
    safe = p.clamp(min=0)
    sizes = torch.where(p >= 0, off[safe + 1] - off[safe], 0)  # [B, nprobe]
    ends = torch.cumsum(sizes.reshape(-1), 0)
    slots = ends - sizes.reshape(-1)
    total = int(ends[-1])  # one sync: the flat buffers' size
    if total == 0:
        return ids, counts

    q, scale = quantize_queries_op(x, width)
    scores, labels = quantized_scores_op(q, scale, probes, list_offsets, codes, code_scales, code_bias,
                                         list_ids, slots, total)
    lab = labels.to(torch.int64)
    if bool(((lab < 0) | (lab >= num_labels)).any()):
        raise ValueError(f"quantized_candidates: list_ids of a probed row outside [0, num_labels) = "
                         f"[0, {num_labels})")
    per_query = sizes.sum(1)
    row = torch.repeat_interleave(torch.arange(batch, device=dev), per_query, output_size=total)
    s = torch.where(torch.isnan(scores), float("-inf"), scores)
    s = torch.where(s == 0, 0.0, s)
    # One entry per (query, label) with its best score.
    uniq, inverse = torch.unique(row * num_labels + lab, sorted=True, return_inverse=True)
    best = torch.full((uniq.numel(),), float("-inf"), dtype=torch.float32, device=dev)
    best = best.scatter_reduce(0, inverse, s, reduce="amax", include_self=True)
    urow, ulab = uniq // num_labels, uniq % num_labels
    # (query, label) ascending already: score desc, then query, both stable.
    order = torch.sort(best, descending=True, stable=True).indices
    urow, ulab = urow[order], ulab[order]
    order = torch.sort(urow, stable=True).indices
    urow, ulab = urow[order], ulab[order]
    per_row = torch.bincount(urow, minlength=batch)
    rank = torch.arange(urow.numel(), device=dev) - (torch.cumsum(per_row, 0) - per_row)[urow]
    keep = rank < max_candidates
    ids[urow[keep], rank[keep]] = ulab[keep].to(torch.int32)
    counts = per_row.clamp(max=max_candidates).to(torch.int32)
    return ids, counts


def aot_specs():
    specs = [dict(
        kernel=quantize_queries_kernel, name=f"quantize_queries[{dt}]", tensor_cores=False, exact_fp32=True,
        signature={"x_ptr": f"*{dt}", "q_ptr": "*i8", "scale_ptr": "*fp32", "d": "i32", "Dp": "i32"},
        divisible=["Dp"], constexprs=dict(PTX=True, BLOCK_D=256), num_warps=4)
        for dt in ("fp16", "bf16", "fp32", "fp64")]
    specs.append(dict(
        kernel=quantized_scores_kernel, name="quantized_scores[int8]", tensor_cores=False, exact_fp32=True,
        signature={"q_ptr": "*i8", "scale_ptr": "*fp32", "probes_ptr": "*i32", "offsets_ptr": "*i32",
                   "codes_ptr": "*i8", "cs_ptr": "*fp32", "cb_ptr": "*fp32", "ids_ptr": "*i32",
                   "slot_ptr": "*i64", "scores_ptr": "*fp32", "labels_ptr": "*i32", "nprobe": "i32", "Dp": "i32"},
        divisible=["Dp"], constexprs=dict(PTX=True, BLOCK_R=32, BLOCK_D=128), num_warps=4))
    return specs
