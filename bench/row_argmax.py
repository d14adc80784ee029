"""The best table row of many rows (lsskernels/row_argmax.py), the step that
dominates fit() at many labels: the k-means assignment of labels to
centroids and the calibration's dense top-1 of its held-out queries.

    python -m bench.row_argmax [--quick] [--threads 2] [--out DIR]

Three ways, on the same rows and tables, in one process:
- "gemm + max": one fp32 GEMM per row chunk and torch.max(1), the path
  before 0.9.6;
- "exact": RowArgmax without the screen (fp32 GEMM, two-stage argmax);
- "bf16 screen": RowArgmax with it (bf16 GEMM on centred rows, each row's
  SCREEN_KEEP best rescored in fp32); timed only where the CPU multiplies
  bf16 natively (elsewhere a bf16 GEMM is slower than fp32 and fit() does
  not use it).

Assignment: clustered rows (d = 129, like the bias-augmented labels of a
d = 128 layer) to P centroids drawn from them, P from 1,024 to 32,768;
seconds per 100,000 rows and the share of rows given the same centroid as
"gemm + max". Dense top-1: 2,000 queries against P = 2M labels (quick: 500
against 100K), seconds per 100,000 queries and agreement. Prints a table, writes
DIR/row_argmax[-quick].{json,md,png}.
"""
from __future__ import annotations

import argparse
import time

import torch

from lsskernels import _ops, fit_pairs
from lsskernels import row_argmax as ra
from lsskernels.partition import kmeans as km

from .common import machine_stamp, markdown_table, stamp_line, write_report

D = 129


def _clustered(n: int, clusters: int, gen: torch.Generator) -> torch.Tensor:
    centres = 3 * torch.randn(clusters, D, generator=gen) + 1.0  # off the origin, as trained weights are
    return centres[torch.randint(clusters, (n,), generator=gen)] + torch.randn(n, D, generator=gen)


def _gemm_max(v: torch.Tensor, c: torch.Tensor, block: int = 1 << 20) -> torch.Tensor:
    """0.9.5's nearest_centroid: [v, 1] @ [c, -|c|^2/2]^T and max(1)."""
    scored = km._scored(c).T.contiguous()
    chunk = max(256, block // c.shape[0])
    rows = torch.ones(chunk, v.shape[1] + 1)
    scores = torch.empty(chunk, c.shape[0])
    best = torch.empty(chunk)
    out = torch.empty(v.shape[0], dtype=torch.int64)
    for s in range(0, v.shape[0], chunk):
        n = min(chunk, v.shape[0] - s)
        rows[:n, :-1] = v[s : s + n]
        torch.mm(rows[:n], scored, out=scores[:n])
        torch.max(scores[:n], 1, out=(best[:n], out[s : s + n]))
    return out


def _timed(fn):
    fn_out = fn()  # warm: buffers, oneDNN's kernels
    t = time.perf_counter()
    fn_out = fn()
    return time.perf_counter() - t, fn_out


def _with_screen(on: bool, fn):
    saved = ra.SCREEN_MIN_ROWS
    ra.SCREEN_MIN_ROWS = 0 if on else 1 << 62
    try:
        return _timed(fn)
    finally:
        ra.SCREEN_MIN_ROWS = saved


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.row_argmax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stamp = machine_stamp()
    native = _ops.cpu_has_bf16_dot()
    stamp["cpu_has_bf16_dot"] = native
    print(stamp_line(stamp) + f", native bf16 dot products: {native}")
    gen = torch.Generator().manual_seed(0)
    n = 5_000 if args.quick else 50_000
    counts = (1024, 8192) if args.quick else (1024, 4096, 8192, 16384, 32768)
    ways = ("gemm + max", "exact") + (("bf16 screen",) if native else ())
    rows = []
    for p in counts:
        data = _clustered(n + p, max(64, p // 4), gen)
        v, c = data[:n], data[n:]
        base_s, base = _timed(lambda: _gemm_max(v, c))
        for way in ways:
            if way == "gemm + max":
                s, got = base_s, base
            else:
                s, got = _with_screen(way == "bf16 screen", lambda: km.nearest_centroid(v, c))
            rows.append({"step": "assignment", "P": p, "way": way, "s / 100K rows": s * 1e5 / n,
                         "x gemm + max": base_s / s, "same as gemm + max": f"{float((got == base).double().mean()):.6f}"})
    labels, queries = (100_000, 500) if args.quick else (2_000_000, 2_000)
    w = _clustered(labels, 4096, gen)
    weight, bias, x = w[:, :-1].contiguous(), w[:, -1].contiguous(), _clustered(queries, 64, gen)[:, :-1]
    base_s, base = _timed(lambda: fit_pairs._dense_top1_linear(weight, bias, x, 256,
                                                                torch.empty(queries, dtype=torch.int64)))
    for way in ways:
        if way == "gemm + max":
            s, got = base_s, base
        else:
            s, got = _with_screen(way == "bf16 screen", lambda: fit_pairs.dense_top1(weight, bias, x))
        rows.append({"step": f"dense top-1 of {queries:,} queries", "P": labels, "way": way,
                     "s / 100K rows": s * 1e5 / queries, "x gemm + max": base_s / s,
                     "same as gemm + max": f"{float((got == base).double().mean()):.6f}"})
    table = markdown_table(rows, ["step", "P", "way", "s / 100K rows", "x gemm + max", "same as gemm + max"])
    print(table)

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 4))
        for way in ways:
            pts = [(r["P"], r["s / 100K rows"]) for r in rows if r["way"] == way and r["step"] == "assignment"]
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=way)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("centroids P")
        ax.set_ylabel("s per 100,000 rows")
        ax.set_title("k-means assignment, d = 129")
        ax.legend()
        return fig

    name = "row_argmax-quick" if args.quick else "row_argmax"
    write_report(args.out, name, {"machine": stamp, "rows": n, "results": rows},
                 stamp_line(stamp) + f", native bf16 dot products: {native}\n\n" + table + "\n", draw)
    return {"machine": stamp, "results": rows}


if __name__ == "__main__":
    main()
