"""Accuracy ("LSS proper"): on the WordNet task (a small bag-of-words model
trained here, cached) and the synthetic N = 670K task, full inference against
LSSLinear with its unfitted index, LSSLinear after fit() (on the training
queries' hidden vectors and labels), and the approximate-MIPS baselines
(ScaNN; FAISS HNSW and hnswlib on the MIPS-to-L2 transform; FAISS IVF-Flat
and IVF-PQ 4-bit fast-scan; the raw-inner-product HNSW rows, misconfigured,
for reference), with the fraction of labels whose logits each computed and
each index's size.

    python -m bench accuracy [--quick] [--tasks wordnet synthetic]
                             [--wordnet-candidates 640 --wordnet-bits 9 ...]

Rows: full inference; LSS after fit() at the candidate budget M; random
SimHash at the same budget (same L, K, M); each approximate index at the
cheapest setting (ms/q at batch 1) reaching LSS-after-fit's P@1 (or its
best). The PNG plots P@1 against time per query at batch 1 and at batch 256
(two panels per problem): every sweep point, and each method's Pareto front.
The per-batch matched-P@1 table is in the e2e section.

Acceptance (the retrieval-core issue), printed per task with PASS / FAIL:
WordNet: P@1 >= full and faster than ScaNN at ScaNN's best P@1; the other
tasks: P@1 >= full - 0.3 point with exact logits for <= 1% of labels and no
slower than ScaNN's cheapest setting reaching that P@1, at batch 1 and 256;
fit() <= 2x ScaNN's build. Times are only meaningful on a quiet machine.
"""
from __future__ import annotations

import time
from typing import Dict, List

from bench.common import RunContext
from bench.methods import DEFAULT
from bench.evaluate import ANN, BATCHES, family_available, get_suite, pick_matched, plot_pareto, with_speedup

TOLERANCE = 0.01
COLUMNS = ["method", "knob", "setting", "P@1", "P@5", "agree", "recall", "candidates", "computed %",
           "ms/q b1", "ms/q b256", "speed-up b1", "speed-up b256", "build s", "index MB"]


def acceptance(problem: str, dense: Dict[str, object], lss_fit: Dict[str, object], scann: List[Dict[str, object]],
               scann_build: float, fit_seconds: float) -> List[Dict[str, object]]:
    """The retrieval-core issue's checks, on this run's rows. wordnet: P@1 >=
    full and faster than ScaNN at ScaNN's best P@1; every other task: P@1 >=
    full - 0.3 point with exact logits for <= 1% of labels, and at that P@1
    no slower than ScaNN's cheapest setting reaching it (or ScaNN never
    reaches it), at batch 1 and at batch 256. fit() <= 2x ScaNN's build."""
    checks = []
    p1, full = lss_fit["P@1"], dense["P@1"]
    if problem == "wordnet":
        checks.append({"check": "LSS after fit() P@1 >= full inference", "value": f"{p1:.4f} vs {full:.4f}",
                       "pass": p1 >= full - 1e-12})
        if scann:
            best = max(r["P@1"] for r in scann)
            for b in BATCHES:
                at_best = min((r for r in scann if r["P@1"] >= best - 1e-12), key=lambda r: r[f"ms/q b{b}"])
                checks.append({"check": f"faster than ScaNN at ScaNN's best P@1 ({best:.4f}), batch {b}",
                               "value": f"{lss_fit[f'ms/q b{b}']:.4f} vs {at_best[f'ms/q b{b}']:.4f} ms/q",
                               "pass": lss_fit[f"ms/q b{b}"] <= at_best[f"ms/q b{b}"]})
    else:
        checks.append({"check": "LSS after fit() P@1 >= full inference - 0.3 point",
                       "value": f"{p1:.4f} vs {full:.4f} ({100 * (p1 - full):+.2f} points)",
                       "pass": p1 >= full - 0.003 - 1e-12})
        fraction = lss_fit["computed %"] / 100
        checks.append({"check": "exact logits for <= 1% of labels", "value": f"{100 * fraction:.3f}%",
                       "pass": fraction <= 0.01})
        if scann:
            for b in BATCHES:
                reach = [r for r in scann if r["P@1"] >= p1 - 1e-12]
                if not reach:
                    checks.append({"check": f"batch {b}: no slower than ScaNN at LSS's P@1",
                                   "value": "ScaNN never reaches it", "pass": True})
                    continue
                cheapest = min(reach, key=lambda r: r[f"ms/q b{b}"])
                checks.append({"check": f"batch {b}: no slower than ScaNN's cheapest setting reaching LSS's P@1",
                               "value": f"{lss_fit[f'ms/q b{b}']:.4f} vs {cheapest[f'ms/q b{b}']:.4f} ms/q "
                                        f"(ScaNN {cheapest['setting']} leaves)",
                               "pass": lss_fit[f"ms/q b{b}"] <= cheapest[f"ms/q b{b}"]})
    if scann:
        checks.append({"check": "fit() <= 2x ScaNN's build time",
                       "value": f"{fit_seconds:.1f} vs {scann_build:.1f} s", "pass": fit_seconds <= 2 * scann_build})
    return checks


