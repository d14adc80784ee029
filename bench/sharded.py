"""ShardedLSSLinear over gloo on one machine: P@1 and time per query against
the single-process LSSLinear with the same max_candidates, and the gloo
all_gather alone.

    python -m bench.sharded [--quick] [--worlds 2 4] [--candidates 256] [--out bench/results]

The synthetic task (bench/tasks.py: quick N = 50K, d = 64, 20K fit pairs, 1K
test queries; full N = 670K, d = 128, 50K / 5K). For each world size K:
K gloo processes (FileStore, loopback, one thread each) each take their
rows of the layer (ShardedLSSLinear.from_shard), fit on the same pairs
(progress off) and predict the test queries. The single-process layer
(one thread) is fitted and timed in the parent first.

Columns: P@1 (top-1 among the candidates equals the test label) of the
sharded and the single layer, and of the dense layer; ms per query of
predict(x, k = 5) at batch 1 and batch 256 (sharded: rank 0's wall time of
the whole collective call; every rank runs the same fixed number of calls,
agreed by a broadcast from rank 0); "local" the shard's own LSSLinear.predict
alone; "all_gather" one gloo all_gather of what predict sends ([B, 2k]
float64 per rank) alone, in ms per call. Each time is the median of five
rounds, interleaved between the three (a change in the machine's load hits
them alike), each round after a barrier. On a machine with fewer cores than
K processes the processes share cores and the times say so. Writes <out>/sharded[-quick].json and .md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from dataclasses import asdict
from typing import Dict, List

import torch

K_TOP = 5
ROUNDS = 5  # timing rounds, interleaved between predict, the local predict and the all_gather
BATCHES = (1, 256)
COLUMNS = ["world", "P@1 sharded", "ranks agree", "P@1 single", "P@1 dense", "B=1 ms/q", "B=1 local ms/q", "B=1 all_gather ms",
           "B=256 ms/q", "B=256 local ms/q", "B=256 all_gather ms", "fit s", "nprobe alone / merged"]


def _rounds(fn, reps: int, rounds: int = 3) -> float:
    """Median seconds per call of fn over `rounds` rounds of `reps` calls."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t) / reps)
    return sorted(times)[len(times) // 2]


def _agreed_reps(fn, min_time: float, dist, group=None) -> int:
    """Calls per timing round, chosen on rank 0 and broadcast: every rank
    must make the same number of collective calls."""
    fn()  # warm-up
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    reps = torch.tensor([int(min(2000, max(2, (min_time / 3) / one)))])
    dist.broadcast(reps, 0, group=group)
    return int(reps)


def _top_ids(predict, x, k: int, batch: int = 256) -> torch.Tensor:
    """[Q, k] ids of predict(x, k), batch by batch."""
    return torch.cat([predict(x[s : s + batch], k)[1] for s in range(0, x.shape[0], batch)])


def _p1(predict, x, y, batch: int = 256) -> float:
    return _p1_of(_top_ids(predict, x, 1, batch)[:, 0], y)


def _p1_of(top: torch.Tensor, y: torch.Tensor) -> float:
    hits = int((top == y).sum()) if y.dim() == 1 else int((top.unsqueeze(1) == y).any(1).sum())
    return hits / y.shape[0]


def _worker(rank: int, world: int, tmpdir: str, candidates: int, min_time: float) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    import torch.distributed as dist

    import lsskernels as lss
    from lsskernels.sharded import shard_range

    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=30))
    try:
        p = torch.load(os.path.join(tmpdir, "problem.pt"), mmap=True, weights_only=True)
        n = p["weight"].shape[0]
        start, stop = shard_range(n, world, rank)
        layer = lss.ShardedLSSLinear.from_shard(p["weight"][start:stop], p["bias"][start:stop], n,
                                                max_candidates=candidates)
        dist.barrier()
        t = time.perf_counter()
        report = layer.fit(p["train_x"], p["train_y"], progress=False)
        fit_s = time.perf_counter() - t
        alone = "/".join(str(s.get("nprobe", "-")) for s in report.shards)
        merged = report.merged["nprobe"] if report.merged else "kept"
        out: Dict[str, object] = {"world": world, "fit s": fit_s, "shards": report.shards, "merged": report.merged,
                                  "nprobe alone / merged": f"{alone} / {merged}"}
        with torch.inference_mode():
            ids = _top_ids(layer.predict, p["test_x"], K_TOP)
            out["P@1 sharded"] = _p1_of(ids[:, 0], p["test_y"])
            # Every rank must return the same global top-k for every test query.
            everyone = [torch.empty_like(ids) for _ in range(world)]
            dist.all_gather(everyone, ids)
            out["ranks agree"] = "yes" if all(torch.equal(ids, other) for other in everyone) else "NO"
            for b in BATCHES:
                x = p["test_x"][:b] if b <= p["test_x"].shape[0] else p["test_x"].repeat(-(-b // p["test_x"].shape[0]), 1)[:b]
                x = x.contiguous()
                packed = torch.randn(b, 2 * K_TOP, dtype=torch.float64)
                gathered = packed.new_empty(world * b, 2 * K_TOP)
                gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
                calls = {"ms/q": lambda: layer.predict(x, K_TOP), "local ms/q": lambda: layer.local.predict(x, K_TOP),
                         "all_gather ms": lambda: gather(gathered, packed)}
                reps = {name: _agreed_reps(fn, min_time, dist) for name, fn in calls.items()}
                # Interleaved rounds: a change in the machine's load hits the three alike.
                times = {name: [] for name in calls}
                for _ in range(ROUNDS):
                    for name, fn in calls.items():
                        dist.barrier()
                        times[name].append(_rounds(fn, reps[name], rounds=1))
                for name, ts in times.items():
                    per = 1 if name == "all_gather ms" else b
                    out[f"B={b} {name}"] = 1e3 * sorted(ts)[len(ts) // 2] / per
        torch.save(out, os.path.join(tmpdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process(p: Dict[str, torch.Tensor], candidates: int, min_time: float) -> Dict[str, object]:
    import lsskernels as lss
    from bench.common import time_per_query
    from lsskernels.fit_pairs import dense_precision

    n, d = p["weight"].shape
    layer = lss.LSSLinear(d, n, max_candidates=candidates)
    with torch.no_grad():
        layer.weight.copy_(p["weight"])
        layer.bias.copy_(p["bias"])
    t = time.perf_counter()
    report = layer.fit(p["train_x"], p["train_y"], progress=False)
    out: Dict[str, object] = {"world": 1, "fit s": time.perf_counter() - t, "space": report.space,
                              "nprobe": report.nprobe, "rerank": report.rerank}
    y = p["test_y"] if p["test_y"].dim() == 2 else p["test_y"].unsqueeze(1)
    out["P@1 dense"] = dense_precision(layer.weight, layer.bias, p["test_x"], y)
    with torch.inference_mode():
        out["P@1 single"] = _p1(layer.predict, p["test_x"], p["test_y"])
        for b in BATCHES:
            out[f"B={b} ms/q"] = 1e3 * time_per_query(lambda xb: layer.predict(xb, K_TOP), p["test_x"], b,
                                                      min_time=min_time)
    return out


def main(argv=None) -> List[Dict[str, object]]:
    parser = argparse.ArgumentParser(prog="python -m bench.sharded", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick synthetic task (N = 50K, d = 64)")
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4], help="gloo process counts (default 2 4)")
    parser.add_argument("--candidates", type=int, default=None, help="max_candidates (default bench/tasks.py LSS_BUDGET)")
    parser.add_argument("--out", default=None, help="output directory (default bench/results)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per world before its processes are "
                        "killed (default 600 quick, 7200 full)")
    args = parser.parse_args(argv)

    import torch.multiprocessing as mp

    from bench.common import RunContext
    from bench.tasks import LSS_BUDGET, SYNTHETIC, synthetic_problem

    torch.set_num_threads(1)
    ctx = RunContext(args.out, quick=args.quick, threads=1)
    candidates = args.candidates or LSS_BUDGET
    min_time = ctx.min_time()
    cfg = SYNTHETIC["quick" if args.quick else "full"]
    problem = synthetic_problem(cfg, ctx.log)
    p = {"weight": problem.weight, "bias": problem.bias, "train_x": problem.train_x, "train_y": problem.train_y,
         "test_x": problem.test_x, "test_y": problem.test_y}
    ctx.log(f"single process, 1 thread: fit and time (M = {candidates})")
    single = single_process(p, candidates, min_time)
    rows = []
    timeout = args.timeout or (600.0 if args.quick else 7200.0)
    with tempfile.TemporaryDirectory() as tmpdir:
        torch.save(p, os.path.join(tmpdir, "problem.pt"))
        for world in args.worlds:
            wdir = tempfile.mkdtemp(dir=tmpdir)
            os.link(os.path.join(tmpdir, "problem.pt"), os.path.join(wdir, "problem.pt"))
            ctx.log(f"{world} gloo processes, 1 thread each: fit and time")
            pc = mp.start_processes(_worker, args=(world, wdir, candidates, min_time), nprocs=world,
                                    start_method="spawn", join=False)
            deadline = time.monotonic() + timeout
            try:
                while not pc.join(timeout=1.0):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{world} gloo processes did not finish within {timeout:.0f} s")
            finally:
                for proc in pc.processes:
                    if proc.is_alive():
                        proc.kill()
            out = torch.load(os.path.join(wdir, "rank0.pt"), weights_only=False)
            out.update({"P@1 single": single["P@1 single"], "P@1 dense": single["P@1 dense"]})
            rows.append(out)
    single_row = {"world": "1 (single LSSLinear)", "P@1 sharded": "", **{k: v for k, v in single.items() if k != "world"},
                  "nprobe alone / merged": str(single["nprobe"])}
    table_rows = [single_row] + rows
    notes = (f"predict(x, k={K_TOP}), max_candidates = {candidates} per shard (and for the single layer); each "
             f"process runs 1 thread; {os.cpu_count()} logical CPUs on this machine"
             + (" (fewer than the processes: they share cores)" if max(args.worlds) > (os.cpu_count() or 1) else "")
             + ". all_gather: ms per call of one gloo all_gather of [B, 2k] float64 per rank.")
    title = f"ShardedLSSLinear over gloo, {problem.title}" + (" (quick mode)" if args.quick else "")
    text = ctx.table(title, table_rows, COLUMNS, notes)
    ctx.write_markdown("sharded", text)
    path = ctx.write_json("sharded", {"problem": problem.describe(), "candidates": candidates, "k": K_TOP,
                                      "single": single, "sharded": rows, "notes": notes,
                                      "config": asdict(cfg)})
    ctx.log(f"wrote {path}")
    return table_rows


if __name__ == "__main__":
    main()
