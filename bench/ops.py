"""Per-op benchmark of the CPU kernels: time, achieved GB/s and GFLOP/s of
every op over a grid of shapes, next to this machine's memory bandwidth and
matmul rate measured in the same run, with dense nn.Linear + topk as the
reference where it applies.

    python -m bench ops [--quick] [--threads 2] [--plan]

Grid (full mode): N in {10K, 100K, 670K, 3M} labels, d in {64, 128, 512},
B in {1, 16, 256, 1024} queries, M in {256, 2048, 8192} candidates per query.
Each op only runs over the axes it depends on (hash_codes: d, B;
bucket_lookup: N, B, M; topk_gathered: B, M; the logit ops: all four; dense:
N, d, B). Points are skipped, with the reason in the output, when

* M > N / 4: more than a quarter of the labels would be candidates, dense
  is the right tool (in the full grid: M = 8192 at N = 10K);
* the op's memory (inputs, outputs, input pools) would exceed 8 GB;
* the estimated time of one call (bytes at half the measured bandwidth plus
  FLOPs at half the measured matmul rate) exceeds the per-call limit
  (2 s full, 0.25 s quick): such a point costs more than a few seconds.

`--plan` prints the grid with the skip reasons and estimates and times no
op; it still measures the machine's bandwidth and matmul rate first (~10 s),
which the estimates need.

Conventions. fp32 everywhere; L = 16 tables of K = 12 bits for hash_codes;
bucket_lookup tables hold N labels with uniformly random codes and K chosen
so that one bucket holds about M / L labels (L buckets per query give about
M raw candidates); candidate ids are uniform over [0, N) (the worst case for
locality: real LSS candidates cluster in buckets). Each timed call uses the
next input of a pool that touches several times the last-level cache, so
weight rows are mostly cold. Forward ops go through the public wrappers
(`lsskernels.*(..., backend="cpu")`, their argument checks included);
backward ops call `torch.ops.lsskernels.*_backward` directly (what autograd
calls), asking for the grads of x, W and b.

Bytes are the minimum the op must read and write: distinct weight rows once
(for B * M uniform draws over N labels, N (1 - e^{-BM/N}) of them), the
inputs, and the outputs; the backward ops' outputs include the dense
[N, d] weight gradient the op contract returns (it must be written, zeros
included), which dominates at small batch. FLOPs count 2 per multiply-add.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

import lsskernels as lss
from bench.common import RunContext, fmt_seconds, machine_rates, rates_line, time_call

FULL_GRID = {"N": [10_000, 100_000, 670_000, 3_000_000], "d": [64, 128, 512], "B": [1, 16, 256, 1024],
             "M": [256, 2048, 8192]}
QUICK_GRID = {"N": [100_000], "d": [128], "B": [1, 256], "M": [2048]}
TABLES = 16           # L, for hash_codes and bucket_lookup
HASH_BITS = 12        # K, for hash_codes
TOPK = 10
MEMORY_LIMIT = 8e9    # bytes per point
CALL_LIMIT = {"full": 2.0, "quick": 0.25}  # estimated seconds per call
EFFICIENCY = 0.5      # fraction of the measured bandwidth / matmul rate assumed by the estimate
F32 = 4

OPS = ("hash_codes", "bucket_lookup", "gathered_logits fwd", "gathered_logits bwd", "bitmap_sparse_matmul fwd",
       "bitmap_sparse_matmul bwd", "topk_gathered", "dense linear+topk")
AXES = {
    "hash_codes": ("d", "B"),
    "bucket_lookup": ("N", "B", "M"),
    "gathered_logits fwd": ("N", "d", "B", "M"),
    "gathered_logits bwd": ("N", "d", "B", "M"),
    "bitmap_sparse_matmul fwd": ("N", "d", "B", "M"),
    "bitmap_sparse_matmul bwd": ("N", "d", "B", "M"),
    "topk_gathered": ("B", "M"),
    "dense linear+topk": ("N", "d", "B"),
}


def last_level_cache_bytes() -> int:
    for index in (3, 2):
        try:
            text = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size").read_text().strip()
            return int(text[:-1]) * (1024 if text.endswith("K") else 1 << 20 if text.endswith("M") else 1)
        except (OSError, ValueError):
            continue
    return 32 << 20


def distinct_rows(num_labels: int, draws: float) -> float:
    """Expected number of distinct labels among `draws` uniform draws."""
    if draws <= 0:
        return 0.0
    return num_labels * -math.expm1(draws * math.log1p(-1.0 / num_labels)) if num_labels > 1 else 1.0


def lookup_bits(num_labels: int, candidates: int, tables: int = TABLES) -> int:
    """K such that a bucket holds about candidates / tables labels."""
    return int(min(24, max(1, round(math.log2(max(2.0, num_labels * tables / candidates))))))


# --------------------------------------------------------------------------
# Cost model: minimum bytes, FLOPs, memory, estimated seconds per call.
# --------------------------------------------------------------------------
@dataclass
class Point:
    op: str
    N: Optional[int] = None
    d: Optional[int] = None
    B: Optional[int] = None
    M: Optional[int] = None
    bytes: float = 0.0        # minimum bytes read + written
    flops: float = 0.0
    memory: float = 0.0       # bytes resident for the point (inputs, outputs)
    estimate: float = 0.0     # seconds per call, from the cost model
    skip: str = ""
    result: Dict[str, object] = field(default_factory=dict)

    def key(self) -> tuple:
        return tuple(getattr(self, a) for a in ("N", "d", "B", "M"))


def cost(p: Point, rates: Dict[str, float]) -> None:
    N, d, B, M = p.N, p.d, p.B, p.M
    bw = rates["bandwidth_GBps"] * 1e9 * EFFICIENCY
    fl = rates["matmul_GFLOPs"] * 1e9 * EFFICIENCY
    traffic = 0.0  # bytes actually streamed without reuse across queries (for the time estimate)
    if p.op == "hash_codes":
        L, K = TABLES, HASH_BITS
        p.bytes = F32 * (B * d + L * K * d + B * L)
        p.flops = 2.0 * B * L * K * d
        p.memory = p.bytes
        traffic = p.bytes
    elif p.op == "bucket_lookup":
        L = TABLES
        K = lookup_bits(N, M)
        scanned = B * L * N / 2**K
        p.bytes = F32 * (B * L + 2 * B * L + scanned + B * M + B)
        p.memory = F32 * (2 * N * L + L * 2**K + B * M)
        traffic = p.bytes
    elif p.op in ("gathered_logits fwd", "bitmap_sparse_matmul fwd"):
        rows = distinct_rows(N, B * M)
        p.bytes = F32 * (B * d + rows * (d + 1) + 2 * B * M)
        if p.op.startswith("bitmap"):
            p.bytes += F32 * B * math.ceil(N / 32) - F32 * B * M  # bitmap read instead of ids; row_ptr is tiny
        p.flops = 2.0 * B * M * d
        p.memory = F32 * (N * (d + 1) + 3 * B * M + B * math.ceil(N / 32))
        traffic = F32 * B * M * (d + 2) + (p.bytes - F32 * rows * (d + 1))
    elif p.op in ("gathered_logits bwd", "bitmap_sparse_matmul bwd"):
        rows = distinct_rows(N, B * M)
        p.bytes = F32 * (2 * B * M + 2 * B * d + rows * d + N * (d + 1))
        if p.op.startswith("bitmap"):
            p.bytes += F32 * B * math.ceil(N / 32) - F32 * B * M
        p.flops = 4.0 * B * M * d
        p.memory = F32 * (2 * N * (d + 1) + 3 * B * M + B * math.ceil(N / 32))
        traffic = F32 * 2 * B * M * (d + 1) + (p.bytes - F32 * rows * d)
    elif p.op == "topk_gathered":
        p.bytes = F32 * 2 * B * M + 12.0 * B * TOPK
        p.memory = p.bytes
        traffic = p.bytes
    elif p.op == "dense linear+topk":
        p.bytes = F32 * (N * (d + 1) + B * d) + 12.0 * B * TOPK
        p.flops = 2.0 * B * N * d
        p.memory = F32 * (N * (d + 1) + B * N)
        traffic = p.bytes + 2 * F32 * B * N  # the logits are written and read back by topk
    else:
        raise ValueError(p.op)
    p.estimate = traffic / bw + p.flops / fl


def build_plan(grid: Dict[str, List[int]], rates: Dict[str, float], mode: str) -> List[Point]:
    points: List[Point] = []
    seen = set()
    for op in OPS:
        axes = AXES[op]
        combos = [{}]
        for axis in ("N", "d", "B", "M"):
            if axis in axes:
                combos = [dict(c, **{axis: v}) for c in combos for v in grid[axis]]
        for c in combos:
            p = Point(op, **c)
            if (op, p.key()) in seen:
                continue
            seen.add((op, p.key()))
            cost(p, rates)
            if p.N is not None and p.M is not None and p.M > p.N / 4:
                p.skip = "M > N/4: dense is the right tool"
            elif p.memory > MEMORY_LIMIT:
                p.skip = f"memory {p.memory / 1e9:.1f} GB > {MEMORY_LIMIT / 1e9:.0f} GB"
            elif p.estimate > CALL_LIMIT[mode]:
                p.skip = f"est. {p.estimate:.2g} s/call > {CALL_LIMIT[mode]:g} s"
            points.append(p)
    return points


def planned_seconds(points: List[Point], min_time: float) -> float:
    """Rough wall time of running the plan (timing only, not setup)."""
    return sum(max(min_time + 2 * p.estimate, 5 * p.estimate) for p in points if not p.skip)


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------
def uniform(*shape, gen) -> torch.Tensor:
    return torch.empty(*shape).uniform_(-1.0, 1.0, generator=gen)


def ids_to_bitmap(ids: torch.Tensor, num_labels: int) -> torch.Tensor:
    """int32 bitmap [B, ceil(N / 32)] with the bits of ids [B, M] (int64,
    duplicates allowed) set."""
    B = ids.shape[0]
    words = (num_labels + 31) // 32
    rows = torch.arange(B, dtype=torch.int64).unsqueeze(1).expand_as(ids)
    flat = torch.unique((rows * num_labels + ids).reshape(-1))
    r, i = flat // num_labels, flat % num_labels
    acc = torch.zeros(B * words, dtype=torch.int64)
    acc.index_add_(0, r * words + i // 32, torch.ones_like(i) << (i % 32))  # distinct bits: sum == or
    acc = torch.where(acc >= 2**31, acc - 2**32, acc)
    return acc.to(torch.int32).view(B, words)


def pool_size(bytes_touched_per_call: float, bytes_per_item: float, *, max_items: int = 64,
              max_bytes: float = 512e6) -> int:
    """Inputs to rotate through so the pool touches ~4x the last-level cache."""
    want = math.ceil(4 * last_level_cache_bytes() / max(1.0, bytes_touched_per_call))
    cap = max(1, int(max_bytes // max(1.0, bytes_per_item)))
    return int(max(1, min(want, max_items, cap)))


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------
def _time(fn, min_time: float) -> float:
    with torch.inference_mode():
        return time_call(fn, min_time=min_time, min_reps=3)


def run_point(p: Point, tensors: Dict[str, object], gen: torch.Generator, min_time: float) -> float:
    """Time one point (seconds per call); tensors holds W, b for (N, d) and
    tables for (N, M), created by the caller."""
    N, d, B, M = p.N, p.d, p.B, p.M
    if p.op == "hash_codes":
        proj = torch.randn(TABLES, HASH_BITS, d, generator=gen)
        xs = [uniform(B, d, gen=gen) for _ in range(8)]
        return _time(lambda i: lss.hash_codes(xs[i % 8], proj, backend="cpu"), min_time)
    if p.op == "bucket_lookup":
        offsets, items, K = tensors[("tables", N, M)]
        n_pool = pool_size(p.bytes, B * TABLES * F32, max_items=16)
        codes = [torch.randint(0, 2**K, (B, TABLES), generator=gen, dtype=torch.int32) for _ in range(n_pool)]
        return _time(lambda i: lss.bucket_lookup(codes[i % n_pool], offsets, items, N, M, backend="cpu"), min_time)
    if p.op == "topk_gathered":
        n_pool = pool_size(p.bytes, 2 * B * M * F32, max_items=8)
        logits = [uniform(B, M, gen=gen) for _ in range(n_pool)]
        ids = [torch.randint(0, 2**30, (B, M), generator=gen, dtype=torch.int32) for _ in range(n_pool)]
        return _time(lambda i: lss.topk_gathered(logits[i % n_pool], ids[i % n_pool], TOPK, backend="cpu"), min_time)

    W, b = tensors[("weight", N, d)]
    if p.op == "dense linear+topk":
        x = uniform(B, d, gen=gen)
        return _time(lambda i: torch.topk(torch.nn.functional.linear(x, W, b), TOPK), min_time)

    rows_per_call = F32 * B * M * (d + 1)
    bitmap_op = p.op.startswith("bitmap")
    item_bytes = F32 * B * (math.ceil(N / 32) if bitmap_op else M)
    n_pool = pool_size(rows_per_call, item_bytes, max_items=32 if not bitmap_op else 8)
    xs = [uniform(B, d, gen=gen) for _ in range(min(n_pool, 4))]
    ids = [torch.randint(0, N, (B, M), generator=gen, dtype=torch.int64) for _ in range(n_pool)]
    ops = torch.ops.lsskernels
    if p.op == "gathered_logits fwd":
        ids32 = [t.to(torch.int32) for t in ids]
        return _time(lambda i: lss.gathered_logits(xs[i % len(xs)], W, b, ids32[i % n_pool], backend="cpu"), min_time)
    if p.op == "gathered_logits bwd":
        ids32 = [t.to(torch.int32) for t in ids]
        grad = uniform(B, M, gen=gen)
        return _time(lambda i: ops.gathered_logits_backward(grad, xs[i % len(xs)], W, ids32[i % n_pool],
                                                            True, True, True), min_time)
    bitmaps = [ids_to_bitmap(t, N) for t in ids]
    del ids
    if p.op == "bitmap_sparse_matmul fwd":
        with torch.inference_mode():
            p.result["nnz per query"] = float(lss.bitmap_sparse_matmul(xs[0], W, b, bitmaps[0], backend="cpu")[1][-1]) / B
        return _time(lambda i: lss.bitmap_sparse_matmul(xs[i % len(xs)], W, b, bitmaps[i % n_pool], backend="cpu"),
                     min_time)
    if p.op == "bitmap_sparse_matmul bwd":
        with torch.inference_mode():
            row_ptrs = [lss.bitmap_sparse_matmul(xs[0], W, b, bm, backend="cpu")[1] for bm in bitmaps]
        grads = [uniform(int(rp[-1]), gen=gen) for rp in row_ptrs]
        p.result["nnz per query"] = float(row_ptrs[0][-1]) / B
        return _time(lambda i: ops.bitmap_sparse_matmul_backward(grads[i % n_pool], xs[i % len(xs)], W,
                                                                 bitmaps[i % n_pool], row_ptrs[i % n_pool],
                                                                 True, True, True), min_time)
    raise ValueError(p.op)


def _prepare(p: Point, tensors: Dict[tuple, object], gen: torch.Generator) -> None:
    """Create the shared tensors a point needs, dropping ones it does not."""
    need = set()
    if p.N is not None and p.d is not None:
        need.add(("weight", p.N, p.d))
    if p.op == "bucket_lookup":
        need.add(("tables", p.N, p.M))
    for key in [k for k in tensors if k not in need]:
        del tensors[key]
    for key in need - set(tensors):
        if key[0] == "weight":
            tensors[key] = (uniform(key[1], key[2], gen=gen), uniform(key[1], gen=gen))
        else:
            _, N, M = key
            K = lookup_bits(N, M)
            codes = torch.randint(0, 2**K, (N, TABLES), generator=gen, dtype=torch.int32)
            offsets, items = lss.build_tables(codes, K, backend="cpu")
            tensors[key] = (offsets, items, K)


def _order(points: List[Point]) -> List[Point]:
    """Group points sharing a weight matrix or tables so each is built once."""
    return sorted(points, key=lambda p: (p.N or 0, p.d or 0, OPS.index(p.op), p.B or 0, p.M or 0))


def row_of(p: Point, rates: Dict[str, float], dense: Dict[tuple, float]) -> Dict[str, object]:
    row = {"op": p.op, "N": p.N if p.N is not None else "-", "d": p.d if p.d is not None else "-",
           "B": p.B if p.B is not None else "-", "M": p.M if p.M is not None else "-"}
    if p.skip:
        row.update({"ms": "skipped", "note": p.skip})
        return row
    t = p.result["seconds"]
    row["ms"] = 1e3 * t
    row["GB/s"] = p.bytes / t / 1e9
    row["% bw"] = 100 * p.bytes / t / 1e9 / rates["bandwidth_GBps"]
    if p.flops:
        row["GFLOP/s"] = p.flops / t / 1e9
        row["% mm"] = 100 * p.flops / t / 1e9 / rates["matmul_GFLOPs"]
    else:
        row["GFLOP/s"] = "-"
        row["% mm"] = "-"
    if p.op.endswith("fwd") and (p.N, p.d, p.B) in dense:
        row["dense ms"] = 1e3 * dense[(p.N, p.d, p.B)]
        row["dense / op"] = dense[(p.N, p.d, p.B)] / t
    if "nnz per query" in p.result:
        row["note"] = f"{p.result['nnz per query']:.0f} set bits/query"
    return row


COLUMNS = ["op", "N", "d", "B", "M", "ms", "GB/s", "% bw", "GFLOP/s", "% mm", "dense ms", "dense / op", "note"]


def run(ctx: RunContext, *, grid: Optional[Dict[str, List[int]]] = None, ops: Optional[List[str]] = None,
        plan_only: bool = False, min_time: Optional[float] = None, seed: int = 0,
        rates: Optional[Dict[str, float]] = None) -> Dict[str, object]:
    """Run (or with plan_only, list) the grid; rates overrides the measured
    machine rates (tests)."""
    mode = "quick" if ctx.quick else "full"
    grid = grid or (QUICK_GRID if ctx.quick else FULL_GRID)
    min_time = min_time if min_time is not None else ctx.min_time()
    rates = rates or machine_rates(quick=ctx.quick)
    points = build_plan(grid, rates, mode)
    if ops:
        points = [p for p in points if p.op in ops]
    runnable = [p for p in points if not p.skip]
    ctx.log(f"ops: {len(runnable)} points to run, {len(points) - len(runnable)} skipped; timing alone "
            f"estimated at {fmt_seconds(planned_seconds(points, min_time))} (plus input setup)")
    if plan_only:
        rows = [{"op": p.op, "N": p.N, "d": p.d, "B": p.B, "M": p.M, "est ms": 1e3 * p.estimate,
                 "memory GB": p.memory / 1e9, "skip": p.skip} for p in points]
        ctx.table("ops plan (nothing run)", rows, ["op", "N", "d", "B", "M", "est ms", "memory GB", "skip"],
                  rates_line(rates))
        return {"rows": rows, "rates": rates}

    gen = torch.Generator().manual_seed(seed)
    tensors: Dict[tuple, object] = {}
    start = time.perf_counter()
    for i, p in enumerate(_order(runnable)):
        _prepare(p, tensors, gen)
        p.result["seconds"] = run_point(p, tensors, gen, min_time)
        if ctx.verbose and (i % 20 == 0 or i == len(runnable) - 1):
            ctx.log(f"  ops {i + 1}/{len(runnable)} ({fmt_seconds(time.perf_counter() - start)}): {p.op} "
                    f"N={p.N} d={p.d} B={p.B} M={p.M}: {1e3 * p.result['seconds']:.3f} ms")
    tensors.clear()
    dense = {(p.N, p.d, p.B): p.result["seconds"] for p in runnable if p.op == "dense linear+topk"}
    rows = [row_of(p, rates, dense) for p in points]
    notes = (f"{rates_line(rates)}.\n\nms: median time per call; GB/s: minimum bytes read + written / time "
             f"(distinct weight rows once; backward ops include writing the dense [N, d] weight gradient); "
             f"% bw, % mm: of the machine's measured bandwidth and matmul rate; dense: nn.Linear + topk({TOPK}) "
             f"at the same N, d, B. Candidates are uniform random ids (worst-case locality). Skipped points "
             f"say why. fp32, L = {TABLES} tables.")
    text = ctx.table("Per-op CPU kernels", rows, COLUMNS, notes)
    ctx.write_markdown("ops", text)
    payload = {"section": "ops", "grid": grid, "rates": rates, "min_time": min_time,
               "call_limit_s": CALL_LIMIT[mode], "memory_limit_bytes": MEMORY_LIMIT, "rows": rows,
               "points": [{"op": p.op, "N": p.N, "d": p.d, "B": p.B, "M": p.M, "min_bytes": p.bytes,
                           "flops": p.flops, "memory": p.memory, "estimate_s": p.estimate, "skip": p.skip,
                           **p.result} for p in points],
               "seconds": time.perf_counter() - start}
    ctx.write_json("ops", payload)
    return payload
