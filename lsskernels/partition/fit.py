"""Building and fitting a PartitionIndex (lsskernels/partition/index.py),
through its public methods (set_partitions, install_lists,
set_code_projection, set_search): the fit computes, the index writes.

Build (from the weights alone):
  1. k-means (Lloyd, L2) of the bias-augmented label vectors v = [w, b] on a
     seeded sample, then every label assigned to its nearest centroid
     (partition/kmeans.py). A
     query q = [x, 1] scores partition p by <q, c_p> = <x, c_w> + c_b, an
     estimate of the logits of the labels there ("label space").
  2. int8 codes of every listed label's weight row (symmetric, one scale per
     row; the bias is kept exactly in float32), stored contiguously by
     partition, labels ascending within a partition.

Fit (LSSLinear.fit with the partition family), label-superior style:
  3. **Two partition spaces.** Besides the label space, fit() tries
     partitions of the training queries themselves ("query space"): k-means
     of the queries, probed by L2 distance (centroid_bias = -|c|^2 / 2, so
     <x, c> + centroid_bias ranks centroids as -|x - c|^2 / 2 does). Each
     label's own list is the partition where its logit stands out most
     among all labels' logits at the centroid (label_homes). Where queries
     are plentiful and cluster (a trained classifier's hidden vectors),
     a query's neighbours' labels sit in the partitions it probes first.
  4. **Spill.** Each training label is also listed in the partitions its
     training queries probe first (`spill_probes`), when its own list is
     elsewhere; optionally capped per partition (`spill_cap`, most-voted
     first; no cap by default). A MIPS
     index finds labels with large logits; a query whose correct label has
     a moderate logit, or sits in a partition whose centroid scores low,
     now finds it in the partitions it does probe. It can also crowd out
     labels without training queries: the label space is calibrated
     with and without it (spill_variants).
  5. **Space, spill, probe count and shortlist.** Held-out pairs (two strata:
     lsskernels/partition/calibration.py) are neither clustered nor spilled while
     calibrating. In each space, for each power-of-two nprobe, the held-out
     queries get their `max_candidates` best labels by quantized score, and
     each query's top-1 is taken from the exact logits of the first R of
     them for R = 16, 32, ..., max_candidates (a prefix: the same order).
     A setting is accepted when the upper confidence bound of its paired
     P@1 loss against the dense layer is within `tolerance`; of the
     accepted (space, spill, code dim, nprobe, R), fit() keeps the one of least
     modelled cost (`setting_cost`) among those at least as accurate on
     the held-out pairs as the unfitted index's own setting (label space,
     no spill, default nprobe: always evaluated, the floor), where any
     is. No setting may cost more than
     `max_cost` of the dense layer's weight bytes. The walk up the nprobe
     grid stops once the next probe count's scan alone would cost more
     than an accepted setting, or the scan leaves the budget. Where spill
     is kept, the final lists spill every pair.

Everything is a function of (weights, pairs, options, seed): the same call
gives the same index, bit for bit, on a given device and thread count.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from .. import _checks as checks
from .. import _ops
from ..families import Family, register
from ..fit_pairs import among_labels, best_per_group, dense_hits, fit_logger, fit_options, fit_pairs, labels_found
from ..reference import augmented_labels
from .codec import INT8, Int8Codec
from .calibration import (SCREEN_EVERY, CalibrationPoint, MergedSetting, PairedLoss, cheapest_accepted,
                          choose_setting, hold_out, merged_settings, screened_out, setting_cost, z_of)
from .kmeans import kmeans, nearest_centroid
from .index import SPACES, SPILL_PROBES, PartitionConfig, PartitionIndex, default_nprobe, default_partitions


Tensor = torch.Tensor



@dataclass
class PartitionFitConfig:
    holdout: int = 2000            # held-out pairs per stratum (partition/calibration.py), at most a fifth of the pairs
    spill_probes: int = SPILL_PROBES  # a training label is spilled into its query's first spill_probes partitions
                                   # (the label space's calibration also tries no spill: spill_variants)
    spill_cap: Optional[int] = None  # spilled labels per partition (most-voted first); default: no cap
    max_nprobe: int = 256          # largest probe count the calibration tries
    tolerance: float = 0.003       # a setting is accepted when its held-out P@1 loss against dense is at most
                                   # this (0.3 point: the product's bar) with `confidence`
    confidence: float = 0.9        # one-sided confidence of that bound
    calibrate_rerank: bool = True  # also calibrate how many candidates predict() scores exactly
    project_codes: bool = True     # also try codes of the top d/2, d/3 principal directions (code_dims)
    spaces: Tuple[str, ...] = SPACES  # partition spaces the calibration tries ("labels", "queries")
    max_cost: float = 0.1          # a setting's modelled cost: at most this fraction of the dense layer's weight bytes
    kmeans_iters: int = 6          # Lloyd iterations (docs/performance.md, 0.4: "6 Lloyd iterations instead of 10")
    kmeans_sample: int = 64        # sample points per centroid for k-means
    progress: bool = True


@dataclass
class PartitionFitReport:
    """What fit() did (also printed when progress=True)."""
    nprobe: int = 0
    space: str = "labels"          # the chosen partition space (SPACES)
    num_partitions: int = 0
    rerank: Optional[int] = None   # candidates predict() scores exactly (None: max_candidates)
    code_dim: Optional[int] = None  # dimensions of the codes (< d: a principal-directions projection)
    calibration: List[CalibrationPoint] = field(default_factory=list)  # every setting evaluated
    dense_p1: float = float("nan")  # the full layer's P@1 on the held-out pairs (strata weighted)
    loss: Optional[PairedLoss] = None  # the chosen setting's P@1 loss against dense on them
    accepted: bool = False         # its bound is within tolerance (else: the least bound within budget)
    missing_mass: float = float("nan")  # Good-Turing share of new queries whose label has no fit pair
    held_out: Tuple[int, int] = (0, 0)  # held-out pairs (seen, unseen strata)
    budget: float = float("nan")    # the largest setting_cost allowed (max_cost of the dense layer's bytes)
    spill_probes: int = 0          # the chosen spill width (0: no spill; partition/fit.py, spill_variants)
    unfitted_p1: float = float("nan")  # the unfitted index's setting's held-out P@1: the floor (calibration.py)
    spilled: int = 0               # rows added by spill in the final index
    seconds: Dict[str, float] = field(default_factory=dict)
    index: Optional["PartitionIndex"] = None

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


class LabelCodes:
    """Every label's code, scale and bias under each code projection of one
    fit, encoded once: a fit installs lists several times (each space, with
    and without spill, each code dim), and a list only chooses and repeats
    labels, so an install is a gather. Within a fit the projections of a
    given width are all the same matrix (the top principal directions), so
    the width is the key."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], codec: Int8Codec = INT8) -> None:
        self.weight, self.bias, self.codec = weight, bias, codec
        self._encoded: Dict[tuple, tuple] = {}

    def rows(self, ids: Tensor, proj: Optional[Tensor]):
        """(codes, scales, biases) of the labels ids (int64 [T]) under proj."""
        key = None if proj is None or proj.numel() == 0 else tuple(proj.shape)
        if key not in self._encoded:
            every = torch.arange(self.weight.shape[0], device=self.weight.device)
            self._encoded[key] = self.codec.encode_labels(self.weight, self.bias, every, proj)
        codes, scales, code_bias = self._encoded[key]
        return codes[ids], scales[ids], code_bias[ids]


