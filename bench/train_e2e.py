"""End-to-end training from scratch: full softmax vs sampled_cross_entropy.

    python -m bench.train e2e [--tasks wordnet lm synthetic] [--quick] [--threads 2] [--out DIR]
                              [--steps N] [--no-fit]

Each task trains the same model from the same initialisation (seeded), on
the same batches (a seeded generator: epochs of a seeded permutation of the
training rows, or positions of the LM's text), for the same number of steps,
with one of five methods:

  full       F.cross_entropy(layer(h), y) (multi-label WordNet: CE against the
             uniform distribution over a row's labels, bench/wordnet_model.py),
             AdamW over all parameters
  lss-adamw  lss.sampled_cross_entropy(layer, h, y) with its defaults (num_hard
             = layer.max_candidates = 256, num_uniform "auto", refresh_every
             and rebuild_every "auto", mining_recall 0.9), AdamW over all
             parameters: what a user gets by swapping the loss in
  lss-sparse the same loss with refresh_every=None, lss.RowSparseAdagrad on the
             output layer (lr 0.1, its default) and AdamW on the body: the
             sparse optimizer docs/training.md recommends (refresh_every=None
             keeps the index exact under a row-sparse optimizer)
  lss-64     the defaults with num_uniform=64 (256 + 64 negatives; the fixed
             default before 0.9.4), AdamW: index-mined against uniform
             negatives at equal counts
  uniform    sampled_cross_entropy(num_hard=0, num_uniform=256 + 64): uniform
             sampled softmax with as many negatives as lss-64,
             AdamW over all parameters

The output layer is an lsskernels.LSSLinear in every method (in train mode it
is nn.Linear). Multi-label rows (WordNet) use multi_label="soft" in the
sampled loss: the same objective as the full method's soft-target CE (the
only option set besides what each method names).

Timing: only the training steps (batch assembly, forward, loss, backward,
optimizer step; the sampled loss's index build on its first call and its
upkeep are inside the steps). Test P@1 is measured at ~6 checkpoints (on a
fixed seeded subset of `curve_queries` test rows, for the curves) and at the
end on the whole test set: dense argmax over all N labels (full inference),
per-query hits kept for the paired difference against `full` (mean and SE
of the per-query difference). SE of a P@1 p over n queries: sqrt(p(1-p)/n).
After training: layer.eval(); layer.fit(hidden vectors of `fit_pairs`
training rows, their labels) once, then layer.predict P@1 on the test set
(LSS inference) next to the trained layer's dense P@1.

Tasks (full mode; quick mode in QUICK below):

* wordnet: bench/data/wordnet.py make_wordnet_task(label_set="all"): N =
  147,306 lemmas (the default label set has only 34,226; "all" gives N >=
  10^5), 153,913 multi-label training rows, 12,085 test rows; the bag-of-words
  model of bench/wordnet_model.py (EmbeddingBag -> tanh -> Linear(128, 128)
  -> output layer), batch 256, lr 1e-2 (the bench model trains 5 epochs of
  the N = 34K task at 3e-3; here one epoch).
* lm: bench/data/gcide_lm.py's text and WindowLM (5-word window MLP, d =
  128) over a 50,000-word vocabulary, batch 256 positions drawn from the
  training text, lr 2e-3 (the bench LM's settings); 10,000 test positions.
* synthetic: bench/tasks.py's generator (lsskernels.data.make_synthetic_task)
  at N = 100,000, d = 64, 100,000 training / 5,000 test pairs: a linear
  layer LSSLinear(64, N) trained from scratch on the given query vectors,
  batch 256, lr 1e-2.

Step counts (STEPS): WordNet and synthetic train one epoch (training rows //
batch: 601 and 390 steps), the bar's unit ("the whole epoch >= 3x faster")
measured whole, so one-time costs (the first index build, the early
rebuilds) count once per epoch as they would in a real run. The LM trains
120 steps (an epoch of its text is ~20,000 steps) at the bench LM's lr. The
whole run takes ~15.5 minutes on 2 threads of an Intel Xeon (full
softmax on WordNet alone ~3.8 minutes). Until 0.9.1 WordNet and synthetic ran 100
steps (0.17 and 0.26 epoch): too early to show how the methods train (the
index-mined loss under AdamW was within 0.6 point of full softmax there and
9 points under it after one epoch; docs/training.md).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import lsskernels as lss
from bench.common import RunContext, fmt_seconds, matplotlib_pyplot
from bench.data.metrics import dense_top1, hits_at_1

TASKS = ("wordnet", "lm", "synthetic")
METHODS = ("full", "lss-adamw", "lss-sparse", "lss-64", "uniform")
DESCRIPTION = {
    "full": "F.cross_entropy over layer(h), AdamW",
    "lss-adamw": "sampled_cross_entropy defaults, AdamW",
    "lss-64": "sampled_cross_entropy(num_uniform=64), AdamW: M + 64 negatives, as many as uniform's",
    "lss-sparse": "sampled_cross_entropy(refresh_every=None), RowSparseAdagrad (out) + AdamW (body)",
    "uniform": "uniform sampled softmax, num_hard=0, num_uniform=M+64, AdamW",
}
BATCH = 256
MAX_CANDIDATES = 256   # LSSLinear's default max_candidates (= the default num_hard)
DEFAULT_UNIFORM = 64   # sampled_cross_entropy's num_uniform="auto" starts here (its fixed default before 0.9.4)
SPARSE_LR = 0.1        # RowSparseAdagrad's default lr
CHECKPOINTS = 6
# fit() + predict after training: the layers trained with the sampled loss, and the full-softmax one for
# reference (uniform's is left out to save time).
FIT_METHODS = ("full", "lss-adamw", "lss-sparse")
# fit() after training takes up to this many training pairs: all of WordNet's and synthetic's rows, 200K
# LM positions. With 20,000 (before 0.9.2) the one-epoch WordNet layer (147K labels) had a fit pair for
# the labels of 31% of new queries (Good-Turing), fit() reported accepted=False and predict missed full
# inference by 3.5 points; with all 153,913 rows it matched it (docs/training.md).
FIT_PAIRS = 200_000

# Full-mode steps per task (module docstring: how they were chosen); EPOCH: one pass over the training rows.
EPOCH = None
STEPS = {"wordnet": EPOCH, "lm": 120, "synthetic": EPOCH}
QUICK_STEPS = {"wordnet": 40, "lm": 40, "synthetic": 60}


@dataclass
class E2ETask:
    """What the shared loop needs from a task."""
    name: str
    title: str
    num_labels: int
    dim: int
    make_model: Callable[[], nn.Module]          # .hidden(inputs) -> [b, d]; .out: nn.Linear(d, N)
    batch: Callable[[torch.Tensor], Tuple[object, torch.Tensor]]  # training row ids -> (inputs, targets)
    train_size: int                              # rows (positions) in one epoch
    hidden_of: Callable[[nn.Module, object], torch.Tensor]        # no-grad, chunked hidden vectors
    test_inputs: object
    test_y: torch.Tensor
    curve_inputs: object                         # a fixed subset of the test set, for the curves
    curve_y: torch.Tensor
    fit_inputs: object                           # training rows for fit()
    fit_y: torch.Tensor
    steps: int
    lr: float
    multi_label: bool = False
    setup: Dict[str, object] = field(default_factory=dict)


def _subset_rows(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(n, k)].sort().values


# ------------------------------------------------------------------ tasks
def wordnet_task(ctx: RunContext, steps: int, *, parts=None, label_set: Optional[str] = None,
                 curve_queries: int = 2000, fit_pairs: int = FIT_PAIRS, seed: int = 0, **task_kwargs) -> E2ETask:
    """WordNet guess-the-word (module docstring); quick: verbs, the default label set."""
    from bench.data.wordnet import WORDNET_PARTS, make_wordnet_task
    from bench.wordnet_model import BagModel, hidden_vectors

    parts = parts or (("verb",) if ctx.quick else WORDNET_PARTS)
    label_set = label_set or ("examples" if ctx.quick else "all")
    start = time.perf_counter()
    task = make_wordnet_task(parts=parts, label_set=label_set, seed=seed, **task_kwargs)
    ctx.log(f"  wordnet ({'+'.join(parts)}, label_set={label_set}): N={task.num_labels:,}, vocabulary "
            f"{task.input_dim:,}, {len(task.train_x):,} / {len(task.test_x):,} train / test rows "
            f"({time.perf_counter() - start:.1f} s)")
    dim = 128

    def make_model():
        return BagModel(task.input_dim, dim, task.num_labels, hidden_layer=True)

    curve = _subset_rows(len(task.test_x), curve_queries, seed + 1)
    fit_rows = _subset_rows(len(task.train_x), fit_pairs, seed + 2)
    variant = "all parts of speech" if len(parts) == 4 else "+".join(parts) + " only"
    return E2ETask(
        name="wordnet", title=f"WordNet bag-of-words ({variant}, label_set={label_set}), N={task.num_labels:,}",
        num_labels=task.num_labels, dim=dim, make_model=make_model,
        batch=lambda idx: (task.train_x.subset(idx), task.train_y[idx]), train_size=len(task.train_x),
        hidden_of=lambda model, x: hidden_vectors(model, x), test_inputs=task.test_x, test_y=task.test_y,
        curve_inputs=task.test_x.subset(curve), curve_y=task.test_y[curve],
        fit_inputs=task.train_x.subset(fit_rows), fit_y=task.train_y[fit_rows], steps=steps, lr=1e-2,
        multi_label=True,
        setup={"parts": list(parts), "label_set": label_set, "vocabulary": task.input_dim,
               "train_rows": len(task.train_x), "test_rows": len(task.test_x), "model": "BagModel, d=128, tanh+Linear",
               "fit_pairs": len(fit_rows), "curve_queries": len(curve)})


def lm_task(ctx: RunContext, steps: int, *, cfg=None, texts=None, curve_queries: int = 3000,
            fit_pairs: int = FIT_PAIRS, seed: int = 0) -> E2ETask:
    """GCIDE next-word prediction with bench/data/gcide_lm.py's WindowLM, from scratch.
    texts: (offset, cleaned text) pairs replacing the database's (tests)."""
    from bench.data import gcide_lm as g

    if cfg is None:
        cfg = (g.GcideLMConfig(vocab_size=20_000, max_entries=30_000, max_test=5_000, seed=seed) if ctx.quick
               else g.GcideLMConfig(seed=seed))
    start = time.perf_counter()
    if texts is None:
        texts = g.read_gcide_texts(g.DICTD_ROOT, cfg.max_entries)
    train_tok, test_tok = [], []
    for offset, text in texts:
        toks = g.lm_tokens(text)
        if toks:
            (test_tok if g._is_test(cfg.seed, offset, cfg.test_fraction) else train_tok).append(toks)
    vocab = g.build_vocabulary(train_tok, cfg.vocab_size)
    token_id = {t: i for i, t in enumerate(vocab)}
    train_stream, test_stream = g._stream(train_tok, token_id), g._stream(test_tok, token_id)
    unk, eos = token_id[g.UNK], token_id[g.EOS]
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    test_pos = g._sample_positions(test_stream, cfg.max_test, unk, gen)
    fit_pos = g._sample_positions(train_stream, fit_pairs, unk, gen)
    ctx.log(f"  gcide lm: {len(train_tok):,} / {len(test_tok):,} train / test entries, {len(train_stream):,} / "
            f"{len(test_stream):,} tokens, vocabulary {len(vocab):,} ({time.perf_counter() - start:.1f} s)")

    def ctxs(stream, pos):
        return g._contexts(stream, pos, cfg.context, eos)

    test_x, test_y = ctxs(test_stream, test_pos), test_stream[test_pos].clone()
    curve = _subset_rows(len(test_pos), curve_queries, seed + 1)
    # Training row i is the position i + 1 of the training text (train_lm's draws, without replacement here).
    return E2ETask(
        name="lm", title=f"GCIDE word LM (window MLP), N={len(vocab):,}", num_labels=len(vocab), dim=cfg.dim,
        make_model=lambda: _WindowModel(g.WindowLM(cfg, len(vocab))),
        batch=lambda idx: (ctxs(train_stream, idx + 1), train_stream[idx + 1]), train_size=len(train_stream) - 1,
        hidden_of=lambda model, x: model.hidden_chunks(x), test_inputs=test_x, test_y=test_y,
        curve_inputs=test_x[curve], curve_y=test_y[curve], fit_inputs=ctxs(train_stream, fit_pos),
        fit_y=train_stream[fit_pos].clone(), steps=steps, lr=cfg.lr,
        setup={"config": {k: v for k, v in vars(cfg).items()}, "train_tokens": len(train_stream),
               "test_tokens": len(test_stream), "test_positions": len(test_pos), "fit_pairs": len(fit_pos),
               "curve_queries": len(curve)})


