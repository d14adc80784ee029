"""bitmap_sparse_matmul: exact logits of every (b, label) set in a candidate
bitmap, packed row by row in ascending label order, and its backward.

Layout ("plan", computed once per bitmap and reused by the backward)
-------------------------------------------------------------------
The label axis is cut into label tiles of BLOCK_N labels (BLOCK_N / 32
bitmap words) and the batch into batch tiles of BLOCK_B rows.
  1. bitmap_tile_counts_kernel (grid (B, cdiv(T, TILES_PER_PROGRAM))):
     popcount of every (row, label tile) -> tile_counts int32 [B, T].
  2. torch: tile_prefix = exclusive cumsum of tile_counts along the tiles
     (int32 [B, T]: set bits of row b before tile t), row_ptr = [0, cumsum of
     row totals] (int64 [B + 1]), the occupancy of every (batch tile, label
     tile) block, and three lists of the non-empty blocks: row-major
     ``tiles`` (bt, t) with ``row_tile_ptr`` per batch tile, and label-major
     ``col_bt`` with ``col_ids`` / ``col_ptr`` per non-empty label tile.
     nnz = row_ptr[-1] (one device sync: the output size depends on it).
The packed position of bit (b, n) in tile t is
row_ptr[b] + tile_prefix[b, t] + (set bits of row b in tile t before n); a
kernel gets the last term from an exclusive tl.cumsum of the tile's bits.

Kernels
-------
forward   one program per non-empty block (grid (len(tiles),)): the dense
          [BLOCK_B, BLOCK_N] logit tile X[bt] @ W[t]^T with tl.dot over d in
          BLOCK_D chunks (fp32 accumulation; tensor cores for fp16/bf16,
          IEEE fp32 products for fp32), + bias, and a masked store of the set
          entries to their packed positions. Empty blocks are never launched.
grad_x    one program per (batch tile, d block) (grid (cdiv(B, BLOCK_B),
          cdiv(d, BLOCK_D))): loops over the batch tile's non-empty blocks,
          scatters the packed gradients into a dense [BLOCK_B, BLOCK_N] tile
          (zeros where no bit) and accumulates tile @ W[t] with tl.dot.
grad_W/b  one program per (non-empty label tile, d block): loops over the
          label tile's non-empty blocks, accumulates tile^T @ X[bt] with
          tl.dot (and the column sums for the bias). Each row of grad_W is
          written by exactly one program: deterministic, no atomics; rows in
          empty label tiles stay zero.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, define_op, dot_upcast, launch, mma, popcount32, tl_acc

Tensor = torch.Tensor

#: Tile geometry. The interpreter uses small tiles so tests stay fast; GPU
#: tiles are sized for tensor cores (64 x 64 logit tiles, 64-wide d chunks).
BLOCK_B = 16 if INTERPRET else 64
BLOCK_N = 32 if INTERPRET else 64
TILES_D_16BIT = 64  # d chunk for fp16/bf16 (tensor cores)
TILES_D_WIDE = 16  # d chunk for fp32/fp64 (FMA: register bound)
TILES_PER_PROGRAM = 16 if INTERPRET else 64  # tile counts: (words per tile) x TILES words per program
DECODE_TILES = 16  # decode: TILES x BLOCK_N labels per program
NUM_WARPS = 4


def block_d(dtype: torch.dtype) -> int:
    if INTERPRET:
        return 16
    return TILES_D_WIDE if dtype in (torch.float32, torch.float64) else TILES_D_16BIT


class Plan(NamedTuple):
    row_ptr: Tensor       # int64 [B + 1]
    tile_prefix: Tensor   # int32 [B, T]
    tiles: Tensor         # int32 [nt, 2] (batch tile, label tile), row-major
    row_tile_ptr: Tensor  # int32 [cdiv(B, BLOCK_B) + 1] into tiles
    col_ids: Tensor       # int32 [nc] non-empty label tiles, ascending
    col_ptr: Tensor       # int32 [nc + 1] into col_bt
    col_bt: Tensor        # int32 [nt] batch tiles of each non-empty label tile
    nnz: int
    block_b: int
    block_n: int


# ----------------------------------------------------------------- kernels
@triton.jit
def bitmap_tile_counts_kernel(bitmap_ptr, counts_ptr, W, T,
                              WORDS_PER_TILE: tl.constexpr, TILES: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    rt = tl.program_id(1) * TILES + tl.arange(0, TILES)
    t_mask = rt < T
    rw = rt[:, None] * WORDS_PER_TILE + tl.arange(0, WORDS_PER_TILE)[None, :]
    words = tl.load(bitmap_ptr + b * W + rw, mask=t_mask[:, None] & (rw < W), other=0)
    counts = tl.sum(popcount32(words), axis=1)
    tl.store(counts_ptr + b * T + rt, counts, mask=t_mask)


@triton.jit
def bitmap_decode_kernel(bitmap_ptr, row_ptr_ptr, prefix_ptr, cols_ptr, N, W, T,
                         BN: tl.constexpr, TILES: tl.constexpr):
    """cols[k] = label of packed entry k (the bitmap's set bits, row by row)."""
    b = tl.program_id(0).to(tl.int64)
    rt = tl.program_id(1) * TILES + tl.arange(0, TILES)
    t_mask = rt < T
    rn = rt.to(tl.int64)[:, None] * BN + tl.arange(0, BN)[None, :]
    n_mask = t_mask[:, None] & (rn < N)
    words = tl.load(bitmap_ptr + b * W + (rn >> 5), mask=n_mask, other=0)
    bits = (words >> (rn & 31).to(tl.int32)) & 1
    rank = tl.cumsum(bits, axis=1) - bits
    base = tl.load(row_ptr_ptr + b) + tl.load(prefix_ptr + b * T + rt, mask=t_mask, other=0).to(tl.int64)
    tl.store(cols_ptr + base[:, None] + rank, rn.to(tl.int32), mask=bits != 0)


@triton.jit
def _tile_span(bt, t, B, N, BB: tl.constexpr, BN: tl.constexpr):
    """Rows and labels of block (bt, t) and their bounds masks."""
    rb = bt.to(tl.int64) * BB + tl.arange(0, BB)
    rn = t.to(tl.int64) * BN + tl.arange(0, BN)
    return rb, rb < B, rn, rn < N


@triton.jit
def _tile_entries(bitmap_ptr, row_ptr_ptr, prefix_ptr, rb, b_mask, rn, n_mask, t, W, T):
    """Set bits of block (bt, t) and their packed positions (int32: the
    wrapper guarantees nnz < 2^31)."""
    words = tl.load(bitmap_ptr + rb[:, None] * W + (rn >> 5)[None, :],
                    mask=b_mask[:, None] & n_mask[None, :], other=0)
    bits = (words >> (rn & 31).to(tl.int32)[None, :]) & 1
    rank = tl.cumsum(bits, axis=1) - bits
    base = (tl.load(row_ptr_ptr + rb, mask=b_mask, other=0).to(tl.int32)
            + tl.load(prefix_ptr + rb * T + t, mask=b_mask, other=0))
    return bits != 0, base[:, None] + rank


@triton.jit
def bitmap_matmul_fwd_kernel(x_ptr, w_ptr, bias_ptr, bitmap_ptr, row_ptr_ptr, prefix_ptr, tiles_ptr,
                             values_ptr, B, N, d, W, T,
                             HAS_BIAS: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr,
                             BD: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    bt = tl.load(tiles_ptr + 2 * pid)
    t = tl.load(tiles_ptr + 2 * pid + 1)
    rb, b_mask, rn, n_mask = _tile_span(bt, t, B, N, BB, BN)
    acc = tl.zeros([BB, BN], dtype=ACC)
    for d0 in range(0, d, BD):
        rd = d0 + tl.arange(0, BD)
        d_mask = rd < d
        xt = tl.load(x_ptr + rb[:, None] * d + rd[None, :], mask=b_mask[:, None] & d_mask[None, :], other=0.0)
        wt = tl.load(w_ptr + rn[None, :] * d + rd[:, None], mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        acc = mma(xt, wt, acc, UPCAST)  # [BB, BD] @ [BD, BN]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_mask, other=0.0).to(ACC)[None, :]
    # positions only now, so they are not live across the d loop
    bits, pos = _tile_entries(bitmap_ptr, row_ptr_ptr, prefix_ptr, rb, b_mask, rn, n_mask, t, W, T)
    tl.store(values_ptr + pos, acc.to(values_ptr.dtype.element_ty), mask=bits)


@triton.jit
def bitmap_matmul_bwd_x_kernel(g_ptr, w_ptr, bitmap_ptr, row_ptr_ptr, prefix_ptr, tiles_ptr, row_tile_ptr,
                               gx_ptr, B, N, d, W, T,
                               BB: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                               ACC: tl.constexpr, UPCAST: tl.constexpr):
    bt = tl.program_id(0)
    rd = tl.program_id(1) * BD + tl.arange(0, BD)
    d_mask = rd < d
    rb = bt.to(tl.int64) * BB + tl.arange(0, BB)
    start = tl.load(row_tile_ptr + bt)
    end = tl.load(row_tile_ptr + bt + 1)
    acc = tl.zeros([BB, BD], dtype=ACC)
    for i in range(start, end):
        t = tl.load(tiles_ptr + 2 * i + 1)
        _, b_mask, rn, n_mask = _tile_span(bt, t, B, N, BB, BN)
        bits, pos = _tile_entries(bitmap_ptr, row_ptr_ptr, prefix_ptr, rb, b_mask, rn, n_mask, t, W, T)
        g = tl.load(g_ptr + pos, mask=bits, other=0.0)  # packed grads scattered into the tile
        wt = tl.load(w_ptr + rn[:, None] * d + rd[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        acc = mma(g, wt, acc, UPCAST)  # [BB, BN] @ [BN, BD]
    tl.store(gx_ptr + rb[:, None] * d + rd[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=(rb < B)[:, None] & d_mask[None, :])


@triton.jit
def bitmap_matmul_bwd_w_kernel(g_ptr, x_ptr, bitmap_ptr, row_ptr_ptr, prefix_ptr, col_ids_ptr, col_ptr_ptr,
                               col_bt_ptr, gw_ptr, gb_ptr, B, N, d, W, T,
                               NEED_W: tl.constexpr, NEED_B: tl.constexpr,
                               BB: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                               ACC: tl.constexpr, UPCAST: tl.constexpr):
    c = tl.program_id(0)
    pid_d = tl.program_id(1)
    t = tl.load(col_ids_ptr + c)
    start = tl.load(col_ptr_ptr + c)
    end = tl.load(col_ptr_ptr + c + 1)
    rd = pid_d * BD + tl.arange(0, BD)
    d_mask = rd < d
    acc = tl.zeros([BN, BD], dtype=ACC)
    acc_b = tl.zeros([BN], dtype=ACC)
    _, _, rn, n_mask = _tile_span(t, t, B, N, BB, BN)
    for i in range(start, end):
        bt = tl.load(col_bt_ptr + i)
        rb, b_mask, _, _ = _tile_span(bt, t, B, N, BB, BN)
        bits, pos = _tile_entries(bitmap_ptr, row_ptr_ptr, prefix_ptr, rb, b_mask, rn, n_mask, t, W, T)
        g = tl.load(g_ptr + pos, mask=bits, other=0.0)  # [BB, BN]
        if NEED_W:
            xt = tl.load(x_ptr + rb[:, None] * d + rd[None, :], mask=b_mask[:, None] & d_mask[None, :], other=0.0)
            acc = mma(tl.trans(g), xt, acc, UPCAST)  # [BN, BB] @ [BB, BD]
        if NEED_B:
            acc_b += tl.sum(g.to(ACC), axis=0)
    if NEED_W:
        tl.store(gw_ptr + rn[:, None] * d + rd[None, :], acc.to(gw_ptr.dtype.element_ty),
                 mask=n_mask[:, None] & d_mask[None, :])
    if NEED_B:
        if pid_d == 0:
            tl.store(gb_ptr + rn, acc_b.to(gb_ptr.dtype.element_ty), mask=n_mask)


# --------------------------------------------------------------- ops
def _tile_counts(bitmap: Tensor, num_labels: int, block_n: int) -> Tensor:
    bitmap = bitmap.contiguous()
    batch, words = bitmap.shape
    tiles = cdiv(num_labels, block_n)
    counts = torch.empty((batch, tiles), dtype=torch.int32, device=bitmap.device)
    launch(bitmap_tile_counts_kernel, (batch, cdiv(tiles, TILES_PER_PROGRAM)), bitmap, counts, words, tiles,
           WORDS_PER_TILE=block_n // 32, TILES=TILES_PER_PROGRAM, num_warps=NUM_WARPS)
    return counts


def _decode(bitmap: Tensor, row_ptr: Tensor, tile_prefix: Tensor, num_labels: int, nnz: int,
            block_n: int) -> Tensor:
    bitmap = bitmap.contiguous()
    batch, words = bitmap.shape
    tiles = tile_prefix.shape[1]
    cols = torch.empty((nnz,), dtype=torch.int32, device=bitmap.device)
    if nnz > 0:
        launch(bitmap_decode_kernel, (batch, cdiv(tiles, DECODE_TILES)), bitmap, row_ptr,
               tile_prefix.contiguous(), cols, num_labels, words, tiles,
               BN=block_n, TILES=DECODE_TILES, num_warps=NUM_WARPS)
    return cols


def _forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], bitmap: Tensor, row_ptr: Tensor,
             tile_prefix: Tensor, tiles: Tensor, row_tile_ptr: Tensor, col_ids: Tensor, col_ptr: Tensor,
             col_bt: Tensor, nnz: int, block_b: int, block_n: int) -> Tensor:
    x, weight, bitmap = x.contiguous(), weight.contiguous(), bitmap.contiguous()
    bias = None if bias is None else bias.contiguous()
    batch, d = x.shape
    n = weight.shape[0]
    values = torch.empty((nnz,), dtype=x.dtype, device=x.device)
    launch(bitmap_matmul_fwd_kernel, (tiles.shape[0],), x, weight, x if bias is None else bias, bitmap,
           row_ptr, tile_prefix, tiles, values, batch, n, d, bitmap.shape[1], tile_prefix.shape[1],
           HAS_BIAS=bias is not None, BB=block_b, BN=block_n, BD=block_d(x.dtype), ACC=tl_acc(x.dtype),
           UPCAST=dot_upcast(x.dtype), num_warps=NUM_WARPS)
    return values


def _backward(grad_values: Tensor, x: Tensor, weight: Tensor, bitmap: Tensor, row_ptr: Tensor,
              tile_prefix: Tensor, tiles: Tensor, row_tile_ptr: Tensor, col_ids: Tensor, col_ptr: Tensor,
              col_bt: Tensor, block_b: int, block_n: int, need_x: bool, need_weight: bool,
              need_bias: bool) -> Tuple[Tensor, Tensor, Tensor]:
    grad_values = grad_values.to(x.dtype).contiguous()
    x, weight, bitmap = x.contiguous(), weight.contiguous(), bitmap.contiguous()
    batch, d = x.shape
    n = weight.shape[0]
    words, num_tiles = bitmap.shape[1], tile_prefix.shape[1]
    bd = block_d(x.dtype)
    common = dict(BB=block_b, BN=block_n, BD=bd, ACC=tl_acc(x.dtype), UPCAST=dot_upcast(x.dtype),
                  num_warps=NUM_WARPS)
    gx = torch.empty((batch, d) if need_x else (0,), dtype=x.dtype, device=x.device)
    if need_x:
        launch(bitmap_matmul_bwd_x_kernel, (cdiv(batch, block_b), cdiv(d, bd)), grad_values, weight,
               bitmap, row_ptr, tile_prefix, tiles, row_tile_ptr, gx, batch, n, d, words, num_tiles, **common)
    gw = torch.zeros((n, d) if need_weight else (0,), dtype=weight.dtype, device=x.device)
    gb = torch.zeros((n,) if need_bias else (0,), dtype=weight.dtype, device=x.device)
    if need_weight or need_bias:
        d_blocks = max(1, cdiv(d, bd)) if need_weight else 1
        launch(bitmap_matmul_bwd_w_kernel, (col_ids.shape[0], d_blocks), grad_values, x, bitmap, row_ptr,
               tile_prefix, col_ids, col_ptr, col_bt, gw if need_weight else gb, gb if need_bias else gw,
               batch, n, d, words, num_tiles, NEED_W=need_weight, NEED_B=need_bias, **common)
    return gx, gw, gb


tile_counts_op = define_op("bitmap_tile_counts", _tile_counts)
decode_op = define_op("bitmap_decode", _decode)
forward_op = define_op("bitmap_sparse_matmul", _forward)
backward_op = define_op("bitmap_sparse_matmul_backward", _backward)


def _setup(ctx, inputs, output):
    (x, weight, bias, bitmap, row_ptr, tile_prefix, tiles, row_tile_ptr, col_ids, col_ptr, col_bt,
     _nnz, block_b, block_n) = inputs
    ctx.save_for_backward(x, weight, bitmap, row_ptr, tile_prefix, tiles, row_tile_ptr, col_ids, col_ptr, col_bt)
    ctx.has_bias = bias is not None
    ctx.blocks = (block_b, block_n)


def _autograd_backward(ctx, grad_values):
    saved = ctx.saved_tensors
    need_x, need_w, need_b = (bool(v) for v in ctx.needs_input_grad[:3])
    need_b = need_b and ctx.has_bias
    gx, gw, gb = backward_op(grad_values, *saved, *ctx.blocks, need_x, need_w, need_b)
    return (gx if need_x else None, gw if need_w else None, gb if need_b else None) + (None,) * 11


forward_op.register_autograd(_autograd_backward, setup_context=_setup)


# ----------------------------------------------------------- host side
def check_stray_bits(op: str, bitmap: Tensor, num_labels: int) -> None:
    tail = num_labels & 31
    if tail and bitmap.shape[0] and bitmap.shape[1]:
        if bool((bitmap[:, -1] & ~((1 << tail) - 1)).ne(0).any()):
            raise ValueError(f"{op}: bitmap has bits set at label ids >= num_labels = {num_labels}")


def row_layout(bitmap: Tensor, num_labels: int, block_n: int) -> Tuple[Tensor, Tensor, Tensor]:
    """(tile_counts int32 [B, T], tile_prefix int32 [B, T], row_ptr int64 [B + 1])."""
    batch = bitmap.shape[0]
    counts = tile_counts_op(bitmap, num_labels, block_n)
    inclusive = torch.cumsum(counts, 1, dtype=torch.int64)
    row_ptr = torch.zeros(batch + 1, dtype=torch.int64, device=bitmap.device)
    if counts.shape[1]:
        row_ptr[1:] = torch.cumsum(inclusive[:, -1], 0)
    return counts, (inclusive - counts).to(torch.int32), row_ptr


def make_plan(bitmap: Tensor, num_labels: int, block_b: int = None, block_n: int = None) -> Plan:
    block_b = block_b or BLOCK_B
    block_n = block_n or BLOCK_N
    batch = bitmap.shape[0]
    counts, tile_prefix, row_ptr = row_layout(bitmap, num_labels, block_n)
    num_tiles = counts.shape[1]
    batch_tiles = cdiv(batch, block_b)
    occ = torch.zeros((batch_tiles * block_b, num_tiles), dtype=torch.bool, device=bitmap.device)
    occ[:batch] = counts > 0
    occ = occ.view(batch_tiles, block_b, num_tiles).any(1)
    tiles = occ.nonzero().to(torch.int32).contiguous()  # (bt, t), row-major
    row_tile_ptr = torch.zeros(batch_tiles + 1, dtype=torch.int32, device=bitmap.device)
    row_tile_ptr[1:] = torch.cumsum(occ.sum(1), 0)
    by_col = occ.t().nonzero().to(torch.int32)  # (t, bt), label-major
    col_ids, col_counts = torch.unique_consecutive(by_col[:, 0], return_counts=True)
    col_ptr = torch.zeros(col_ids.numel() + 1, dtype=torch.int32, device=bitmap.device)
    col_ptr[1:] = torch.cumsum(col_counts, 0)
    nnz = int(row_ptr[-1])
    if nnz >= 2**31:
        raise ValueError(f"bitmap_sparse_matmul: more than 2^31 - 1 candidates in one call ({nnz})")
    return Plan(row_ptr, tile_prefix, tiles, row_tile_ptr, col_ids.to(torch.int32).contiguous(), col_ptr,
                by_col[:, 1].contiguous(), nnz, block_b, block_n)


def bitmap_sparse_matmul(x: Tensor, weight: Tensor, bias: Optional[Tensor], bitmap: Tensor,
                         plan: Optional[Plan] = None) -> Tuple[Tensor, Tensor]:
    """(values [nnz] in x's dtype, packed row by row in ascending label order,
    row_ptr int64 [B + 1]); differentiable in x, weight and bias."""
    num_labels = weight.shape[0]
    check_stray_bits("bitmap_sparse_matmul", bitmap, num_labels)
    if plan is None:
        plan = make_plan(bitmap, num_labels)
    values = forward_op(x, weight, bias, bitmap, plan.row_ptr, plan.tile_prefix, plan.tiles,
                        plan.row_tile_ptr, plan.col_ids, plan.col_ptr, plan.col_bt, plan.nnz,
                        plan.block_b, plan.block_n)
    return values, plan.row_ptr


def aot_specs():
    specs = [dict(
        kernel=bitmap_tile_counts_kernel, name="bitmap_tile_counts", tensor_cores=False,
        signature={"bitmap_ptr": "*i32", "counts_ptr": "*i32", "W": "i32", "T": "i32"},
        constexprs=dict(WORDS_PER_TILE=BLOCK_N // 32, TILES=TILES_PER_PROGRAM), num_warps=NUM_WARPS), dict(
        kernel=bitmap_decode_kernel, name="bitmap_decode", tensor_cores=False,
        signature={"bitmap_ptr": "*i32", "row_ptr_ptr": "*i64", "prefix_ptr": "*i32", "cols_ptr": "*i32",
                   "N": "i32", "W": "i32", "T": "i32"},
        constexprs=dict(BN=BLOCK_N, TILES=DECODE_TILES), num_warps=NUM_WARPS)]
    plan_ptrs = {"bitmap_ptr": "*i32", "row_ptr_ptr": "*i64", "prefix_ptr": "*i32"}
    dims = {"B": "i32", "N": "i32", "d": "i32", "W": "i32", "T": "i32"}
    for dt, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
                      ("fp64", torch.float64)):
        tc = dtype in (torch.float16, torch.bfloat16)  # must use mma.sync / wgmma
        blocks = dict(BB=BLOCK_B, BN=BLOCK_N, BD=block_d(dtype), ACC=tl_acc(dtype), UPCAST=False)
        specs.append(dict(
            kernel=bitmap_matmul_fwd_kernel, name=f"bitmap_matmul_fwd[{dt}]", tensor_cores=tc,
            signature={"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "bias_ptr": f"*{dt}", **plan_ptrs,
                       "tiles_ptr": "*i32", "values_ptr": f"*{dt}", **dims},
            divisible=["d"], constexprs=dict(HAS_BIAS=True, **blocks), num_warps=NUM_WARPS))
        specs.append(dict(
            kernel=bitmap_matmul_bwd_x_kernel, name=f"bitmap_matmul_bwd_x[{dt}]", tensor_cores=tc,
            signature={"g_ptr": f"*{dt}", "w_ptr": f"*{dt}", **plan_ptrs, "tiles_ptr": "*i32",
                       "row_tile_ptr": "*i32", "gx_ptr": f"*{dt}", **dims},
            divisible=["d"], constexprs=blocks, num_warps=NUM_WARPS))
        specs.append(dict(
            kernel=bitmap_matmul_bwd_w_kernel, name=f"bitmap_matmul_bwd_w[{dt}]", tensor_cores=tc,
            signature={"g_ptr": f"*{dt}", "x_ptr": f"*{dt}", **plan_ptrs, "col_ids_ptr": "*i32",
                       "col_ptr_ptr": "*i32", "col_bt_ptr": "*i32", "gw_ptr": f"*{dt}", "gb_ptr": f"*{dt}",
                       **dims},
            divisible=["d"], constexprs=dict(NEED_W=True, NEED_B=True, **blocks), num_warps=NUM_WARPS))
    return specs