def _codes_of(weight: Tensor, bias: Optional[Tensor], book: Optional[LabelCodes], codec: Int8Codec = INT8):
    """The encoder the index's list writer takes: a fit's LabelCodes, or the codec's encode."""
    if book is not None:
        return book.rows
    return lambda ids, proj: codec.encode(weight, bias, ids, proj=proj)


@torch.no_grad()
def build_partitions(index: "PartitionIndex", weight: Tensor, bias: Optional[Tensor], *, seed: int,
                     iters: int = PartitionFitConfig.kmeans_iters,
                     sample: int = PartitionFitConfig.kmeans_sample, book: Optional[LabelCodes] = None) -> Tensor:
    """k-means partitions and each label's own list entry; returns the
    assignment int64 [N]."""
    # [w, b] row by row chunk (bias=): never an [N, d + 1] copy of the weights.
    w = weight.detach()
    b = bias.detach() if bias is not None else w.new_zeros(w.shape[0])
    gen = torch.Generator().manual_seed(seed)
    c = kmeans(w, index.num_partitions, iters=iters, sample=sample, gen=gen, bias=b)
    index.set_partitions(c[:, :-1], c[:, -1], "labels")
    assign = nearest_centroid(w, c, bias=b)
    index.install_lists(assign, torch.arange(index.num_labels, device=weight.device), _codes_of(weight, bias, book))
    return assign


# Labels scored against the query centroids together in label_homes.
_HOMES_CHUNK = 2048


