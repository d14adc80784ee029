"""Micro-benchmark of the partition family's CPU ops: quantized_probe (the
int8 codes of the centroids: the probe predict() uses) and
quantized_candidates, per call, for the native int8 kernel of this machine
and for LSS_CPU_ISA=avx2 (run in a child process: the kernel tables are
picked once, at load time).

    python -m bench.partition_ops [--labels 670000] [--dim 128] [--partitions 2048]
                                  [--nprobe 4 8 16] [--candidates 100] [--batches 1 256]

The lists: N labels spread over P partitions, each label listed in
`--spill` partitions on average (label-superior spill), so T = spill * N
int8 code rows of Dp = d bytes, contiguous per partition. The probes are the
real quantized_probe output of each query (before 0.6 they were the fp32
probe of the removed partition_probe op, also timed here). `rotating` times each call on the
next query of a pool (its partitions' rows come from L3, not L2: the pool
reads far more rows than L2 holds); `hot` repeats one query (rows in L2).
Times are wall-clock medians (bench.common.time_call) and include the
Python-to-dispatcher call (~3 us); on a shared machine the two-thread rows
mostly measure how long a busy core takes to wake the second thread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import lsskernels as lss
from lsskernels import reference
from lsskernels.partition.probe import probe_codes
from bench.common import machine_stamp, markdown_table, stamp_line, time_call, write_json


def build_lists(num_labels, dim, partitions, spill, seed):
    g = torch.Generator().manual_seed(seed)
    rows = int(num_labels * spill)
    labels = torch.cat([torch.arange(num_labels), torch.randint(0, num_labels, (rows - num_labels,), generator=g)])
    part = torch.randint(0, partitions, (rows,), generator=g)
    order = torch.argsort(part, stable=True)
    counts = torch.bincount(part, minlength=partitions)
    offsets = torch.zeros(partitions + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(counts, 0)
    width = -(-dim // 32) * 32
    codes = torch.randint(-127, 128, (rows, width), generator=g, dtype=torch.int8)
    scales = torch.rand(rows, generator=g) * 0.01 + 0.001
    bias = torch.randn(rows, generator=g) * 0.1
    return (offsets.to(torch.int32), codes, scales, bias, labels[order].to(torch.int32))


def run(args):
    gen = torch.Generator().manual_seed(args.seed)
    lists = build_lists(args.labels, args.dim, args.partitions, args.spill, args.seed)
    centroids = torch.randn(args.partitions, args.dim, generator=gen)
    cbias = torch.randn(args.partitions, generator=gen)
    centroid_codes = probe_codes(centroids)
    probe_list = reference.probe_list(args.partitions, centroids.device)
    sizes = (lists[0][1:] - lists[0][:-1]).to(torch.int64)
    queries = {batch: [torch.randn(batch, args.dim, generator=gen) for _ in range(max(2, args.pool // batch))]
               for batch in args.batches}
    rows_out = []
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for batch in args.batches:
                xs = queries[batch]
                for nprobe in args.nprobe:
                    probes = [lss.quantized_probe(x, *centroid_codes, cbias, nprobe, probe_list) for x in xs]
                    probed = sum(float(sizes[p.long()].sum()) for p in probes) / (len(xs) * batch)

                    def qc(i, hot=False):
                        j = 0 if hot else i % len(xs)
                        return lss.quantized_candidates(xs[j], probes[j], *lists, args.labels, args.candidates)

                    def qprobe(i, hot=False):
                        j = 0 if hot else i % len(xs)
                        return lss.quantized_probe(xs[j], *centroid_codes, cbias, nprobe, probe_list)

                    for name, fn in (("quantized_candidates", qc), ("quantized_probe", qprobe)):
                        rotating = time_call(fn, min_time=args.min_time)
                        hot = time_call(lambda i: fn(i, hot=True), min_time=args.min_time)
                        rows_out.append({
                            "op": name, "batch": batch, "nprobe": nprobe, "int8 isa": lss._ops._C.cpu_int8_isa(),
                            "vector isa": lss._ops._C.cpu_vector_isa().split(" (")[0], "threads": threads,
                            "rows/query": probed if name == "quantized_candidates" else args.partitions,
                            "us/call": 1e6 * rotating, "us/call hot": 1e6 * hot, "us/query": 1e6 * rotating / batch,
                        })
    return rows_out


COLUMNS = ["op", "batch", "nprobe", "int8 isa", "vector isa", "threads", "rows/query", "us/call", "us/call hot",
           "us/query"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=670_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--partitions", type=int, default=2048)
    parser.add_argument("--spill", type=float, default=1.5)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pool", type=int, default=256, help="queries in the rotating pool (all batches)")
    parser.add_argument("--min-time", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isas", nargs="+", default=["native", "avx2"],
                        help="'native' runs here; others in a child with LSS_CPU_ISA set")
    parser.add_argument("--name", default="partition_ops")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run(args)))
        return
    rows = []
    for isa in args.isas:
        if isa == "native":
            rows += run(args)
            continue
        env = dict(os.environ, LSS_CPU_ISA=isa)
        child_argv = list(argv if argv is not None else sys.argv[1:])
        out = subprocess.run([sys.executable, "-m", "bench.partition_ops", *child_argv, "--child"], env=env,
                             capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    rows.sort(key=lambda r: (r["op"], r["batch"], r["nprobe"], r["threads"]))
    stamp = machine_stamp()
    print(f"partition ops, N={args.labels:,} labels, d={args.dim}, P={args.partitions}, spill {args.spill} "
          f"(T={int(args.labels * args.spill):,} code rows), M={args.candidates}, fp32 queries")
    print(stamp_line(stamp))
    print(markdown_table(rows, COLUMNS))
    payload = {"machine": stamp, "config": vars(args), "rows": rows}
    if args.out:
        path = Path(args.out) / f"{args.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))
    else:
        path = write_json(args.name, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