def run_problem(ctx: RunContext, problem, lss_cfg, **suite_kwargs) -> Dict[str, object]:
    suite = get_suite(ctx, problem, lss_cfg, **suite_kwargs)
    dense = suite.dense_row()
    budget = lss_cfg.candidates
    sweeps = {"dense": [dense]}
    for family in ("lss-fit", "lss-random") + ANN:
        if family_available(family):
            sweeps[family] = suite.sweep(family)
    fit_row = suite.measure("lss-fit", DEFAULT)
    rows = [with_speedup(dense, dense), with_speedup(fit_row, dense),
            with_speedup(suite.measure("lss-random", DEFAULT), dense)]
    for family in ANN:
        if family in sweeps:
            rows.append(with_speedup(pick_matched(sweeps[family], fit_row["P@1"], 0.0), dense))
        else:
            rows.append({"method": f"{family} (skipped or not installed)"})
    scann_build = suite.method("scann").build_seconds if "scann" in sweeps else 0.0
    checks = acceptance(problem.name, dense, fit_row, sweeps.get("scann", []), scann_build,
                        suite.method("lss-fit").build_seconds)
    title = f"Accuracy, {problem.title}"
    notes = (f"{suite.x.shape[0]:,} test queries. LSS knobs: {lss_cfg.describe()}; "
             f"the unfitted index (k-means partitions, no spill, default probes) at the same budget M = {budget} ({100 * budget / problem.num_labels:.2f}% of N). "
             f"Approximate indexes: cheapest sweep setting reaching LSS-after-fit's P@1 ({fit_row['P@1']:.4f}), else "
             f"their best. computed %: labels whose logit was computed per query (blank: not reported by the "
             f"library). Times per query, speed-up against dense at the same batch size. index MB: the index's "
             f"own size (serialized; LSS: its tables and projections; W and b not counted). The raw "
             f"inner-product HNSW rows (faiss-hnsw, hnswlib) are misconfigured for unnormalised vectors and "
             f"shown for reference; the -l2 rows are HNSW as configured for inner products.")
    if checks:
        lines = [f"- {'PASS' if c['pass'] else 'FAIL'}: {c['check']}: {c['value']}" for c in checks]
        notes += ("\n\nAcceptance target" + (" (quick mode: small variant, indicative only)" if ctx.quick else "")
                  + ":\n" + "\n".join(lines))
    text = ctx.table(title, rows, COLUMNS, notes)
    fit_info = suite.method("lss-fit").info.get("fit")
    return {"problem": problem.describe(), "lss": lss_cfg.__dict__, "rows": rows, "sweeps": sweeps,
            "acceptance": checks, "fit": fit_info, "markdown": text}


def plot(ctx: RunContext, results: List[Dict[str, object]]):
    return plot_pareto(ctx, results, "accuracy", TOLERANCE)


def run(ctx: RunContext, problems) -> Dict[str, object]:
    """problems: list of (Problem, LSSConfig, suite kwargs)."""
    start = time.perf_counter()
    results = [run_problem(ctx, p, cfg, **kw) for p, cfg, kw in problems]
    ctx.write_markdown("accuracy", "\n\n".join(r.pop("markdown") for r in results))
    png = plot(ctx, results)
    payload = {"section": "accuracy", "results": results, "plot": str(png), "seconds": time.perf_counter() - start}
    ctx.write_json("accuracy", payload)
    return payload
