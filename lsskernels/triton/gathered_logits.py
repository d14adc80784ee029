"""gathered_logits: logits[b, m] = <x[b], W[ids[b, m]]> + bias[ids[b, m]],
-inf where ids[b, m] == -1; differentiable in x, weight and bias.

Forward: one program per (query b, block of BLOCK_M candidates); it gathers
the candidates' weight rows in [BLOCK_M, BLOCK_D] tiles (masked where the id
is -1 and past d), accumulates the dot products with x[b] in fp32 (fp64 for
fp64) over d, adds the bias and stores in x's dtype.
Grid: (B, cdiv(M, BLOCK_M)).

Backward:
  grad_x  one program per (query b, block of BLOCK_D features): the same
          gather, sum_m grad[b, m] * W[ids[b, m], d-block]; deterministic, no
          atomics. Grid: (B, cdiv(d, BLOCK_D)).
  grad_W  one program per (query b, block of BLOCK_M candidates):
          tl.atomic_add of grad[b, m] * x[b] into the candidates' rows of an
          fp32 (fp64) [N, d] buffer, and of grad[b, m] into an fp32 [N] bias
          buffer; only touched rows are written; cast to the weight's dtype at
          the end. Duplicate ids accumulate. Grid: (B, cdiv(M, BLOCK_M)).
Padding entries (id -1) contribute nothing; their incoming gradient is ignored.
Memory safety: an id outside [-1, N) is never dereferenced; its logit is NaN
(the public wrapper is where such ids should be rejected, see docs/triton.md)
and it gets no gradient.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, acc_dtype, cdiv, clamp_block, define_op, launch, tl_acc

Tensor = torch.Tensor


@triton.jit
def gathered_fwd_kernel(x_ptr, w_ptr, bias_ptr, ids_ptr, out_ptr, N, M, d,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                        ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = rm < M
    ids = tl.load(ids_ptr + b * M + rm, mask=m_mask, other=-1)
    valid = (ids >= 0) & (ids < N)  # an id outside [-1, N) is never read: its logit is NaN
    rows = tl.where(valid, ids, 0).to(tl.int64) * d
    acc = tl.zeros([BLOCK_M], dtype=ACC)
    for d0 in range(0, d, BLOCK_D):
        rd = d0 + tl.arange(0, BLOCK_D)
        d_mask = rd < d
        xv = tl.load(x_ptr + b * d + rd, mask=d_mask, other=0.0).to(ACC)
        wv = tl.load(w_ptr + rows[:, None] + rd[None, :], mask=valid[:, None] & d_mask[None, :], other=0.0)
        acc += tl.sum(wv.to(ACC) * xv[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + tl.where(valid, ids, 0), mask=valid, other=0.0).to(ACC)
    acc = tl.where(valid, acc, tl.where(ids == -1, float("-inf"), float("nan")))
    tl.store(out_ptr + b * M + rm, acc.to(out_ptr.dtype.element_ty), mask=m_mask)


@triton.jit
def gathered_bwd_x_kernel(grad_ptr, w_ptr, ids_ptr, gx_ptr, N, M, d,
                          BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = rd < d
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for m0 in range(0, M, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        m_mask = rm < M
        ids = tl.load(ids_ptr + b * M + rm, mask=m_mask, other=-1)
        valid = (ids >= 0) & (ids < N)
        g = tl.load(grad_ptr + b * M + rm, mask=valid, other=0.0).to(ACC)
        rows = tl.where(valid, ids, 0).to(tl.int64) * d
        wv = tl.load(w_ptr + rows[:, None] + rd[None, :], mask=valid[:, None] & d_mask[None, :], other=0.0)
        acc += tl.sum(g[:, None] * wv.to(ACC), axis=0)
    tl.store(gx_ptr + b * d + rd, acc.to(gx_ptr.dtype.element_ty), mask=d_mask)


@triton.jit
def gathered_bwd_w_kernel(grad_ptr, x_ptr, ids_ptr, gw_ptr, gb_ptr, N, M, d,
                          NEED_W: tl.constexpr, NEED_B: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = rm < M
    ids = tl.load(ids_ptr + b * M + rm, mask=m_mask, other=-1)
    valid = (ids >= 0) & (ids < N)
    safe = tl.where(valid, ids, 0)
    g = tl.load(grad_ptr + b * M + rm, mask=valid, other=0.0).to(ACC)
    if NEED_W:
        rows = safe.to(tl.int64) * d
        for d0 in range(0, d, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            d_mask = rd < d
            xv = tl.load(x_ptr + b * d + rd, mask=d_mask, other=0.0).to(ACC)
            tl.atomic_add(gw_ptr + rows[:, None] + rd[None, :], g[:, None] * xv[None, :],
                          mask=valid[:, None] & d_mask[None, :])
    if NEED_B:
        tl.atomic_add(gb_ptr + safe, g, mask=valid)


def _blocks(m: int, d: int, dtype: torch.dtype) -> dict:
    """[BLOCK_M, BLOCK_D] gather tiles: ~4K elements per program on a GPU
    (32 per thread at 4 warps), 16 x 32 under the interpreter."""
    if INTERPRET:
        return dict(BLOCK_M=16, BLOCK_D=clamp_block(d, 16, 32))
    wide = dtype in (torch.float32, torch.float64)
    return dict(BLOCK_M=clamp_block(m, 16, 32), BLOCK_D=clamp_block(d, 16, 64 if wide else 128))


def _atomic_blocks(m: int, d: int) -> dict:
    """grad_W tiles: every element is one atomic, so keep them small."""
    if INTERPRET:
        return dict(BLOCK_M=16, BLOCK_D=clamp_block(d, 16, 32))
    return dict(BLOCK_M=clamp_block(m, 16, 32), BLOCK_D=clamp_block(d, 16, 64))


def _gathered_logits(x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor) -> Tensor:
    x, weight, ids = x.contiguous(), weight.contiguous(), ids.contiguous()
    bias = None if bias is None else bias.contiguous()
    batch, d = x.shape
    m = ids.shape[1]
    out = torch.empty((batch, m), dtype=x.dtype, device=x.device)
    blocks = _blocks(m, d, x.dtype)
    launch(gathered_fwd_kernel, (batch, cdiv(m, blocks["BLOCK_M"])),
           x, weight, x if bias is None else bias, ids, out, weight.shape[0], m, d,
           HAS_BIAS=bias is not None, ACC=tl_acc(x.dtype), num_warps=4, **blocks)
    return out


def _gathered_logits_backward(grad: Tensor, x: Tensor, weight: Tensor, ids: Tensor, need_x: bool,
                              need_weight: bool, need_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    grad, x, weight, ids = grad.contiguous(), x.contiguous(), weight.contiguous(), ids.contiguous()
    batch, d = x.shape
    n = weight.shape[0]
    m = ids.shape[1]
    acc = acc_dtype(x.dtype)
    blocks = _blocks(m, d, x.dtype)
    gx = torch.empty((batch, d) if need_x else (0,), dtype=x.dtype, device=x.device)
    if need_x:
        launch(gathered_bwd_x_kernel, (batch, cdiv(d, blocks["BLOCK_D"])), grad, weight, ids, gx, n, m, d,
               ACC=tl_acc(x.dtype), num_warps=4, **blocks)
    gw32 = torch.zeros((n, d) if need_weight else (0,), dtype=acc, device=x.device)
    gb32 = torch.zeros((n,) if need_bias else (0,), dtype=acc, device=x.device)
    if need_weight or need_bias:
        blocks = _atomic_blocks(m, d)
        launch(gathered_bwd_w_kernel, (batch, cdiv(m, blocks["BLOCK_M"])),
               grad, x, ids, gw32 if need_weight else gb32, gb32 if need_bias else gw32, n, m, d,
               NEED_W=need_weight, NEED_B=need_bias, ACC=tl_acc(x.dtype), num_warps=4, **blocks)
    return gx, gw32.to(weight.dtype), gb32.to(weight.dtype)


gathered_logits_op = define_op("gathered_logits", _gathered_logits)
gathered_logits_backward_op = define_op("gathered_logits_backward", _gathered_logits_backward)


def _setup(ctx, inputs, output):
    x, weight, bias, ids = inputs
    ctx.save_for_backward(x, weight, ids)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    x, weight, ids = ctx.saved_tensors
    need_x, need_w, need_b = (bool(v) for v in ctx.needs_input_grad[:3])
    need_b = need_b and ctx.has_bias
    gx, gw, gb = gathered_logits_backward_op(grad, x, weight, ids, need_x, need_w, need_b)
    return (gx if need_x else None, gw if need_w else None, gb if need_b else None, None)


gathered_logits_op.register_autograd(_backward, setup_context=_setup)


def gathered_logits(x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor) -> Tensor:
    """[B, M] logits in x's dtype, -inf where ids == -1 (differentiable)."""
    return gathered_logits_op(x, weight, bias, ids.to(torch.int32))