class _WindowModel(nn.Module):
    """WindowLM's modules with the shared interface (hidden / out)."""

    def __init__(self, lm):
        super().__init__()
        self.embed, self.body, self.out = lm.embed, lm.body, lm.out

    def hidden(self, ctx):
        return self.body(self.embed(ctx).flatten(1))

    @torch.no_grad()
    def hidden_chunks(self, ctx, chunk: int = 8192):
        return torch.cat([self.hidden(ctx[s : s + chunk]) for s in range(0, len(ctx), chunk)])


class _LinearModel(nn.Module):
    """The synthetic task's model: the output layer alone over the given query vectors."""

    def __init__(self, dim: int, num_labels: int):
        super().__init__()
        self.out = nn.Linear(dim, num_labels)

    def hidden(self, x):
        return x


def synthetic_task(ctx: RunContext, steps: int, *, num_labels: Optional[int] = None, dim: Optional[int] = None,
                   num_train: Optional[int] = None, num_test: Optional[int] = None, curve_queries: int = 3000,
                   fit_pairs: int = FIT_PAIRS, seed: int = 0) -> E2ETask:
    from lsskernels.data import make_synthetic_task

    num_labels = num_labels or (20_000 if ctx.quick else 100_000)
    dim = dim or (32 if ctx.quick else 64)
    num_train = num_train or (20_000 if ctx.quick else 100_000)
    num_test = num_test or (2_000 if ctx.quick else 5_000)
    start = time.perf_counter()
    task = make_synthetic_task(num_labels, dim, num_train, num_test, seed=seed)
    ctx.log(f"  synthetic N={num_labels:,} d={dim}: {num_train:,} / {num_test:,} train / test pairs "
            f"({time.perf_counter() - start:.1f} s)")
    with torch.no_grad():
        oracle = hits_at_1(dense_top1(task.weight, task.bias, task.test_x), task.test_y).double().mean().item()
    curve = _subset_rows(num_test, curve_queries, seed + 1)
    fit_rows = _subset_rows(num_train, fit_pairs, seed + 2)
    return E2ETask(
        name="synthetic", title=f"synthetic linear layer, N={num_labels:,}, d={dim}", num_labels=num_labels,
        dim=dim, make_model=lambda: _LinearModel(dim, num_labels),
        batch=lambda idx: (task.train_x[idx], task.train_y[idx]), train_size=num_train,
        hidden_of=lambda model, x: x, test_inputs=task.test_x, test_y=task.test_y,
        curve_inputs=task.test_x[curve], curve_y=task.test_y[curve], fit_inputs=task.train_x[fit_rows],
        fit_y=task.train_y[fit_rows], steps=steps, lr=1e-2,
        setup={"num_train": num_train, "num_test": num_test, "generator_layer_P@1": oracle,
               "fit_pairs": len(fit_rows), "curve_queries": len(curve)})


