"""End to end: LSSLinear.predict after fit() against dense nn.Linear + topk,
the naive PyTorch gather on the same candidates, and the approximate-MIPS
baselines (ScaNN; FAISS HNSW and hnswlib on the MIPS-to-L2 transform; FAISS
IVF-Flat and IVF-PQ 4-bit fast-scan; bias folded in; exact re-ranking; the
raw-inner-product HNSW rows, misconfigured, for reference), on the synthetic
N = 670K task and the WordNet task, compared at matched P@1.

    python -m bench e2e [--quick] [--tasks wordnet synthetic]

Each approximate method's knob is swept (LSS max_candidates up to the fitted
budget, efSearch / ef, nprobe, ScaNN leaves_to_search). Two tables per
problem:

* the cheapest setting (time per query at batch 1) whose P@1 is within 1
  point of full inference, or, if none is, the best P@1 reached; the naive
  gather runs at the LSS row's setting;
* matched P@1: per method, the cheapest setting reaching LSS-after-fit's P@1,
  and the cheapest reaching full-inference P@1 - 0.3 point, chosen at batch
  1 and at batch 256 separately, with build seconds and index MB.

e2e.png: P@1 against ms/query at batch 1 and 256 (Pareto fronts). Every sweep
point is in the JSON.
"""
from __future__ import annotations

import time
from typing import Dict, List

from bench.common import RunContext
from bench.methods import DEFAULT
from bench.evaluate import (ANN, BATCHES, MATCHED_COLUMNS, family_available, get_suite, matched_rows,
                            pick_matched, plot_pareto, with_speedup)

TOLERANCE = 0.01
DENSE_MARGIN = 0.003  # the matched table's second target: full-inference P@1 - 0.3 point
METHODS = ("lss-fit",) + ANN
COLUMNS = ["method", "knob", "setting", "matched", "P@1", "P@5", "agree", "recall", "candidates",
           "ms/q b1", "ms/q b256", "speed-up b1", "speed-up b256", "build s", "index MB"]


def run_problem(ctx: RunContext, problem, lss_cfg, **suite_kwargs) -> Dict[str, object]:
    suite = get_suite(ctx, problem, lss_cfg, **suite_kwargs)
    dense = suite.dense_row()
    target = dense["P@1"]
    rows: List[Dict[str, object]] = [with_speedup(dict(dense, matched="reference"), dense)]
    sweeps = {}
    for family in METHODS:
        if not family_available(family):
            rows.append({"method": family, "matched": "skipped or not installed"})
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
             f"fit(); index MB: the index's own size (W and b not counted). LSS knobs: {lss_cfg.describe()}, "
             "faiss-hnsw / hnswlib: raw inner product, misconfigured for "
             f"unnormalised vectors, shown for reference.")
    text = ctx.table(title, rows, COLUMNS, notes)

    lss_p1 = suite.measure("lss-fit", DEFAULT)["P@1"]
    targets = [(f"LSS after fit() P@1 ({lss_p1:.4f})", lss_p1),
               (f"full inference P@1 - {100 * DENSE_MARGIN:.1f} pt ({target - DENSE_MARGIN:.4f})",
                target - DENSE_MARGIN)]
    matched = matched_rows({f: r for f, r in sweeps.items()}, targets)
    matched_title = f"Matched P@1, {problem.title}: cheapest setting per batch size"
    matched_notes = ("Per method and target, the cheapest sweep setting whose P@1 reaches the target, chosen "
                     f"separately by ms/q at batch 1 and at batch {BATCHES[-1]} (so the two settings may differ); "
                     "'reached' no: the target was not reached and the best P@1 of the sweep is shown. "
                     f"Dense: {dense['ms/q b1']:.3f} ms/q at batch 1, {dense[f'ms/q b{BATCHES[-1]}']:.4f} at "
                     f"batch {BATCHES[-1]}.")
    text += "\n\n" + ctx.table(matched_title, matched, MATCHED_COLUMNS, matched_notes)
    sweeps = {"dense": [dense], **sweeps}
    # fit()'s report (chosen setting, calibration points, seconds by stage), as the accuracy section keeps it.
    fit_info = suite.method("lss-fit").info.get("fit") if "lss-fit" in sweeps else None
    return {"problem": problem.describe(), "lss": lss_cfg.__dict__, "target_p1": target, "rows": rows,
            "matched": matched, "sweeps": sweeps, "fit": fit_info, "markdown": text}


def run(ctx: RunContext, problems) -> Dict[str, object]:
    """problems: list of (Problem, LSSConfig, suite kwargs)."""
    start = time.perf_counter()
    results = [run_problem(ctx, p, cfg, **kw) for p, cfg, kw in problems]
    ctx.write_markdown("e2e", "\n\n".join(r.pop("markdown") for r in results))
    png = plot_pareto(ctx, results, "e2e", TOLERANCE)
    payload = {"section": "e2e", "tolerance": TOLERANCE, "results": results, "plot": str(png),
               "seconds": time.perf_counter() - start}
    ctx.write_json("e2e", payload)
    return payload
