"""LSSLinear.predict latency at batch 1 and batch 256 on one layer, for A/B
runs of two versions on the same machine (the version is whatever
`lsskernels` imports: run it once per checkout, alternating).

    python -m bench.predict_latency [--labels 100000] [--dim 128] [--candidates 256] [--nprobe 4]
                                    [--threads 1] [--rounds 7] [--out FILE]

An unfitted partition index (nprobe fixed, so both versions do the same
work) over an nn.Linear's random initialisation, Gaussian queries; each
figure is the best of --rounds rounds of about 0.2 s (the least disturbed
round). Prints one JSON line {"version", "commit", "b1 us", "b256 us/q"} and
appends it to --out if given. A version before `index=` (0.6) is given the
same index through its keywords.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import torch


def _rounds(fn, rounds: int, seconds: float = 0.2) -> float:
    fn()
    t = time.perf_counter()
    fn()
    reps = max(1, int(seconds / max(time.perf_counter() - t, 1e-7)))
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.predict_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--nprobe", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import lsskernels as lss
    from bench.common import git_commit

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            layer = lss.LSSLinear(args.dim, args.labels, max_candidates=args.candidates,
                                  index=lss.PartitionConfig(nprobe=args.nprobe))
        except (TypeError, AttributeError):  # before index= (0.6)
            layer = lss.LSSLinear(args.dim, args.labels, max_candidates=args.candidates, nprobe=args.nprobe)
    layer.eval()
    x1 = torch.randn(1, args.dim)
    x256 = torch.randn(256, args.dim)
    with torch.no_grad():  # (not inference_mode: versions before 0.7 built no index under it)
        layer.predict(x1, 1)  # builds the index
        out = {"version": lss.__version__, "commit": git_commit(), "file": lss.__file__,
               "b1 us": 1e6 * _rounds(lambda: layer.predict(x1, 1), args.rounds),
               "b256 us/q": 1e6 * _rounds(lambda: layer.predict(x256, 1), args.rounds) / 256}
    line = json.dumps(out)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
