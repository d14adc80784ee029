"""Labels added and removed without a rebuild: what it costs against fit(),
and how well the added labels are found against a full refit.

    python -m bench.label_updates [--quick] [--labels N] [--fraction 0.1] [--threads 2]

The synthetic task (lsskernels.data.make_synthetic_task; full N = 670K,
d = 128, 50K fit pairs, 5K test queries; quick N = 50K, d = 64). A layer is
fitted on the labels outside a random `fraction` of them (and their pairs);
then add_labels() appends those labels with their training pairs. Compared
with a full fit() on every label: P@1 on the test queries of the added
labels (with its paired standard error), and on all test queries. Then the
cost of adding and of removing 1% of N against the fit's time, each the
median of three calls on copies of the fitted layer. Prints a table and
writes bench/results/label_updates[-quick].json.
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import torch

import lsskernels as lss
from lsskernels.data import make_synthetic_task

from .common import machine_stamp, stamp_line, write_json


def _linear(w, b):
    lin = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def _hits(layer, x, y):
    out = torch.cat([layer.predict(x[s : s + 1024], 1)[1][:, 0] for s in range(0, x.shape[0], 1024)])
    return (out == y).double()


def _median_seconds_on_copies(layer, fn, reps=3):
    """Median seconds of fn(copy) over fresh copies of layer, each synced
    first (a copy's parameters are new objects: its first call re-encodes)."""
    times = []
    for _ in range(reps):
        c = copy.deepcopy(layer)
        c.sync_index()
        t = time.perf_counter()
        fn(c)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--labels", type=int, default=None)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--candidates", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n_labels = args.labels or (50_000 if args.quick else 670_000)
    dim, n_train, n_test = (64, 20_000, 2_000) if args.quick else (128, 50_000, 5_000)
    stamp = machine_stamp()
    print(stamp_line(stamp))
    t = make_synthetic_task(n_labels, dim, n_train, n_test, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    perm = torch.randperm(n_labels, generator=gen)
    new = perm[: int(args.fraction * n_labels)].sort().values
    old = perm[int(args.fraction * n_labels):].sort().values
    # Relabel so the old labels come first (ids 0..|old|-1) and the new ones after.
    order = torch.cat([old, new])
    relabel = torch.empty(n_labels, dtype=torch.int64)
    relabel[order] = torch.arange(n_labels)
    w, b = t.weight[order], t.bias[order]
    ytr, yte = relabel[t.train_y], relabel[t.test_y]
    n_old = old.numel()
    seen_old = ytr < n_old

    layer = lss.LSSLinear.from_linear(_linear(w[:n_old], b[:n_old]), max_candidates=args.candidates).eval()
    t0 = time.perf_counter()
    layer.fit(t.train_x[seen_old], ytr[seen_old], progress=False)
    fit_old_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    layer.add_labels(w[n_old:], b[n_old:], queries=t.train_x[~seen_old], query_labels=ytr[~seen_old] - n_old)
    add_s = time.perf_counter() - t0

    refit = lss.LSSLinear.from_linear(_linear(w, b), max_candidates=args.candidates).eval()
    t0 = time.perf_counter()
    refit.fit(t.train_x, ytr, progress=False)
    fit_s = time.perf_counter() - t0

    is_new = yte >= n_old
    h_add, h_refit = _hits(layer, t.test_x, yte), _hits(refit, t.test_x, yte)
    dense = torch.cat([torch.nn.functional.linear(t.test_x[s : s + 512], w, b).argmax(1)
                       for s in range(0, n_test, 512)]) == yte
    d = (h_add - h_refit)[is_new]
    rows = {
        "labels": n_labels, "dim": dim, "added": int(new.numel()), "test queries of added labels": int(is_new.sum()),
        "P@1 added labels, add_labels": h_add[is_new].mean().item(),
        "P@1 added labels, refit": h_refit[is_new].mean().item(),
        "P@1 added labels, dense": dense[is_new].double().mean().item(),
        "add - refit, points": 100 * d.mean().item(),
        "its paired SE, points": 100 * d.std().item() / math.sqrt(max(1, d.numel())),
        "P@1 all, add_labels": h_add.mean().item(), "P@1 all, refit": h_refit.mean().item(),
        "fit s (refit, all labels)": fit_s, "fit s (old labels)": fit_old_s,
        f"add_labels s ({args.fraction:.0%} of N, with pairs)": add_s,
    }
    # 1% of N: add (with pairs) and remove, each on a copy of the refitted layer.
    k = max(1, n_labels // 100)
    extra_w = w[:k] + 0.01 * torch.randn(k, dim, generator=gen)
    q = t.train_x[:k]
    rows["add 1% s"] = _median_seconds_on_copies(
        refit, lambda c: c.add_labels(extra_w, b[:k], queries=q, query_labels=torch.arange(k)))
    ids = torch.randperm(n_labels, generator=gen)[:k]
    rows["remove 1% s"] = _median_seconds_on_copies(refit, lambda c: c.remove_labels(ids))
    rows["refit space"] = refit.index.space
    rows["add 1% / fit"] = rows["add 1% s"] / fit_s
    rows["remove 1% / fit"] = rows["remove 1% s"] / fit_s
    for key, value in rows.items():
        print(f"{key:45s} {value:.4f}" if isinstance(value, float) else f"{key:45s} {value}")
    path = write_json("label_updates-quick" if args.quick else "label_updates", {"machine": stamp, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
