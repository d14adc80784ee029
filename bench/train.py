"""Training-step cost of the output layer: loss forward + backward + index upkeep.

    python -m bench.train [--quick] [--threads 1] [--steps 10] [--out bench/results]
    python -m bench.train e2e [--tasks wordnet lm synthetic] [--quick] [--out DIR]   (bench/train_e2e.py)

Methods, each at N labels (quick 10^5, full 10^6), d = 128, B = 256:
  dense        F.cross_entropy(F.linear(x, W, b), t): the [B, N] logits and their gradient
  chunked      exact CE over label chunks (CCE-style, on the CPU): the logsumexp
               accumulated chunk by chunk, logits recomputed in backward by a custom
               autograd Function; never more than [B, chunk] at once
  uniform      sampled_cross_entropy(num_hard=0, num_uniform=M + 64): uniform
               sampled softmax with the log-Q correction, as many exact logits per query
  lss          sampled_cross_entropy(num_hard=M, num_uniform=64), M = 256 index
               candidates; refresh_every=1 (all N codes re-encoded after each step),
               refresh_every=None (only the rows the loss touched), and each impl forced
plus the optimizer step on W and b: AdamW (dense) and RowSparseAdagrad (rows with
a gradient only), after one LSS step.

Every method runs in its own process. Before each timed step the weights take
an untimed SGD step (so the index really has codes to re-encode); the step
time is the median over --steps steps. Memory is the peak resident set size
above the one measured just before the timed steps (VmHWM after resetting
it through /proc/self/clear_refs, Linux; glibc's mmap threshold fixed at 128 KiB
so freed large blocks leave the RSS): all allocations of the step
(logits, gradients including the dense [N, d] weight gradient, temporaries),
not the weights, the index or the inputs. Prints a markdown table and writes
<out>/train[-quick].{md,json}, stamped with the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

D, B, M, EXTRA_UNIFORM = 128, 256, 256, 64
METHODS = ("dense", "chunked", "uniform", "lss", "lss-rows", "lss-gathered", "lss-bitmap", "adamw", "rowadagrad")
DESCRIPTION = {
    "dense": "F.linear + F.cross_entropy",
    "chunked": "chunked exact CE (8192 labels a chunk, recompute in backward)",
    "uniform": f"uniform sampled softmax, log-Q ({M + EXTRA_UNIFORM} draws shared)",
    "lss": f"sampled_cross_entropy: {M} index + {EXTRA_UNIFORM} uniform, refresh_every=1",
    "lss-rows": "  same, refresh_every=None (touched rows re-encoded)",
    "lss-gathered": "  same as lss-rows, impl='gathered'",
    "lss-bitmap": "  same as lss-rows, impl='bitmap'",
    "adamw": "optimizer: torch.optim.AdamW(fused=True) step on W, b (dense)",
    "rowadagrad": "optimizer: RowSparseAdagrad step on W, b (LSS grad)",
}


# ------------------------------------------------------------ chunked CE
class ChunkedCrossEntropy(torch.autograd.Function):
    """Exact mean CE of x W^T + b against t, computed over label chunks.
    Forward keeps a running logsumexp per row and the target logit; backward
    recomputes each chunk's logits, forms softmax - onehot and accumulates
    the gradients. Peak extra memory: one [B, chunk] block (plus the grads)."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, chunk):
        n = weight.shape[0]
        lse = torch.full((x.shape[0],), float("-inf"), dtype=torch.float32)
        tgt = torch.empty(x.shape[0], dtype=torch.float32)
        for s in range(0, n, chunk):
            z = torch.addmm(bias[s:s + chunk], x, weight[s:s + chunk].t())
            lse = torch.logaddexp(lse, torch.logsumexp(z, 1))
            inside = (target >= s) & (target < s + chunk)
            if inside.any():
                rows = inside.nonzero().squeeze(1)
                tgt[rows] = z[rows, target[rows] - s]
        ctx.save_for_backward(x, weight, bias, target, lse)
        ctx.chunk = chunk
        return (lse - tgt).mean()

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, target, lse = ctx.saved_tensors
        chunk, n, b = ctx.chunk, weight.shape[0], x.shape[0]
        scale = grad / b
        gx = torch.zeros_like(x)
        gw = torch.empty_like(weight)
        gb = torch.empty_like(bias)
        for s in range(0, n, chunk):
            z = torch.addmm(bias[s:s + chunk], x, weight[s:s + chunk].t())
            p = torch.exp(z - lse.unsqueeze(1))
            inside = (target >= s) & (target < s + chunk)
            rows = inside.nonzero().squeeze(1)
            p[rows, target[rows] - s] -= 1.0
            p.mul_(scale)
            gx.addmm_(p, weight[s:s + chunk])
            torch.mm(p.t(), x, out=gw[s:s + chunk])
            gb[s:s + chunk] = p.sum(0)
        return gx, gw, gb, None, None