@torch.no_grad()
def label_homes(weight: Tensor, bias: Optional[Tensor], centroids: Tensor, chunk: int = 1 << 12,
                rows: Optional[Tensor] = None) -> Tensor:
    """Each label's own partition in a query-space index, int64 [N] (or of
    the labels rows only, int64 [len(rows)], the statistics still over all): the
    partition whose centroid (a typical query there) gives the label's logit
    the largest z-score among all labels' logits at that centroid,
    argmax_p (<[c_p, 1], v> - mean_p) / std_p with v = [w, b]. A raw argmax
    of the logit would send every large-norm label to the few centroids of
    largest norm; the z-score asks where the label stands out."""
    ca = torch.cat([centroids.to(torch.float32), centroids.new_ones(centroids.shape[0], 1, dtype=torch.float32)], 1)
    # The labels' mean and covariance in float64, a chunk of [w, b] rows at a
    # time: never a second [N, d] copy of the weights.
    n = weight.shape[0]
    total = torch.zeros(ca.shape[1], dtype=torch.float64, device=weight.device)
    for s in range(0, n, chunk):
        total += augmented_labels(weight[s : s + chunk], None if bias is None else bias[s : s + chunk],
                                  torch.float64).sum(0)
    mu = total / max(1, n)
    cov = torch.zeros(ca.shape[1], ca.shape[1], dtype=torch.float64, device=weight.device)
    for s in range(0, n, chunk):
        vc = augmented_labels(weight[s : s + chunk], None if bias is None else bias[s : s + chunk], torch.float64)
        vc -= mu
        cov += vc.T @ vc
    cov /= max(1, n)
    ca64 = ca.to(torch.float64)
    std = ((ca64 @ cov) * ca64).sum(1).clamp(min=1e-30).sqrt()
    scale = (1.0 / std).to(torch.float32)
    shift = (ca64 @ mu).to(torch.float32)
    rows = torch.arange(n, device=weight.device) if rows is None else rows
    out = torch.empty(rows.shape[0], dtype=torch.int64, device=weight.device)
    for s in range(0, rows.shape[0], _HOMES_CHUNK):  # [chunk, P] z-scores, a few MB
        r = rows[s : s + _HOMES_CHUNK]
        z = augmented_labels(weight[r], None if bias is None else bias[r]) @ ca.T
        out[s : s + _HOMES_CHUNK] = z.sub_(shift).mul_(scale).argmax(1)
    return out


@torch.no_grad()
def build_query_partitions(index: "PartitionIndex", weight: Tensor, bias: Optional[Tensor], queries: Tensor, *,
                           seed: int, iters: int = PartitionFitConfig.kmeans_iters,
                           sample: int = PartitionFitConfig.kmeans_sample, book: Optional[LabelCodes] = None,
                           among: Optional[Tensor] = None) -> Tensor:
    """Query-space partitions: k-means of the queries (of the rows `among`
    names, int64 ascending, where given), probed by L2 distance, each label
    listed in its home partition (label_homes); returns the homes int64 [N]."""
    gen = torch.Generator().manual_seed(seed)
    c = kmeans(queries, index.num_partitions, iters=iters, sample=sample, gen=gen, among=among)
    index.set_partitions(c, -0.5 * c.pow(2).sum(1), "queries")
    home = label_homes(weight, bias, c)
    index.install_lists(home, torch.arange(index.num_labels, device=weight.device), _codes_of(weight, bias, book))
    return home


def _probe(index: "PartitionIndex", queries: Tensor, n: int, chunk: int = 512) -> Tensor:
    """The first n partitions each query probes (as predict() probes them:
    PartitionIndex.probe), int64 [n_q, n], `chunk` queries a call: the CPU
    kernel keeps its per-query key buffers for the process, sized by the
    largest call (4,096 queries held ~1.3x a 10^5-label layer's weights).
    """
    out = torch.empty(queries.shape[0], n, dtype=torch.int64, device=queries.device)
    for s in range(0, queries.shape[0], chunk):
        out[s : s + chunk] = index.probe(queries[s : s + chunk].to(torch.float32), n).to(torch.int64)
    return out