# ------------------------------------------------------------------- loop
def batch_schedule(train_size: int, steps: int, batch: int, seed: int) -> List[torch.Tensor]:
    """Row ids of each step: epochs of a seeded permutation, cut in batches."""
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch, train_size)  # a training set smaller than a batch (tests): one batch an epoch
    out: List[torch.Tensor] = []
    while len(out) < steps:
        order = torch.randperm(train_size, generator=gen)
        out.extend(order[s : s + batch] for s in range(0, train_size - batch + 1, batch))
    return out[:steps]


@torch.no_grad()
def test_hits(task: E2ETask, model: nn.Module, inputs, y) -> torch.Tensor:
    h = task.hidden_of(model, inputs)
    layer = model.out
    return hits_at_1(dense_top1(layer.weight, layer.bias, h), y)


def _multilabel_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    from bench.wordnet_model import multilabel_cross_entropy

    return multilabel_cross_entropy(logits, y)


def make_loss(method: str, task: E2ETask):
    kw = {"multi_label": "soft"} if task.multi_label else {}
    if method == "full":
        if task.multi_label:
            return lambda layer, h, y: _multilabel_ce(layer(h), y)
        return lambda layer, h, y: F.cross_entropy(layer(h), y)
    if method == "lss-adamw":
        return lambda layer, h, y: lss.sampled_cross_entropy(layer, h, y, **kw)
    if method == "lss-sparse":
        return lambda layer, h, y: lss.sampled_cross_entropy(layer, h, y, refresh_every=None, **kw)
    if method == "lss-64":
        return lambda layer, h, y: lss.sampled_cross_entropy(layer, h, y, num_uniform=DEFAULT_UNIFORM, **kw)
    if method == "uniform":
        return lambda layer, h, y: lss.sampled_cross_entropy(layer, h, y, num_hard=0,
                                                             num_uniform=MAX_CANDIDATES + DEFAULT_UNIFORM, **kw)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def make_optimizers(method: str, model: nn.Module, lr: float) -> List[torch.optim.Optimizer]:
    # AdamW(fused=True) for every method: torch's fastest CPU AdamW (one fused kernel; 15 vs 84 ms a step
    # for WordNet's 19M output parameters at 2 threads, docs/training.md), the one a user timing CPU
    # training picks. Its step writes the parameters without bumping their version counters; the
    # layer sees it through its optimizer-step hook (tests/test_sampled_loss.py).
    if method == "lss-sparse":
        out_params = list(model.out.parameters())
        body = [p for p in model.parameters() if all(p is not q for q in out_params)]
        opts: List[torch.optim.Optimizer] = [lss.RowSparseAdagrad(out_params, lr=SPARSE_LR)]
        if body:
            opts.append(torch.optim.AdamW(body, lr=lr, fused=True))
        return opts
    return [torch.optim.AdamW(model.parameters(), lr=lr, fused=True)]