# ------------------------------------------------------------- one method
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_one(method: str, n: int, steps: int, seed: int = 0) -> dict:
    import lsskernels as lss

    torch.manual_seed(seed)
    layer = lss.LSSLinear(D, n, max_candidates=M, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(B, D, generator=gen) for _ in range(4)]
    ts = [torch.randint(0, n, (B,), generator=gen) for _ in range(4)]
    # rebuild_every=None: the steady step (rebuild_every="auto" would re-partition at calls 2 and 4, inside
    # the timed window; the end-to-end benchmark carries the rebuilds, amortised as in a run).
    mined = dict(num_hard=M, num_uniform=EXTRA_UNIFORM, rebuild_every=None)
    loss_kw = {
        "uniform": dict(num_hard=0, num_uniform=M + EXTRA_UNIFORM),
        "lss": dict(mined, refresh_every=1),
        "lss-rows": dict(mined, refresh_every=None),
        "lss-gathered": dict(mined, refresh_every=None, impl="gathered"),
        "lss-bitmap": dict(mined, refresh_every=None, impl="bitmap"),
        "adamw": dict(mined, refresh_every=None),
        "rowadagrad": dict(mined, refresh_every=None),
    }.get(method)
    loss_fn = lss.SampledCrossEntropyLoss(**loss_kw, seed=seed) if loss_kw is not None else None
    x_req = [x.clone().requires_grad_(True) for x in xs]

    def loss_of(i: int):
        x, t = x_req[i % 4], ts[i % 4]
        if method == "dense":
            return F.cross_entropy(F.linear(x, layer.weight, layer.bias), t)
        if method == "chunked":
            return ChunkedCrossEntropy.apply(x, layer.weight, layer.bias, t, 8192)
        return loss_fn(layer, x, t)

    optimizer = None
    if method == "adamw":
        optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True)
    elif method == "rowadagrad":
        optimizer = lss.RowSparseAdagrad(layer.parameters(), lr=0.05)

    def clear():
        layer.weight.grad = layer.bias.grad = None
        for x in x_req:
            x.grad = None

    def sgd_untimed():
        with torch.no_grad():
            if layer.weight.grad is not None:
                layer.weight.add_(layer.weight.grad, alpha=-0.01)
                layer.bias.add_(layer.bias.grad, alpha=-0.01)

    setup = time.perf_counter()
    if method.startswith("lss") or method in ("adamw", "rowadagrad"):
        layer.sync_index()
    build_s = time.perf_counter() - setup
    # Warm up (first calls allocate caches), then measure.
    for i in range(2):
        loss_of(i).backward()
        if optimizer is not None:
            optimizer.step()
        sgd_untimed()
        clear()
    import gc

    gc.collect()
    have_peak = _reset_peak()
    base = _status("VmRSS")
    times = []
    for i in range(steps):
        if optimizer is None:
            start = time.perf_counter()  # upkeep (in the loss call), forward, backward
            loss_of(i).backward()
            times.append(time.perf_counter() - start)
            sgd_untimed()  # moves the weights: the next step's upkeep has work
            clear()
        else:
            loss_of(i).backward()
            start = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - start)
            clear()
    peak = (_status("VmHWM") - base) if have_peak else None
    times.sort()
    out = {"method": method, "what": DESCRIPTION[method], "N": n, "d": D, "B": B,
           "step_ms": 1e3 * times[len(times) // 2], "min_ms": 1e3 * times[0],
           "peak_mb": None if peak is None else peak / 2**20, "index_build_s": build_s if build_s > 1e-3 else None}
    if method.startswith("lss") or method == "uniform":
        from lsskernels.sampled_loss import upkeep_stats

        out["upkeep"] = upkeep_stats(layer)
    if method == "adamw":
        out["state_mb"] = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                              for t in s.values() if torch.is_tensor(t)) / 2**20
    if method == "rowadagrad":
        out["state_mb"] = sum(s["sum"].numel() * 4 for s in optimizer.state.values()) / 2**20
    return out


# ------------------------------------------------------------------ driver
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "e2e":  # end-to-end training of whole models: bench/train_e2e.py
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from bench.train_e2e import main as e2e_main

        return e2e_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10^5 (default: 10^6)")
    parser.add_argument("--labels", type=int, default=None, help="N (overrides --quick's / the full default)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per method (quick 6, full 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", default=None, help="output directory (default bench/results)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one method, JSON on stdout
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.labels or (100_000 if args.quick else 1_000_000)
    steps = args.steps or (6 if args.quick else 10)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, n, steps)))
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.common import machine_stamp, markdown_table, stamp_line

    stamp = machine_stamp()
    stamp["load_average"] = os.getloadavg()
    rows = []
    root = Path(__file__).resolve().parent.parent
    for method in args.methods:
        cmd = [sys.executable, "-m", "bench.train", "--one", method, "--labels", str(n), "--steps", str(steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        start = time.perf_counter()
        # A fixed mmap threshold: glibc then maps every block >= 128 KiB on its
        # own and unmaps it when freed, so the peak RSS tracks the step's live
        # large allocations (its dynamic threshold would recycle them unseen).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            rows.append({"method": method, "what": DESCRIPTION[method], "error": proc.stderr.strip()[-300:]})
            print(f"{method}: failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[0][len("RESULT "):]))
        print(f"{method}: {rows[-1]['step_ms']:.1f} ms/step ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    columns = ["method", "what", "step_ms", "min_ms", "peak_mb", "state_mb", "index_build_s"]
    table = markdown_table(rows, columns)
    head = (f"Output layer training step, N = {n:,}, d = {D}, B = {B}: median of {steps} steps; "
            "peak_mb = peak RSS above the pre-step RSS (VmHWM reset via /proc/self/clear_refs, "
            "MALLOC_MMAP_THRESHOLD_=131072); "
            "lss* and optimizer rows exclude the first index build (index_build_s)")
    text = f"{head}\n\n{stamp_line(stamp)}; load average {stamp['load_average'][0]:.1f}\n\n{table}\n"
    print(text)
    out = Path(args.out) if args.out else root / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "train-quick" if args.quick and not args.labels else f"train-{n}" if args.labels else "train"
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"stamp": stamp, "N": n, "steps": steps, "rows": rows},
                                                 indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
