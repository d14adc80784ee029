#!/usr/bin/env python3
"""`make gpu-check`: the GPU check, in one command, from a fresh clone, on a
machine with a CUDA GPU (target: under 8 minutes):

  1. venv: .venv-gpu (LSS_GPU_VENV), created if missing, with the CUDA build
     of torch that `make gpu-build` uses (torch==2.14.1, CUDA 13.0) and the
     build and test tools; the script then re-runs itself in that venv;
  2. build: a copy of the work tree in build/gpu-check/stage (so the CPU
     development build is untouched), lsskernels._C built in place there
     with the CUDA kernels for this GPU's architecture only;
  3. tests: `pytest -m gpu` on the test files holding GPU tests
     (tests/test_gpu_ops.py: every op's CUDA C++ and Triton kernels against
     the reference, forward and backward, fp32 / bf16 / fp16; plus the GPU
     tests of tests/test_triton.py and tests/test_partition_ops_gpu.py);
  4. bench: LSSLinear.predict (default family, partitions, max_candidates
     256) fitted on a synthetic task (lsskernels.data.make_synthetic_task)
     at N = 670K labels, d = 128, and the ops of its pipeline, per backend
     (CUDA C++, Triton), against dense cuBLAS nn.Linear + torch.topk, at
     B = 1 and 256; plus the layer's P@1 and agreement with the dense top-1;
  5. results: docs/results/gpu-check.json and a table, printed and written
     to docs/results/gpu-check.md.

Dry mode (`make gpu-check-dry`, `GPU_CHECK_DRY=1 make gpu-check`, or
--dry): no GPU part runs, and the report says so. It runs every code path
of this script on CPU with tiny sizes, in the current interpreter (the
CPU development build): no venv and no build (it prints what it would do),
the same GPU test files with the tests pointed at the CPU backend
(LSS_GPU_TEST_DEVICE=cpu, LSS_GPU_TEST_BACKENDS=cpu, small inputs only),
the same bench on CPU (N = 20K, d = 32, B = 1 and 8), results in
build/gpu-check/gpu-check-dry.{json,md}. It takes well under 2 minutes and
is part of .ci/run, so this script cannot rot where no GPU is.

Exit status 0 when every step that ran succeeded.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "gpu-check"
# What `make gpu-build` installs into the same venv (tools/gpu_build.sh).
TORCH_SPEC = os.environ.get("LSS_GPU_TORCH", "torch==2.14.1")
VENV_PACKAGES = [TORCH_SPEC, "numpy", "pybind11", "ninja", "setuptools", "wheel", "pytest"]
TIME_TARGET_S = 8 * 60


def log(msg: str) -> None:
    print(msg, flush=True)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", default=env_flag("GPU_CHECK_DRY"),
                   help="CPU dry run of every code path, tiny sizes (also GPU_CHECK_DRY=1)")
    p.add_argument("--venv", default=os.environ.get("LSS_GPU_VENV", str(ROOT / ".venv-gpu")))
    p.add_argument("--out", help="JSON output (default docs/results/gpu-check.json; dry: "
                                 "build/gpu-check/gpu-check-dry.json); the table goes next to it as .md")
    p.add_argument("--skip-build", action="store_true", help="use the lsskernels the interpreter imports")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--labels", type=int, help="bench N (default 670000; dry 20000)")
    p.add_argument("--dim", type=int, help="bench d (default 128; dry 32)")
    p.add_argument("--batches", help="bench batch sizes, comma-separated (default 1,256; dry 1,8)")
    p.add_argument("--max-candidates", type=int, default=256)
    p.add_argument("--k", type=int, default=10, help="top-k of predict and of the dense baseline")
    p.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.labels = args.labels or (20_000 if args.dry else 670_000)
    args.dim = args.dim or (32 if args.dry else 128)
    args.batches = [int(b) for b in (args.batches or ("1,8" if args.dry else "1,256")).split(",")]
    default_out = WORK / "gpu-check-dry.json" if args.dry else ROOT / "docs" / "results" / "gpu-check.json"
    args.out = Path(args.out) if args.out else default_out
    return args


# ----------------------------------------------------------------- 1. venv
def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(args, argv) -> None:
    """Real mode: create / update the venv and re-run this script in it."""
    venv = Path(args.venv)
    py = venv_python(venv)
    cmds = []
    if not py.exists():
        cmds.append([sys.executable, "-m", "venv", str(venv)])
    cmds.append([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *VENV_PACKAGES])
    if args.dry:
        for c in cmds:
            log(f"   [dry] would run: {' '.join(c)}")
        log(f"   [dry] would re-run this script with {py}; running with {sys.executable} instead")
        return
    start = time.perf_counter()
    for c in cmds:
        log(f"   $ {' '.join(c)}")
        subprocess.run(c, check=True)
    os.environ["LSS_GPU_CHECK_VENV_SECONDS"] = f"{time.perf_counter() - start:.1f}"
    log(f"   venv ready in {time.perf_counter() - start:.0f} s; re-running in it")
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *argv, "--in-venv"])


# ------------------------------------------------------------ report plumbing
class Report:
    def __init__(self, args):
        self.start = time.perf_counter()
        self.data = {"mode": "dry" if args.dry else "gpu", "steps": {}}
        if args.dry:
            self.data["note"] = ("DRY RUN on CPU: no GPU part ran. Tiny sizes, CPU backend; the numbers only "
                                 "show that the script works, they are not measurements of anything.")
        self.failed = []

    def step(self, name):
        return _Step(self, name)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class _Step:
    def __init__(self, report, name):
        self.report, self.name = report, name
        self.entry = {"status": "ok"}

    def __enter__(self):
        log(f"== [{self.report.elapsed():5.0f} s] {self.name}")
        self.t = time.perf_counter()
        self.report.data["steps"][self.name] = self.entry
        return self.entry

    def __exit__(self, kind, exc, tb):
        self.entry["seconds"] = round(time.perf_counter() - self.t, 2)
        if exc is not None:
            self.entry["status"] = "failed"
            self.entry["error"] = f"{kind.__name__}: {exc}"
            self.report.failed.append(self.name)
            log(f"   FAILED: {kind.__name__}: {exc}")
            return not isinstance(exc, KeyboardInterrupt)
        if self.entry["status"] == "failed":
            self.report.failed.append(self.name)
        return False


def skip(entry: dict, why: str) -> None:
    entry["status"] = "skipped"
    entry["reason"] = why
    log(f"   skipped: {why}")


# ------------------------------------------------------------ 2. environment
def check_environment(args, entry) -> None:
    import torch

    entry.update(python=platform.python_version(), interpreter=sys.executable, torch=torch.__version__,
                 torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                 logical_cpus=os.cpu_count())
    if os.environ.get("LSS_GPU_CHECK_VENV_SECONDS"):
        entry["venv_seconds"] = float(os.environ["LSS_GPU_CHECK_VENV_SECONDS"])
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        entry.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                     gpu_memory_gib=round(props.total_memory / 2**30, 1))
    log(f"   torch {torch.__version__} (CUDA {torch.version.cuda}), GPU: {entry.get('gpu', 'none')}")
    if args.dry:
        log("   DRY RUN: the GPU parts (CUDA build, GPU tests, GPU timings) are skipped; "
            "every step below runs on CPU with tiny sizes")
        return
    if torch.version.cuda is None or not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible (or torch is not a CUDA build): `make gpu-check` needs a "
                           "GPU; `make gpu-check-dry` runs the dry mode on CPU")


# ---------------------------------------------------------------- 3. build
def stage_tree(dest: Path) -> None:
    """A copy of the work tree (uncommitted changes included) without VCS,
    venvs, build outputs or compiled modules."""
    skip_dirs = {".git", "build", "dist", "dist-gpu", "wheelhouse", "__pycache__", ".pytest_cache", ".hypothesis"}
    if dest.exists():
        shutil.rmtree(dest)
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [n for n in dirs if n not in skip_dirs and not n.startswith(".venv") and not n.endswith(".egg-info")]
        rel = Path(top).relative_to(ROOT)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith(".so") and name != ".git":  # .git is a file in a worktree
                shutil.copy2(os.path.join(top, name), dest / rel / name)


def build(args, entry) -> Path:
    """Returns the tree whose lsskernels the tests and the bench use."""
    if args.dry or args.skip_build:
        why = "dry mode" if args.dry else "--skip-build"
        skip(entry, f"{why}: using the lsskernels this interpreter imports (the in-place build of {ROOT})")
        if args.dry:
            log(f"   [dry] would stage the tree in {(WORK / 'stage').relative_to(ROOT)} and run "
                "`python setup.py build_ext --inplace` there with LSS_FORCE_CUDA=1, "
                "TORCH_CUDA_ARCH_LIST=<this GPU's capability>, MAX_JOBS=<CPUs>")
        return ROOT
    import torch

    stage = WORK / "stage"
    stage_tree(stage)
    major, minor = torch.cuda.get_device_capability(0)
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 2)))
    env.pop("LSS_NO_CUDA", None)
    nvcc = find_nvcc()
    if nvcc is None:
        # Still build the C++ CPU ops, so that the Triton tests and timings
        # run; the CUDA C++ ones skip, and this step fails.
        entry["status"] = "failed"
        entry["error"] = ("no nvcc (set CUDA_HOME to a CUDA toolkit): the CUDA C++ kernels are not built; "
                          "the Triton kernels are still tested and timed")
        log(f"   FAILED: {entry['error']}")
        env["LSS_NO_CUDA"] = "1"
    else:
        env.update(LSS_FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}",
                   CUDA_HOME=env.get("CUDA_HOME") or str(Path(nvcc).resolve().parent.parent))
    log_path = WORK / "build.log"
    entry.update(arch=f"sm_{major}{minor}", nvcc=nvcc, max_jobs=int(env["MAX_JOBS"]),
                 log=str(log_path.relative_to(ROOT)))
    log(f"   building in {stage.relative_to(ROOT)} for sm_{major}{minor} (nvcc: {nvcc}), "
        f"MAX_JOBS={env['MAX_JOBS']} (log: {log_path.relative_to(ROOT)})")
    with open(log_path, "w") as f:
        proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=stage, env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError("the build failed:\n" + "\n".join(tail))
    return stage


def find_nvcc():
    """nvcc of $CUDA_HOME, /usr/local/cuda, or PATH (resolved to its toolkit)."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    return str(Path(found).resolve()) if found else None