def checkpoints(steps: int, count: int = CHECKPOINTS) -> List[int]:
    return sorted({max(1, round(steps * (i + 1) / count)) for i in range(count)})


def train_one(task: E2ETask, method: str, batches: Sequence[torch.Tensor], *, seed: int = 0, fit: bool = True,
              log=print) -> Dict[str, object]:
    torch.manual_seed(seed)
    model = task.make_model()
    model.out = lss.LSSLinear.from_linear(model.out, max_candidates=MAX_CANDIDATES, seed=seed)
    model.train()
    layer = model.out
    loss_fn = make_loss(method, task)
    opts = make_optimizers(method, model, task.lr)
    marks = set(checkpoints(len(batches)))
    curve = [{"step": 0, "seconds": 0.0,
              "P@1": test_hits(task, model, task.curve_inputs, task.curve_y).double().mean().item()}]
    seconds, losses, loss_sum, loss_n = 0.0, [], 0.0, 0
    for step, idx in enumerate(batches, start=1):
        start = time.perf_counter()
        x, y = task.batch(idx)
        loss = loss_fn(layer, model.hidden(x), y)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in opts:
            opt.step()
        seconds += time.perf_counter() - start
        loss_sum += float(loss.detach())
        loss_n += 1
        if step in marks:
            p = test_hits(task, model, task.curve_inputs, task.curve_y).double().mean().item()
            curve.append({"step": step, "seconds": seconds, "P@1": p, "train_loss": loss_sum / loss_n})
            loss_sum, loss_n = 0.0, 0
            log(f"    {method}: step {step}/{len(batches)}, {seconds:.0f} s, loss {curve[-1]['train_loss']:.3f}, "
                f"curve P@1 {p:.4f}")
    model.eval()
    hits = test_hits(task, model, task.test_inputs, task.test_y)
    row: Dict[str, object] = {"task": task.name, "method": method, "what": DESCRIPTION[method],
                              "steps": len(batches), "train_s": seconds, "curve": curve}
    if method != "full":
        from lsskernels.sampled_loss import upkeep_stats

        row["upkeep"] = upkeep_stats(layer)
    p = hits.double().mean().item()
    row.update({"P@1": p, "SE": se(p, hits.numel()), "n_test": hits.numel(), "_hits": hits})
    if fit:
        start = time.perf_counter()
        with torch.no_grad():
            h_fit = task.hidden_of(model, task.fit_inputs)
            h_test = task.hidden_of(model, task.test_inputs)
        layer.eval()
        report = layer.fit(h_fit, task.fit_y, progress=False)
        fit_s = time.perf_counter() - start
        with torch.no_grad():
            _, ids = layer.predict(h_test)
        lhits = hits_at_1(ids[:, 0], task.test_y)
        lp = lhits.double().mean().item()
        row.update({"lss_P@1": lp, "lss_SE": se(lp, lhits.numel()), "fit_s": fit_s,
                    "lss_minus_dense": lp - p, "lss_minus_dense_SE": paired_se(lhits, hits),
                    "fit": {"nprobe": getattr(report, "nprobe", None),
                            "num_partitions": getattr(report, "num_partitions", None)}})
    return row


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(1, n))


def paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    d = a.double() - b.double()
    return (d.std(unbiased=True) / math.sqrt(d.numel())).item() if d.numel() > 1 else float("nan")


def run_task(ctx: RunContext, task: E2ETask, methods: Sequence[str], *, seed: int = 0,
             fit: Sequence[str] = FIT_METHODS) -> List[Dict[str, object]]:
    batches = batch_schedule(task.train_size, task.steps, BATCH, seed)
    steps_per_epoch = task.train_size / BATCH
    rows = []
    for method in methods:
        ctx.log(f"  {task.name} / {method}: {task.steps} steps")
        try:
            row = train_one(task, method, batches, seed=seed, fit=method in fit, log=ctx.log)
        except Exception as exc:  # a crash is a row, not the end of the run
            ctx.log(f"  {task.name} / {method}: FAILED: {type(exc).__name__}: {exc}")
            rows.append({"task": task.name, "method": method, "what": DESCRIPTION[method],
                         "error": f"{type(exc).__name__}: {exc}"})
            continue
        row["s_per_1k_steps"] = 1000 * row["train_s"] / row["steps"]
        row["s_per_epoch"] = row["train_s"] / row["steps"] * steps_per_epoch
        rows.append(row)
    full = next((r for r in rows if r["method"] == "full" and "error" not in r), None)
    for r in rows:
        if full is None or "error" in r:
            continue
        r["speedup"] = full["train_s"] / r["train_s"]
        r["diff_vs_full"] = r["P@1"] - full["P@1"]
        r["diff_SE"] = paired_se(r["_hits"], full["_hits"])
    uniform = next((r for r in rows if r["method"] == "uniform" and "error" not in r), None)
    for r in rows:
        if uniform is not None and "error" not in r and r["method"].startswith("lss"):
            r["vs_uniform"] = r["P@1"] - uniform["P@1"]
            r["vs_uniform_SE"] = paired_se(r["_hits"], uniform["_hits"])
    for r in rows:
        r.pop("_hits", None)
    return rows


