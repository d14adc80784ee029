"""`make demo`: dense nn.Linear + topk against LSSLinear on an embedded
synthetic wide-output task (generated in code, no download).

    python -m lsskernels.demo [--labels 200000] [--dim 128] [--threads 2]

Prints, for each method: P@1 against the true labels with its standard
error, its P@1 difference from dense on the same queries with the paired
standard error (what resolves a difference between two methods: only the
queries where they disagree add to it), agreement with the dense top-1,
exact logits per query, and time per query at batch 1 and at batch 256,
all measured in this one run on this machine: dense, LSSLinear with only
max_candidates set (unfitted, then after fit()), and ScaNN configured as
its maintainers advise (when installed). 10,000 test queries by default:
at P@1 0.61 a P@1's standard error is 0.49 point, and a paired
difference's is sqrt(disagreeing share / n), 0.1 point where 1% of the
queries disagree.
"""
from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from . import _ops
from .data import make_synthetic_task
from .layer import LSSLinear


# The demo's two metrics, kept here so it runs from an installed package (the
# benchmarks' versions are in the repository's bench/data/metrics.py).
@torch.no_grad()
def dense_top1(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """argmax(x @ weight.T + bias) per query (ties to the lowest label id),
    in query chunks of at most 2^25 logits."""
    chunk = max(1, (1 << 25) // max(1, weight.shape[0]))
    return torch.cat([(xb @ weight.T + bias).argmax(1) for xb in x.split(chunk)])


def hits_at_1(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool [n]: is pred[i] the label y[i]?"""
    return pred.to(torch.int64) == y


def time_per_query(fn, queries: torch.Tensor, batch: int, max_batches: int) -> float:
    """Mean seconds per query of fn over consecutive batches of queries."""
    batches = [queries[i : i + batch] for i in range(0, queries.shape[0], batch)][:max_batches]
    fn(batches[0])  # warm-up
    start = time.perf_counter()
    for xb in batches:
        fn(xb)
    return (time.perf_counter() - start) / sum(xb.shape[0] for xb in batches)


def evaluate(name, predict_top1, queries, labels, dense_pred, candidates=None):
    pred = torch.cat([predict_top1(queries[i : i + 256]) for i in range(0, queries.shape[0], 256)])
    hits = hits_at_1(pred, labels).double()
    return {
        "method": name,
        "hits": hits,
        "p_at_1": hits.mean().item(),
        "se": math.sqrt(hits.mean().item() * (1 - hits.mean().item()) / hits.numel()),
        "agree_dense": (pred == dense_pred).double().mean().item(),
        "candidates": candidates,
    }


def paired_difference(hits: torch.Tensor, base: torch.Tensor):
    """(mean of hits - base, its standard error) over the same queries."""
    d = hits - base
    return d.mean().item(), d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else 0.0


def scann_rows(task, x, y, dense_pred, threads: int, leaves=(4, 16, 64)):
    """ScaNN beside LSS, configured as the benchmarks do (bench/methods.py,
    ScaNN: tree + anisotropic AH + exact reorder of 100, as its docs advise),
    when both the package and the repository's bench/ are importable."""
    try:
        from bench.methods import ScaNN
    except ImportError as exc:
        print(f"(no ScaNN row: {exc}; `make demo` installs scann and runs from the repository)")
        return []
    t0 = time.perf_counter()
    m = ScaNN(task.weight, task.bias, threads=threads)
    rows = []
    for value in leaves:
        m.set(min(value, m.max_setting))
        top1 = lambda xb: m.search(xb, 1)[:, 0]
        r = evaluate(f"ScaNN, {m.setting} of {m.num_leaves} leaves", top1, x, y, dense_pred, m.reorder)
        r["ms_b1"] = 1e3 * time_per_query(top1, x, 1, 500)
        r["ms_b256"] = 1e3 * time_per_query(top1, x, 256, 4)
        r["setup_s"] = m.build_seconds if not rows else 0.0
        rows.append(r)
    print(f"ScaNN: built in {m.build_seconds:.1f} s ({time.perf_counter() - t0:.1f} s with its sweep)")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--train", type=int, default=100_000, help="training pairs for fit()")
    parser.add_argument("--test", type=int, default=10_000, help="test queries (P@1 standard errors are printed)")
    parser.add_argument("--candidates", type=int, default=256, help="max_candidates: the one knob")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-fit", action="store_true", help="skip fit(); the unfitted index only")
    parser.add_argument("--no-scann", action="store_true", help="skip the ScaNN rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"lsskernels demo: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, extension {'loaded' if _ops.extension_loaded() else 'MISSING (reference)'}")
    t0 = time.perf_counter()
    task = make_synthetic_task(args.labels, args.dim, args.train, args.test, seed=args.seed)
    print(f"task: synthetic, N={task.num_labels:,} labels, d={args.dim}, {args.train:,} train / "
          f"{args.test:,} test queries (generated in {time.perf_counter() - t0:.1f} s)")

    linear = torch.nn.Linear(args.dim, task.num_labels)
    with torch.no_grad():
        linear.weight.copy_(task.weight)
        linear.bias.copy_(task.bias)
    x, y = task.test_x, task.test_y
    dense_pred = dense_top1(task.weight, task.bias, x)

    rows = []
    with torch.inference_mode():
        dense = lambda xb: torch.topk(linear(xb), 1).indices[:, 0]
        r = evaluate("dense nn.Linear + topk", dense, x, y, dense_pred, task.num_labels)
        r["ms_b1"] = 1e3 * time_per_query(dense, x, 1, 50)
        r["ms_b256"] = 1e3 * time_per_query(dense, x, 256, 2)
        rows.append(r)

    t0 = time.perf_counter()
    layer = LSSLinear.from_linear(linear, max_candidates=args.candidates, seed=args.seed).eval()
    layer.rebuild_index()  # (else built on first use)
    build_s = time.perf_counter() - t0
    variants = [(f"LSSLinear, unfitted ({layer.family})", layer, build_s)]
    if not args.no_fit:
        fitted = LSSLinear.from_linear(linear, max_candidates=args.candidates, seed=args.seed)
        t0 = time.perf_counter()
        report = fitted.fit(task.train_x, task.train_y)
        variants.append(("LSSLinear after fit()", fitted.eval(), time.perf_counter() - t0))

    for name, lss_layer, setup_s in variants:
        with torch.inference_mode():
            _, counts = lss_layer.candidates(x)
            counts = counts.clamp(max=lss_layer.index.shortlist(lss_layer.max_candidates, 1))  # scored exactly
            top1 = lambda xb, m=lss_layer: m.predict(xb, 1)[1][:, 0]
            r = evaluate(name, top1, x, y, dense_pred, counts.double().mean().item())
            r["ms_b1"] = 1e3 * time_per_query(top1, x, 1, 500)
            r["ms_b256"] = 1e3 * time_per_query(top1, x, 256, 4)
            r["setup_s"] = setup_s
            rows.append(r)
    if not args.no_scann:
        rows += scann_rows(task, x, y, dense_pred, args.threads)

    print()
    print(f"{x.shape[0]:,} test queries; +- is one standard error (P@1: binomial; vs dense: paired, same queries)")
    print(f"| method | P@1 | vs dense, points | agrees with dense top-1 | exact logits / query | "
          f"ms / query, batch 1 | ms / query, batch 256 | speed-up b1 | speed-up b256 | build/fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = rows[0]
    for r in rows:
        diff, se = paired_difference(r["hits"], base["hits"])
        print(f"| {r['method']} | {r['p_at_1']:.4f} +- {r['se']:.4f} | {100 * diff:+.2f} +- {100 * se:.2f} | "
              f"{r['agree_dense']:.3f} | {r['candidates']:,.0f} | "
              f"{r['ms_b1']:.3f} | {r['ms_b256']:.4f} | {base['ms_b1'] / r['ms_b1']:.1f}x | "
              f"{base['ms_b256'] / r['ms_b256']:.1f}x | {r.get('setup_s', 0):.1f} |")
    if not args.no_fit:
        diff, se = paired_difference(rows[2]["hits"], rows[1]["hits"])
        print(f"\nfit() against the unfitted index on the same queries: {100 * diff:+.2f} +- {100 * se:.2f} points of P@1")


if __name__ == "__main__":
    main()
