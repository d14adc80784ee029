"""Scaling: time per query of LSSLinear.predict at a fixed candidate budget
against the number of labels N (LSS should stay flat while dense nn.Linear +
topk grows linearly), and against the batch size at a fixed N; the naive
PyTorch gather (W[ids] + bmm on the same candidates) beside them.

    python -m bench scaling [--quick] [--scaling-candidates 2048]

Timing only: the layer has nn.Linear's random initialisation and random
SimHash tables with K chosen so a bucket holds about 2M / L labels (L = 16),
queries are Gaussian; max_candidates = M caps the candidates. P@1 is
meaningless here and not reported. Writes scaling.json / .md and two PNGs
(scaling_n.png, scaling_batch.png).
"""
from __future__ import annotations

import math
import time
from typing import Dict, List

import torch

import lsskernels as lss
from bench.common import RunContext, matplotlib_pyplot, time_per_query
from bench.methods import LSS, Dense, NaiveGather

TABLES = 16
K_TOP = 5
FULL = {"N": [10_000, 30_000, 100_000, 300_000, 670_000, 1_000_000, 3_000_000], "N_batch": [1, 256],
        "batch_N": 670_000, "B": [1, 4, 16, 64, 256, 1024]}
QUICK = {"N": [10_000, 100_000], "N_batch": [1, 256], "batch_N": 100_000, "B": [1, 16, 256]}
COLUMNS_N = ["N", "B", "candidates", "lss ms/q", "naive ms/q", "dense ms/q", "dense / lss", "naive / lss", "build s"]
COLUMNS_B = ["B", "N", "candidates", "lss ms/q", "naive ms/q", "dense ms/q", "dense / lss", "naive / lss"]


def scaling_bits(num_labels: int, candidates: int, tables: int = TABLES) -> int:
    return int(min(24, max(1, round(math.log2(max(2.0, num_labels * tables / (2 * candidates)))))))


def make_layer(num_labels: int, dim: int, candidates: int, seed: int):
    torch.manual_seed(seed)
    start = time.perf_counter()
    layer = lss.LSSLinear(dim, num_labels, index=lss.SimHashConfig(num_tables=TABLES,
                                                                  bits=scaling_bits(num_labels, candidates)),
                          max_candidates=candidates, seed=seed)
    layer.rebuild_index()
    return LSS.wrap(f"LSSLinear random SimHash, M={candidates}", layer, time.perf_counter() - start)


def time_methods(lss_m: LSS, queries: torch.Tensor, batch: int, min_time: float) -> Dict[str, float]:
    dense = Dense(lss_m.layer.weight, lss_m.layer.bias)
    naive = NaiveGather(lss_m)
    out = {}
    with torch.inference_mode():
        for name, m in (("lss", lss_m), ("naive", naive), ("dense", dense)):
            out[name] = time_per_query(lambda xb, m=m: m.search(xb, K_TOP), queries, batch, min_time=min_time)
        out["candidates"] = float(lss_m.layer.candidates(queries[: min(256, queries.shape[0])])[1].double().mean())
    return out


def row(num_labels: int, batch: int, t: Dict[str, float], build: float = None) -> Dict[str, object]:
    r = {"N": num_labels, "B": batch, "candidates": t["candidates"], "lss ms/q": 1e3 * t["lss"],
         "naive ms/q": 1e3 * t["naive"], "dense ms/q": 1e3 * t["dense"], "dense / lss": t["dense"] / t["lss"],
         "naive / lss": t["naive"] / t["lss"]}
    if build is not None:
        r["build s"] = build
    return r


def plot_lines(ctx: RunContext, rows: List[Dict[str, object]], x: str, group: str, base: str, title: str,
               xlabel: str):
    plt = matplotlib_pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.6))
    groups = sorted({r[group] for r in rows})
    styles = {"lss ms/q": ("C3", "o", "LSSLinear.predict"), "naive ms/q": ("C1", "v", "naive gather"),
              "dense ms/q": ("k", "s", "dense nn.Linear + topk")}
    for gi, g in enumerate(groups):
        sel = sorted((r for r in rows if r[group] == g), key=lambda r: r[x])
        for col, (color, marker, name) in styles.items():
            ax.plot([r[x] for r in sel], [r[col] for r in sel], color=color, marker=marker,
                    linestyle=["-", "--", ":"][gi % 3], label=f"{name}, {group}={g}" if len(groups) > 1 else name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time per query (ms, log scale)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return ctx.save_figure(fig, base)


def run(ctx: RunContext, *, candidates: int = 2048, dim: int = 128, grid: Dict[str, object] = None,
        seed: int = 0) -> Dict[str, object]:
    grid = grid or (QUICK if ctx.quick else FULL)
    min_time = ctx.min_time()
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(2048, dim, generator=gen)
    rows_n: List[Dict[str, object]] = []
    rows_b: List[Dict[str, object]] = []
    for n in sorted(set(grid["N"]) | {grid["batch_N"]}):
        m = make_layer(n, dim, candidates, seed)
        ctx.log(f"  scaling: N={n:,}, K={m.layer.index.bits}: tables built in {m.build_seconds:.1f} s")
        if n in grid["N"]:
            for b in grid["N_batch"]:
                rows_n.append(row(n, b, time_methods(m, queries, b, min_time), m.build_seconds))
        if n == grid["batch_N"]:
            for b in grid["B"]:
                rows_b.append(row(n, b, time_methods(m, queries, b, min_time)))
        del m
    note = (f"Fixed candidate budget M = {candidates} (max_candidates), L = {TABLES}, d = {dim}, random weights and "
            f"SimHash tables (timing only); candidates: mean per query. Times per query (median of rounds).")
    text_n = ctx.table("Scaling with the number of labels N", rows_n, COLUMNS_N, note)
    text_b = ctx.table(f"Scaling with the batch size, N = {grid['batch_N']:,}", rows_b, COLUMNS_B, note)
    ctx.write_markdown("scaling", text_n + "\n\n" + text_b)
    png_n = plot_lines(ctx, rows_n, "N", "B", "scaling_n", f"time per query vs N (M = {candidates}, d = {dim})",
                       "labels N (log scale)")
    png_b = plot_lines(ctx, rows_b, "B", "N", "scaling_batch",
                       f"time per query vs batch size (N = {grid['batch_N']:,}, M = {candidates}, d = {dim})",
                       "batch size (log scale)")
    payload = {"section": "scaling", "candidates": candidates, "dim": dim, "tables": TABLES, "grid": grid,
               "rows_n": rows_n, "rows_batch": rows_b, "plots": [str(png_n), str(png_b)],
               "seconds": time.perf_counter() - start}
    ctx.write_json("scaling", payload)
    return payload