# ------------------------------------------------------------------ output
COLUMNS = ["task", "method", "steps", "train s", "s/epoch", "s/1k steps", "speedup vs full",
           "test P@1 (full inf.)", "diff vs full", "P@1 after fit+predict", "fit s"]


def _pm(p, s) -> str:
    return "" if p is None else f"{p:.4f} ± {s:.4f}"


def _signed_pm(p, s) -> str:
    return "" if p is None else f"{100 * p:+.2f} ± {100 * s:.2f} pt"


def table_rows(rows: Sequence[Dict[str, object]]) -> List[Dict[str, object]]:
    out = []
    for r in rows:
        if "error" in r:
            out.append({"task": r["task"], "method": r["method"], "steps": "FAILED", "train s": r["error"][:80]})
            continue
        out.append({
            "task": r["task"], "method": r["method"], "steps": r["steps"], "train s": f"{r['train_s']:.1f}",
            "s/epoch": f"{r['s_per_epoch']:,.0f}", "s/1k steps": f"{r['s_per_1k_steps']:,.0f}",
            "speedup vs full": f"{r['speedup']:.2f}x" if "speedup" in r else "",
            "test P@1 (full inf.)": _pm(r["P@1"], r["SE"]),
            "diff vs full": "(reference)" if r["method"] == "full" else _signed_pm(r.get("diff_vs_full"),
                                                                                   r.get("diff_SE", float("nan"))),
            "P@1 after fit+predict": _pm(r.get("lss_P@1"), r.get("lss_SE", 0.0)),
            "fit s": f"{r['fit_s']:.1f}" if "fit_s" in r else "",
        })
    return out


