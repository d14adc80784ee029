"""Shared benchmark plumbing: timing, machine stamp, table and JSON output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

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
