"""Measuring inference methods on a problem: quality metrics, time per
query, knob sweeps and matched-P@1 selection, shared by the e2e and accuracy
sections. A Suite holds every method built on one problem and every
measurement taken, memoized per process, so `python -m bench all` builds
each index and fits each layer once.

Metrics, over the problem's test queries:
  P@1         the top-1 is one of the query's labels
  P@5         fraction of the top 5 that are labels (at most 0.2 with one label)
  agree       the top-1 equals full dense inference's top-1
  recall      a label is among the candidates whose exact logits are ranked
  candidates  mean number of those candidates per query
  computed    mean fraction of the N labels whose logit (inner product with
              the query) was computed: LSS its candidates; FAISS its distance
              computations (hnsw_stats / indexIVF_stats.ndis); hnswlib does
              not count them (blank)
  index MB    the index's own size (Method.index_bytes: serialized FAISS /
              hnswlib / ScaNN index, LSS tables and projections)
Time per query: median of rounds (bench.common.time_call) over consecutive
batches of 1 and of 256 test queries.

matched_rows: per method, the cheapest sweep setting reaching a target P@1
(LSS after fit's, and full inference's minus 0.3 point), at batch 1 and at
batch 256 separately. plot_pareto: P@1 against ms/query at both batch sizes.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import torch

from bench.common import RunContext, config_key, time_per_query
from bench.methods import (DEFAULT, Dense, FaissHNSW, FaissIVF, FaissIVFPQ, Hnswlib, LSS, LSSConfig, Method, NaiveGather,
                           ScaNN, faiss_available, hnswlib_available, scann_available)
from bench.tasks import Problem
from bench.data.metrics import dense_top1, hits_at_1

K_EVAL = 5
BATCHES = (1, 256)

# Knob values per mode (quick: 3 points; full: 6-8 points from low to high
# recall). IVF nprobe and ScaNN leaves_to_search are clamped to the index's
# number of lists / leaves (Method.max_setting).
SWEEPS = {
    "full": {"faiss-hnsw": [16, 32, 64, 128, 256, 512], "faiss-hnsw-l2": [16, 32, 64, 128, 256, 512, 1024],
             "faiss-ivf": [1, 2, 4, 8, 16, 32, 64], "faiss-ivfpq": [1, 2, 4, 8, 16, 32, 64, 128],
             "hnswlib": [16, 32, 64, 128, 256, 512], "hnswlib-l2": [16, 32, 64, 128, 256, 512, 1024],
             "scann": [2, 4, 8, 16, 32, 64, 128, 256], "lss": [1 / 8, 1 / 4, 1 / 2, 1],
             "lss-nprobe": [1, 2, 4, 8, 16, 32, 64]},
    "quick": {"faiss-hnsw": [16, 64, 256], "faiss-hnsw-l2": [32, 128, 512], "faiss-ivf": [1, 4, 16],
              "faiss-ivfpq": [1, 4, 16], "hnswlib": [16, 64, 256], "hnswlib-l2": [32, 128, 512],
              "scann": [4, 16, 64], "lss": [1 / 4, 1], "lss-nprobe": [2, 8, 32]},
}
FAMILIES = ("dense", "lss-fit", "lss-random", "naive-gather", "scann", "faiss-hnsw-l2", "hnswlib-l2", "faiss-ivf",
            "faiss-ivfpq", "faiss-hnsw", "hnswlib")
# The approximate-MIPS baselines, configured as their maintainers advise.
BASELINES = ("scann", "faiss-hnsw-l2", "hnswlib-l2", "faiss-ivf", "faiss-ivfpq")
# HNSW searched with the raw inner product: misconfigured for unnormalised
# vectors (the inner product is not a metric), kept as reference rows.
MISCONFIGURED = ("faiss-hnsw", "hnswlib")
ANN = BASELINES + MISCONFIGURED

STYLE = {"dense": ("k", "*", "-"), "lss-fit": ("C3", "o", "-"), "lss-random": ("C1", "v", "-"),
         "scann": ("C5", "P", "-"), "faiss-hnsw-l2": ("C0", "s", "-"), "hnswlib-l2": ("C4", "^", "-"),
         "faiss-ivf": ("C2", "D", "-"), "faiss-ivfpq": ("C8", "X", "-"), "faiss-hnsw": ("C0", "s", ":"),
         "hnswlib": ("C4", "^", ":"), "naive-gather": ("C7", ".", "-")}
LEGEND = {"dense": "full inference", "lss-fit": "LSS after fit()", "lss-random": "LSS unfitted index",
          "scann": "ScaNN (tree + AH + reorder)", "faiss-hnsw-l2": "FAISS HNSW, MIPS->L2",
          "hnswlib-l2": "hnswlib, MIPS->L2", "faiss-ivf": "FAISS IVF-Flat", "faiss-ivfpq": "FAISS IVF-PQ 4-bit fs",
          "faiss-hnsw": "FAISS HNSW raw IP (misconfigured)", "hnswlib": "hnswlib raw IP (misconfigured)",
          "naive-gather": "naive gather"}


SKIPPED: set = set()  # families left out of this run (python -m bench --skip ...)


def family_available(family: str) -> bool:
    if family in SKIPPED:
        return False
    if family in ("faiss-hnsw", "faiss-hnsw-l2", "faiss-ivf", "faiss-ivfpq"):
        return faiss_available()
    if family in ("hnswlib", "hnswlib-l2"):
        return hnswlib_available()
    if family == "scann":
        return scann_available()
    return True


def precision_at_k(top: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([hits_at_1(top[:, j], y) for j in range(k)], 1).double().sum(1) / k


def label_recall(cands: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y = y.unsqueeze(1) if y.dim() == 1 else y
    found = (cands.unsqueeze(2) == y.unsqueeze(1)) & (y.unsqueeze(1) >= 0) & (cands.unsqueeze(2) >= 0)
    return found.any(2).any(1)


# The baseline libraries' methods: family -> (class, options besides the head and threads).
BASELINE_METHODS = {
    "faiss-hnsw": (FaissHNSW, {"transform": "ip"}),
    "faiss-hnsw-l2": (FaissHNSW, {"transform": "l2"}),
    "faiss-ivf": (FaissIVF, {}),
    "faiss-ivfpq": (FaissIVFPQ, {}),
    "hnswlib": (Hnswlib, {"transform": "ip"}),
    "hnswlib-l2": (Hnswlib, {"transform": "l2"}),
    "scann": (ScaNN, {}),
}

class Suite:
    """Methods on one problem, built on demand, and their measurements."""

    def __init__(self, ctx: RunContext, problem: Problem, lss_cfg: LSSConfig, *,
                 eval_queries: Optional[int] = None, time_queries: int = 1024):
        self.ctx = ctx
        self.problem = problem
        self.lss_cfg = lss_cfg
        n = problem.test_x.shape[0] if eval_queries is None else min(eval_queries, problem.test_x.shape[0])
        self.x = problem.test_x[:n].contiguous()
        self.y = problem.test_y[:n]
        self.x_time = self.x[:time_queries].contiguous()
        self.min_time = ctx.min_time()
        self.mode = "quick" if ctx.quick else "full"
        self.methods: Dict[str, Method] = {}
        self.rows: Dict[tuple, Dict[str, object]] = {}
        start = time.perf_counter()
        with torch.inference_mode():
            self.dense_pred = dense_top1(problem.weight, problem.bias, self.x)
        self.dense_seconds = time.perf_counter() - start

    # ------------------------------------------------------------- methods
    def method(self, family: str) -> Method:
        if family in self.methods:
            return self.methods[family]
        p, threads = self.problem, self.ctx.threads
        self.ctx.log(f"  [{p.name}] building {family} ...")
        if family == "dense":
            m = Dense(p.weight, p.bias)
        elif family == "lss-fit":
            m = LSS(f"LSSLinear after fit() ({self.lss_cfg.describe()})", p.weight, p.bias, self.lss_cfg,
                    fit_on=(p.train_x, p.train_y))
        elif family == "lss-random":
            m = LSS(f"LSSLinear, unfitted index ({self.lss_cfg.describe()})", p.weight, p.bias, self.lss_cfg)
        elif family == "naive-gather":
            m = NaiveGather(self.method("lss-fit"))
        elif family in BASELINE_METHODS:
            cls, options = BASELINE_METHODS[family]
            m = cls(p.weight, p.bias, threads=threads, **options)
        else:
            raise ValueError(f"unknown method family {family!r}")
        size = "" if m.index_bytes is None else f", index {m.index_bytes / 2**20:.1f} MB"
        self.ctx.log(f"  [{p.name}] {m.label}: built in {m.build_seconds:.1f} s{size}")
        self.methods[family] = m
        return m

    def settings(self, family: str) -> List[Optional[int]]:
        if family == "dense":
            return [None]
        if family in ("lss-fit", "lss-random", "naive-gather"):
            m = self.method(family)
            base = m.lss if isinstance(m, NaiveGather) else m
            if base.knob == "nprobe":  # the calibrated setting plus a probe sweep around it
                limit = base.layer.index.num_partitions
                return [DEFAULT] + sorted({min(v, limit) for v in SWEEPS[self.mode]["lss-nprobe"]})
            budget = self.lss_cfg.candidates
            return [DEFAULT] + sorted({max(1, round(budget * f)) for f in SWEEPS[self.mode]["lss"]})
        values = list(SWEEPS[self.mode][family])
        limit = self.method(family).max_setting
        if limit is not None:
            values = sorted({min(v, limit) for v in values})
        return values

    # --------------------------------------------------------- measurement
    def measure(self, family: str, setting=None) -> Dict[str, object]:
        key = (family, setting)
        if key in self.rows:
            return self.rows[key]
        m = self.method(family)  # built outside inference mode (LSSLinear tracks weight versions)
        if setting is not None:
            m.set(setting)
        with torch.inference_mode():
            row = self._measure(m, family, setting)
        self.rows[key] = row
        self.ctx.log(f"  [{self.problem.name}] {family} {m.knob or ''}={setting if setting is not None else '-'}: "
                     f"P@1 {row['P@1']:.4f}, candidates {row['candidates']:.0f}, "
                     f"{row['ms/q b1']:.3f} ms/q at b1")
        return row

    def _measure(self, m: Method, family: str, setting) -> Dict[str, object]:
        hits1, prec5, agree, recall, cands, computed = [], [], [], [], [], []
        unknown_computed = False
        for s in range(0, self.x.shape[0], 512):
            xb, yb = self.x[s : s + 512], self.y[s : s + 512]
            out = m.evaluate(xb, K_EVAL)
            hits1.append(hits_at_1(out.top[:, 0], yb))
            prec5.append(precision_at_k(out.top, yb, K_EVAL))
            agree.append(out.top[:, 0] == self.dense_pred[s : s + 512])
            recall.append(torch.ones(xb.shape[0], dtype=torch.bool) if out.candidates is None
                          else label_recall(out.candidates, yb))
            cands.append(out.num_candidates)
            if out.logits_computed is None:
                unknown_computed = True
            else:
                computed.append(out.logits_computed)
        n_labels = self.problem.num_labels
        row = {
            "family": family,
            "method": m.label,
            "knob": m.knob,
            "setting": setting if setting is not None else "-",
            "P@1": torch.cat(hits1).double().mean().item(),
            "P@5": torch.cat(prec5).mean().item(),
            "agree": torch.cat(agree).double().mean().item(),
            "recall": torch.cat(recall).double().mean().item(),
            "candidates": torch.cat(cands).double().mean().item(),
            "computed %": None if unknown_computed else 100 * torch.cat(computed).double().mean().item() / n_labels,
            "build s": m.build_seconds,
            "index MB": None if m.index_bytes is None else m.index_bytes / 2**20,
        }
        for b in BATCHES:
            row[f"ms/q b{b}"] = 1e3 * time_per_query(lambda xb: m.search(xb, K_EVAL), self.x_time, b,
                                                    min_time=self.min_time)
        return row

    def sweep(self, family: str) -> List[Dict[str, object]]:
        return [self.measure(family, s) for s in self.settings(family)]

    def dense_row(self) -> Dict[str, object]:
        return self.measure("dense")


def pick_matched(rows: List[Dict[str, object]], target: float, tolerance: float = 0.01,
                 cost: str = "ms/q b1") -> Dict[str, object]:
    """The cheapest row with P@1 >= target - tolerance, else the best P@1
    (ties by cost); the returned row is a copy with 'matched' set."""
    ok = [r for r in rows if r["P@1"] >= target - tolerance - 1e-12]
    if ok:
        best = min(ok, key=lambda r: r[cost])
        return dict(best, matched="yes")
    best = max(rows, key=lambda r: (r["P@1"], -r[cost]))
    return dict(best, matched="no (best reached)")


def pareto_front(rows: List[Dict[str, object]], cost: str) -> List[Dict[str, object]]:
    """The rows no other row beats on both cost (lower) and P@1 (higher),
    by increasing cost."""
    front, best = [], float("-inf")
    for r in sorted(rows, key=lambda r: (r[cost], -r["P@1"])):
        if r["P@1"] > best:
            front.append(r)
            best = r["P@1"]
    return front


MATCHED_COLUMNS = ["target", "method", "knob"] + [f"{c} b{b}" for b in BATCHES for c in ("setting", "P@1", "ms/q")] \
    + ["reached", "build s", "index MB"]


def matched_rows(sweeps: Dict[str, List[Dict[str, object]]], targets: List[tuple]) -> List[Dict[str, object]]:
    """For each target (name, P@1) and each method's sweep: the cheapest
    setting reaching that P@1, chosen separately at each batch size (cost =
    ms/q at that batch); where no setting reaches it, the best P@1 and
    'reached' says at which batch sizes it fell short."""
    out = []
    for name, target in targets:
        for family, rows in sweeps.items():
            if not rows:
                continue
            row = {"target": name, "target P@1": target, "family": family, "method": rows[0]["method"],
                   "knob": rows[0]["knob"], "build s": rows[0]["build s"], "index MB": rows[0].get("index MB")}
            missed = []
            for b in BATCHES:
                chosen = pick_matched(rows, target, 0.0, cost=f"ms/q b{b}")
                row[f"setting b{b}"] = chosen["setting"]
                row[f"P@1 b{b}"] = chosen["P@1"]
                row[f"ms/q b{b}"] = chosen[f"ms/q b{b}"]
                if chosen["matched"] != "yes":
                    missed.append(f"b{b}")
            row["reached"] = "yes" if not missed else "no (best P@1 shown)"
            out.append(row)
    return out


def plot_pareto(ctx: RunContext, results: List[Dict[str, object]], base: str, tolerance: float = 0.01):
    """P@1 against time per query, one row of panels per problem, one
    column per batch size: every sweep point as a marker, each method's
    Pareto front as a line (dotted: the misconfigured raw-inner-product
    HNSW rows)."""
    from bench.common import matplotlib_pyplot

    plt = matplotlib_pyplot()
    fig, axes = plt.subplots(len(results), len(BATCHES), figsize=(6.5 * len(BATCHES), 4.8 * len(results)),
                             squeeze=False)
    for row_axes, res in zip(axes, results):
        for ax, b in zip(row_axes, BATCHES):
            cost = f"ms/q b{b}"
            for family, rows in res["sweeps"].items():
                if not rows:
                    continue
                color, marker, style = STYLE.get(family, ("0.5", ".", "-"))
                big = 9 if family == "dense" else 5
                ax.plot([r[cost] for r in rows], [r["P@1"] for r in rows], marker=marker, color=color,
                        linestyle="none", markersize=big, alpha=0.35)
                front = pareto_front(rows, cost)
                ax.plot([r[cost] for r in front], [r["P@1"] for r in front], marker=marker, color=color,
                        linestyle=style if len(front) > 1 else "none", markersize=big,
                        label=LEGEND.get(family, family))
            dense = res["sweeps"]["dense"][0]
            ax.axhline(dense["P@1"] - tolerance, color="0.6", linestyle=":", linewidth=1,
                       label=f"full inference - {100 * tolerance:.0f} point")
            ax.set_xscale("log")
            ax.set_xlabel(f"time per query at batch {b} (ms, log scale)")
            ax.set_ylabel("P@1")
            ax.set_title(f"{res['problem']['title']}, batch {b}", fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return ctx.save_figure(fig, base)


def with_speedup(row: Dict[str, object], dense: Dict[str, object]) -> Dict[str, object]:
    row = dict(row)
    for b in BATCHES:
        row[f"speed-up b{b}"] = dense[f"ms/q b{b}"] / row[f"ms/q b{b}"]
    return row


_SUITES: Dict[tuple, Suite] = {}


def get_suite(ctx: RunContext, problem: Problem, lss_cfg: LSSConfig, **kwargs) -> Suite:
    key = (id(problem), config_key(repr(lss_cfg)), ctx.quick, ctx.threads, config_key(kwargs))
    if key not in _SUITES:
        _SUITES[key] = Suite(ctx, problem, lss_cfg, **kwargs)
    return _SUITES[key]


def reset() -> None:
    """Forget every memoized suite (tests)."""
    _SUITES.clear()