def acceptance(rows: Sequence[Dict[str, object]], tasks: Dict[str, E2ETask]) -> List[Dict[str, object]]:
    """The issue's bars, per task: pass / fail and by how much."""
    checks = []
    by = {(r["task"], r["method"]): r for r in rows if "error" not in r}
    for name in tasks:
        full = by.get((name, "full"))
        for m in ("lss-adamw", "lss-sparse"):
            r = by.get((name, m))
            if full and r:
                d = r["P@1"] - full["P@1"]
                checks.append({"task": name, "bar": f"{m} P@1 >= full - 0.3 pt",
                               "value": f"{100 * d:+.2f} ± {100 * r['diff_SE']:.2f} pt", "pass": d >= -0.003})
        for m in ("lss-64", "lss-adamw", "lss-sparse"):
            r = by.get((name, m))
            if r and "vs_uniform" in r:
                what = {"lss-64": " at equal negatives", "lss-adamw": " (info: auto draws, more negatives)",
                        "lss-sparse": " (info: auto draws, RowSparseAdagrad vs AdamW)"}[m]
                checks.append({"task": name, "bar": f"index-mined ({m}) > uniform{what}",
                               "value": f"{100 * r['vs_uniform']:+.2f} ± {100 * r['vs_uniform_SE']:.2f} pt",
                               "pass": r["vs_uniform"] > 0})
        for m in ("lss-adamw", "lss-sparse"):
            r = by.get((name, m))
            if r and "speedup" in r and tasks[name].num_labels >= 100_000:
                checks.append({"task": name, "bar": f"{m} >= 3x faster than full (N >= 10^5)",
                               "value": f"{r['speedup']:.2f}x", "pass": r["speedup"] >= 3.0})
        for m in METHODS:
            r = by.get((name, m))
            if r and "lss_P@1" in r:
                d = r["lss_minus_dense"]
                checks.append({"task": name, "bar": f"{m}: fit()+predict P@1 >= dense - 0.3 pt",
                               "value": f"{100 * d:+.2f} ± {100 * r['lss_minus_dense_SE']:.2f} pt",
                               "pass": d >= -0.003})
    for c in checks:
        c["pass"] = "pass" if c["pass"] else "FAIL"
    return checks


