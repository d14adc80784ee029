"""Shared benchmark plumbing: timing, machine stamp, table and JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_stamp() -> Dict[str, object]:
    import lsskernels
    from lsskernels import _ops

    stamp = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "lsskernels": lsskernels.__version__,
        "extension": _ops.extension_loaded(),
        "git_commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if _ops.extension_loaded():
        stamp["cpu_vector_isa"] = _ops._C.cpu_vector_isa()
    return stamp


def stamp_line(stamp: Dict[str, object]) -> str:
    return (f"machine: {stamp['cpu']}, {stamp['threads']} threads (of {stamp['logical_cpus']} logical CPUs), "
            f"torch {stamp['torch']}, lsskernels {stamp['lsskernels']} @ {stamp['git_commit']}, "
            f"{stamp.get('cpu_vector_isa', 'no extension')}")


def time_call(fn: Callable[[int], object], *, min_time: float = 0.3, min_reps: int = 3, max_reps: int = 10_000,
              warmup: int = 1) -> float:
    """Median-of-rounds seconds per call of fn(i); i varies so callers can
    rotate inputs (cold caches) between calls."""
    for w in range(warmup):
        fn(w)
    # Calibrate the number of calls per round so a round takes ~min_time / 3.
    start = time.perf_counter()
    fn(0)
    one = max(time.perf_counter() - start, 1e-7)
    per_round = int(min(max_reps, max(1, (min_time / 3) / one)))
    rounds = []
    i = 1
    for _ in range(max(min_reps, 3)):
        start = time.perf_counter()
        for _ in range(per_round):
            fn(i)
            i += 1
        rounds.append((time.perf_counter() - start) / per_round)
    rounds.sort()
    return rounds[len(rounds) // 2]


def markdown_table(rows: Sequence[Dict[str, object]], columns: Sequence[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            if v == 0 or abs(v) >= 100:
                return f"{v:,.0f}" if abs(v) >= 100 else "0"
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_json(name: str, payload: Dict[str, object]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


# --------------------------------------------------------------------------
# Additions for `python -m bench`: run context (output naming, stamping),
# machine reference rates, plots, timing per query, config hashing.
# --------------------------------------------------------------------------
def package_versions() -> Dict[str, str]:
    """Versions of the benchmark's third-party packages that are importable."""
    import importlib

    from importlib import metadata

    out = {}
    for name, dist in (("numpy", "numpy"), ("faiss", "faiss-cpu"), ("hnswlib", "hnswlib"), ("scann", "scann"),
                       ("matplotlib", "matplotlib")):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        version = getattr(mod, "__version__", None)
        if version is None:
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = "installed"
        out[name] = str(version)
    return out


def config_key(config: object) -> str:
    """A short stable hash of a JSON-able configuration (cache keys)."""
    import hashlib

    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


class RunContext:
    """What every section needs: options, output directory, the machine
    stamp, and uniform output (markdown on stdout and in a .md file, JSON,
    PNG), named `<base>.json` in full mode and `<base>-quick.json` in quick
    mode so a quick run never overwrites full results."""

    def __init__(self, out_dir=None, *, quick: bool = False, threads: int = 2, verbose: bool = True):
        self.out_dir = Path(out_dir) if out_dir is not None else RESULTS_DIR
        self.quick = quick
        self.threads = threads
        self.verbose = verbose
        self.min_time_override: Optional[float] = None  # tests: shorter timing rounds
        self._stamp = None
        self.written: List[Path] = []

    @property
    def stamp(self) -> Dict[str, object]:
        if self._stamp is None:
            self._stamp = machine_stamp()
            self._stamp["mode"] = "quick" if self.quick else "full"
            self._stamp["packages"] = package_versions()
        return self._stamp

    @property
    def cache_dir(self) -> Path:
        path = self.out_dir / "cache"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def min_time(self, quick: float = 0.1, full: float = 0.3) -> float:
        """Seconds per timing measurement (bench.common.time_call's min_time)."""
        if self.min_time_override is not None:
            return self.min_time_override
        return quick if self.quick else full

    def name(self, base: str) -> str:
        return f"{base}-quick" if self.quick else base

    def log(self, *args) -> None:
        if self.verbose:
            print(*args, flush=True)

    def _path(self, base: str, ext: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.name(base)}.{ext}"
        self.written.append(path)
        return path

    def write_json(self, base: str, payload: Dict[str, object]) -> Path:
        path = self._path(base, "json")
        path.write_text(json.dumps({"machine": self.stamp, **payload}, indent=2, default=_json_default))
        return path

    def write_markdown(self, base: str, text: str) -> Path:
        path = self._path(base, "md")
        path.write_text(f"<!-- {stamp_line(self.stamp)}; mode {self.stamp['mode']} -->\n\n{text}\n")
        return path

    def save_figure(self, fig, base: str) -> Path:
        """Save a matplotlib figure as PNG, stamped with the machine line."""
        import matplotlib.pyplot as plt

        fig.text(0.01, 0.005, f"{stamp_line(self.stamp)}; {self.stamp['mode']} mode", fontsize=6, color="0.35",
                 ha="left", va="bottom")
        path = self._path(base, "png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def table(self, title: str, rows: Sequence[Dict[str, object]], columns: Sequence[str], notes: str = "") -> str:
        """Print (and return) a titled markdown table with the stamp line."""
        text = f"### {title}\n\n{stamp_line(self.stamp)}; {self.stamp['mode']} mode\n\n{markdown_table(rows, columns)}"
        if notes:
            text += "\n\n" + notes.strip()
        print("\n" + text + "\n", flush=True)
        return text


def _json_default(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:
        return None
    return str(obj)


def matplotlib_pyplot():
    """pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(out_dir, name: str, payload: Dict[str, object], markdown: str, draw=None) -> None:
    """A standalone benchmark's outputs: out_dir/name.json (payload),
    out_dir/name.md (markdown) and, where draw is given and matplotlib is
    installed, out_dir/name.png from draw(plt) (a figure)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=_json_default))
    (out / f"{name}.md").write_text(markdown)
    if draw is None:
        return
    try:
        plt = matplotlib_pyplot()
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)


