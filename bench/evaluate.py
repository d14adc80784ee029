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
Time per query: median of rounds (bench.common.time_call) over consecutive
batches of 1 and of 256 test queries.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import torch

from bench.common import RunContext, config_key, time_per_query
from bench.methods import (Dense, FaissHNSW, FaissIVF, Hnswlib, LSS, LSSConfig, Method, NaiveGather,
                           faiss_available, hnswlib_available)
from bench.tasks import Problem
from bench.data.metrics import dense_top1, hits_at_1

K_EVAL = 5
BATCHES = (1, 256)

SWEEPS = {
    "full": {"faiss-hnsw": [16, 32, 64, 128, 256, 512], "faiss-ivf": [1, 2, 4, 8, 16, 32, 64],
             "hnswlib": [16, 32, 64, 128, 256, 512], "lss": [1 / 8, 1 / 4, 1 / 2, 1]},
    "quick": {"faiss-hnsw": [16, 64, 256], "faiss-ivf": [1, 4, 16], "hnswlib": [16, 64, 256],
              "lss": [1 / 4, 1]},
}
FAMILIES = ("dense", "lss-fit", "lss-random", "naive-gather", "faiss-hnsw", "faiss-ivf", "hnswlib")


def family_available(family: str) -> bool:
    if family in ("faiss-hnsw", "faiss-ivf"):
        return faiss_available()
    if family == "hnswlib":
        return hnswlib_available()
    return True


def precision_at_k(top: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    return torch.stack([hits_at_1(top[:, j], y) for j in range(k)], 1).double().sum(1) / k


def label_recall(cands: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y = y.unsqueeze(1) if y.dim() == 1 else y
    found = (cands.unsqueeze(2) == y.unsqueeze(1)) & (y.unsqueeze(1) >= 0) & (cands.unsqueeze(2) >= 0)
    return found.any(2).any(1)


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
            m = LSS(f"LSSLinear, random SimHash ({self.lss_cfg.describe()})", p.weight, p.bias, self.lss_cfg)
        elif family == "naive-gather":
            m = NaiveGather(self.method("lss-fit"))
        elif family == "faiss-hnsw":
            m = FaissHNSW(p.weight, p.bias, threads=threads)
        elif family == "faiss-ivf":
            m = FaissIVF(p.weight, p.bias, threads=threads)
        elif family == "hnswlib":
            m = Hnswlib(p.weight, p.bias, threads=threads)
        else:
            raise ValueError(f"unknown method family {family!r}")
        self.ctx.log(f"  [{p.name}] {m.label}: built in {m.build_seconds:.1f} s")
        self.methods[family] = m
        return m

    def settings(self, family: str) -> List[Optional[int]]:
        if family == "dense":
            return [None]
        if family in ("lss-fit", "lss-random", "naive-gather"):
            budget = self.lss_cfg.candidates
            return sorted({max(1, round(budget * f)) for f in SWEEPS[self.mode]["lss"]})
        return list(SWEEPS[self.mode][family])

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
