"""partition_probe: the nprobe best partitions of each query, int32
[B, nprobe]: larger <x, centroids[p]> + centroid_bias[p] first, ties (and
NaN, which counts as -inf) by smaller p.

Kernel: partition_scores_kernel
-------------------------------
Grid (cdiv(B, BLOCK_B), cdiv(P, BLOCK_P)): each program computes one dense
[BLOCK_B, BLOCK_P] tile of X @ C^T with tl.dot over d in BLOCK_D chunks
(fp32 accumulation with IEEE fp32 products, no TF32; fp64 for fp64; tensor
cores for fp16/bf16 operands, whose products are exact in fp32), adds the
centroid bias and stores the tile in the accumulator dtype in the order's
canonical form: NaN becomes -inf and -0.0 becomes +0.0 (both compare equal
to their replacements in the contract's order, so nothing changes but the
sort key). Rows past B and partitions past P are masked.

Selection: torch ops on the device, after the kernel
----------------------------------------------------
One stable descending torch.sort of each score row (scores are already in p
order, so ties keep the smaller p first) and the first nprobe columns, as
int32. No device sync.

Exactness: the scores are fp32 (fp64) sums in tl.dot's order, not the
reference's BLAS order, so they may differ from the reference in the last
bits; the probes are then identical except where two partitions' scores lie
within rounding of each other (exact ties, e.g. integer-valued data or
duplicated centroids, do resolve identically: by smaller p).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, acc_dtype, cdiv, clamp_block, define_op, dot_upcast, launch, mma, tl_acc

Tensor = torch.Tensor


@triton.jit
def partition_scores_kernel(x_ptr, c_ptr, cb_ptr, out_ptr, B, P, d,
                            HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                            BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
    rb = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rp = tl.program_id(1).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    b_mask = rb < B
    p_mask = rp < P
    acc = tl.zeros([BLOCK_B, BLOCK_P], dtype=ACC)
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        d_mask = rd < d
        xt = tl.load(x_ptr + rb[:, None] * d + rd[None, :], mask=b_mask[:, None] & d_mask[None, :], other=0.0)
        ct = tl.load(c_ptr + rp[None, :] * d + rd[:, None], mask=d_mask[:, None] & p_mask[None, :], other=0.0)
        acc = mma(xt, ct, acc, UPCAST)  # [BB, BD] @ [BD, BP]
    if HAS_BIAS:
        acc += tl.load(cb_ptr + rp, mask=p_mask, other=0.0).to(ACC)[None, :]
    acc = tl.where(acc != acc, float("-inf"), acc)  # NaN counts as -inf
    acc = tl.where(acc == 0.0, 0.0, acc)  # -0.0 ties with +0.0
    tl.store(out_ptr + rb[:, None] * P + rp[None, :], acc, mask=b_mask[:, None] & p_mask[None, :])


def _blocks(batch: int, parts: int, d: int, dtype: torch.dtype) -> dict:
    """tl.dot needs tiles of at least 16 x 16; small tiles under the interpreter."""
    if INTERPRET:
        return dict(BLOCK_B=16, BLOCK_P=16, BLOCK_D=clamp_block(d, 16, 32))
    wide = dtype in (torch.float32, torch.float64)
    return dict(BLOCK_B=clamp_block(batch, 16, 64), BLOCK_P=64,
                BLOCK_D=clamp_block(d, 16, 32 if wide else 64))


def _partition_scores(x: Tensor, centroids: Tensor, centroid_bias: Optional[Tensor]) -> Tensor:
    """Canonical scores [B, P] in the accumulator dtype (see the module docstring)."""
    x, centroids = x.contiguous(), centroids.contiguous()
    bias = None if centroid_bias is None else centroid_bias.contiguous()
    batch, d = x.shape
    parts = centroids.shape[0]
    out = torch.empty((batch, parts), dtype=acc_dtype(x.dtype), device=x.device)
    blocks = _blocks(batch, parts, d, x.dtype)
    if d == 0:  # no dot product to run: the scores are the (canonical) bias
        s = torch.zeros((batch, parts), dtype=out.dtype, device=x.device)
        if bias is not None:
            s = s + bias.to(out.dtype)
        s = torch.where(torch.isnan(s), float("-inf"), s)
        return torch.where(s == 0, 0.0, s).to(out.dtype)
    launch(partition_scores_kernel, (cdiv(batch, blocks["BLOCK_B"]), cdiv(parts, blocks["BLOCK_P"])),
           x, centroids, x if bias is None else bias, out, batch, parts, d,
           HAS_BIAS=bias is not None, UPCAST=dot_upcast(x.dtype), ACC=tl_acc(x.dtype), num_warps=4, **blocks)
    return out


partition_scores_op = define_op("partition_scores", _partition_scores)


def partition_probe(x: Tensor, centroids: Tensor, centroid_bias: Optional[Tensor], nprobe: int) -> Tensor:
    """int32 [B, nprobe]: the Triton scores kernel, then a stable descending
    torch.sort per row on the device (ties by smaller p)."""
    scores = partition_scores_op(x, centroids, centroid_bias)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :nprobe].to(torch.int32)


def aot_specs():
    specs = []
    b, p, d = 64, 4096, 128
    for dt, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
                      ("fp64", torch.float64)):
        acc_ptr = "*fp64" if dtype == torch.float64 else "*fp32"
        specs.append(dict(
            kernel=partition_scores_kernel, name=f"partition_scores[{dt}]",
            tensor_cores=dtype in (torch.float16, torch.bfloat16),
            signature={"x_ptr": f"*{dt}", "c_ptr": f"*{dt}", "cb_ptr": f"*{dt}", "out_ptr": acc_ptr,
                       "B": "i32", "P": "i32", "d": "i32"},
            divisible=["P", "d"],
            constexprs=dict(HAS_BIAS=True, UPCAST=False, ACC=tl_acc(dtype), **_blocks(b, p, d, dtype)),
            num_warps=4))
    return specs