def import_lsskernels(tree: Path, entry: dict):
    sys.path.insert(0, str(tree))
    import lsskernels
    from lsskernels import _ops

    where = Path(lsskernels.__file__).resolve().parent
    entry.update(lsskernels=str(where), extension=_ops.extension_loaded(), cuda_kernels=_ops.cuda_kernels_built())
    if where != (tree / "lsskernels").resolve():
        raise RuntimeError(f"lsskernels imports from {where}, not from {tree}")
    log(f"   lsskernels from {where}: extension {_ops.extension_loaded()}, CUDA kernels {_ops.cuda_kernels_built()}")
    return lsskernels


# ---------------------------------------------------------------- 4. tests
def gpu_test_files(tree: Path):
    return sorted(str(p.relative_to(tree)) for p in (tree / "tests").glob("test_*.py")
                  if "mark.gpu" in p.read_text())


def run_tests(args, tree: Path, entry: dict) -> None:
    files = gpu_test_files(tree)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-rfEs", "-p", "no:cacheprovider"]
    env = dict(os.environ)
    if args.dry:
        env.update(LSS_GPU_TEST_DEVICE="cpu", LSS_GPU_TEST_BACKENDS="cpu", LSS_GPU_TEST_SIZES="small")
        entry["env"] = {k: env[k] for k in ("LSS_GPU_TEST_DEVICE", "LSS_GPU_TEST_BACKENDS", "LSS_GPU_TEST_SIZES")}
        log("   [dry] the GPU tests run on CPU against the CPU backend, small inputs only "
            "(the tests that need a CUDA device skip)")
    env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    entry["command"] = " ".join(["pytest", "-m", "gpu", *files])
    log(f"   $ {entry['command']}")
    log_path = WORK / ("tests-dry.log" if args.dry else "tests.log")
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    log_path.write_text(out)
    entry["log"] = str(log_path.relative_to(ROOT))
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", ln)]
    counts = {}
    if summary:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary[-1]):
            counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
    entry["counts"] = counts
    entry["failures"] = [ln for ln in out.splitlines() if ln.startswith(("FAILED", "ERROR"))][:50]
    log(f"   {summary[-1].strip('= ') if summary else out[-2000:]}")
    for ln in entry["failures"]:
        log(f"   {ln}")
    if proc.returncode not in (0, 5):  # 5: nothing collected
        entry["status"] = "failed"
        entry["returncode"] = proc.returncode


