"""hash_codes: codes[b, l] = sum_j 2^j [<x[b], proj[l, j]> > 0].

Kernel: one program per (tile of BLOCK_B queries, table l). It accumulates the
[BLOCK_B, BLOCK_K] projection tile x_tile @ proj[l]^T over d in BLOCK_D
chunks with tl.dot (fp32 accumulation, fp64 for fp64; IEEE fp32 products, no
TF32), then turns the signs into bits and the bits into one int32 code per
query (K <= 30 bits, BLOCK_K = max(16, next_pow2(K)) <= 32 columns; the
padding columns are masked out of the code).

Grid: (cdiv(B, BLOCK_B), L).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, clamp_block, define_op, dot_upcast, launch, mma, tl_acc


@triton.jit
def hash_codes_kernel(x_ptr, proj_ptr, codes_ptr, B, L, K, d,
                      BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                      ACC: tl.constexpr, UPCAST: tl.constexpr):
    pid_b = tl.program_id(0)
    table = tl.program_id(1).to(tl.int64)
    rb = (pid_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    b_mask = rb < B
    k_mask = rk < K
    proj_base = proj_ptr + table * K * d
    acc = tl.zeros([BLOCK_B, BLOCK_K], dtype=ACC)
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        d_mask = rd < d
        xt = tl.load(x_ptr + rb[:, None] * d + rd[None, :], mask=b_mask[:, None] & d_mask[None, :], other=0.0)
        # proj[l] read transposed: [BLOCK_D, BLOCK_K]
        pt = tl.load(proj_base + rk[None, :] * d + rd[:, None], mask=k_mask[None, :] & d_mask[:, None], other=0.0)
        acc = mma(xt, pt, acc, UPCAST)
    bits = ((acc > 0) & k_mask[None, :]).to(tl.int32) << rk[None, :]
    code = tl.sum(bits, axis=1)  # distinct powers of two: the sum is the OR
    tl.store(codes_ptr + rb * L + table, code, mask=b_mask)


def _blocks(bits: int, d: int, dtype: torch.dtype) -> dict:
    wide = dtype in (torch.float32, torch.float64)  # no tensor cores: smaller d chunks
    return dict(
        BLOCK_B=16 if INTERPRET else 64,
        BLOCK_K=clamp_block(bits, 16, 32),
        BLOCK_D=clamp_block(d, 16, 32 if INTERPRET or wide else 64),
    )


def _hash_codes(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    proj = proj.contiguous()
    batch, d = x.shape
    num_tables, bits, _ = proj.shape
    codes = torch.empty((batch, num_tables), dtype=torch.int32, device=x.device)
    blocks = _blocks(bits, d, x.dtype)
    grid = (cdiv(batch, blocks["BLOCK_B"]), num_tables)
    launch(hash_codes_kernel, grid, x, proj, codes, batch, num_tables, bits, d,
           ACC=tl_acc(x.dtype), UPCAST=dot_upcast(x.dtype), num_warps=4, **blocks)
    return codes


hash_codes_op = define_op("hash_codes", _hash_codes)


def hash_codes(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """codes int32 [B, L]: bit j of codes[b, l] is [<x[b], proj[l, j]> > 0]."""
    if x.shape[0] == 0 or proj.shape[0] == 0:
        return torch.zeros((x.shape[0], proj.shape[0]), dtype=torch.int32, device=x.device)
    return hash_codes_op(x, proj)


def aot_specs():
    """Representative compilations for tools/triton_aot.py."""
    specs = []
    for dt, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
                      ("fp64", torch.float64)):
        specs.append(dict(
            kernel=hash_codes_kernel, name=f"hash_codes[{dt}]", tensor_cores=False,
            signature={"x_ptr": f"*{dt}", "proj_ptr": f"*{dt}", "codes_ptr": "*i32",
                       "B": "i32", "L": "i32", "K": "i32", "d": "i32"},
            divisible=["d"], constexprs=dict(ACC=tl_acc(dtype), UPCAST=False, **_blocks(30, 1024, dtype)),
            num_warps=4))
    return specs