def spill_pairs(index: "PartitionIndex", queries: Tensor, y: Tensor, assign: Tensor, spill: int,
                cap: int, probes: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """(partition, label) entries to add: each valid label of y [n, m] into
    the first `spill` partitions of its query, unless it is listed
    there already; at most cap per partition, most votes first, then
    smaller label. probes: the queries' first >= spill partitions, if
    already known (queries is then not read: None will do)."""
    N = index.num_labels
    width = min(spill, index.num_partitions)
    probes = _probe(index, queries, width) if probes is None else probes[:, :width]  # [n, s]
    part = probes.unsqueeze(2).expand(-1, -1, y.shape[1])
    lab = y.unsqueeze(1).expand_as(part)
    valid = lab >= 0
    part, lab = part[valid], lab[valid]
    keep = assign[lab] != part  # its own list has it already
    key, votes = torch.unique(part[keep] * N + lab[keep], return_counts=True)
    p, l = key // N, key % N
    kept = best_per_group(p, votes, index.num_partitions, cap)  # most votes first, then smaller label
    return p[kept], l[kept]


def _with_spill(index, weight, bias, assign, queries, y, spill, cap, probes=None, book=None) -> int:
    """Installs the lists: every label in its own (assign) and, where spill
    > 0, spilled as spill_pairs says; returns the spilled rows. Unspilled
    lists (exactly N rows: every label once) are left as they are."""
    own = torch.arange(index.num_labels, device=assign.device)
    if spill == 0:
        if index.list_ids.numel() != index.num_labels:
            index.install_lists(assign, own, _codes_of(weight, bias, book))
        return 0
    sp, sl = spill_pairs(index, queries, y, assign, spill, cap, probes)
    index.install_lists(torch.cat([assign, sp]), torch.cat([own, sl]), _codes_of(weight, bias, book))
    return int(sp.numel())


def spill_variants(space: str, spill_probes: int) -> List[int]:
    """The spill widths the calibration tries in a space: spill_probes, and
    in the label space also none (the unfitted lists). Spill lists a
    training label where its queries look; it can also crowd out labels
    that have no training query, whose queries the spilled labels then
    outscore (docs/lss.md, "Spill, calibrated"): the held-out unseen
    stratum measures that, so the calibration decides (the unspilled lists
    first: they are the unfitted index's, whose setting sets the floor).
    In the query space a label without spill sits only in its
    home partition: no variant."""
    if space == "labels" and spill_probes:
        return [0, spill_probes]
    return [spill_probes]


def rerank_grid(max_candidates: int) -> List[int]:
    """Shortlist sizes the calibration tries: 16, 32, ... below max_candidates, and max_candidates."""
    grid = [r for r in (2**i for i in range(4, 31)) if r < max_candidates]
    return grid + [max_candidates]


@torch.no_grad()
def evaluate_setting(index: "PartitionIndex", weight: Tensor, bias: Optional[Tensor], queries: Tensor, y: Tensor,
                     max_candidates: int, nprobe: int, reranks: List[int], probes: Tensor,
                     batch: int = 512) -> Tuple[Dict[int, Tensor], Tensor]:
    """Per query at nprobe: ({R: top-1 of the exact logits of the first R
    candidates is a label, bool [n]}, a label among the candidates bool [n]).
    probes: the queries' first >= nprobe partitions."""
    probes = probes[:, :nprobe].to(torch.int32).contiguous()
    hits = {r: torch.empty(queries.shape[0], dtype=torch.bool, device=queries.device) for r in reranks}
    found = torch.empty(queries.shape[0], dtype=torch.bool, device=queries.device)
    for s in range(0, queries.shape[0], batch):
        xq = queries[s : s + batch].to(weight.dtype)
        yq = y[s : s + batch]
        ids, _ = index.scan(xq, probes[s : s + batch], max_candidates)
        logits = _ops.gathered_logits(xq, weight, bias, ids)
        # Every R's top-1 side by side, looked up in one pass.
        tops = torch.cat([_ops.topk_gathered(logits[:, :r].contiguous(), ids[:, :r].contiguous(), 1)[1]
                          for r in reranks], 1)
        right = among_labels(tops, yq)
        for j, r in enumerate(reranks):
            hits[r][s : s + batch] = right[:, j]
        found[s : s + batch] = labels_found(ids.to(torch.int64), yq)
    return hits, found


def code_dims(dim: int) -> List[int]:
    """Code dimensions the calibration tries: d itself, then d/2 and d/3
    where those are multiples of 32 and at least 128. Fewer dimensions lose
    more than 2,000 held-out pairs can show in P@1 (the development
    measurements: docs/lss.md and docs/performance.md, "Measurements moved
    out of code comments")."""
    out = [dim]
    for r in (dim // 2, dim // 3):
        if r >= 128 and r % checks.CODE_ALIGN == 0 and r not in out and r * 2 <= dim:
            out.append(r)
    return out


@torch.no_grad()
def principal_directions(weight: Tensor, r: int) -> Tensor:
    """The top r principal directions of the label vectors (float32 [d, r]):
    eigenvectors of the centred second-moment matrix, largest first, each
    signed so its largest entry is positive (a function of the weights)."""
    w = weight.detach().to(torch.float64)
    w = w - w.mean(0)
    vals, vecs = torch.linalg.eigh(w.T @ w)
    vecs = vecs.flip(1)[:, :r]
    sign = torch.sign(vecs.gather(0, vecs.abs().argmax(0, keepdim=True)))
    return (vecs * torch.where(sign == 0, torch.ones_like(sign), sign)).to(torch.float32).contiguous()


def fit_partitions(index: "PartitionIndex", weight: Tensor, bias: Optional[Tensor], queries: Tensor, labels: Tensor,
                   *, max_candidates: int, seed: int = 0, **options) -> Tuple["PartitionIndex", PartitionFitReport]:
    """Fit an unbuilt PartitionIndex to (query, label) pairs; see the module
    docstring. Returns (an index, fitted, and a report): `index` itself
    when the label space is chosen, else a query-space index with the same
    configuration (and its own partition count unless the user set one)."""
    cfg = fit_options(PartitionFitConfig, options, "partitions")
    checks.integer("holdout", cfg.holdout, 0)
    if not isinstance(cfg.confidence, float) or not 0.5 <= cfg.confidence < 1:
        raise ValueError(f"confidence must be a float in [0.5, 1), got {cfg.confidence!r}")
    if not isinstance(cfg.tolerance, (int, float)) or isinstance(cfg.tolerance, bool) or not cfg.tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0 (a fraction of P@1), got {cfg.tolerance!r}")
    checks.integer("spill_probes", cfg.spill_probes, 0)  # each space spills into at most its P partitions
    checks.integer("max_nprobe", cfg.max_nprobe, 1)
    if cfg.spill_cap is not None:
        checks.integer("spill_cap", cfg.spill_cap, 0)
    spaces = tuple(cfg.spaces) if isinstance(cfg.spaces, (tuple, list)) else (cfg.spaces,)
    if not spaces or any(sp not in SPACES for sp in spaces) or len(set(spaces)) != len(spaces):
        raise ValueError(f"spaces must be a non-empty tuple of distinct names from {SPACES}, got {cfg.spaces!r}")
    if not isinstance(cfg.max_cost, (int, float)) or isinstance(cfg.max_cost, bool) or not cfg.max_cost > 0:
        raise ValueError(f"max_cost must be a number > 0 (a fraction of the dense layer's weight bytes), "
                         f"got {cfg.max_cost!r}")
    device = weight.device
    queries, y = fit_pairs(queries, labels, index.num_labels, index.dim, device)
    log = fit_logger(cfg.progress)
    report = PartitionFitReport()
    # No cap by default: the spilled rows are at most spill_probes per pair,
    # and a cap starves exactly the partitions the queries probe most.
    cap = cfg.spill_cap if cfg.spill_cap is not None else queries.shape[0] * max(1, cfg.spill_probes)

    gen = torch.Generator().manual_seed(seed)
    held = hold_out(y, cfg.holdout, gen)
    train, n_hold = held.train, held.size
    calibrate = not index.nprobe_override and n_hold > 0
    if not calibrate:  # nothing to choose a space by: the label space where allowed
        spaces = ("labels",) if "labels" in spaces else spaces[:1]
    # k-means of the queries needs a query per partition at least.
    p_queries = query_space_partitions(index, train.numel())
    if "queries" in spaces and train.numel() < p_queries:
        if spaces == ("queries",):
            raise ValueError(f"the query space needs at least num_partitions = {p_queries} training queries "
                             f"(after holding out {n_hold}), got {train.numel()}")
        spaces = tuple(sp for sp in spaces if sp != "queries")
    report.seconds["partitions"] = 0.0

    def build(space):
        t = time.perf_counter()
        if space == "labels":
            idx = index
            home = build_partitions(idx, weight, bias, seed=seed, iters=cfg.kmeans_iters, sample=cfg.kmeans_sample,
                                    book=book)
        else:
            idx = query_space_index(index, train.numel())
            home = build_query_partitions(idx, weight, bias, queries, seed=seed, iters=cfg.kmeans_iters,
                                          sample=cfg.kmeans_sample, book=book, among=train)
        report.seconds["partitions"] += time.perf_counter() - t
        spill_probes[space] = (_probe(idx, queries, min(cfg.spill_probes, idx.num_partitions))
                               if cfg.spill_probes else None)
        points = f"{index.num_labels:,} labels" if space == "labels" else f"{train.numel():,} training queries"
        log(f"k-means ({space} space): {idx.num_partitions} partitions of {points} ({time.perf_counter() - t:.1f} s)")
        return idx, home

    built, spill_probes = {}, {}  # per space: (index, homes), every query's first spill_probes partitions
    book = LabelCodes(weight, bias)
    t = time.perf_counter()
    if not calibrate:
        built[spaces[0]] = build(spaces[0])
        report.space = spaces[0]
        report.nprobe = built[spaces[0]][0].nprobe
        report.spill_probes = cfg.spill_probes
    else:
        chosen = _calibrate(index, weight, bias, queries, y, held, spaces, build, built, spill_probes, cap, cfg,
                            max_candidates, report, log, book)
        idx = built[report.space][0]
        idx.set_code_projection(chosen, _codes_of(weight, bias, book))
    idx, home = built[report.space]
    report.num_partitions = idx.num_partitions
    idx.set_search(report.nprobe, report.rerank)
    report.seconds["calibration"] = time.perf_counter() - t - report.seconds["partitions"]

    t = time.perf_counter()
    report.spilled = _with_spill(idx, weight, bias, home, queries, y, report.spill_probes, cap,
                                 spill_probes[report.space], book)
    report.seconds["spill"] = time.perf_counter() - t
    idx.spill_probes = report.spill_probes
    idx.fitted = True
    report.index = idx
    log(f"fit: {report.space} space, {idx.num_partitions} partitions, nprobe {idx.nprobe}, codes of "
        f"{report.code_dim or index.dim} dims, exact logits for {idx.rerank or max_candidates} of {max_candidates} "
        f"candidates in predict(), {report.spilled:,} spilled rows ({idx.list_ids.numel():,} rows), "
        f"{report.total_seconds:.1f} s")
    return idx, report


def _calibrate(index, weight, bias, queries, y, held, spaces, build, built, spill_probes, cap, cfg, max_candidates,
               report, log, book) -> Optional[Tensor]:
    """Evaluate settings on the held-out pairs (lsskernels/partition/calibration.py)
    and record the chosen one in report; returns the chosen code projection
    (None: codes of x itself)."""
    hold = held.queries
    wbytes = weight.element_size()
    grid_all = [p for p in (2**i for i in range(0, 31)) if p <= cfg.max_nprobe]
    reranks = rerank_grid(max_candidates) if cfg.calibrate_rerank else [max_candidates]
    z = z_of(cfg.confidence)
    weights = held.weights()
    held_x, held_y = queries[hold], y[hold]
    dense = dense_hits(weight, bias, held_x, held_y)
    sample, first, rest = held.screen(SCREEN_EVERY)
    report.dense_p1 = float((weights * dense).sum())
    report.missing_mass, report.held_out = held.missing_mass, (int(held.seen.numel()), int(held.unseen.numel()))
    report.budget = budget = cfg.max_cost * index.num_labels * index.dim * wbytes
    log(f"calibration: {held.seen.numel():,} held-out pairs of recurring labels and {held.unseen.numel():,} of "
        f"labels seen once (Good-Turing share of new queries with an unseen label {held.missing_mass:.3f}); "
        f"dense P@1 on them {report.dense_p1:.4f}; settings may cost up to {cfg.max_cost:g} of the dense layer's "
        f"{index.num_labels * index.dim * wbytes / 1e6:.1f} MB")
    def evaluate(idx, p, probes, always):
        """A setting on the screen's quarter first, then, unless the quarter
        rules it out (screened_out; never where `always`), on the rest:
        (hits by R, found, the HoldOut, dense hits and weights they are
        over, screened)."""
        hits, found = evaluate_setting(idx, weight, bias, held_x[first], held_y[first], max_candidates, p,
                                       reranks, probes[first])
        if not always and screened_out(dense[first], hits, sample, cfg.tolerance):
            return hits, found, sample, dense[first], sample.weights(), True
        more, more_found = evaluate_setting(idx, weight, bias, held_x[rest], held_y[rest], max_candidates, p,
                                            reranks, probes[rest])
        whole = lambda a, b: a.new_empty(held.size).index_copy_(0, first, a).index_copy_(0, rest, b)  # noqa: E731
        return {r: whole(h, more[r]) for r, h in hits.items()}, whole(found, more_found), held, dense, weights, False

    dims = code_dims(index.dim) if cfg.project_codes else [index.dim]
    floor = None  # the unfitted index's held-out P@1, once evaluated
    directions = principal_directions(weight, max(dims[1:])) if len(dims) > 1 else None
    for space in spaces:
        if space == "queries" and report.calibration:
            # Its probe alone (a scan of its centroids' codes) is a lower
            # bound on any query-space setting's cost: skip the k-means
            # where an accepted setting is already cheaper.
            best = cheapest_accepted(report.calibration, cfg.tolerance, index.dim, wbytes, budget, floor)
            probe_cost = setting_cost(0, 0, 0, index.dim, wbytes, query_space_partitions(index, held.train.numel()))
            if best is not None and best <= probe_cost:
                log(f"calibration: queries space skipped: its probe alone would cost more than the accepted "
                    f"labels-space setting")
                continue
        idx, home = built[space] = build(space)
        grid = [p for p in grid_all if p <= idx.num_partitions]
        # The unfitted index's own setting (label space, no spill, its
        # default nprobe, all M scored exactly): its held-out P@1 is the floor.
        unfitted_nprobe = default_nprobe(idx.num_partitions) if space == "labels" else 0
        unfitted_nprobe = unfitted_nprobe if unfitted_nprobe <= cfg.max_nprobe else 0
        # The held-out queries' probes at the largest nprobe, once: the first
        # p columns are their probes at p (best first), for every variant.
        probes = _probe(idx, held_x, max(grid[-1], unfitted_nprobe))
        for spill in spill_variants(space, cfg.spill_probes):
            # Calibrate on held-out queries whose labels were not spilled from them.
            # (The training queries' probes are known: their rows need no copy.)
            _with_spill(idx, weight, bias, home, None, y[held.train], spill, cap,
                        spill_probes[space][held.train] if spill else None, book)
            sizes = idx.list_sizes().to(torch.float64)
            rows_at = {p: float((weights * sizes[probes[:, :p]].sum(1)).sum())
                       for p in set(grid) | {unfitted_nprobe} if p}
            for dim in dims:
                idx.set_code_projection(None if dim == index.dim else directions[:, :dim],
                                        _codes_of(weight, bias, book))
                width = idx.codec.bytes_per_row(dim)
                # The unfitted setting is evaluated whatever the walk's stop says.
                unfitted_here = unfitted_nprobe if spill == 0 and dim == index.dim and floor is None else 0
                for p in sorted(set(grid) | {unfitted_here} - {0}):
                    # Stop once this probe count's scan alone costs more than a
                    # setting choose_setting could take (probed rows only grow
                    # with nprobe), or the scan leaves the budget.
                    best = cheapest_accepted(report.calibration, cfg.tolerance, index.dim, wbytes, budget, floor)
                    scan = setting_cost(rows_at[p], width, 0, index.dim, wbytes, idx.num_partitions)
                    if p > unfitted_here and ((best is not None and scan >= best) or (scan > budget and p > grid[0])):
                        break
                    hits, found, on, on_dense, w, screened = evaluate(idx, p, probes, always=p == unfitted_here)
                    point = CalibrationPoint(space=space, partitions=idx.num_partitions, code_dim=dim, width=width,
                                             nprobe=p, rows=rows_at[p], recall=float((w * found).sum()),
                                             p1={r: float((w * h).sum()) for r, h in hits.items()},
                                             loss={r: PairedLoss.of(on_dense, h, on, z) for r, h in hits.items()},
                                             spill=spill, screened=screened)
                    report.calibration.append(point)
                    if p == unfitted_here:
                        floor = report.unfitted_p1 = point.p1[max_candidates]
                        log(f"calibration: the unfitted index (labels space, no spill, nprobe {p}, all "
                            f"{max_candidates} candidates exact) has held-out P@1 {floor:.4f}: the floor")
                    shorter = ", ".join(f"{r}: {v:.4f}" for r, v in point.p1.items() if r != max_candidates)
                    full = point.loss[max_candidates]
                    log(f"calibration: {space} space, spill {spill}, codes of {dim} dims, nprobe {p} "
                        f"({point.rows:.0f} rows): held-out P@1 {point.p1[max_candidates]:.4f} (loss "
                        f"{100 * full.loss:+.2f} +- {100 * full.se:.2f} point), label among candidates "
                        f"{point.recall:.4f}" + (f"; first R exact: {shorter}" if shorter else "")
                        + (f" (screened out on {sample.size:,} pairs)" if screened else ""))
    point, rerank, report.accepted = choose_setting(report.calibration, cfg.tolerance, dim=index.dim,
                                                    weight_bytes=wbytes, budget=budget, floor=floor)
    if not report.accepted:
        # The unspilled lists are an alternative where they meet the
        # tolerance; where nothing does, the fallback (least bound within
        # budget) is taken among the configured spill's settings only, or a
        # cheap unspilled setting far from the tolerance would win it.
        point, rerank, _ = choose_setting([p for p in report.calibration if p.spill == cfg.spill_probes],
                                          cfg.tolerance, dim=index.dim, weight_bytes=wbytes, budget=budget)
    report.space, report.nprobe, report.code_dim = point.space, point.nprobe, point.code_dim
    report.spill_probes = point.spill
    report.rerank = None if rerank >= max_candidates else rerank
    report.loss = point.loss[rerank]
    if not report.accepted:
        log(f"calibration: no setting tried (nprobe <= {cfg.max_nprobe}, cost <= {cfg.max_cost:g} of dense) has its "
            f"P@1 loss against dense within {100 * cfg.tolerance:.2f} point at {cfg.confidence:.0%} confidence; "
            f"kept the one of least bound: loss {100 * report.loss.loss:+.2f} +- {100 * report.loss.se:.2f} point")
    return directions[:, : report.code_dim] if report.code_dim != index.dim else None


def query_space_partitions(index: "PartitionIndex", num_queries: int) -> int:
    """Partitions of a query-space index: the user's count where they set
    one, else default_partitions of the number of queries clustered (the
    same rule as for labels, on the points clustered), at most N."""
    if index.partitions_override:
        return index.num_partitions
    return min(default_partitions(max(1, num_queries)), index.num_labels)


def query_space_index(index: "PartitionIndex", num_queries: int) -> "PartitionIndex":
    """An unbuilt query-space index like `index`: its partition count where
    the user set one, else default_partitions of the number of queries
    clustered (the same rule as for labels, on the points clustered)."""
    p = query_space_partitions(index, num_queries)
    out = PartitionIndex(index.num_labels, index.dim, num_partitions=p,
                         nprobe=index.nprobe if index.nprobe_override else None, seed=index.seed,
                         device=index.centroids.device)
    out.partitions_override = index.partitions_override
    return out


def judge_shards(shards: List[Tuple[float, Dict[str, object]]], *, max_candidates: int, dim: int,
                 weight_bytes: int, **options) -> Optional[Tuple[MergedSetting, float]]:
    """The search setting of a sharded layer judged on the merged layer
    (lsskernels/partition/calibration.py, merged_settings), for shards that
    each ran fit_partitions on the pairs of their own labels. shards: (share
    of the queries, the shard's PartitionFitReport fields as a dict) of every
    shard that fitted; options: the fit's (tolerance, confidence). Only
    nprobe and R are re-chosen (each shard keeps its space, partitions and
    code width, so the settings compared are ones every shard evaluated).
    Returns (the cheapest setting whose merged bound is within tolerance,
    the summed cost of the settings the shards chose alone) where the former
    is cheaper, else None: the shards' own settings stand (each within
    tolerance alone bounds the merged loss too)."""
    cfg = PartitionFitConfig(**{k: v for k, v in options.items() if k in ("tolerance", "confidence")})
    if len(shards) < 2:
        return None
    chosen = []
    for share, rep in shards:
        points = [p for p in rep["calibration"] if p.space == rep["space"] and p.code_dim == rep["code_dim"]
                  and p.spill == rep["spill_probes"]]
        own_r = rep["rerank"] or max_candidates
        own = [p for p in points if p.nprobe == rep["nprobe"] and own_r in p.loss]
        if not points or not own:
            return None
        chosen.append((share, points, own[0].cost(own_r, dim, weight_bytes)))
    own_cost = sum(c for _, _, c in chosen)
    ok = [s for s in merged_settings([(share, pts) for share, pts, _ in chosen], z_of(cfg.confidence), dim,
                                     weight_bytes) if s.loss.bound <= cfg.tolerance + 1e-12]
    if not ok:
        return None
    best = min(ok, key=lambda s: (s.cost, s.nprobe, s.rerank))
    return (best, own_cost) if best.cost < own_cost else None


def build_index(index: PartitionIndex, weight: Tensor, bias: Optional[Tensor]) -> None:
    """The unlearned index: label-space k-means partitions, each label in
    its nearest one (what an unfitted layer uses)."""
    build_partitions(index, weight, bias, seed=index.seed)


register(Family(name="partitions", index_class=PartitionIndex, knobs=PartitionConfig.knob_names(),
                options=PartitionFitConfig, build=build_index, fit=fit_partitions, config=PartitionConfig))
