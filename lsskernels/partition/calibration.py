"""What fit()'s calibration measures, how sure it is, and when it stops.

The question a setting (partition space, code dims, nprobe, exact shortlist
R) must answer is "does it lose P@1 against the full dense layer on queries
the index has not seen?". The calibration answers it on held-out fit pairs
with three choices, each for a reason that holds on layers unlike ours
(docs/lss.md, "The calibration", has the arithmetic):

* **Paired loss, not two P@1s.** Each held-out query contributes
  d_i = [dense top-1 correct] - [setting's top-1 correct], in {-1, 0, 1}.
  The loss is the mean of d_i; its standard error comes only from the
  queries where the two disagree, so it is far smaller than that of either
  P@1 (at P@1 5% on 2,000 queries: 0.49 point for a P@1, ~0.1 point for
  the loss of a setting that disagrees with dense on 20 of them).
* **Two strata, weighted by Good-Turing.** Pairs held out at random (their
  label keeps other pairs, which are spilled: a test query of a label seen
  in training), and pairs whose label occurs once in the fit pairs (held
  out, their label has no pair left: a test query of a label with no
  training query). The second stratum's weight is the Good-Turing estimate
  of the probability that a new query's label was never seen, the share of
  singleton pairs, so a layer whose labels mostly lack training queries is
  judged mostly on such queries, and a layer whose labels all recur on none.
* **A confidence bound as the stop rule.** A setting is accepted when the
  upper one-sided `confidence` bound of its loss, loss + z * SE, is at most
  `tolerance`; the cheapest accepted setting (modelled cost) wins, among
  those whose held-out P@1 reaches the unfitted index's where any does
  (fit() does not trade away, on its held-out pairs, accuracy the layer
  had before it). Choosing
  the cheapest of many noisy estimates favours the ones whose noise was
  kind; the bound makes each of them earn its place. Where none within the
  cost budget is accepted, the one of least bound (then least cost) wins,
  and fit() says so.

* **A screen for the hopeless.** Each setting is first evaluated on a
  quarter of the held-out pairs; where even its 99% lower bound is past
  the tolerance, it is dropped there (screened_out) and keeps the
  quarter's figures. The walk's first probe counts, and every setting of a
  layer that memorised its pairs, cost a quarter.

This module knows nothing of a family's internals: the family evaluates a
setting (per-query hits) and this module turns hits into a decision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from .codec import INT8

Tensor = torch.Tensor


# ----------------------------------------------------------------- held out
@dataclass
class HoldOut:
    """The calibration's held-out pairs (indices into the fit pairs) and the
    pairs it learns from meanwhile."""
    seen: Tensor               # int64, held out at random among pairs whose labels recur
    unseen: Tensor             # int64, pairs whose every label occurs once in the fit pairs
    train: Tensor              # int64, the rest: clustered and spilled while calibrating
    missing_mass: float        # Good-Turing: P(a new query's label has no fit pair)

    @property
    def queries(self) -> Tensor:
        """Every held-out pair, seen stratum first."""
        return torch.cat([self.seen, self.unseen])

    @property
    def size(self) -> int:
        return int(self.seen.numel() + self.unseen.numel())

    def weights(self) -> Tensor:
        """Per held-out pair (order of .queries), float64, summing to 1: the
        strata's shares (1 - m, m) spread evenly over their pairs."""
        ns, nu = self.seen.numel(), self.unseen.numel()
        m = self.missing_mass if nu else 0.0
        if ns == 0:
            m = 1.0
        w_seen = torch.full((ns,), (1.0 - m) / max(1, ns), dtype=torch.float64)
        w_unseen = torch.full((nu,), m / max(1, nu), dtype=torch.float64)
        return torch.cat([w_seen, w_unseen]).to(self.seen.device)

    def screen(self, every: int) -> Tuple["HoldOut", Tensor, Tensor]:
        """(the held-out pairs of every `every`-th position of each stratum,
        their positions in .queries, the other positions): the screen's
        sample (screened_out), the same Good-Turing weight."""
        ns, nu = self.seen.numel(), self.unseen.numel()
        dev = self.seen.device
        pos = torch.cat([torch.arange(0, ns, every, device=dev), torch.arange(ns, ns + nu, every, device=dev)])
        keep = torch.zeros(ns + nu, dtype=torch.bool, device=dev)
        keep[pos] = True
        sub = HoldOut(seen=self.seen[::every], unseen=self.unseen[::every], train=self.train,
                      missing_mass=self.missing_mass)
        return sub, pos, torch.nonzero(~keep).squeeze(1)

    def strata(self) -> List[Tuple[slice, float]]:
        """(positions in .queries, weight) of each non-empty stratum."""
        ns, nu = self.seen.numel(), self.unseen.numel()
        m = self.missing_mass if nu else 0.0
        if ns == 0:
            m = 1.0
        out = []
        if ns:
            out.append((slice(0, ns), 1.0 - m))
        if nu:
            out.append((slice(ns, ns + nu), m))
        return out


