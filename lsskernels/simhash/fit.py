"""fit() of the SimHash family (SimHashIndex, lsskernels/simhash/index.py):
learn the hash so that queries collide with their correct labels (Label
Superior Sampling), then fill the buckets label-superior style. (The
partition family's fit() is in lsskernels/partition/fit.py; what the two
share is in lsskernels/fit_pairs.py.)

Two parts, alternated for a few epochs:

1. **Learned projections.** Query-side Q and label-side P, both [L, K, d + 2]
   (asymmetric), start from the index's seeded SimHash projections (never
   from a previous fit's, so fitting twice gives the same index). A relaxed sign,
   s = tanh(alpha * z / rms(z)), turns projections z into soft codes; the
   agreement of a query and a label in table l is <s_q, s_y> / K (1 when all K
   bits agree, i.e. they collide). Per table, a softmax cross-entropy over
   [true label, hard negatives, random negatives] with temperature tau makes
   the true label agree more than the negatives. Hard negatives are labels
   the *current* tables retrieve for the query that are not its labels: the
   ones that waste the candidate budget. The agreements are computed with
   lsskernels.gathered_logits (and its autograd) over the soft codes of only
   the labels in the batch: no dense [B, N] product.

2. **Label-superior buckets.** After each epoch the tables are rebuilt: every
   label sits in the bucket its P-code selects (so labels never seen in
   training stay reachable), and every training label is also inserted into
   the buckets its training queries fall in under Q. Buckets are then capped
   at max_bucket_size, keeping the labels inserted by the most training
   queries (a label's own P-bucket counts as half a query), so the
   candidate budget holds.

   With teacher_topk = k > 0 (default 1), each training query is also paired
   with the k labels the full dense layer ranks first for it: those are the
   labels that decide whether LSS agrees with full inference, and on real data
   the dense top-1 is often not the annotated label. This costs one dense pass
   over the training queries (chunked, O(n N d) FLOPs, once per fit); the
   training loop itself never forms a dense [B, N] product.

Every function below is one of its inputs: the index (its projections and
tables), the layer's weight and bias, the candidate budget max_candidates,
the pairs and the options.

Each epoch reports loss, label recall (fraction of held-out training queries
whose true label is among the candidates) and mean candidates per query.
Deterministic for a given seed on a given device and thread count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from .. import _checks as checks
from .. import _ops
from ..fit_pairs import among_labels, best_per_group, dense_topk, fit_logger, fit_options, fit_pairs, label_recall
from .hashing import augment_labels, augment_queries, label_codes, label_norms, query_codes
from .index import SimHashIndex


Tensor = torch.Tensor


@dataclass
class SimHashFitConfig:
    """The options of the SimHash family's fit() (LSSLinear.fit(**options))."""
    epochs: int = 4
    batch_size: int = 512
    lr: float = 2e-2
    hard_negatives: int = 32       # per query, from the current tables
    random_negatives: int = 32     # per query, uniform over labels
    temperature: float = 0.1       # tau of the per-table softmax over agreements
    sharpness: float = 2.0         # alpha of the relaxed sign tanh(alpha * z / rms(z))
    max_bucket_size: Optional[int] = None  # default: 2 * max_candidates / num_tables
    own_bucket_weight: float = 0.5  # insertion weight of a label's own P-bucket
    holdout: int = 2000            # training queries kept aside to measure label recall
    teacher_topk: int = 1          # also insert the layer's own dense top-k for each training query
    teacher_chunk: int = 256       # queries per dense block of the teacher pass
    learn_projections: bool = True
    progress: bool = True


@dataclass
class SimHashFitReport:
    """What fit() did, epoch by epoch (also printed when progress=True)."""
    epochs: List[dict] = field(default_factory=list)
    seconds: float = 0.0
    index: Optional["SimHashIndex"] = None

    def last(self) -> dict:
        return self.epochs[-1] if self.epochs else {}


def _with_teacher(y: Tensor, teacher: Tensor) -> Tensor:
    """Append teacher labels to y, as -1 where they repeat one of y's labels."""
    return torch.cat([y, teacher.masked_fill(among_labels(teacher, y), -1)], 1)


def _soft_codes(v: Tensor, proj: Tensor, sharpness: float) -> Tensor:
    """tanh(alpha * <v, proj[l, k]> / rms) as [L, n, K]; rms per (table, bit)
    over the batch, detached, keeps tanh in its sensitive range."""
    z = torch.einsum("nd,lkd->lnk", v, proj)
    rms = z.detach().pow(2).mean(1, keepdim=True).sqrt().clamp(min=1e-6)
    return torch.tanh(sharpness * z / rms)


def _one_label(y: Tensor, gen: torch.Generator) -> Tensor:
    """One valid label per row, drawn uniformly among the row's labels."""
    valid = y >= 0
    pick = torch.rand(y.shape, generator=gen, device="cpu").to(y.device).masked_fill(~valid, -1.0)
    return y.gather(1, pick.argmax(1, keepdim=True)).squeeze(1)