def plot(ctx: RunContext, rows: Sequence[Dict[str, object]], tasks: Dict[str, E2ETask]):
    plt = matplotlib_pyplot()
    names = [n for n in tasks if any(r["task"] == n and "curve" in r for r in rows)]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in rows:
            if r["task"] != name or "curve" not in r:
                continue
            c = r["curve"]
            ax.plot([p["seconds"] for p in c], [p["P@1"] for p in c], marker="o", ms=3, label=r["method"])
        ax.set_title(tasks[name].title, fontsize=8)
        ax.set_xlabel("training wall time (s), evaluation excluded")
        ax.set_ylabel(f"test P@1 (full inference, {tasks[name].setup.get('curve_queries', '')} test rows)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return ctx.save_figure(fig, "train-e2e")


def build_task(ctx: RunContext, name: str, steps: Optional[int]) -> E2ETask:
    n = steps or (QUICK_STEPS if ctx.quick else STEPS)[name]
    makers = {"wordnet": wordnet_task, "lm": lm_task, "synthetic": synthetic_task}
    if name not in makers:
        raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")
    task = makers[name](ctx, n or 1)
    if n is EPOCH:
        task.steps = max(1, task.train_size // BATCH)
    return task


def run(ctx: RunContext, tasks: Dict[str, E2ETask], methods: Sequence[str] = METHODS, *,
        fit: Sequence[str] = FIT_METHODS, seed: int = 0) -> Dict[str, object]:
    """Train every method on every task; write train-e2e[-quick].{json,md,png}."""
    rows: List[Dict[str, object]] = []
    start = time.perf_counter()
    for name, task in tasks.items():
        rows.extend(run_task(ctx, task, methods, seed=seed, fit=fit))
    total = time.perf_counter() - start
    checks = acceptance(rows, tasks)
    notes = (f"Same model, initialisation, batches (batch {BATCH}) and steps per task; AdamW lr as listed per task, "
             f"RowSparseAdagrad lr {SPARSE_LR}. train s: training steps only (evaluation excluded); s/epoch: "
             "train s / steps x (training rows / batch); test P@1: dense argmax over all N labels on the whole test "
             "set, ± its SE sqrt(p(1-p)/n); diff vs full: mean of the per-query hit differences ± their SE; "
             "P@1 after fit+predict: layer.eval(); layer.fit(hidden vectors of the fit pairs) once, then "
             f"layer.predict (max_candidates {MAX_CANDIDATES}). Whole run {fmt_seconds(total)}.")
    text = ctx.table("End-to-end training from scratch: full softmax vs sampled_cross_entropy",
                     table_rows(rows), COLUMNS, notes)
    setups = "\n".join(f"* {t.name}: {t.title}; {t.steps} steps, AdamW lr {t.lr}; "
                       + ", ".join(f"{k} {v}" for k, v in t.setup.items() if k != "config") for t in tasks.values())
    check_text = ctx.table("Acceptance bars", checks, ["task", "bar", "value", "pass"])
    ctx.write_markdown("train-e2e", text + "\n\nTasks:\n\n" + setups + "\n\n" + check_text)
    payload = {"rows": rows, "acceptance": checks, "total_seconds": total,
               "tasks": {n: {"title": t.title, "num_labels": t.num_labels, "dim": t.dim, "steps": t.steps,
                             "lr": t.lr, "batch": BATCH, "setup": t.setup} for n, t in tasks.items()}}
    ctx.write_json("train-e2e", payload)
    try:
        plot(ctx, rows, tasks)
    except ImportError:
        ctx.log("  matplotlib not installed: no plot")
    return payload


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="small tasks, few steps (a few minutes)")
    parser.add_argument("--steps", type=int, default=None, help="steps per task (overrides STEPS / QUICK_STEPS)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--fit", nargs="*", choices=METHODS, default=list(FIT_METHODS),
                        help="methods whose trained layer gets fit() + predict (default: %(default)s; none: --fit)")
    parser.add_argument("--out", default=None, help="output directory (default bench/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ctx = RunContext(args.out, quick=args.quick, threads=args.threads)
    tasks = {name: build_task(ctx, name, args.steps) for name in args.tasks}
    run(ctx, tasks, args.methods, fit=args.fit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