def aot_specs():
    specs = []
    m, d = 1024, 1024
    for dt, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
                      ("fp64", torch.float64)):
        acc, acc_ptr = tl_acc(dtype), ("*fp64" if dtype == torch.float64 else "*fp32")
        specs.append(dict(
            kernel=gathered_fwd_kernel, name=f"gathered_fwd[{dt}]", tensor_cores=False,
            signature={"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", "ids_ptr": "*i32",
                       "out_ptr": f"*{dt}", "N": "i32", "M": "i32", "d": "i32"},
            divisible=["M", "d"], constexprs=dict(HAS_BIAS=True, ACC=acc, **_blocks(m, d, dtype)), num_warps=4))
        specs.append(dict(
            kernel=gathered_bwd_x_kernel, name=f"gathered_bwd_x[{dt}]", tensor_cores=False,
            signature={"grad_ptr": f"*{dt}", "w_ptr": f"*{dt}", "ids_ptr": "*i32", "gx_ptr": f"*{dt}",
                       "N": "i32", "M": "i32", "d": "i32"},
            divisible=["M", "d"], constexprs=dict(ACC=acc, **_blocks(m, d, dtype)), num_warps=4))
        specs.append(dict(
            kernel=gathered_bwd_w_kernel, name=f"gathered_bwd_w[{dt}]", tensor_cores=False,
            signature={"grad_ptr": f"*{dt}", "x_ptr": f"*{dt}", "ids_ptr": "*i32", "gw_ptr": acc_ptr,
                       "gb_ptr": acc_ptr, "N": "i32", "M": "i32", "d": "i32"},
            divisible=["M", "d"],
            constexprs=dict(NEED_W=True, NEED_B=True, ACC=acc, **_atomic_blocks(m, d)), num_warps=4))
    return specs