_MACHINE_RATES: Dict[tuple, Dict[str, float]] = {}


def machine_rates(quick: bool = False) -> Dict[str, float]:
    """This machine's reference rates, measured now with torch's current
    thread count: memory bandwidth (GB/s) of a large fp32 sum (read) and copy
    (read + write, counted as 2x the size), and fp32 matmul GFLOP/s of a
    large torch.mm. Memoized per process and thread count."""
    key = (quick, torch.get_num_threads())
    if key in _MACHINE_RATES:
        return _MACHINE_RATES[key]
    numel = (64 if quick else 256) << 20  # fp32 elements: 256 MB / 1 GB, far beyond the caches
    a = torch.rand(numel)
    b = torch.empty_like(a)
    t_sum = time_call(lambda i: a.sum(), min_time=0.2 if quick else 0.6)
    t_copy = time_call(lambda i: b.copy_(a), min_time=0.2 if quick else 0.6)
    del a, b
    n = 1024 if quick else 2048
    x, y = torch.rand(n, n), torch.rand(n, n)
    out = torch.empty(n, n)
    t_mm = time_call(lambda i: torch.mm(x, y, out=out), min_time=0.2 if quick else 0.6)
    rates = {
        "read_GBps": numel * 4 / t_sum / 1e9,
        "copy_GBps": 2 * numel * 4 / t_copy / 1e9,
        "matmul_GFLOPs": 2 * n**3 / t_mm / 1e9,
        "matmul_size": n,
        "stream_MB": numel * 4 / 2**20,
    }
    rates["bandwidth_GBps"] = max(rates["read_GBps"], rates["copy_GBps"])
    _MACHINE_RATES[key] = rates
    return rates


def rates_line(rates: Dict[str, float]) -> str:
    return (f"this machine, measured in this run: memory bandwidth {rates['read_GBps']:.1f} GB/s (sum of "
            f"{rates['stream_MB']:.0f} MB), {rates['copy_GBps']:.1f} GB/s (copy, read + write); fp32 matmul "
            f"{rates['matmul_GFLOPs']:.0f} GFLOP/s (torch.mm {rates['matmul_size']}^3)")


def time_per_query(fn: Callable[[torch.Tensor], object], queries: torch.Tensor, batch: int, *,
                   min_time: float = 0.3, max_batches: int = 256) -> float:
    """Seconds per query of fn(x) on batches of `batch` consecutive queries,
    rotating through the queries (median of rounds, bench.common.time_call).
    A batch larger than the query set repeats rows to reach `batch`."""
    n = queries.shape[0]
    if batch > n:
        reps = -(-batch // n)
        queries = queries.repeat(reps, 1)[:batch]
        n = batch
    batches = [queries[s : s + batch] for s in range(0, n - batch + 1, batch)][:max_batches]
    return time_call(lambda i: fn(batches[i % len(batches)]), min_time=min_time) / batch