def hold_out(y: Tensor, size: int, gen: torch.Generator, max_fraction: float = 0.2) -> HoldOut:
    """Held-out pairs for labels y int64 [n, m] (-1 padded): up to `size`
    pairs of each stratum, together at most max_fraction of the pairs."""
    n = y.shape[0]
    valid = y >= 0
    counts = torch.bincount(y[valid], minlength=int(y.max()) + 1 if y.numel() else 1)
    once = torch.zeros_like(valid)
    once[valid] = counts[y[valid]] == 1
    singleton = (once | ~valid).all(1) & valid.any(1)  # every label of the pair occurs only here
    occurrences = int(valid.sum())
    # Good-Turing: labels seen once / label occurrences estimates the share of
    # new queries whose label the pairs never show.
    missing = float(int((counts == 1).sum()) / max(1, occurrences))
    cap = int(max_fraction * n)
    perm = torch.randperm(n, generator=gen).to(y.device)
    single_perm = perm[singleton[perm]]
    recur_perm = perm[~singleton[perm]]
    n_unseen = min(size, single_perm.numel(), cap // 2 if recur_perm.numel() else cap) if missing > 0 else 0
    n_seen = min(size, recur_perm.numel(), cap - n_unseen)
    seen, unseen = recur_perm[:n_seen].sort().values, single_perm[:n_unseen].sort().values
    keep = torch.ones(n, dtype=torch.bool, device=y.device)
    keep[seen] = False
    keep[unseen] = False
    return HoldOut(seen=seen, unseen=unseen, train=torch.nonzero(keep).squeeze(1), missing_mass=missing)


# ---------------------------------------------------------------- statistic
@dataclass
class PairedLoss:
    """The P@1 a setting loses against dense on the held-out pairs."""
    loss: float                # weighted mean of d_i (negative: the setting beats dense)
    se: float                  # its standard error (stratified)
    bound: float               # loss + z * se

    @staticmethod
    def of(dense_hits: Tensor, hits: Tensor, holdout: HoldOut, z: float) -> "PairedLoss":
        d = dense_hits.to(torch.float64) - hits.to(torch.float64)
        loss, var = 0.0, 0.0
        for where, share in holdout.strata():
            dh = d[where]
            nh = dh.numel()
            mean = float(dh.mean())
            # The sample variance, floored at one discordant pair's worth: a
            # stratum where nothing disagreed still bounds the loss at z / n.
            s2 = max(float(((dh - mean) ** 2).sum()) / max(1, nh - 1), 1.0 / nh)
            loss += share * mean
            var += share * share * s2 / nh
        se = math.sqrt(var)
        return PairedLoss(loss=loss, se=se, bound=loss + z * se)


# The screen: a setting is first evaluated on every SCREEN_EVERY-th held-out
# pair (a quarter) and dropped there when its loss is past the tolerance
# even at SCREEN_CONFIDENCE (its lower bound loss - z SE above it), since
# the whole sample would not accept it either: the low probe counts every
# walk starts with, and every setting of a layer that memorised its pairs,
# cost a quarter. A setting whose true loss is within the tolerance is
# dropped only where its quarter's estimate lands more than 2.33 quarter
# standard errors above that loss: under 1% (normal approximation).
SCREEN_EVERY = 4
SCREEN_CONFIDENCE = 0.99


def screened_out(dense_hits: Tensor, hits: Dict[int, Tensor], holdout: HoldOut, tolerance: float) -> bool:
    """Whether every shortlist R of a setting loses more than tolerance at
    SCREEN_CONFIDENCE on holdout's pairs (the screen's sample)."""
    z = z_of(SCREEN_CONFIDENCE)
    for h in hits.values():
        loss = PairedLoss.of(dense_hits, h, holdout, z)
        if loss.loss - z * loss.se <= tolerance:
            return False
    return True


def z_of(confidence: float) -> float:
    """The one-sided normal quantile of confidence (0.9 -> 1.2816)."""
    return NormalDist().inv_cdf(confidence)


# -------------------------------------------------------------- cost model
def scan_cost(rows: float, width: int) -> float:
    """Streamed bytes of scanning `rows` code rows: `width` bytes of code
    (the codec's bytes_per_row) plus the row's scale, bias, id and sort key
    (20 bytes)."""
    return rows * (width + 20)


def setting_cost(rows: float, width: int, rerank: int, dim: int, weight_bytes: int, partitions: int = 0) -> float:
    """The modelled cost of one query at a setting, in streamed-byte units:
    the probe (a scan of the partitions' int8 centroid codes), the scanned
    codes (scan_cost) and the exact rows (random reads of the weight matrix,
    priced at twice a streamed byte each: docs/performance.md). A model, not
    a timing, so that fit() stays a function of its inputs."""
    probe_width = INT8.bytes_per_row(dim)  # the probe's centroid codes are int8 (probe.probe_codes)
    return scan_cost(partitions, probe_width) + scan_cost(rows, width) + 2.0 * rerank * dim * weight_bytes


# ------------------------------------------------------------------ points
@dataclass
class CalibrationPoint:
    """One (space, spill, code dims, nprobe) the calibration evaluated, with
    every shortlist R it tried."""
    space: str
    partitions: int
    code_dim: int
    width: int                 # bytes per code row (code_dim rounded up)
    nprobe: int
    rows: float                # mean probed rows per held-out query
    recall: float              # weighted share of held-out pairs with a label among the candidates
    p1: Dict[int, float] = field(default_factory=dict)           # weighted held-out P@1 by R
    loss: Dict[int, PairedLoss] = field(default_factory=dict)    # paired loss against dense by R
    spill: int = 0             # spill_probes of the lists evaluated (0: every label in its own list only)
    screened: bool = False     # dropped by the screen: its figures are of the screen's quarter of the pairs

    def cost(self, rerank: int, dim: int, weight_bytes: int) -> float:
        return setting_cost(self.rows, self.width, rerank, dim, weight_bytes, self.partitions)


def settings(points: List[CalibrationPoint], dim: int, weight_bytes: int,
             budget: float = float("inf")) -> Iterator[Tuple[float, CalibrationPoint, int]]:
    """(cost, point, R) of every setting tried whose cost is within budget."""
    for p in points:
        for r in p.loss:
            c = p.cost(r, dim, weight_bytes)
            if c <= budget:
                yield c, p, r


def accepted(points: List[CalibrationPoint], tolerance: float, dim: int, weight_bytes: int,
             budget: float = float("inf"), floor: Optional[float] = None) -> List[Tuple[float, CalibrationPoint, int]]:
    """The settings within budget whose loss bound is at most tolerance;
    with a floor (the unfitted index's held-out P@1), only those whose
    held-out P@1 reaches it, where any does."""
    ok = [s for s in settings(points, dim, weight_bytes, budget) if s[1].loss[s[2]].bound <= tolerance + 1e-12]
    if floor is not None:
        # The same held-out queries: p1 >= floor is a paired comparison.
        level = [s for s in ok if s[1].p1[s[2]] >= floor - 1e-12]
        ok = level or ok
    return ok


def choose_setting(points: List[CalibrationPoint], tolerance: float, *, dim: int, weight_bytes: int,
                   budget: float = float("inf"), floor: Optional[float] = None) -> Tuple[CalibrationPoint, int, bool]:
    """(point, R, accepted): the cheapest accepted setting (ties: wider
    codes, the label space, less spill, fewer probes, shorter list) among
    those at least as accurate as the unfitted index on the held-out pairs
    (floor: its held-out P@1; where none is, among all accepted); where none is
    accepted, the one within budget of least loss bound (then least cost);
    where none is within budget, the cheapest tried."""
    order = lambda s: (s[0], -s[1].code_dim, 0 if s[1].space == "labels" else 1, s[1].spill, s[1].nprobe,  # noqa: E731
                       s[2])
    ok = accepted(points, tolerance, dim, weight_bytes, budget, floor)
    if ok:
        _, p, r = min(ok, key=order)
        return p, r, True
    affordable = list(settings(points, dim, weight_bytes, budget))
    if affordable:
        _, p, r = min(affordable, key=lambda s: (round(s[1].loss[s[2]].bound, 12),) + order(s))
        return p, r, False
    _, p, r = min(settings(points, dim, weight_bytes), key=order)
    return p, r, False


def cheapest_accepted(points: List[CalibrationPoint], tolerance: float, dim: int, weight_bytes: int,
                      budget: float, floor: Optional[float] = None) -> Optional[float]:
    """The least cost of a setting choose_setting could take so far (None:
    none yet): the walk up the nprobe grid stops once a scan alone would
    cost more."""
    ok = accepted(points, tolerance, dim, weight_bytes, budget, floor)
    return min(c for c, _, _ in ok) if ok else None


# ----------------------------------------------------------------- shards
@dataclass
class MergedSetting:
    """One (nprobe, R) judged on the layer merged from several shards."""
    nprobe: int
    rerank: int
    loss: PairedLoss           # of the merged layer against dense
    cost: float                # summed over the shards: every shard scans for every query


def merged_settings(shards: List[Tuple[float, List[CalibrationPoint]]], z: float, dim: int,
                    weight_bytes: int) -> List[MergedSetting]:
    """The (nprobe, R) settings every shard evaluated, judged on the merged
    layer. shards: (share, points) per shard, share the shard's fraction of
    the queries (its labels' share of the fit pairs), points those of one
    space and code width. A query's top-1 is decided by the shard holding
    its label (lsskernels/sharded.py, fit), so the merged loss is the
    share-weighted sum of the shards' losses; the shards' held-out pairs are
    disjoint, so their estimates are independent and the variances add with
    squared shares. The merged SE is about 1/sqrt(K) of a shard's: judging
    each shard alone against the whole tolerance asks each for K times the
    held-out pairs it has."""
    tables = [(share, {(p.nprobe, r): p for p in points for r in p.loss}) for share, points in shards]
    common = set.intersection(*(set(t) for _, t in tables)) if tables else set()
    out = []
    for nprobe, r in sorted(common):
        loss = sum(share * t[(nprobe, r)].loss[r].loss for share, t in tables)
        se = math.sqrt(sum((share * t[(nprobe, r)].loss[r].se) ** 2 for share, t in tables))
        cost = sum(t[(nprobe, r)].cost(r, dim, weight_bytes) for _, t in tables)
        out.append(MergedSetting(nprobe=nprobe, rerank=r, loss=PairedLoss(loss=loss, se=se, bound=loss + z * se),
                                 cost=cost))
    return out