def bucket_cap(cfg: SimHashFitConfig, max_candidates: int, num_tables: int) -> int:
    """Labels per bucket at most: max_bucket_size, else 2 * max_candidates / num_tables."""
    return cfg.max_bucket_size or max(1, (2 * max_candidates) // num_tables)


@torch.no_grad()
def label_superior_tables(index: SimHashIndex, weight: Tensor, bias: Optional[Tensor], queries: Tensor, y: Tensor,
                          cfg: SimHashFitConfig, max_candidates: int, chunk: int = 1 << 15):
    """Tables with every label in its own bucket under index.label_proj plus
    each training label in the buckets its training queries fall in under
    index.query_proj, capped per bucket by insertion weight (bucket_cap).
    Returns (offsets, items) in the index's table format."""
    num_labels, num_tables, bits = index.num_labels, index.num_tables, index.bits
    device = weight.device
    buckets = 1 << bits
    cap = bucket_cap(cfg, max_candidates, num_tables)

    own = label_codes(weight, bias, index.label_proj)  # [N, L]
    table_ids = torch.arange(num_tables, device=device, dtype=torch.int64)
    keys = [((table_ids * buckets + own.to(torch.int64)) * num_labels
             + torch.arange(num_labels, device=device).unsqueeze(1)).reshape(-1)]
    weights = [torch.full((num_labels * num_tables,), cfg.own_bucket_weight, device=device)]
    for start in range(0, queries.shape[0], chunk):
        xq = queries[start : start + chunk].to(weight.dtype)
        yq = y[start : start + chunk]
        qc = query_codes(xq, index.query_proj).to(torch.int64)  # [n, L]
        bucket = table_ids * buckets + qc  # [n, L]
        k = (bucket.unsqueeze(2) * num_labels + yq.unsqueeze(1))  # [n, L, m]
        valid = (yq >= 0).unsqueeze(1).expand_as(k)
        keys.append(k[valid])
        weights.append(torch.ones(int(valid.sum()), device=device))
    keys_all = torch.cat(keys)
    uniq, inverse = torch.unique(keys_all, return_inverse=True)
    score = torch.zeros(uniq.numel(), device=device).index_add_(0, inverse, torch.cat(weights))
    bucket_of = uniq // num_labels
    label_of = uniq % num_labels
    # uniq is sorted by (bucket, label): ties in score go to the smaller label.
    kept = best_per_group(bucket_of, score, num_tables * buckets, cap)
    kept = kept[torch.sort(uniq[kept]).indices]  # back to (bucket, label asc)
    kb, kl = bucket_of[kept], label_of[kept]
    sizes = torch.bincount(kb, minlength=num_tables * buckets).view(num_tables, buckets)
    offsets = torch.zeros(num_tables, buckets + 1, dtype=torch.int64, device=device)
    offsets[:, 1:] = torch.cumsum(sizes, 1)
    per_table = offsets[:, -1]
    width = int(per_table.max()) if num_tables else 0
    items = torch.full((num_tables, width), -1, dtype=torch.int32, device=device)
    table_of = kb // buckets
    table_start = torch.cumsum(per_table, 0) - per_table
    pos = torch.arange(kept.numel(), device=device) - table_start[table_of]
    items[table_of, pos] = kl.to(torch.int32)
    return offsets.to(torch.int32), items


def fit_simhash(index: SimHashIndex, weight: Tensor, bias: Optional[Tensor], queries: Tensor, labels: Tensor, *,
                max_candidates: int, seed: int = 0, **options):
    """Fit an unbuilt SimHashIndex (its seeded projections are the starting
    point) to (hidden vector, label) pairs; see the module docstring.
    queries [n, d] float; labels int64 [n] or [n, m] (-1 padded). Options:
    the fields of SimHashFitConfig. Returns (index, SimHashFitReport)."""
    cfg = fit_options(SimHashFitConfig, options, index.family)
    weight = weight.detach()
    bias = bias.detach() if bias is not None else None
    index.reindex(weight, bias)  # random tables of the seed's projections
    checks.integer("epochs", cfg.epochs, 0)
    checks.integer("batch_size", cfg.batch_size, 1)
    device = weight.device
    queries, y = fit_pairs(queries, labels, index.num_labels, index.dim, device)
    checks.integer("teacher_topk", cfg.teacher_topk, 0, index.num_labels)

    def candidates(x: Tensor):
        return index.candidates(x.to(weight.dtype), max_candidates)

    def tables(xq: Tensor, yq: Tensor) -> None:
        index.install_tables(*label_superior_tables(index, weight, bias, xq, yq, cfg, max_candidates))

    t_start = time.perf_counter()
    y_given = y  # recall is reported against the caller's labels only
    if cfg.teacher_topk:
        y = _with_teacher(y, dense_topk(weight, bias, queries, cfg.teacher_topk, cfg.teacher_chunk))
    gen = torch.Generator().manual_seed(seed)
    n = queries.shape[0]
    perm = torch.randperm(n, generator=gen).to(device)
    n_hold = min(cfg.holdout, n // 5)
    hold, train = perm[:n_hold], perm[n_hold:]
    # Held-out queries only measure recall until the final rebuild.
    xq_train, y_train = queries[train], y[train]
    xq_hold, y_hold = queries[hold], y_given[hold]

    report = SimHashFitReport()
    log = fit_logger(cfg.progress)

    def record(row: dict) -> None:
        report.epochs.append(row)
        log(f"epoch {row['epoch']}: loss {row['loss']:.4f}  label recall {row['recall']:.3f}  "
            f"candidates/query {row['candidates']:.0f}")

    recall0, cand0 = label_recall(candidates, xq_hold, y_hold)
    record({"epoch": 0, "loss": float("nan"), "recall": recall0, "candidates": cand0})

    norm_bound = float(label_norms(weight, bias).max())
    q_proj = index.query_proj.detach().clone().to(torch.float32).requires_grad_(True)
    p_proj = index.label_proj.detach().clone().to(torch.float32).requires_grad_(True)
    opt = torch.optim.Adam([q_proj, p_proj], lr=cfg.lr)

    for epoch in range(1, cfg.epochs + 1):
        # Rebuild with the current projections so hard negatives are real.
        tables(xq_train, y_train)
        total, steps = 0.0, 0
        if cfg.learn_projections and xq_train.shape[0]:
            order = torch.randperm(xq_train.shape[0], generator=gen).to(device)
            for start in range(0, order.numel(), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                xb, yb = xq_train[idx].to(torch.float32), y_train[idx]
                loss = _batch_loss(index, candidates, weight, bias, norm_bound, q_proj, p_proj, xb, yb, cfg, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    index.query_proj.copy_(q_proj)
                    index.label_proj.copy_(p_proj)
                total += float(loss.detach())
                steps += 1
        # Recall is measured on held-out queries whose labels were not
        # inserted from them: what a new query sees.
        tables(xq_train, y_train)
        recall, cands = label_recall(candidates, xq_hold, y_hold)
        record({"epoch": epoch, "loss": total / max(1, steps), "recall": recall, "candidates": cands,
                "seconds": time.perf_counter() - t_start})
    # The final tables use every pair, held-out ones included.
    tables(queries, y)
    report.seconds = time.perf_counter() - t_start
    report.index = index
    return index, report


def _batch_loss(index: SimHashIndex, candidates, weight: Tensor, bias: Optional[Tensor], norm_bound: float,
                q_proj: Tensor, p_proj: Tensor, xb: Tensor, yb: Tensor, cfg: SimHashFitConfig,
                gen: torch.Generator) -> Tensor:
    """Per-table softmax cross-entropy of code agreement: the true label
    (column 0) against hard negatives (candidates(xb), the current tables')
    and random ones."""
    device = xb.device
    B, L, K = xb.shape[0], index.num_tables, index.bits
    positive = _one_label(yb, gen)  # [B]
    cand, _ = candidates(xb)
    cand = cand[:, : cfg.hard_negatives].to(torch.int64) if cfg.hard_negatives else cand[:, :0].to(torch.int64)
    rand = torch.randint(0, index.num_labels, (B, cfg.random_negatives), generator=gen).to(device)
    # A negative that is one of the query's labels (or padding) is masked out.
    hard = cand.masked_fill(among_labels(cand, yb) | (cand < 0), -1)
    rand = rand.masked_fill(among_labels(rand, yb), -1)
    ids = torch.cat([positive.unsqueeze(1), hard, rand], 1)  # [B, J]
    uniq, local = torch.unique(ids.clamp(min=0), return_inverse=True)
    vecs = augment_labels(weight[uniq], bias[uniq] if bias is not None else None, norm_bound).to(torch.float32)
    s_label = _soft_codes(vecs, p_proj, cfg.sharpness)  # [L, U, K]
    s_query = _soft_codes(augment_queries(xb), q_proj, cfg.sharpness)  # [L, B, K]
    U = uniq.numel()
    # All tables in one gathered_logits call: table l's rows/labels are offset.
    table = torch.arange(L, device=device).view(L, 1, 1)
    flat_ids = (local.view(1, B, -1) + table * U).masked_fill(ids.view(1, B, -1) < 0, -1)
    agree = _ops.gathered_logits(s_query.reshape(L * B, K), s_label.reshape(L * U, K), None,
                                 flat_ids.reshape(L * B, -1).to(torch.int32)) / K
    logits = agree / cfg.temperature  # -inf where masked
    target = torch.zeros(L * B, dtype=torch.int64, device=device)
    return torch.nn.functional.cross_entropy(logits, target)


def build_simhash(index: SimHashIndex, weight: Tensor, bias: Optional[Tensor]) -> None:
    """The unlearned index: the seed's random projections, each label once per table."""
    index.rebuild(weight, bias)
