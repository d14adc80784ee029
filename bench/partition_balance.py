"""How well the unfitted label-space partitions serve a MIPS probe: the
k-means of the partition index (lsskernels/partition/kmeans.py) with and
without its split of emptied centroids (before 0.9.7 an emptied centroid
kept its place and stayed empty).

    python -m bench.partition_balance [--quick] [--seeds 0 1 2] [--tasks synthetic wordnet lm freedict minilm]
                                      [--threads 2] [--out DIR]

For each synthetic layer (lsskernels.data.make_synthetic_task, N = 670,000,
d = 128, 5,000 test queries; quick: 50,000, d = 64, 1,000), one generator
seed a row, and each real-data task of the inference bench named in
--tasks (bench/tasks.py, built or loaded from DIR/cache), both ways build
the partitions as an unfitted layer does (partition/fit.build_partitions:
default partition count, seed 0) and report: empty lists, the largest
list against the mean, the share of labels in lists over twice the mean,
and for k = 1 ... 64 probes the share of test queries whose dense top-1
label sits in one of the first k partitions the probe ranks (what any
setting can find at k probes) with the mean rows those k lists hold
(what it scans). Prints a table, writes
DIR/partition_balance[-quick].{json,md,png}.
"""
from __future__ import annotations

import argparse
import time

import torch

from lsskernels.data import make_synthetic_task
from lsskernels.fit_pairs import dense_top1
from lsskernels.partition import kmeans as km
from lsskernels.partition.fit import PartitionFitConfig
from lsskernels.partition.index import PartitionIndex
from lsskernels.reference import augmented_labels

from .common import machine_stamp, markdown_table, stamp_line, write_report

PROBES = (1, 2, 4, 8, 16, 32, 64)
WAYS = {"no split (0.9.6)": False, "split emptied (0.9.7)": True}


def _build(task, split: bool):
    """(index, assignment, seconds): the unfitted label-space partitions as
    partition/fit.build_partitions makes them (its k-means, seed 0), lists
    not encoded (the probe needs the centroids only)."""
    index = PartitionIndex(task.num_labels, task.weight.shape[1], seed=0)
    t = time.perf_counter()
    v = augmented_labels(task.weight, task.bias)
    c = km.kmeans(v, index.num_partitions, iters=PartitionFitConfig.kmeans_iters,
                  sample=PartitionFitConfig.kmeans_sample, gen=torch.Generator().manual_seed(0), split_empty=split)
    index.set_partitions(c[:, :-1], c[:, -1], "labels")
    assign = km.nearest_centroid(v, c)
    return index, assign, time.perf_counter() - t


def measure(task, split: bool) -> dict:
    index, assign, seconds = _build(task, split)
    p = index.num_partitions
    sizes = torch.bincount(assign, minlength=p)
    mean = task.num_labels / p
    k_max = min(max(PROBES), p)
    probes = index.probe(task.test_x, k_max).to(torch.int64)
    home = assign[dense_top1(task.weight, task.bias, task.test_x, screen=False)]
    found = (probes == home[:, None]).to(torch.float64).cumsum(1)
    rows = sizes[probes].to(torch.float64).cumsum(1).mean(0)
    out = {"partitions": p, "build s": seconds, "empty lists": int((sizes == 0).sum()),
           "largest / mean": float(sizes.max()) / mean,
           "labels in lists > 2x mean": float(sizes[sizes > 2 * mean].sum()) / task.num_labels}
    for k in PROBES:
        if k <= k_max:
            out[f"found@{k}"] = float(found[:, k - 1].mean())
            out[f"rows@{k}"] = float(rows[k - 1])
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.partition_balance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["synthetic"],
                        help="synthetic (one layer per seed) and/or the bench's real tasks: wordnet lm freedict minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stamp = machine_stamp()
    print(stamp_line(stamp))
    n, d, test = (50_000, 64, 1_000) if args.quick else (670_000, 128, 5_000)
    layers = []  # (name, seed, task): anything with weight, bias, test_x, num_labels
    if "synthetic" in args.tasks:
        layers += [("synthetic", seed, lambda seed=seed: make_synthetic_task(n, d, 0, test, seed=seed))
                   for seed in args.seeds]
    real = [t for t in args.tasks if t != "synthetic"]
    if real:
        from .common import RunContext
        from .tasks import get_problem

        ctx = RunContext(args.out, quick=args.quick, threads=args.threads)
        layers += [(name, "-", lambda name=name: get_problem(ctx, name)) for name in real]
    rows = []
    for name, seed, load in layers:
        task = load()
        for way, split in WAYS.items():
            rows.append({"task": name, "N": task.num_labels, "d": task.weight.shape[1], "seed": seed,
                         "test queries": task.test_x.shape[0], "way": way, **measure(task, split)})
    shown = [k for k in PROBES if f"found@{k}" in rows[0]]
    columns = (["task", "N", "d", "seed", "test queries", "way", "partitions", "empty lists", "largest / mean",
                "labels in lists > 2x mean"]
               + [f"found@{k}" for k in shown] + [f"rows@{k}" for k in shown if k in (2, 8, 32)] + ["build s"])
    table = markdown_table(rows, columns)
    note = ("\nfound@k: share of the test queries whose dense top-1 label is in the first k partitions "
            "probed; rows@k: mean labels those k lists hold. Unfitted label-space index, default partition count.")
    print(table + note)

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            ks = [k for k in PROBES if f"found@{k}" in r]
            ax.plot([r[f"rows@{k}"] for k in ks], [r[f"found@{k}"] for k in ks], marker="o",
                    linestyle="-" if WAYS[r["way"]] else "--", label=f"{r['task']} {r['seed']}, {r['way']}")
        ax.set_xscale("log")
        ax.set_xlabel("mean labels in the first k probed lists")
        ax.set_ylabel("dense top-1 among them")
        ax.set_title("unfitted label-space partitions")
        ax.legend(fontsize=7)
        return fig

    name = "partition_balance-quick" if args.quick else "partition_balance"
    write_report(args.out, name, {"machine": stamp, "results": rows},
                 stamp_line(stamp) + "\n\n" + table + "\n" + note + "\n", draw)
    return {"machine": stamp, "results": rows}


if __name__ == "__main__":
    main()