# ---------------------------------------------------------------- 5. bench
class Timer:
    """Seconds per call: CUDA events around batches of calls on a GPU,
    perf_counter on CPU; the median of `repeats` batches, each at least
    `min_batch_s` long."""

    def __init__(self, device: str, dry: bool):
        self.device = device
        self.min_batch_s = 0.005 if dry else 0.05
        self.repeats = 3 if dry else 7
        self.warmup = 1 if dry else 3

    def _batch(self, fn, n: int) -> float:
        import torch

        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(n):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        n = 1
        while True:
            s = self._batch(fn, n)
            if s >= self.min_batch_s or n >= 1 << 12:
                break
            n = min(1 << 12, max(2 * n, int(n * self.min_batch_s / max(s, 1e-9)) + 1))
        return statistics.median(self._batch(fn, n) / n for _ in range(self.repeats))


# The ops LSSLinear.predict runs with the partitions family.
PREDICT_OPS = ("quantized_candidates", "gathered_logits", "topk_gathered")  # the probe is quantized_candidates


def bench(args, lsskernels, entry: dict) -> None:
    import torch
    from lsskernels import _ops, reference
    from lsskernels.data import make_synthetic_task

    device = "cpu" if args.dry else "cuda"
    backends = ["cpu"] if args.dry else ["cuda", "triton"]
    N, d, M, k = args.labels, args.dim, args.max_candidates, args.k
    num_train = 4_000 if args.dry else 50_000
    num_test = max(256 if args.dry else 2_000, max(args.batches))
    fit_options = dict(holdout=200, max_nprobe=8, progress=False) if args.dry else dict(progress=False)
    entry["config"] = dict(device=device, labels=N, dim=d, max_candidates=M, k=k, batches=args.batches,
                           train_pairs=num_train, test_queries=num_test, backends=backends,
                           family="partitions (LSSLinear default)", fit_options=fit_options, dtype="float32")
    log(f"   synthetic task: N={N:,}, d={d}, {num_train:,} training pairs, on {device}")
    t = time.perf_counter()
    task = make_synthetic_task(num_labels=N, dim=d, num_train=num_train, num_test=num_test, seed=0)
    linear = torch.nn.Linear(d, N)
    with torch.no_grad():
        linear.weight.copy_(task.weight)
        linear.bias.copy_(task.bias)
    linear = linear.to(device)
    entry["task_seconds"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    layer = lsskernels.LSSLinear.from_linear(linear, max_candidates=M).to(device)
    report = layer.fit(task.train_x.to(device), task.train_y.to(device), **fit_options)
    if device == "cuda":
        torch.cuda.synchronize()
    entry["fit"] = dict(seconds=round(time.perf_counter() - t, 2), family=layer.family,
                        stats={key: v for key, v in layer.table_stats().items() if isinstance(v, (int, float, str))},
                        calibration=[dataclasses.asdict(p) for p in getattr(report, "calibration", [])])
    log(f"   fitted {layer.family} index in {entry['fit']['seconds']:.1f} s: {entry['fit']['stats']}")

    # Quality on the test queries (not timed; a failure here is recorded and
    # the timings still run).
    x_test, y_test = task.test_x.to(device), task.test_y.to(device)
    try:
        with torch.no_grad():
            dense_top1 = torch.cat([linear(x_test[i:i + 512]).argmax(1) for i in range(0, num_test, 512)])
            lss_top1 = torch.cat([layer.predict(x_test[i:i + 512], 1)[1][:, 0] for i in range(0, num_test, 512)])
        entry["quality"] = dict(
            dense_p_at_1=round(float((dense_top1 == y_test).float().mean()), 4),
            lss_p_at_1=round(float((lss_top1 == y_test).float().mean()), 4),
            lss_top1_equals_dense_top1=round(float((lss_top1 == dense_top1).float().mean()), 4),
            queries=num_test)
        log(f"   quality on {num_test} test queries: {entry['quality']}")
    except Exception as exc:
        entry["quality_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        log(f"   ERROR in the quality pass: {entry['quality_error']}")

    timer = Timer(device, args.dry)
    rows = []
    index = layer.index
    W, b = layer.weight.detach(), layer.bias.detach()

    def missing(backend, ops):
        """The first of `ops` this build has no `backend` kernel for, or None."""
        if backend not in ("cpu", "cuda"):
            return None
        return next((op for op in ops if not _ops.has_native_kernel(op, backend)), None)

    def record(what, backend, batch, fn, needs=()):
        row = dict(what=what, backend=backend, batch=batch)
        lacking = missing(backend, needs)
        if lacking:
            row["skipped"] = f"this build has no {backend} kernel for {lacking}"
        else:
            try:
                with torch.no_grad():
                    s = timer(fn)
                row.update(ms=round(s * 1e3, 4), us_per_query=round(s * 1e6 / batch, 2))
            except Exception as exc:  # an op failing on this device: recorded, the step fails
                msg = str(exc).splitlines()[0] if str(exc) else ""
                row["error"] = f"{type(exc).__name__}: {msg[:300]}"
        rows.append(row)
        result = (f"{row['ms']:9.4f} ms" if "ms" in row else
                  f"skipped: {row['skipped']}" if "skipped" in row else f"ERROR: {row['error']}")
        log(f"   {what:30s} {backend:7s} B={batch:<4d} {result}")

    for batch in args.batches:
        x = task.test_x[:batch].to(device).contiguous()
        record("dense nn.Linear + topk", "cublas" if device == "cuda" else "torch", batch,
               lambda: torch.topk(linear(x), k, dim=1))
        for backend in backends:
            def predict(backend=backend):
                layer.backend = backend
                try:
                    return layer.predict(x, k)
                finally:
                    layer.backend = None
            record("LSSLinear.predict", backend, batch, predict, PREDICT_OPS)
        record("LSSLinear.predict", "auto", batch, lambda: layer.predict(x, k))
        # The pipeline's ops, each on its own inputs (computed once, by the reference).
        nprobe = min(index.nprobe, index.num_partitions)
        lists = (index.list_offsets, index.codes, index.code_scales, index.code_bias, index.list_ids)
        with torch.no_grad():
            probes = index.probe(x, nprobe, backend="reference")  # as predict() probes
            ids, _ = reference.quantized_candidates(x, probes, *lists, N, M)
            logits = reference.gathered_logits(x, W, b, ids)
            bitmap = reference.bitmap_from_ids(ids, N)
            values, row_ptr = reference.bitmap_sparse_matmul(x, W, b, bitmap)
        for backend in backends:
            ops = [
                ("quantized_candidates", lambda: _ops.quantized_candidates(x, probes, *lists, N, M, backend=backend)),
                ("gathered_logits", lambda: _ops.gathered_logits(x, W, b, ids, backend=backend)),
                ("topk_gathered", lambda: _ops.topk_gathered(logits, ids, k, backend=backend)),
                ("bitmap_sparse_matmul", lambda: _ops.bitmap_sparse_matmul(x, W, b, bitmap, backend=backend)),
                ("topk_packed", lambda: _ops.topk_packed(values, row_ptr, bitmap, k, backend=backend)),
            ]
            for name, fn in ops:
                record(f"op {name}", backend, batch, fn, (name,))
    dense = {r["batch"]: r["ms"] for r in rows if r["what"].startswith("dense") and "ms" in r}
    for r in rows:
        if "ms" in r and r["batch"] in dense and r["ms"] > 0:
            r["speedup_vs_dense"] = round(dense[r["batch"]] / r["ms"], 2)
    entry["timings"] = rows
    errors = [f"{r['what']} ({r['backend']}, B={r['batch']})" for r in rows if "error" in r]
    if "quality_error" in entry:
        errors.insert(0, "quality pass")
    if errors:
        entry["status"] = "failed"
        entry["errors"] = errors


# ---------------------------------------------------------------- 6. output
def table(data: dict) -> str:
    bench_entry = data["steps"].get("bench", {})
    rows = bench_entry.get("timings", [])
    batches = sorted({r["batch"] for r in rows})
    lines = []
    if data["mode"] == "dry":
        lines += [f"**{data['note']}**", ""]
    env = data["steps"].get("environment", {})
    cfg = bench_entry.get("config", {})
    labels = cfg.get("labels")
    labels = f"{labels:,}" if isinstance(labels, int) else "? (no timings)"
    lines.append(f"GPU: {env.get('gpu', 'none')}, torch {env.get('torch')}; N = {labels}, "
                 f"d = {cfg.get('dim')}, max_candidates = {cfg.get('max_candidates')}, k = {cfg.get('k')}, "
                 f"fp32. Milliseconds per call (median), and speed-up over the dense layer.")
    tests = data["steps"].get("tests", {})
    if tests.get("counts"):
        lines.append(f"Tests (`{tests.get('command')}`): " +
                     ", ".join(f"{v} {key}" for key, v in tests["counts"].items()) + ".")
    q = bench_entry.get("quality")
    if q:
        lines.append(f"Quality on {q['queries']} test queries: dense P@1 {q['dense_p_at_1']}, LSSLinear P@1 "
                     f"{q['lss_p_at_1']}, LSS top-1 = dense top-1 for {q['lss_top1_equals_dense_top1']}.")
    lines.append("")
    head = "| what | backend | " + " | ".join(f"B={b} ms" for b in batches) + " | " + \
        " | ".join(f"B={b} x dense" for b in batches) + " |"
    lines += [head, "|" + "---|" * (2 + 2 * len(batches))]
    keys = []
    for r in rows:
        if (r["what"], r["backend"]) not in keys:
            keys.append((r["what"], r["backend"]))
    for what, backend in keys:
        cells = {r["batch"]: r for r in rows if r["what"] == what and r["backend"] == backend}
        ms = [f"{cells[b]['ms']:.4f}" if "ms" in cells.get(b, {}) else
              "error" if "error" in cells.get(b, {}) else "skipped" if b in cells else "-" for b in batches]
        sp = [f"{cells[b]['speedup_vs_dense']:.2f}" if b in cells and "speedup_vs_dense" in cells[b] else "-"
              for b in batches]
        lines.append(f"| {what} | {backend} | " + " | ".join(ms) + " | " + " | ".join(sp) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.dry:
        log("== gpu-check, DRY RUN: no GPU part runs (CPU, tiny sizes; numbers are not measurements)")
    if not args.in_venv:
        log("== venv")
        ensure_venv(args, argv)  # real mode: does not return (re-runs in the venv)
    report = Report(args)
    if not args.dry:
        report.data["steps"]["venv"] = {"status": "ok", "path": args.venv,
                                        "seconds": float(os.environ.get("LSS_GPU_CHECK_VENV_SECONDS", 0))}
    tree = None
    with report.step("environment") as e:
        check_environment(args, e)
    if not report.failed:
        with report.step("build") as e:
            tree = build(args, e)  # None if it raised
    lss = None
    if tree is not None:
        with report.step("import") as e:
            lss = import_lsskernels(tree, e)
    ok = lss is not None and "import" not in report.failed
    for name, skipped, no_build, run in (("tests", args.skip_tests, "no build to test", lambda e: run_tests(args, tree, e)),
                                         ("bench", args.skip_bench, "no build to time", lambda e: bench(args, lss, e))):
        with report.step(name) as e:
            if not ok:
                skip(e, no_build)
            elif skipped:
                skip(e, f"--skip-{name}")
            else:
                run(e)
    report.data["total_seconds"] = round(report.elapsed() + float(os.environ.get("LSS_GPU_CHECK_VENV_SECONDS", 0)), 1)
    report.data["failed_steps"] = report.failed
    report.data["time_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        report.data["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                   capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report.data, indent=1) + "\n")
    md = args.out.with_suffix(".md")
    text = table(report.data)
    md.write_text(("# gpu-check (dry run)\n\n" if args.dry else "# gpu-check\n\n") + text)
    log("\n" + text)
    log(f"== results: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}, "
        f"{md.name}; {report.data['total_seconds']:.0f} s in all"
        + ("" if args.dry or report.data["total_seconds"] <= TIME_TARGET_S else
           f" (over the {TIME_TARGET_S // 60}-minute target)"))
    if args.dry:
        log("== DRY RUN done: nothing ran on a GPU")
    if report.failed:
        log(f"== FAILED steps: {', '.join(report.failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
