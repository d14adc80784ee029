"""Does fit()'s calibration hold on layers it has never seen? Fit with only
max_candidates set, then measure the test P@1 it loses against the dense
layer, as a paired difference with its standard error.

    python -m bench.calibration [--regimes easy hard mid] [--candidates 256] [--threads 2]

Three synthetic regimes of lsskernels.data.make_synthetic_task, chosen to
differ from the bench's own task, none of them used to pick a default:

* easy: N = 50K, d = 64, 20K fit pairs, 5K test queries (P@1 ~0.56, a
  quarter of test labels without a fit pair);
* hard: N = 100K, d = 64, 15K fit pairs, 8K test queries, noise 1.6,
  flatter label prior (P@1 ~0.09, ~70% of test labels without a fit pair);
* mid: N = 100K, d = 96, 30K fit pairs, 8K test queries, noise 1.3
  (P@1 ~0.25, ~45% without a fit pair).

Columns: dense and LSS test P@1, the loss in points (dense - LSS, paired:
the same queries) and its standard error, the unfitted index's P@1 and
fitted - unfitted (paired, with its standard error), agreement with the dense top-1,
the share of test queries whose label has no fit pair, the chosen setting,
fit()'s seconds by stage and what the calibration estimated (its loss bound
and the Good-Turing share). Writes bench/results/calibration.json.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict

import torch

import lsskernels as lss
from lsskernels.data import make_synthetic_task

from .common import machine_stamp, stamp_line, write_json

REGIMES = {
    "easy": dict(num_labels=50_000, dim=64, num_train=20_000, num_test=5_000, seed=11),
    "hard": dict(num_labels=100_000, dim=64, num_train=15_000, num_test=8_000, seed=12, noise=1.6,
                 zipf_exponent=0.6),
    "mid": dict(num_labels=100_000, dim=96, num_train=30_000, num_test=8_000, seed=13, noise=1.3,
                zipf_exponent=0.8),
}


def run(name: str, candidates: int) -> dict:
    t = make_synthetic_task(**REGIMES[name])
    n, d = t.weight.shape
    lin = torch.nn.Linear(d, n)
    with torch.no_grad():
        lin.weight.copy_(t.weight)
        lin.bias.copy_(t.bias)
    layer = lss.LSSLinear.from_linear(lin, max_candidates=candidates).eval()
    t0 = time.perf_counter()
    rep = layer.fit(t.train_x, t.train_y, progress=False)
    fit_s = time.perf_counter() - t0
    # The unfitted index beside it: fit() should not lose what it had (its floor).
    unfitted = lss.LSSLinear.from_linear(lin, max_candidates=candidates).eval()
    unfitted.rebuild_index()
    top1 = lambda m: torch.cat([m.predict(t.test_x[s : s + 1024], 1)[1][:, 0]  # noqa: E731
                                for s in range(0, t.test_x.shape[0], 1024)])
    with torch.no_grad():
        dense_top = torch.cat([lin(t.test_x[s : s + 1024]).argmax(1) for s in range(0, t.test_x.shape[0], 1024)])
        lss_top, unfitted_top = top1(layer), top1(unfitted)
    y = t.test_y
    hd, hl, hu = (dense_top == y).double(), (lss_top == y).double(), (unfitted_top == y).double()
    diff = hd - hl
    seen = torch.zeros(n, dtype=torch.bool)
    seen[t.train_y] = True
    return {"regime": name, "N": n, "d": d, "test queries": int(y.numel()), "dense P@1": hd.mean().item(),
            "LSS P@1": hl.mean().item(), "loss, points": 100 * diff.mean().item(),
            "loss SE, points": 100 * diff.std().item() / math.sqrt(y.numel()),
            "agrees with dense": (dense_top == lss_top).double().mean().item(),
            "unfitted P@1": hu.mean().item(), "fitted - unfitted, points": 100 * (hl - hu).mean().item(),
            "fitted - unfitted SE, points": 100 * (hl - hu).std().item() / math.sqrt(y.numel()),
            "test labels without a fit pair": (~seen[y]).double().mean().item(),
            "space": rep.space, "partitions": rep.num_partitions, "nprobe": rep.nprobe, "rerank": rep.rerank,
            "code dim": rep.code_dim, "accepted": rep.accepted,
            "calibration loss bound, points": 100 * rep.loss.bound if rep.loss else None,
            "Good-Turing unseen share": rep.missing_mass, "held out": list(rep.held_out),
            "fit s": fit_s, "fit s by stage": rep.seconds}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--candidates", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stamp = machine_stamp()
    print(stamp_line(stamp))
    rows = [run(name, args.candidates) for name in args.regimes]
    cols = ["regime", "dense P@1", "LSS P@1", "loss, points", "loss SE, points", "unfitted P@1",
            "fitted - unfitted, points", "fitted - unfitted SE, points", "test labels without a fit pair",
            "space", "nprobe", "rerank", "calibration loss bound, points", "Good-Turing unseen share", "fit s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"wrote {write_json('calibration', {'machine': stamp, 'candidates': args.candidates, 'rows': rows})}")


if __name__ == "__main__":
    main()
