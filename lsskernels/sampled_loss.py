"""Sampled softmax cross-entropy for training an LSSLinear output layer.

    loss = lss.sampled_cross_entropy(layer, x, target, reduction="mean", ignore_index=-100)
    loss_fn = lss.SampledCrossEntropyLoss(num_uniform=64, seed=0); loss = loss_fn(layer, x, target)

Per query b the loss sees a candidate set: its positives, its index
candidates (hard negatives: the layer's own index, ``num_hard`` of them, best
first), and ``num_uniform`` uniform draws shared by the batch. Exact logits of
those candidates only come from the package's differentiable ops
(``gathered_logits`` on per-row ids, or ``bitmap_sparse_matmul`` on per-row
bitmaps); no ``[B, N]`` tensor is formed.

The estimator ("top set + importance-sampled tail", docs/training.md):

    Z_b = sum_{j in S_b} exp(z_bj) + sum_{j not in S_b} exp(z_bj)
        ~ sum_{j in S_b} exp(z_bj) + (N / n) sum_{u in U, u not in S_b} c_u exp(z_bu)

S_b (positives and index candidates of query b) is a deterministic set given
(x, index): its terms are exact (probability 1, no correction). U holds the
distinct labels among n uniform draws from all N labels (with replacement),
label u drawn c_u times: each draw lands outside S_b with probability
(N - |S_b|) / N and is then uniform there, so the second sum is an unbiased
estimate of the tail. The draws that fall inside S_b (accidental hits: a
positive or an index candidate) are dropped, which is what makes it unbiased.
The correction enters as a logit offset log(c_u N / n). When S_b covers all N
labels every draw is a hit and the loss is exactly the full softmax CE.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Iterable, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from . import _checks as checks
from . import _ops
from .layer import LSSLinear

Tensor = torch.Tensor

REDUCTIONS = ("mean", "sum", "none")
IMPLS = ("auto", "gathered", "bitmap")
MULTI_LABEL = ("each", "soft")
# impl="auto" takes the bitmap path when the batch's (query, label) pairs fill
# at least this fraction of the [B, |union|] tile: the CPU bitmap kernel's own
# threshold for one dense GEMM over the union (csrc/cpu/bitmap_sparse_matmul_cpu.cpp).
UNION_DENSITY = 0.25


@dataclass
class _Upkeep:
    """Per layer: what the loss knows about its index since the last full sync."""
    calls: int = 0
    index: Optional[weakref.ref] = None
    dirty: Optional[Tensor] = None  # bool [N]: rows given a gradient since their codes were encoded
    full_syncs: int = 0
    row_syncs: int = 0
    rebuilds: int = 0
    since_full: int = 0             # calls since the last full sync
    last_rebuild: int = 0           # the call of the last rebuild (rebuild_every="auto")
    mining_nprobe: Optional[int] = None  # the probes mining takes (mining_recall); None: the index's
    mining_recall: float = float("nan")  # the recall mining_nprobe measured last
    retune: bool = True             # the index changed (built, rebuilt, replaced): measure the mining again
    num_uniform: int = 0            # num_uniform="auto": the draws the tail's error asks for (0: not yet measured)
    tail_log_se: float = float("nan")  # the standard error of log Z it measured last


_UPKEEP: "weakref.WeakKeyDictionary[LSSLinear, _Upkeep]" = weakref.WeakKeyDictionary()

# refresh_every="auto": a full re-encode may cost at most this share of the
# candidate work of the calls it serves.
AUTO_SYNC_SHARE = 0.1
# mining_recall: the batch's first queries on which the mining's recall is
# measured. The recall of one query is a mean over num_hard labels, so 32
# queries put its standard error at ~0.05 or less (0.5 / sqrt(32) for
# per-query recalls spread over all of [0, 1]); their exact logits cost
# 32 / B of one dense forward, once a refresh period (mining_period).
RECALL_QUERIES = 32
# num_uniform="auto": the uniform draws the loss starts with, and the error it
# holds the estimate of log Z_b to (the standard error from the draws' own
# spread, root mean square over the batch). An error e in log Z_b scales every
# exact candidate's softmax weight (the positive's included) by ~e^{+-e}; the
# runs that set the target: docs/training.md, "How many draws".
AUTO_UNIFORM_MIN = 64
TAIL_LOG_SE = 0.03
# ... and never more draws than this share of N (the draws' block then costs
# at most this share of a dense forward and backward).
AUTO_UNIFORM_MAX_SHARE = 0.125


def auto_refresh(num_labels: int, batch: int, candidates: int) -> int:
    """The calls between full syncs under refresh_every="auto". A full sync
    re-encodes N rows of d (O(N d)); a call computes B x C exact logits of
    mined candidates forward and backward (C = num_hard per query, O(B C d),
    gathered row by row: the uniform draws' block is one GEMM, far cheaper
    per logit, and does not use the index). One full sync every
    ceil(N / (AUTO_SYNC_SHARE B C)) calls keeps the
    upkeep at most AUTO_SYNC_SHARE of the loss's own work at every N, while
    the rows the loss touched are re-encoded every call (so a row-sparse
    optimizer's index is exact, and a dense one's lags only on rows the
    batches have not touched, which hard-negative mining ranks, not the
    loss: the estimator stays consistent with any candidate set)."""
    return max(1, math.ceil(num_labels / (AUTO_SYNC_SHARE * max(1, batch) * max(1, candidates))))


def upkeep_stats(layer: LSSLinear) -> dict:
    """How the loss kept layer's index up to date: calls, full syncs, row
    syncs, rebuilds (since the layer's first call), the probes mining
    takes with the recall last measured there, and num_uniform="auto"'s
    draws with the standard error of log Z last measured (None / nan: not
    measured)."""
    s = _UPKEEP.get(layer) or _Upkeep()
    return {"calls": s.calls, "full_syncs": s.full_syncs, "row_syncs": s.row_syncs, "rebuilds": s.rebuilds,
            "mining_nprobe": s.mining_nprobe, "mining_recall": s.mining_recall,
            "num_uniform": s.num_uniform or None, "tail_log_se": s.tail_log_se}


# ----------------------------------------------------------------- checks
def _check_mining_recall(mining_recall):
    if mining_recall is None:
        return None
    if isinstance(mining_recall, bool) or not isinstance(mining_recall, (int, float)):
        raise TypeError(f"mining_recall must be a float in (0, 1] or None, got {type(mining_recall).__name__}")
    if not 0 < mining_recall <= 1:
        raise ValueError(f"mining_recall must be in (0, 1] or None, got {mining_recall}")
    return float(mining_recall)


def _check_num_uniform(num_uniform):
    if isinstance(num_uniform, str):
        if num_uniform != "auto":
            raise ValueError(f"num_uniform must be an integer >= 0 or 'auto', got {num_uniform!r}")
        return num_uniform
    return checks.integer("num_uniform", num_uniform, 0)


def _check_args(layer, x, target, reduction, ignore_index, num_hard, num_uniform, impl, multi_label,
                refresh_every, rebuild_every, generator, seed, mining_recall):
    if not isinstance(layer, LSSLinear):
        raise TypeError(f"layer must be an lsskernels.LSSLinear, got {type(layer).__name__}")
    d, n = layer.in_features, layer.out_features
    checks.tensor("x", x, None, checks.FLOAT_DTYPES, f"[..., {d}] floating point")
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(f"x must be [..., in_features = {d}] (e.g. [B, {d}]), got {tuple(x.shape)}")
    w = layer.weight
    if x.dtype != w.dtype:
        raise TypeError(f"x has dtype {x.dtype} but layer.weight is {w.dtype}; they must match")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but layer.weight is on {w.device}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor of int64 labels, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(f"target must have dtype int64, got {str(target.dtype).replace('torch.', '')}")
    if target.device != x.device:
        raise ValueError(f"target is on {target.device} but x is on {x.device}")
    lead = tuple(x.shape[:-1])
    if tuple(target.shape) == lead:
        multi = False
    elif target.dim() == len(lead) + 1 and tuple(target.shape[:-1]) == lead:
        multi = True
    else:
        raise ValueError(f"target must be {list(lead)} (one label per query) or {list(lead) + ['m']} "
                         f"(multi-label, -1 padded) for x of shape {tuple(x.shape)}; got {tuple(target.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    checks.integer("ignore_index", ignore_index)
    if num_hard is not None:
        checks.integer("num_hard", num_hard, 0)
    _check_num_uniform(num_uniform)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if multi_label not in MULTI_LABEL:
        raise ValueError(f"multi_label must be one of {MULTI_LABEL}, got {multi_label!r}")
    if refresh_every is not None and refresh_every != "auto":
        checks.integer("refresh_every", refresh_every, 1)
    if rebuild_every is not None and rebuild_every != "auto":
        checks.integer("rebuild_every", rebuild_every, 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if seed is not None:
        checks.integer("seed", seed)
    if generator is not None and seed is not None:
        raise ValueError("give generator or seed, not both")
    _check_mining_recall(mining_recall)
    # Label values: in [0, N), or padding.
    if target.numel():
        pad = (target == ignore_index) | ((target == -1) if multi else torch.zeros_like(target, dtype=torch.bool))
        bad = ~pad & ((target < 0) | (target >= n))
        if bool(bad.any()):
            v = int(target[bad][0])
            allowed = f"[0, {n}), ignore_index = {ignore_index}" + (" or -1 (padding)" if multi else "")
            raise ValueError(f"target values must be in {allowed}; got {v}")
    return multi


# ------------------------------------------------------------ index upkeep
@torch.no_grad()
def _upkeep(layer: LSSLinear, refresh_every: Union[int, str, None], rebuild_every: Union[int, str, None],
            batch: int, candidates: int) -> _Upkeep:
    """Bring the index up to the rule refresh_every asks for, before mining."""
    state = _UPKEEP.get(layer)
    if state is None:
        state = _UPKEEP[layer] = _Upkeep()
    if rebuild_every == "auto":
        rebuild = state.calls >= max(1, 2 * state.last_rebuild)  # calls 1, 2, 4, 8, ...
    else:
        rebuild = rebuild_every is not None and state.calls and state.calls % rebuild_every == 0
    if rebuild:
        state.last_rebuild = state.calls
        layer.rebuild_index()  # fresh k-means partitions of the current weights
        state.rebuilds += 1
        state.retune = True
    index = layer.index
    replaced = state.index is None or state.index() is not index
    if refresh_every == "auto":
        due = state.since_full + 1 >= auto_refresh(layer.out_features, batch, candidates)
    else:
        due = refresh_every is not None and state.calls % refresh_every == 0
    state.retune |= replaced
    full = refresh_every == 1 or replaced or not index.built or due
    if full:
        if not layer.index_is_current:
            state.full_syncs += 1
        layer.sync_index()  # a no-op when the index is current
        state.index = weakref.ref(layer.index)
        state.dirty = None
        state.since_full = 0
    elif state.dirty is not None:
        rows = state.dirty.nonzero().squeeze(1)
        if rows.numel() and hasattr(index, "sync_rows"):
            index.sync_rows(layer.weight, layer.bias, rows)
            state.row_syncs += 1
        state.dirty.zero_()
        state.since_full += 1
    state.calls += 1
    return state


def mining_period(num_labels: int, batch: int, candidates: int) -> int:
    """The calls between two measurements of the mining's recall (and of
    the tail's error, num_uniform="auto"): the full sync period of
    refresh_every="auto" (the weights drift that long before
    the codes are all re-encoded, whatever refresh_every is)."""
    return auto_refresh(num_labels, batch, candidates)


@torch.no_grad()
def _recall(layer: LSSLinear, q: Tensor, exact: Tensor, num_hard: int, nprobe: int) -> float:
    """Share of the exact top labels (exact [n, k]) among q's index candidates at nprobe."""
    found, _ = layer.index.candidates(q, num_hard, layer.backend, nprobe=nprobe)
    return (exact.unsqueeze(2) == found.to(torch.int64).unsqueeze(1)).any(2).double().mean().item()


@torch.no_grad()
def _tune_mining(layer: LSSLinear, state: _Upkeep, xf: Tensor, num_hard: int, target: float) -> None:
    """The fewest probes, doubling from the last choice (first: the index's
    nprobe), whose candidates hold at least `target` of the exact top
    num_hard labels of the batch's first RECALL_QUERIES queries; then one
    halving where that still does. Up to every partition: a scan of all N
    codes. A family without probes mines as it is."""
    index = layer.index
    parts = getattr(index, "num_partitions", None)
    if parts is None:
        return
    q = xf[:RECALL_QUERIES].detach()
    z = F.linear(q, layer.weight.detach(), None if layer.bias is None else layer.bias.detach())
    if layer.has_removed_labels:
        z = z.masked_fill(layer.removed, float("-inf"))
    live = layer.out_features - (int(layer.removed.sum()) if layer.has_removed_labels else 0)
    exact = z.topk(max(1, min(num_hard, live)), 1).indices
    nprobe = min(parts, state.mining_nprobe or index.nprobe)
    recall = _recall(layer, q, exact, num_hard, nprobe)
    while recall < target and nprobe < parts:
        nprobe = min(parts, 2 * nprobe)
        recall = _recall(layer, q, exact, num_hard, nprobe)
    if recall >= target and nprobe > 1:
        half = _recall(layer, q, exact, num_hard, nprobe // 2)
        if half >= target:
            nprobe, recall = nprobe // 2, half
    state.mining_nprobe, state.mining_recall = nprobe, recall


def _mark_dirty(state: _Upkeep, labels: Tensor, num_labels: int, refresh_every: Optional[int]) -> None:
    if refresh_every == 1:
        return
    if state.dirty is None:
        state.dirty = torch.zeros(num_labels, dtype=torch.bool, device=labels.device)
    state.dirty[labels] = True


# ------------------------------------------------------------- candidates
def _uniform(num_labels: int, n: int, generator: Optional[torch.Generator], device) -> Tuple[Tensor, Tensor]:
    """Distinct labels among n uniform draws (with replacement) and their counts."""
    draws = torch.randint(0, num_labels, (n,), generator=generator,
                          device=generator.device if generator is not None else "cpu")
    labels, counts = torch.unique(draws.to(device), return_counts=True)
    return labels, counts


def _candidates(layer, xf, positives, num_hard, nprobe=None):
    """The exact set S_b per row, deduplicated and ascending: ids int64
    [B, C] (-1 = no entry) and the positive flags [B, C]. nprobe: the
    mining's probes (None: the index's own)."""
    dev = xf.device
    n = layer.out_features
    parts = [positives]
    if num_hard:
        with torch.no_grad():
            search = {} if nprobe is None else {"nprobe": nprobe}
            hard, _ = layer.index.candidates(xf.detach(), num_hard, layer.backend, **search)
        parts.append(hard.to(torch.int64))
    ids = torch.cat(parts, 1)
    pos = torch.zeros(ids.shape, dtype=torch.bool, device=dev)
    pos[:, : positives.shape[1]] = positives >= 0
    # Rows with no positive (ignored) compute nothing.
    ids = torch.where((positives >= 0).any(1, keepdim=True), ids, -1)
    # Dedupe per row, first occurrence wins: an index candidate equal to a
    # positive counts as the positive.
    key = torch.where(ids >= 0, ids, n)
    sk, order = key.sort(dim=1, stable=True)
    keep = sk < n
    keep[:, 1:] &= sk[:, 1:] != sk[:, :-1]
    ids = torch.where(keep, sk, -1)
    if layer.has_removed_labels:
        # A removed label's term of the softmax is exp(-inf) = 0.
        ids = torch.where((ids >= 0) & layer.removed[ids.clamp(min=0)], -1, ids)
        keep = ids >= 0
    return ids, pos.gather(1, order) & keep


def _accidental_hits(draws: Tensor, ids: Tensor) -> Tensor:
    """bool [B, U]: draw u of row b is in that row's exact set (ids [B, C],
    -1 = none; draws ascending)."""
    hits = torch.zeros((ids.shape[0], draws.numel()), dtype=torch.int32, device=ids.device)
    if draws.numel() == 0 or ids.numel() == 0:
        return hits.bool()
    at = torch.searchsorted(draws, ids.clamp(min=0)).clamp(max=draws.numel() - 1)
    match = (ids >= 0) & (draws[at] == ids)
    return hits.scatter_add_(1, at, match.to(torch.int32)) > 0


def _bitmap(rows: Tensor, labels: Tensor, batch: int, num_labels: int) -> Tensor:
    """int32 [B, ceil(N / 32)] bitmap of distinct (row, label) pairs given in
    row-major ascending order (so each (row, word) key is a run)."""
    words = (num_labels + 31) // 32
    key = rows * words + (labels >> 5)
    uniq, inverse = torch.unique_consecutive(key, return_inverse=True)
    acc = torch.zeros(uniq.numel(), dtype=torch.int64, device=labels.device)
    acc.index_add_(0, inverse, torch.ones_like(labels) << (labels & 31))  # distinct bits: sum == OR
    out = torch.zeros(batch * words, dtype=torch.int32, device=labels.device)
    out[uniq] = torch.where(acc >= 2**31, acc - 2**32, acc).to(torch.int32)
    return out.view(batch, words)


def choose_impl(batch: int, pairs: int, union: int) -> str:
    """impl="auto": "bitmap" when the pairs fill at least UNION_DENSITY of the
    [batch, union] tile (the union of the batch's candidates is then one
    dense GEMM), else "gathered" (per-row ids)."""
    return "bitmap" if batch >= 4 and pairs >= UNION_DENSITY * batch * union else "gathered"


# ------------------------------------------------------------ tail draws
class _SharedRows(torch.autograd.Function):
    """t.index_select(0, rows) whose gradient is a sparse COO tensor of those
    rows (rows ascending, distinct). Autograd adds it into the dense [N, d]
    gradient the exact set's op returns for the same weight, where a dense
    index_select gradient would allocate, zero and add a second [N, d]."""

    @staticmethod
    def forward(ctx, t: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = t.shape
        return t.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rows,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(rows.unsqueeze(0), grad, ctx.shape, is_coalesced=True,
                                       check_invariants=False), None


@torch.no_grad()
def tail_log_se(exact: Tensor, draws: Tensor, counts: Tensor, live: Tensor, num_labels: int) -> Tensor:
    """Per row, the standard error of the estimate of log Z_b from the draws'
    own spread: exact [B, C] logits of S_b (-inf = none), draws [B, U]
    logits of the distinct drawn labels, counts [U] (n draws in all), live
    [B, U] (False: an accidental hit, whose term is 0). The tail estimate
    (N / n) sum_i t_i over the n draws has variance N^2 Var(t) / n; divided
    by Z_b it is the relative error of Z_b, i.e. the error of log Z_b."""
    n = counts.sum().to(torch.float64)
    m = torch.maximum(exact.amax(1), draws.masked_fill(~live, float("-inf")).amax(1)).double()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    a = torch.exp(exact.double() - m[:, None]).sum(1)
    t = torch.where(live, torch.exp(draws.double() - m[:, None]), 0.0)
    c = counts.double()
    mean = (t * c).sum(1) / n
    var = ((t * t * c).sum(1) / n - mean * mean).clamp(min=0) * n / (n - 1).clamp(min=1)
    z = a + num_labels * mean
    return num_labels * torch.sqrt(var / n) / torch.where(z > 0, z, torch.ones_like(z))


def auto_uniform(current: int, se: float, num_labels: int) -> int:
    """num_uniform="auto": the power of two of draws at which the measured
    error se (at current draws; it shrinks as 1 / sqrt(draws)) reaches
    TAIL_LOG_SE, within [AUTO_UNIFORM_MIN, AUTO_UNIFORM_MAX_SHARE N]."""
    cap = max(AUTO_UNIFORM_MIN, int(AUTO_UNIFORM_MAX_SHARE * num_labels))
    if not math.isfinite(se) or se <= 0:
        want = AUTO_UNIFORM_MIN
    else:
        want = current * (se / TAIL_LOG_SE) ** 2
    want = 1 << max(0, math.ceil(math.log2(max(1.0, want))))
    return int(min(cap, max(AUTO_UNIFORM_MIN, want)))


# ----------------------------------------------------------- packed softmax
def _row_logsumexp(v: Tensor, row: Tensor, batch: int) -> Tensor:
    """logsumexp of the packed values v per row (-inf for a row with none)."""
    m = torch.full((batch,), float("-inf"), dtype=v.dtype, device=v.device)
    m = m.scatter_reduce(0, row, v.detach(), "amax", include_self=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros(batch, dtype=v.dtype, device=v.device).index_add(0, row, torch.exp(v - m[row]))
    has = s > 0
    return torch.where(has, m + torch.log(torch.where(has, s, torch.ones_like(s))), float("-inf"))


def _packed_loss(v: Tensor, row: Tensor, pos: Tensor, batch: int, multi_label: str,
                 tail_lse: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Per-row loss [B] from packed (corrected) logits, and which rows count.
    tail_lse [B]: the logsumexp of terms outside the packed ones (the
    uniform draws' block; negatives), or None."""
    rp, vp = row[pos], v[pos]
    npos = torch.zeros(batch, dtype=v.dtype, device=v.device).index_add(0, rp, torch.ones_like(vp))
    counted = npos > 0
    denom = torch.where(counted, npos, torch.ones_like(npos))
    if multi_label == "each":
        # Each positive against the row's negatives: -log(e^{z_p} / (e^{z_p} + sum_neg e^{z_j})).
        lse_neg = _row_logsumexp(v.masked_fill(pos, float("-inf")), row, batch)
        if tail_lse is not None:
            lse_neg = torch.logaddexp(lse_neg, tail_lse)
        per_pos = torch.logaddexp(vp, lse_neg[rp]) - vp
        per_row = torch.zeros(batch, dtype=v.dtype, device=v.device).index_add(0, rp, per_pos) / denom
    else:
        # Soft target (1 / |P| on each positive) against the full softmax.
        lse = _row_logsumexp(v, row, batch)
        if tail_lse is not None:
            lse = torch.logaddexp(lse, tail_lse)
        mean_pos = torch.zeros(batch, dtype=v.dtype, device=v.device).index_add(0, rp, vp) / denom
        per_row = torch.where(counted, lse, torch.zeros_like(lse)) - mean_pos
    return per_row, counted


# ------------------------------------------------------------------- loss
def sampled_cross_entropy(layer: LSSLinear, x: Tensor, target: Tensor, reduction: str = "mean",
                          ignore_index: int = -100, *, num_hard: Optional[int] = None,
                          num_uniform: Union[int, str] = "auto",
                          impl: str = "auto", multi_label: str = "each",
                          refresh_every: Union[int, str, None] = "auto", rebuild_every: Union[int, str, None] = "auto",
                          generator: Optional[torch.Generator] = None,
                          seed: Optional[int] = None, mining_recall: Optional[float] = 0.9) -> Tensor:
    """Cross-entropy of layer(x) against target from the exact logits of a
    candidate set per query: a consistent estimate of
    F.cross_entropy(F.linear(x, W, b), target), never forming [B, N].

    Args:
        layer: the LSSLinear whose weight and bias get the gradients.
        x: [..., d] float (layer.weight's dtype and device).
        target: int64 [...] (one label per query, ignore_index = none) or
            [..., m] (multi-label, padded with -1 or ignore_index; a query
            with no positive is ignored).
        reduction: "mean" (over counted queries: F.cross_entropy's rule, nan
            when none counts), "sum", or "none" (x.shape[:-1], 0 for ignored).
        ignore_index: target value of a query (or a padding entry) to ignore.
        num_hard: index candidates per query (best first; default
            layer.max_candidates; 0 = none, plain uniform sampled softmax).
        num_uniform: uniform draws shared by the batch (log-Q corrected; one
            dense [B, draws] block), or "auto" (default): start at
            AUTO_UNIFORM_MIN and, whenever the mining is measured (below),
            take the power of two of draws at which the standard error of
            log Z_b, measured from the draws' own spread (tail_log_se, root
            mean square over the batch), is TAIL_LOG_SE, up to
            AUTO_UNIFORM_MAX_SHARE of N (upkeep_stats reports both).
        impl: the exact set's logits (positives and index candidates, per
            row): "gathered" (per-row ids), "bitmap" (per-row bitmaps over
            the union), or "auto" (choose_impl's rule). Same loss and
            gradients.
        multi_label: "each" (every positive against the query's negatives,
            averaged over its positives; single-label: exactly CE) or "soft"
            (CE against the uniform distribution over the positives).
        refresh_every: index upkeep. "auto" (default): a full sync every
            auto_refresh(N, B, num_hard) calls (its O(N d) at
            most AUTO_SYNC_SHARE of the loss's work in between), and in
            between the codes of the rows this loss gave a gradient
            re-encoded (sync_rows). 1: the layer's index is synced with the
            weights on every call (all N codes re-encoded after a step, O(N d)).
            k > 1: full sync every k calls, rows in between. None: rows only,
            never a full sync (exact for row-sparse optimizers).
        rebuild_every: when to re-partition: layer.rebuild_index(), fresh
            k-means partitions of the current weights (what fit() learned is
            discarded; fit() again after training). "auto" (default): at calls
            1, 2, 4, 8, ... (the partitions are never older than half the
            calls so far: log2(T) rebuilds in T calls, most of them early,
            where training moves the weights most). k: every k calls. None:
            the partitions stay those the index was built or fitted with,
            only codes follow the weights.
        generator / seed: the uniform draws' randomness (a seed makes a fresh
            generator per call: the same draws every call); default the
            global RNG.
        mining_recall: the share of the exact top num_hard labels the
            index candidates must hold, measured on the batch's first
            RECALL_QUERIES queries on the first call and every
            mining_period(N, B, num_hard) calls after; the
            mining's probe count doubles until they do (up to every
            partition: an int8 scan of all N codes) and halves where half
            still do (upkeep_stats reports both). None: the index's own
            nprobe (what fit() calibrated for top-1 predict). Families
            without probes mine as they are.
    """
    multi = _check_args(layer, x, target, reduction, ignore_index, num_hard, num_uniform, impl, multi_label,
                        refresh_every, rebuild_every, generator, seed, mining_recall)
    n, d = layer.out_features, layer.in_features
    lead = tuple(x.shape[:-1])
    xf = x.reshape(-1, d)
    B = xf.shape[0]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    positives = target.reshape(B, -1) if multi else target.reshape(B, 1)
    positives = torch.where((positives == ignore_index) | (positives < 0), -1, positives)
    if layer.has_removed_labels and bool(layer.removed[positives.clamp(min=0)][positives >= 0].any()):
        raise ValueError("target holds labels removed by remove_labels(); they have no logit to train")
    num_hard = layer.max_candidates if num_hard is None else num_hard
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)

    auto = num_uniform == "auto"
    state = _UPKEEP.setdefault(layer, _Upkeep()) if auto else None
    if auto:
        num_uniform = state.num_uniform or AUTO_UNIFORM_MIN
    if num_hard:
        state = _upkeep(layer, refresh_every, rebuild_every, B, num_hard)
    elif auto:
        state.calls += 1
    tune = state is not None and B and (state.retune or (state.calls - 1) % mining_period(
        n, B, max(1, num_hard)) == 0)
    if num_hard and mining_recall is not None and tune:
        _tune_mining(layer, state, xf, num_hard, mining_recall)
    nprobe = state.mining_nprobe if num_hard and mining_recall is not None else None
    ids, pos = _candidates(layer, xf, positives, num_hard, nprobe)
    counted_rows = (positives >= 0).any(1)

    tail_lse = None
    # S_b: per-row ids, exact logits (gathered_logits or bitmap_sparse_matmul).
    valid = ids >= 0
    row = torch.arange(B, device=x.device).unsqueeze(1).expand_as(ids)[valid]
    labels = ids[valid]
    touched = torch.unique(labels)
    if impl == "auto":
        impl = choose_impl(B, labels.numel(), touched.numel())
    w, b = layer.weight, layer.bias
    if impl == "gathered":
        v = _ops.gathered_logits(xf, w, b, ids.to(torch.int32), backend=layer.backend)[valid]
    else:
        v, _ = _ops.bitmap_sparse_matmul(xf, w, b, _bitmap(row, labels, B, n), backend=layer.backend)
        # The packed order (row by row, ascending labels) is that of ids[valid].
        if v.numel() != labels.numel():
            raise RuntimeError("bitmap_sparse_matmul returned a packing other than the candidates'")
    v, pos = v.to(acc), pos[valid]

    # The tail: the batch's shared uniform draws, one dense [B, U] block (the
    # same labels for every row: torch's GEMM over the gathered rows, faster
    # than either op here, docs/performance.md), logit + log(c N / n),
    # accidental hits (draws in S_b) dropped.
    if num_uniform:
        draws, counts = _uniform(n, num_uniform, generator, x.device)
        live = ~_accidental_hits(draws, ids) & counted_rows.unsqueeze(1)
        if layer.has_removed_labels:
            live &= ~layer.removed[draws].unsqueeze(0)
        if bool(live.any()):
            vu = F.linear(xf, _SharedRows.apply(w, draws),
                          None if b is None else _SharedRows.apply(b, draws)).to(acc)
            if auto and tune:
                exact = torch.full(ids.shape, float("-inf"), dtype=acc, device=x.device)
                exact[valid] = v.detach()
                se = tail_log_se(exact[counted_rows], vu.detach()[counted_rows], counts, live[counted_rows], n)
                state.tail_log_se = float(se.pow(2).mean().sqrt()) if se.numel() else float("nan")
                state.num_uniform = auto_uniform(num_uniform, state.tail_log_se, n)
            vu = (vu + torch.log(counts.to(acc) * (n / num_uniform)).unsqueeze(0)).masked_fill(~live, float("-inf"))
            has = live.any(1, keepdim=True)  # logsumexp's gradient at an all -inf row is nan
            tail_lse = torch.logsumexp(torch.where(has, vu, 0.0), 1).masked_fill(~has.squeeze(1), float("-inf"))
            touched = torch.cat([touched, draws])
    if state is not None:
        if tune:
            state.retune = False
        if num_hard:
            _mark_dirty(state, touched, n, refresh_every)
    per_row, counted = _packed_loss(v, row, pos, B, multi_label, tail_lse)
    per_row = per_row.to(x.dtype)
    if reduction == "none":
        return per_row.reshape(lead)
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / counted.sum().to(per_row.dtype)


class SampledCrossEntropyLoss(nn.Module):
    """Module form of sampled_cross_entropy: stores the options; called as
    loss_fn(layer, x, target). With seed set, the uniform draws come from one
    generator seeded once, so a run is reproducible and each call draws anew."""

    def __init__(self, reduction: str = "mean", ignore_index: int = -100, *, num_hard: Optional[int] = None,
                 num_uniform: Union[int, str] = "auto", impl: str = "auto", multi_label: str = "each",
                 refresh_every: Union[int, str, None] = "auto", rebuild_every: Union[int, str, None] = "auto",
                 seed: Optional[int] = None, mining_recall: Optional[float] = 0.9) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if multi_label not in MULTI_LABEL:
            raise ValueError(f"multi_label must be one of {MULTI_LABEL}, got {multi_label!r}")
        self.reduction = reduction
        self.ignore_index = checks.integer("ignore_index", ignore_index)
        self.num_hard = None if num_hard is None else checks.integer("num_hard", num_hard, 0)
        self.num_uniform = _check_num_uniform(num_uniform)
        self.impl = impl
        self.multi_label = multi_label
        self.refresh_every = (refresh_every if refresh_every is None or refresh_every == "auto"
                              else checks.integer("refresh_every", refresh_every, 1))
        self.rebuild_every = (rebuild_every if rebuild_every is None or rebuild_every == "auto"
                              else checks.integer("rebuild_every", rebuild_every, 1))
        self.seed = None if seed is None else checks.integer("seed", seed)
        self.mining_recall = _check_mining_recall(mining_recall)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def forward(self, layer: LSSLinear, x: Tensor, target: Tensor) -> Tensor:
        return sampled_cross_entropy(layer, x, target, self.reduction, self.ignore_index, num_hard=self.num_hard,
                                     num_uniform=self.num_uniform, impl=self.impl, multi_label=self.multi_label,
                                     refresh_every=self.refresh_every, rebuild_every=self.rebuild_every,
                                     generator=self.generator, mining_recall=self.mining_recall)

    def extra_repr(self) -> str:
        return (f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, num_hard={self.num_hard}, "
                f"num_uniform={self.num_uniform!r}, impl={self.impl!r}, multi_label={self.multi_label!r}, "
                f"refresh_every={self.refresh_every!r}, rebuild_every={self.rebuild_every!r}, seed={self.seed}, "
                f"mining_recall={self.mining_recall}")


# --------------------------------------------------------------- optimizer
class RowSparseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad that touches only the rows with a gradient: one
    accumulator per row (mean squared gradient of the row), so its state is
    N floats where Adagrad / AdamW keep N x d (AdamW: 2 N d). A row with an
    all-zero gradient (no candidate of the batch) is left exactly as it is,
    so the index codes of untouched rows stay exact (refresh_every=None).
    1-d parameters (bias) are rows of one element. No weight decay, no
    momentum: those would move every row every step."""

    def __init__(self, params: Iterable, lr: float = 0.1, eps: float = 1e-10) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.reshape(p.shape[0], -1) if p.dim() else p.grad.reshape(1, 1)
                # Rows with a non-zero (or NaN) entry, without a [N, d] mask
                # tensor (amax and amin apart: faster than aminmax on CPU).
                rows = ((g.amax(1) != 0) | (g.amin(1) != 0)).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros(g.shape[0], dtype=torch.float32, device=p.device)
                gr = g[rows]
                s = state["sum"].index_add_(0, rows, gr.to(torch.float32).pow(2).mean(1))[rows]
                scale = (group["lr"] / (s.sqrt() + group["eps"])).to(p.dtype).unsqueeze(1)
                flat = p.view(p.shape[0], -1) if p.dim() else p.view(1, 1)
                flat.index_add_(0, rows, gr.mul_(scale.neg_()))  # gr: a copy (advanced indexing)
        return loss
