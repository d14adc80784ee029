"""End to end: LSSLinear.predict after fit() against dense nn.Linear + topk,
the naive PyTorch gather on the same candidates, FAISS IndexHNSWFlat and
IndexIVFFlat and hnswlib (bias folded in, exact re-ranking), on the synthetic
N = 670K task and the WordNet task, compared at matched P@1.

    python -m bench e2e [--quick] [--tasks wordnet synthetic]

Each approximate method's knob is swept (LSS max_candidates up to the fitted
budget, efSearch, nprobe, ef); the table shows, per method, the cheapest
setting (time per query at batch 1) whose P@1 is within 1 point of full
inference, or, if none is, the best P@1 reached. The naive gather runs at the
LSS row's setting. Every sweep point is in the JSON.
"""
from __future__ import annotations

import time
from typing import Dict, List

from bench.common import RunContext
from bench.evaluate import BATCHES, family_available, get_suite, pick_matched, with_speedup

TOLERANCE = 0.01
METHODS = ("lss-fit", "faiss-hnsw", "faiss-ivf", "hnswlib")
COLUMNS = ["method", "knob", "setting", "matched", "P@1", "P@5", "agree", "recall", "candidates",
           "ms/q b1", "ms/q b256", "speed-up b1", "speed-up b256", "build s"]


def run_problem(ctx: RunContext, problem, lss_cfg, **suite_kwargs) -> Dict[str, object]:
    suite = get_suite(ctx, problem, lss_cfg, **suite_kwargs)
    dense = suite.dense_row()
    target = dense["P@1"]
    rows: List[Dict[str, object]] = [with_speedup(dict(dense, matched="reference"), dense)]
    sweeps = {}
    for family in METHODS:
        if not family_available(family):
            rows.append({"method": family, "matched": "not installed"})
            continue
        sweeps[family] = suite.sweep(family)
        chosen = pick_matched(sweeps[family], target, TOLERANCE)
        rows.append(with_speedup(chosen, dense))
        if family == "lss-fit":
            naive = suite.measure("naive-gather", chosen["setting"])
            rows.append(with_speedup(dict(naive, matched="same candidates as LSS"), dense))
    title = f"End to end, {problem.title}: matched P@1 (within {100 * TOLERANCE:.0f} point of full inference)"
    notes = (f"{suite.x.shape[0]:,} test queries; full-inference P@1 {target:.4f}. Times per query at batch 1 and "
             f"{BATCHES[-1]}; speed-up against dense at the same batch; build s: index build or from_linear + "
             f"fit(). LSS knobs: {lss_cfg.describe()}, fit epochs {lss_cfg.epochs}.")
    text = ctx.table(title, rows, COLUMNS, notes)
    return {"problem": problem.describe(), "lss": lss_cfg.__dict__, "target_p1": target, "rows": rows,
            "sweeps": sweeps, "markdown": text}


def run(ctx: RunContext, problems) -> Dict[str, object]:
    """problems: list of (Problem, LSSConfig, suite kwargs)."""
    start = time.perf_counter()
    results = [run_problem(ctx, p, cfg, **kw) for p, cfg, kw in problems]
    ctx.write_markdown("e2e", "\n\n".join(r.pop("markdown") for r in results))
    payload = {"section": "e2e", "tolerance": TOLERANCE, "results": results, "seconds": time.perf_counter() - start}
    ctx.write_json("e2e", payload)
    return payload
