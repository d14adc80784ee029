"""Gathered logits + top-k against dense nn.Linear + topk and the naive
PyTorch gather (W[ids], then bmm), all in one run.

    python -m bench.gathered_topk [--labels 670000] [--dim 128] [--candidates 2000]

Each timed call uses the next of a pool of candidate sets drawn at random,
so the weight rows it reads are mostly cold (the pool touches far more rows
than the last-level cache holds); `hot` repeats one candidate set instead.
"""
from __future__ import annotations

import argparse

import torch

import lsskernels as lss
from bench.common import machine_stamp, markdown_table, stamp_line, time_call, write_json


def run(num_labels: int, dim: int, candidates: int, batches, k: int = 10, pool: int = 32, seed: int = 0,
        dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_labels, dim, generator=gen).to(dtype)
    bias = torch.randn(num_labels, generator=gen).to(dtype)
    linear = torch.nn.Linear(dim, num_labels, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    rows = []
    for batch in batches:
        x = torch.randn(batch, dim, generator=gen).to(dtype)
        ids32 = [torch.randint(0, num_labels, (batch, candidates), generator=gen, dtype=torch.int32)
                 for _ in range(pool)]
        ids64 = [t.to(torch.int64) for t in ids32]

        def dense(i):
            return torch.topk(linear(x), k)

        def lss_cpu(i, hot=False):
            ids = ids32[0 if hot else i % pool]
            logits = lss.gathered_logits(x, weight, bias, ids, backend="cpu")
            return lss.topk_gathered(logits, ids, k, backend="cpu")

        def naive(i, hot=False):
            ids = ids64[0 if hot else i % pool]
            logits = torch.bmm(weight[ids], x.unsqueeze(2)).squeeze(2) + bias[ids]
            top = torch.topk(logits, k)
            return top.values, ids.gather(1, top.indices)

        with torch.inference_mode():
            t_dense = time_call(dense, min_time=1.0 if batch == 1 else 2.0, min_reps=3)
            t_lss = time_call(lss_cpu)
            t_naive = time_call(naive)
            t_lss_hot = time_call(lambda i: lss_cpu(i, hot=True))
            t_naive_hot = time_call(lambda i: naive(i, hot=True))
        bytes_read = batch * candidates * dim * weight.element_size()
        rows.append({
            "batch": batch,
            "dense ms": 1e3 * t_dense,
            "naive gather ms": 1e3 * t_naive,
            "lss ms": 1e3 * t_lss,
            "lss GB/s": bytes_read / t_lss / 1e9,
            "dense / lss": t_dense / t_lss,
            "naive / lss": t_naive / t_lss,
            "hot: naive ms": 1e3 * t_naive_hot,
            "hot: lss ms": 1e3 * t_lss_hot,
            "hot: naive / lss": t_naive_hot / t_lss_hot,
        })
    return rows


COLUMNS = ["batch", "dense ms", "naive gather ms", "lss ms", "lss GB/s", "dense / lss", "naive / lss",
           "hot: naive ms", "hot: lss ms", "hot: naive / lss"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=670_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="gathered_topk")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stamp = machine_stamp()
    rows = run(args.labels, args.dim, args.candidates, args.batches)
    print(f"gathered logits + top-10, N={args.labels:,}, d={args.dim}, M={args.candidates} candidates/query, fp32")
    print(stamp_line(stamp))
    print(markdown_table(rows, COLUMNS))
    path = write_json(args.name, {"machine": stamp, "config": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
