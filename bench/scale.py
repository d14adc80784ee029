"""10^7 labels on one machine: LSSLinear (only max_candidates set) against
ScaNN and dense inference on the synthetic task at a large N, each stage in
its own process so that each one's peak memory is its own.

    python -m bench.scale [--quick] [--labels 10000000] [--candidates 256] [--partitions P] [--out bench/results]
    python -m bench.scale --stage {generate,lss,scann} --task FILE --result DIR/NAME.json  # one stage by hand
    python -m bench.scale --from-stages DIR [--out ...]   # the report from DIR/{generate,lss,scann}.json

The synthetic task (lsskernels.data.make_synthetic_task, d = 128, 50,000
fit pairs, 5,000 test queries; quick: N = 200,000). Stages, each a child
process reading the task from one file (torch.load(mmap=True): the weights
are file-backed pages, shared, never copied):

  generate  make the task and save it; its seconds and peak RSS.
  lss       an LSSLinear(d, N, max_candidates=M) holding the loaded weight
            and bias as its parameters (no copy); fit(train pairs) with the
            peak RSS above the RSS after the weights and pairs were read
            and one fit() of a small random layer ran (its code pages and
            per-thread scratch resident, as in any process that has used
            the library: "warm-up MB" says how much that added; VmHWM reset
            through /proc/self/clear_refs; glibc's mmap threshold at 128 KiB
            so freed blocks leave the RSS); dense P@1 (blocked: never a
            [B, N] logits tensor) and LSS P@1 on every test query; predict
            ms/query at batch 1 and 256.
  scann     ScaNN configured as bench/methods.py's ScaNN (tree with
            2 sqrt(N) leaves, AH 2 dims per block, reorder 100, its own
            search calls); build seconds; P@1 and ms/query at batch 1 and
            256 for leaves_to_search 1, 2, 4, ... up to the leaves.

The table: LSS's P@1 against dense (the 0.3-point bar, with the paired
difference's standard error), fit seconds against ScaNN's build (the 2x
bar), fit's peak memory against the weights' bytes (the 2x bar), and
ScaNN's cheapest setting reaching LSS's P@1 with its times beside LSS's.
Writes <out>/scale[-quick].{json,md,png}.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

D, NUM_TRAIN, NUM_TEST, K_TOP = 128, 50_000, 5_000, 5
BATCHES = (1, 256)


# ------------------------------------------------------------ memory
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _small_mmap_threshold() -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def _load(path: str) -> Dict[str, torch.Tensor]:
    return torch.load(path, mmap=True, weights_only=True)


def _warm_up(lss) -> float:
    """One fit() of a small random layer (8,192 labels, 4,000 pairs), so that
    the library code fit() runs and its per-thread scratch are resident
    before the measured fit; returns the RSS it added, MB."""
    before = _status("VmRSS")
    gen = torch.Generator().manual_seed(1)
    small = lss.LSSLinear(D, 8192, max_candidates=256)
    with torch.no_grad():
        small.weight.copy_(torch.randn(8192, D, generator=gen))
    small.fit(torch.randn(4000, D, generator=gen), torch.randint(0, 8192, (4000,), generator=gen), progress=False)
    del small
    return (_status("VmRSS") - before) / 1e6


# ------------------------------------------------------------ stages
def stage_generate(path: str, labels: int) -> Dict[str, object]:
    from lsskernels.data import make_synthetic_task

    _small_mmap_threshold()
    _reset_peak()
    base = _status("VmRSS")
    start = time.perf_counter()
    task = make_synthetic_task(labels, D, NUM_TRAIN, NUM_TEST, seed=0)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - base
    torch.save({"weight": task.weight, "bias": task.bias, "train_x": task.train_x, "train_y": task.train_y,
                "test_x": task.test_x, "test_y": task.test_y}, path)
    if os.path.exists(path + ".dense"):  # the lss stage's dense top-1 of an older task at this path
        os.unlink(path + ".dense")
    return {"generate s": seconds, "generate peak / weights": peak / (labels * D * 4)}


def _p1(top: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (top == y).to(torch.float64)


def stage_lss(path: str, candidates: int, min_time: float, partitions=None) -> Dict[str, object]:
    import lsskernels as lss
    from bench.common import time_per_query
    from lsskernels.fit_pairs import dense_top1

    _small_mmap_threshold()
    p = _load(path)
    n = p["weight"].shape[0]
    weight_bytes = p["weight"].numel() * p["weight"].element_size()
    # its own weights are replaced (freed) below
    config = None if partitions is None else lss.PartitionConfig(num_partitions=partitions)
    layer = lss.LSSLinear(D, n, max_candidates=candidates, index=config)
    layer.weight = torch.nn.Parameter(p["weight"])
    layer.bias = torch.nn.Parameter(p["bias"])
    # Every page of the weights and fit pairs read: the baseline holds the inputs.
    float(p["weight"].sum()), float(p["train_x"].sum()), int(p["train_y"].sum())
    warm_mb = _warm_up(lss)
    _reset_peak()
    base = _status("VmRSS")
    start = time.perf_counter()
    report = layer.fit(p["train_x"], p["train_y"], progress=True)
    fit_s = time.perf_counter() - start
    fit_peak = _status("VmHWM") - base
    layer.eval()
    x, y = p["test_x"], p["test_y"]
    start = time.perf_counter()
    if os.path.exists(path + ".dense"):  # a rerun of this stage on a kept task (--stage lss by hand)
        dense_top, dense_s = torch.load(path + ".dense")["dense_top"], None  # not timed: loaded
    else:
        dense_top = dense_top1(p["weight"], p["bias"], x)
        dense_s = time.perf_counter() - start
    with torch.inference_mode():
        lss_top = torch.cat([layer.predict(x[s : s + 256], 1)[1][:, 0] for s in range(0, x.shape[0], 256)])
        times = {f"lss B={b} ms/q": 1e3 * time_per_query(lambda q: layer.predict(q, K_TOP), x, b, min_time=min_time)
                 for b in BATCHES}
    dense_hit, lss_hit = _p1(dense_top, y), _p1(lss_top, y)
    diff = dense_hit - lss_hit
    torch.save({"dense_top": dense_top}, path + ".dense")
    return {"N": n, "weights GB": weight_bytes / 1e9, "fit s": fit_s, "fit peak / weights": fit_peak / weight_bytes,
            "warm-up MB": warm_mb,
            "fit stages s": report.seconds, "nprobe": report.nprobe, "rerank": report.rerank,
            "partitions": report.num_partitions, "space": report.space, "accepted": report.accepted,
            "P@1 dense": float(dense_hit.mean()), "P@1 lss": float(lss_hit.mean()),
            "loss (points)": 100 * float(diff.mean()),
            "loss SE (points)": 100 * float(diff.std() / math.sqrt(diff.numel())),
            "dense eval s": dense_s, **times}


def stage_scann(path: str, min_time: float, threads: int) -> Dict[str, object]:
    from bench.common import time_per_query
    from bench.methods import ScaNN

    _small_mmap_threshold()
    p = _load(path)
    x, y = p["test_x"], p["test_y"]
    float(p["weight"].sum())  # the weights read, as in the lss stage
    _reset_peak()
    base = _status("VmRSS")
    method = ScaNN(p["weight"], p["bias"], threads=threads)
    peak = _status("VmHWM") - base
    rows = []
    leaves = 1
    while True:
        method.set(leaves)
        top = torch.cat([method.search(x[s : s + 256], 1)[:, 0] for s in range(0, x.shape[0], 256)])
        row = {"leaves_to_search": method.setting, "P@1": float(_p1(top, y).mean())}
        for b in BATCHES:
            row[f"B={b} ms/q"] = 1e3 * time_per_query(lambda q: method.search(q, K_TOP), x, b, min_time=min_time)
        rows.append(row)
        print(f"  scann leaves {method.setting}: P@1 {row['P@1']:.4f}, {row['B=1 ms/q']:.3f} / "
              f"{row['B=256 ms/q']:.4f} ms/q", flush=True)
        if method.setting >= method.num_leaves:
            break
        leaves *= 2
    return {"scann build s": method.build_seconds, "scann build peak / weights":
            peak / (p["weight"].numel() * p["weight"].element_size()), "num_leaves": method.num_leaves,
            "sweep": rows, "label": method.label}


# ------------------------------------------------------------ driver
def _child(stage: str, args: List[str]) -> Dict[str, object]:
    out = tempfile.mktemp(suffix=".json")
    cmd = [sys.executable, "-m", "bench.scale", "--stage", stage, "--result", out, *args]
    subprocess.run(cmd, check=True)
    with open(out) as f:
        result = json.load(f)
    os.unlink(out)
    return result


def _read_json(path: Path) -> Dict[str, object]:
    with open(path) as f:
        return json.load(f)


def matched(sweep: List[Dict[str, object]], target: float) -> Dict[str, object]:
    """ScaNN's cheapest setting (fewest leaves) reaching P@1 >= target, or {} (never reaches it)."""
    for row in sweep:
        if row["P@1"] >= target:
            return row
    return {}


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 200,000")
    parser.add_argument("--labels", type=int, default=None, help="N (default 10^7; quick 200,000)")
    parser.add_argument("--candidates", type=int, default=None, help="max_candidates (default bench/tasks.py LSS_BUDGET)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=None,
                        help="num_partitions of the LSS layer (default: the layer's own, default_partitions(N))")
    parser.add_argument("--out", default=None, help="output directory (default bench/results)")
    parser.add_argument("--stage", choices=["generate", "lss", "scann"], help=argparse.SUPPRESS)
    parser.add_argument("--task", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--min-time", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--from-stages", default=None,
                        help="write the report from DIR/{generate,lss,scann}.json, the stages run one by one "
                             "with --stage NAME --task FILE --result DIR/NAME.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench.tasks import LSS_BUDGET

    candidates = args.candidates or LSS_BUDGET
    labels = args.labels or (200_000 if args.quick else 10_000_000)
    min_time = args.min_time or (0.1 if args.quick else 0.3)
    if args.stage:
        if args.stage == "generate":
            result = stage_generate(args.task, labels)
        elif args.stage == "lss":
            result = stage_lss(args.task, candidates, min_time, args.partitions)
        else:
            result = stage_scann(args.task, min_time, args.threads)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return result

    from bench.common import RunContext, matplotlib_pyplot

    ctx = RunContext(args.out, quick=args.quick, threads=args.threads)
    common = ["--labels", str(labels), "--candidates", str(candidates), "--threads", str(args.threads),
              "--min-time", str(min_time)] + (["--partitions", str(args.partitions)] if args.partitions else [])
    if args.from_stages:
        # The report from stage results kept by hand (--stage ... --result
        # DIR/{generate,lss,scann}.json, one task file, one machine).
        gen, lss_r, scann_r = (_read_json(Path(args.from_stages) / f"{name}.json")
                               for name in ("generate", "lss", "scann"))
    else:
        with tempfile.TemporaryDirectory(dir=os.environ.get("LSS_SCALE_TMP")) as tmp:
            task = str(Path(tmp) / "task.pt")
            ctx.log(f"generate N = {labels:,}, d = {D}")
            gen = _child("generate", common + ["--task", task])
            ctx.log(f"LSSLinear, max_candidates = {candidates}: fit, evaluate, time")
            lss_r = _child("lss", common + ["--task", task])
            ctx.log("ScaNN: build, sweep leaves_to_search")
            scann_r = _child("scann", common + ["--task", task])
    best = matched(scann_r["sweep"], lss_r["P@1 lss"])
    row = {"N": labels, "P@1 dense": lss_r["P@1 dense"], "P@1 LSS": lss_r["P@1 lss"],
           "loss +- SE (points)": f"{lss_r['loss (points)']:+.2f} +- {lss_r['loss SE (points)']:.2f}",
           "LSS B=1 ms/q": lss_r["lss B=1 ms/q"], "LSS B=256 ms/q": lss_r["lss B=256 ms/q"],
           "ScaNN matched leaves": best.get("leaves_to_search", "never"),
           "ScaNN B=1 ms/q": best.get("B=1 ms/q", ""), "ScaNN B=256 ms/q": best.get("B=256 ms/q", ""),
           "fit s": lss_r["fit s"], "ScaNN build s": scann_r["scann build s"],
           "fit peak / weights": lss_r["fit peak / weights"],
           "ScaNN best P@1": max(r["P@1"] for r in scann_r["sweep"])}
    columns = list(row)
    notes = (f"LSSLinear(d, N, max_candidates={candidates}) + fit() on {NUM_TRAIN:,} pairs, nothing else set "
             f"(chose {lss_r['space']} space, {lss_r['partitions']} partitions, nprobe {lss_r['nprobe']}, "
             f"rerank {lss_r['rerank']}; accepted {lss_r['accepted']}). {scann_r['label']}. P@1 on {NUM_TEST:,} "
             f"test queries; loss = dense P@1 - LSS P@1 (paired SE). ScaNN matched: fewest leaves with P@1 >= "
             f"LSS's. Memory: fit's peak RSS above the RSS holding the weights ({lss_r['weights GB']:.2f} GB) "
             f"and pairs after a warm-up fit of 8,192 random labels (which added "
             f"{lss_r.get('warm-up MB', float('nan')):.0f} MB: library code, per-thread scratch), "
             f"as a multiple of the weights' bytes; the generator's peak was {gen['generate peak / weights']:.2f}x, "
             f"ScaNN's build {scann_r['scann build peak / weights']:.2f}x. {args.threads} threads.")
    text = ctx.table(f"10^7-scale: synthetic, N={labels:,}, d={D}", [row], columns, notes)
    ctx.write_markdown("scale", text)
    payload = {"generate": gen, "lss": lss_r, "scann": scann_r, "row": row, "notes": notes}
    ctx.log(f"wrote {ctx.write_json('scale', payload)}")
    plt = matplotlib_pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, b in zip(axes, BATCHES):
            ax.plot([r[f"B={b} ms/q"] for r in scann_r["sweep"]], [r["P@1"] for r in scann_r["sweep"]], "o-",
                    label="ScaNN (leaves_to_search sweep)")
            ax.plot([lss_r[f"lss B={b} ms/q"]], [lss_r["P@1 lss"]], "r*", markersize=12, label="LSSLinear (M only)")
            ax.axhline(lss_r["P@1 dense"], color="0.5", ls="--", label="dense")
            ax.set_xscale("log")
            ax.set_xlabel(f"ms / query, batch {b}")
            ax.set_ylabel("P@1")
            ax.legend(fontsize=7)
        fig.suptitle(f"synthetic N={labels:,}")
        ctx.save_figure(fig, "scale")
    return payload


if __name__ == "__main__":
    main()
