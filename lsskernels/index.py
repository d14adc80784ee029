"""LSSIndex: the candidate index of an LSSLinear layer.

An index owns a hash family, its parameters and its tables; the layer owns
the weights and passes them in. Two families:

* ``PartitionIndex`` (family ``"partitions"``, the default): data-dependent
  partitions (k-means) of the bias-augmented label vectors ``[w, b]`` (or,
  where ``fit()`` finds it cheaper, of the training queries, probed by L2
  distance), int8 codes of every label stored contiguously by partition,
  and, after ``fit()``, label-superior spill (each training label is also
  listed in the partitions its training queries probe first). A query probes its
  best partitions by the int8 score of the centroids' codes
  (``quantized_probe``: a ``quantized_candidates`` call), scores their codes
  (``quantized_candidates``) and keeps the best ``max_candidates``, whose
  exact logits ``gathered_logits`` computes. Built in
  ``lsskernels/partitions.py``.
* ``SimHashIndex`` (family ``"simhash"``): L sign-random-projection tables
  of K bits, CSR per table; ``fit()`` learns asymmetric projections and
  inserts labels label-superior style (``lsskernels/training.py``).

Every buffer is registered, and the configuration is the module's extra
state, so ``state_dict()`` / ``load_state_dict()`` round-trip an index
exactly; incoming buffers are validated before they replace the current
ones, so no kernel ever reads a malformed table. ``fit()`` returns a *new*
index (and a report) and is a function of (weights, pairs, options, seed).
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from . import _checks as checks
from . import _ops
from . import reference
from .codec import encode_rows, probe_codes, quantize_rows_into
from .reference import QUANT_LEVELS
from .hashing import EXTRA_DIMS, augment_queries, label_codes, simhash_projections
from .tables import build_label_tables, bucket_size_stats, validate_tables

Tensor = torch.Tensor

_FORMAT = 2
# Partition spaces: k-means of the label vectors [w, b] probed by inner
# product, or k-means of the training queries probed by L2 distance.
SPACES = ("labels", "queries")
# codes_of(ids int64 [T], proj) -> (codes int8 [T, Dp], scales [T], biases [T]): a family's encoder.
CodesOf = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]


def _native(x: Tensor, backend: Optional[str]) -> bool:
    """Whether the native ops run for x, so per-call Python checks can be
    skipped on the index's own (validated) buffers. A forced backend counts
    only on its own device: backend="cuda" with CPU tensors goes through the
    checked wrappers, which refuse it."""
    if backend is None:
        return _ops.resolve_backend(None, x.device) in ("cpu", "cuda")
    return backend == x.device.type and backend in ("cpu", "cuda")


@dataclass(frozen=True)
class SearchParams:
    """Search settings for one call (LSSLinear.predict / candidates /
    sparse_logits, params=...); a field left None takes the layer's or the
    fitted index's own. nprobe and rerank apply to the partitions family.

    max_candidates: candidates scored by quantized score (M);
    nprobe: partitions probed;
    rerank: how many of the best candidates get exact logits (the rerank step);
    backend: kernel backend (lsskernels._ops.BACKENDS)."""
    max_candidates: Optional[int] = None
    nprobe: Optional[int] = None
    rerank: Optional[int] = None
    backend: Optional[str] = None

    def __post_init__(self):
        for name in ("max_candidates", "nprobe", "rerank"):
            if getattr(self, name) is not None:
                checks.integer(name, getattr(self, name), 1)
        _ops.check_backend(self.backend)


def rerank_topk(x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor, k: int, shortlist: int,
                backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """The rerank step (FAISS's IndexRefine, ScaNN's reorder): exact logits
    of the first `shortlist` candidates of ids (best first) and their top-k,
    (scores [B, k], labels int64 [B, k]). The fused native predict does the
    same inside one op (csrc/partition_predict_topk.cpp)."""
    if shortlist < ids.shape[1]:
        ids = ids[:, :shortlist].contiguous()
    logits = _ops.gathered_logits(x, weight, bias, ids, backend=backend)
    return _ops.topk_gathered(logits, ids, k, backend=backend)


@torch.compiler.assume_constant_result
def _fused_kernel(device_type: str) -> bool:
    """Whether this build has the native kernels partition_predict_topk
    composes for device_type (a constant of the build, for torch.compile)."""
    return _ops.has_native_kernel("quantized_candidates", device_type)


class LSSIndex(nn.Module, abc.ABC):
    """Base class: what LSSLinear needs from a candidate index.

    Subclasses register their tables as buffers and implement the abstract
    methods (``candidates``, ``sync``, ``config``, ``validate_state``; an
    abstract class cannot be instantiated); building and fitting are the
    family's builder module's (lsskernels/families.py). ``num_labels`` and
    ``dim`` are the layer's N and d.
    """

    family = "base"
    # Buffers an older state dict may lack (the family's loader fills them in).
    optional_buffers: Tuple[str, ...] = ()

    def __init__(self, num_labels: int, dim: int, *, seed: int = 0) -> None:
        super().__init__()
        self.num_labels = checks.integer("num_labels", num_labels, 1, 2**31 - 1)
        self.dim = checks.integer("dim", dim, 1)
        self.seed = checks.integer("seed", seed)
        self.fitted = False
        self.built = False

    # ----------------------------------------------------------- interface
    @abc.abstractmethod
    def candidates(self, x: Tensor, max_candidates: int, backend: Optional[str] = None, *,
                   nprobe: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """Candidate ids int32 [B, M] (-1 padded, best first) and counts int32
        [B]. nprobe: this call's probe count (families that probe)."""

    def shortlist(self, max_candidates: int, k: int, rerank: Optional[int] = None) -> int:
        """How many of the candidates predict(k) scores exactly (a prefix of
        candidates(): they come best first)."""
        return max_candidates if rerank is None else min(max_candidates, max(k, rerank))

    def predict_topk(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], max_candidates: int, k: int,
                     backend: Optional[str] = None, *, nprobe: Optional[int] = None,
                     rerank: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """Top-k among the candidates by exact logit: (scores [B, k], labels
        int64 [B, k]); nprobe / rerank: this call's (None: the index's own)."""
        with torch.no_grad():
            ids, _ = self.candidates(x, max_candidates, backend, nprobe=nprobe)
            return rerank_topk(x, weight, bias, ids, k, self.shortlist(max_candidates, k, rerank), backend)

    @abc.abstractmethod
    def sync(self, weight: Tensor, bias: Optional[Tensor]) -> None:
        """The weights changed: bring what is derived from them up to date,
        keeping what fit() learned where the family can. (Building and
        fitting an index are its family's: lsskernels/families.py.)"""

    @abc.abstractmethod
    def config(self) -> Dict[str, object]:
        """The constructor arguments that recreate this index's shape."""

    @abc.abstractmethod
    def validate_state(self, tensors: Dict[str, Tensor], config: Dict[str, object]) -> None:
        """Raise ValueError unless the buffers in tensors are a well-formed
        index of this family for config."""

    def mismatch(self, weight: Tensor, bias: Optional[Tensor]) -> Optional[str]:
        """Why the built index is not one of these weights (None: it is).
        Checked when a state dict brings an index and weights together."""
        return None

    def stats(self) -> Dict[str, object]:
        return {"family": self.family, "fitted": self.fitted, "index_bytes": self.index_bytes()}

    def index_bytes(self) -> int:
        """Bytes held by the index's tables (the layer's weights excluded)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def spec(self) -> Dict[str, object]:
        """The configuration the user asked for (constructor arguments; None
        where the family chooses): what fit() and rebuild start from, so
        that nothing a previous fit() chose leaks into the next."""
        return self.config()

    def clone_empty(self) -> "LSSIndex":
        """An unbuilt index of the user's configuration (spec())."""
        return type(self)(**self.spec())

    # ---------------------------------------------------------- state dict
    def get_extra_state(self) -> dict:
        return {"format": _FORMAT, "family": self.family, "config": self.config(), "fitted": self.fitted,
                "built": self.built, **self._extra_fields()}

    def _extra_fields(self) -> dict:
        return {}

    def set_extra_state(self, state: dict) -> None:
        # The config was checked against this index in _load_from_state_dict.
        self.fitted = bool(state["fitted"])
        self.built = bool(state.get("built", True))
        self._set_extra_fields(state)

    def _set_extra_fields(self, state: dict) -> None:
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        extra = state_dict.get(prefix + "_extra_state")
        names = [name for name, _ in self.named_buffers(recurse=False)]
        incoming = {name: state_dict.get(prefix + name) for name in names}
        if isinstance(extra, dict) and all(isinstance(t, Tensor) for t in incoming.values()):
            check_extra_state(extra, self.family)
            if extra["config"] != self.config():
                raise ValueError(f"state_dict['{prefix}_extra_state'] describes a {self.family} index with "
                                 f"config {extra['config']}, this one has {self.config()}; build the layer "
                                 "with the saved configuration (LSSLinear.load_state_dict does so)")
            if extra.get("built", True):
                try:
                    self.validate_state(incoming, extra["config"])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"state_dict has a malformed {self.family} index under '{prefix}': {exc}") from None
            # Tables change size with fit(): buffers take the incoming shapes.
            for name, t in incoming.items():
                setattr(self, name, torch.empty_like(t, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def check_extra_state(extra, family: Optional[str] = None) -> None:
    if not isinstance(extra, dict) or extra.get("format") != _FORMAT or not isinstance(extra.get("family"), str) \
            or not isinstance(extra.get("config"), dict):
        raise ValueError(f"unrecognised LSSIndex extra state {extra!r}")
    if family is not None and extra["family"] != family:
        raise ValueError(f"the state_dict holds a {extra['family']!r} index, this index is {family!r}")


# ==========================================================================
class SimHashIndex(LSSIndex):
    """L SimHash tables of K bits (see lsskernels/hashing.py for the
    bias-augmented MIPS transform and lsskernels/training.py for fit())."""

    family = "simhash"

    def __init__(self, num_labels: int, dim: int, *, num_tables: int = 16, bits: int = 12, min_hits: int = 1,
                 seed: int = 0, device=None) -> None:
        super().__init__(num_labels, dim, seed=seed)
        self.num_tables = checks.integer("num_tables", num_tables, 1, checks.MAX_TABLES)
        self.bits = checks.integer("bits", bits, 1, checks.MAX_BITS)
        self.min_hits = checks.integer("min_hits", min_hits, 1, num_tables)
        proj = simhash_projections(num_tables, bits, dim, seed=seed, device=device)
        self.register_buffer("query_proj", proj)
        self.register_buffer("label_proj", proj.clone())
        self.register_buffer("offsets", torch.zeros(num_tables, (1 << bits) + 1, dtype=torch.int32, device=device))
        self.register_buffer("items", torch.empty(num_tables, 0, dtype=torch.int32, device=device))

    def config(self):
        return {"num_labels": self.num_labels, "dim": self.dim, "num_tables": self.num_tables, "bits": self.bits,
                "min_hits": self.min_hits, "seed": self.seed}

    @torch.no_grad()
    def rebuild(self, weight, bias):
        """Random SimHash projections of the seed, each label once per table."""
        self.query_proj = simhash_projections(self.num_tables, self.bits, self.dim, seed=self.seed,
                                              device=weight.device)
        self.label_proj = self.query_proj.clone()
        self.reindex(weight, bias)
        self.fitted = False

    @torch.no_grad()
    def reindex(self, weight, bias):
        """Rehash every label with label_proj, one bucket per label per table."""
        codes = label_codes(weight, bias, self.label_proj)
        self.offsets, self.items = build_label_tables(codes, self.bits)
        self.built = True

    def sync(self, weight, bias):
        # Random tables are a pure function of the weights: rebuild them.
        # Fitted tables are rebuilt only by fit() (their buckets came from
        # the training pairs, which the index does not keep).
        if not self.fitted:
            self.rebuild(weight, bias)

    def candidates(self, x, max_candidates, backend=None, *, nprobe=None):
        if nprobe is not None:
            raise ValueError(f"nprobe applies to the partitions family; this index is {self.family!r}")
        if _native(x, backend) and x.device == self.offsets.device:
            ops = torch.ops.lsskernels
            codes = ops.hash_codes(augment_queries(x), self.query_proj.to(x.dtype))
            return ops.bucket_lookup(codes, self.offsets, self.items, self.num_labels, max_candidates,
                                     self.min_hits)
        # Hashing and lookup take the automatic backend under backend="triton"
        # (CUDA tensors: Triton anyway; interpreted CPU tensors: the C++ ops).
        nb = None if backend == "triton" else backend
        codes = _ops.hash_codes(augment_queries(x), self.query_proj.to(x.dtype), backend=nb)
        return _ops.bucket_lookup(codes, self.offsets, self.items, self.num_labels, max_candidates,
                                  self.min_hits, backend=nb)

    def predict_topk(self, x, weight, bias, max_candidates, k, backend=None, *, nprobe=None, rerank=None):
        if nprobe is not None or rerank is not None:
            raise ValueError(f"nprobe and rerank apply to the partitions family; this index is {self.family!r}")
        if _native(x, backend) and x.device == self.offsets.device:
            # One op for the whole pipeline: at batch 1 the per-op Python
            # overhead is as large as the kernels. Runs below autograd.
            return torch.ops.lsskernels.predict_topk(x, self.query_proj, self.offsets, self.items, weight, bias,
                                                     self.num_labels, max_candidates, self.min_hits, k)
        return super().predict_topk(x, weight, bias, max_candidates, k, backend)

    def validate_state(self, tensors, config):
        dim = config["dim"] + EXTRA_DIMS
        shape = (config["num_tables"], config["bits"], dim)
        for name in ("query_proj", "label_proj"):
            t = tensors[name]
            if tuple(t.shape) != shape or not t.is_floating_point():
                raise ValueError(f"{name} must be a float tensor {list(shape)}, got {tuple(t.shape)} {t.dtype}")
        validate_tables(tensors["offsets"], tensors["items"], config["num_labels"], config["bits"])
        if tensors["offsets"].shape[0] != config["num_tables"]:
            raise ValueError(f"offsets has {tensors['offsets'].shape[0]} tables, the config says {config['num_tables']}")

    @torch.no_grad()
    def mismatch(self, weight, bias):
        # Unfitted tables list every label in its own bucket of every table.
        # Fitted ones come from the training pairs (capped buckets): they
        # carry no invariant of the weights to check.
        if self.fitted:
            return None
        codes = label_codes(weight, bias, self.label_proj).to(torch.int64)  # [N, L]
        n, buckets = self.num_labels, 1 << self.bits
        counts = (self.offsets[:, 1:] - self.offsets[:, :-1]).to(torch.int64)  # [L, buckets]
        table_bucket = torch.arange(self.num_tables * buckets, device=counts.device).repeat_interleave(counts.reshape(-1))
        # Table l's entries are items[l, :offsets[l, -1]] (the rest is padding).
        used = torch.arange(self.items.shape[1], device=counts.device) < self.offsets[:, -1:].to(torch.int64)
        have = table_bucket * n + self.items[used].to(torch.int64)
        tables = torch.arange(self.num_tables, device=codes.device)
        need = ((tables * buckets + codes) * n + torch.arange(n, device=codes.device).unsqueeze(1)).reshape(-1)
        lost = int((~torch.isin(need, have)).sum())
        return None if lost == 0 else f"{lost} (label, table) pairs are not in the bucket of the label's code"

    def stats(self):
        out = super().stats()
        out.update(bucket_size_stats(self.offsets), num_tables=self.num_tables, bits=self.bits,
                   items_per_table=int(self.items.shape[1]))
        return out


# ==========================================================================
def default_partitions(num_labels: int) -> int:
    """Partitions for N labels: the power of two nearest 2.5 sqrt(N), at most
    one per 8 labels. Finer partitions make label-superior spill precise (a
    spilled label sits in the few partitions its queries probe first; the
    measurement that chose the rule: docs/performance.md, "Measurements
    moved out of code comments"); the centroid scan (P rows per query)
    bounds it above."""
    target = 2.5 * math.sqrt(num_labels)
    p = 2 ** max(0, round(math.log2(max(target, 1.0))))
    return int(max(1, min(p, num_labels // 8 if num_labels >= 8 else 1)))


def default_nprobe(num_partitions: int) -> int:
    """Probes of an index that fit() has not calibrated yet: ~1.5% of the partitions."""
    return int(max(1, min(num_partitions, round(0.015 * num_partitions) or 1)))


class PartitionIndex(LSSIndex):
    """k-means partitions with int8 codes per partition and label-superior
    spill after fit(); the partitions are of [w, b] (space "labels") or,
    after fit(), possibly of the training queries (space "queries",
    centroid_bias = -|c|^2 / 2: probed by L2 distance). Buffers:

    centroids [P, d] and centroid_bias [P] (float32): a query x scores
        partition p by <x, centroids[p]> + centroid_bias[p];
    list_offsets int32 [P + 1]: partition p holds rows list_offsets[p] ..
        list_offsets[p + 1] - 1 of
    codes int8 [T, Dp], code_scales float32 [T], code_bias float32 [T],
        list_ids int32 [T]: row t approximates label list_ids[t]'s logit as
        scale_q * code_scales[t] * <q8, codes[t]> + code_bias[t].
    T >= N once spill lists a label in several partitions.
    """

    family = "partitions"
    optional_buffers = ("code_proj",)  # 0.2 state dicts

    def __init__(self, num_labels: int, dim: int, *, num_partitions: Optional[int] = None,
                 nprobe: Optional[int] = None, seed: int = 0, device=None) -> None:
        super().__init__(num_labels, dim, seed=seed)
        p = default_partitions(num_labels) if num_partitions is None else num_partitions
        self.num_partitions = checks.integer("num_partitions", p, 1, num_labels)
        self.nprobe = checks.integer("nprobe", default_nprobe(p) if nprobe is None else nprobe, 1, p)
        self.nprobe_override = nprobe is not None  # fit() calibrates nprobe unless the user set it
        # fit() sizes a query-space index by its number of queries unless the user set P.
        self.partitions_override = num_partitions is not None
        # "labels": k-means of [w, b], probed by inner product; "queries":
        # k-means of fit()'s training queries, probed by L2 distance
        # (centroid_bias = -|c|^2 / 2). See lsskernels/partitions.py.
        self.space = "labels"
        # How many of the max_candidates best labels by quantized score predict()
        # scores exactly (None: all of them). fit() calibrates it on held-out
        # pairs: the int8 score ranks the candidates well enough that the
        # correct label is usually among the first few, and each exact row is
        # a random read of the weight matrix.
        self.rerank: Optional[int] = None
        width = checks.code_width(dim)
        f32 = {"dtype": torch.float32, "device": device}
        self.register_buffer("centroids", torch.zeros(p, dim, **f32))
        self.register_buffer("centroid_bias", torch.zeros(p, **f32))
        self.register_buffer("list_offsets", torch.zeros(p + 1, dtype=torch.int32, device=device))
        self.register_buffer("codes", torch.zeros(0, width, dtype=torch.int8, device=device))
        self.register_buffer("code_scales", torch.zeros(0, **f32))
        self.register_buffer("code_bias", torch.zeros(0, **f32))
        self.register_buffer("list_ids", torch.zeros(0, dtype=torch.int32, device=device))
        # code_proj float32 [d, r] (r < d, a multiple of 32), or [0, 0]: the
        # codes hold U^T (w - mean w) and queries are scored as U^T x, U the
        # top principal directions of the label vectors (fit() keeps it only
        # where held-out pairs say it is cheaper at the same P@1).
        self.register_buffer("code_proj", torch.zeros(0, 0, **f32))
        # The centroids as the probe scores them (probe_codes), derived from
        # the centroids buffer on first use after it changes; not saved.
        self._probe_cache: Optional[tuple] = None

    def config(self):
        return {"num_labels": self.num_labels, "dim": self.dim, "num_partitions": self.num_partitions,
                "nprobe": self.nprobe if self.nprobe_override else None, "seed": self.seed}

    def spec(self):
        # A fitted index may hold a partition count fit() chose (query
        # space); the user's spec has it only where the user set it.
        return {**self.config(), "num_partitions": self.num_partitions if self.partitions_override else None}

    def _extra_fields(self):
        return {"nprobe": self.nprobe, "rerank": self.rerank, "space": self.space,
                "partitions_set": self.partitions_override}

    def _set_extra_fields(self, state):
        space = state.get("space", "labels")  # 0.2 / 0.3 state dicts: label space
        if space not in SPACES:
            raise ValueError(f"the saved partition index has space {space!r}; expected one of {SPACES}")
        self.space = space
        self.partitions_override = bool(state.get("partitions_set", True))
        nprobe = state.get("nprobe", self.nprobe)
        self.nprobe = checks.integer("nprobe", int(nprobe), 1, self.num_partitions)
        rerank = state.get("rerank")
        self.rerank = None if rerank is None else checks.integer("rerank", int(rerank), 1)

    def shortlist(self, max_candidates: int, k: int, rerank: Optional[int] = None) -> int:
        """Candidates predict(k) scores exactly: this call's rerank, else the
        calibrated one (at least k), never more than max_candidates."""
        return super().shortlist(max_candidates, k, self.rerank if rerank is None else rerank)

    # ------------------------------------------------- the one writer
    # Builders (lsskernels/partitions.py) compute partitions and lists and
    # hand them here; nothing else writes the buffers.
    @torch.no_grad()
    def set_partitions(self, centroids: Tensor, centroid_bias: Tensor, space: str) -> None:
        """New partitions (float32 [P, d], [P]) in space; the lists must be installed next."""
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if tuple(centroids.shape) != (self.num_partitions, self.dim) or tuple(centroid_bias.shape) != (self.num_partitions,):
            raise ValueError(f"centroids must be [{self.num_partitions}, {self.dim}] and centroid_bias "
                             f"[{self.num_partitions}], got {tuple(centroids.shape)}, {tuple(centroid_bias.shape)}")
        if not bool(torch.isfinite(centroids).all() and torch.isfinite(centroid_bias).all()):
            raise ValueError("centroids and centroid_bias must be finite")
        self.centroids = centroids.to(torch.float32).contiguous()
        self.centroid_bias = centroid_bias.to(torch.float32).contiguous()
        self.space = space
        self.built = False

    @torch.no_grad()
    def install_lists(self, part: Tensor, label: Tensor, codes_of: CodesOf) -> None:
        """Lists from (partition, label) pairs (int64, distinct): sorted by
        partition, labels ascending within one; codes_of(ids, proj) gives
        the rows' (codes, scales, biases) under the index's code projection."""
        order, offsets = self._layout(part, label, self.num_labels)
        label = label[order]
        self.list_offsets = offsets
        self.list_ids = label.to(torch.int32)
        self.codes, self.code_scales, self.code_bias = codes_of(label, self.code_proj)
        self.built = True

    def _layout(self, part: Tensor, label: Tensor, num_labels: int) -> Tuple[Tensor, Tensor]:
        """(order, list_offsets int32 [P + 1]): the entries (partition, label)
        sorted by partition, labels ascending within one; checked in range
        and distinct."""
        part, label = part.to(torch.int64), label.to(torch.int64)
        if part.numel() and (int(part.min()) < 0 or int(part.max()) >= self.num_partitions):
            raise ValueError(f"partitions must be in [0, {self.num_partitions})")
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_labels):
            raise ValueError(f"labels must be in [0, {num_labels})")
        key, order = torch.sort(part * num_labels + label, stable=True)
        if bool((key[1:] == key[:-1]).any()):
            raise ValueError("(partition, label) entries must be distinct (an entry is listed already)")
        offsets = torch.zeros(self.num_partitions + 1, dtype=torch.int64, device=part.device)
        offsets[1:] = torch.cumsum(torch.bincount(part, minlength=self.num_partitions), 0)
        if int(offsets[-1]) >= 2**31:
            raise ValueError(f"the partition lists would hold {int(offsets[-1])} rows; at most 2^31 - 1")
        return order, offsets.to(torch.int32)

    def _row_partitions(self) -> Tensor:
        """The partition of every list row, int64 [T]."""
        off = self.list_offsets.to(torch.int64)
        return torch.repeat_interleave(torch.arange(self.num_partitions, device=off.device), off[1:] - off[:-1])

    @torch.no_grad()
    def set_code_projection(self, proj: Optional[Tensor], codes_of: CodesOf) -> None:
        """Re-encode the listed rows with proj ([d, r]) or without a projection (None)."""
        self.code_proj = (proj.to(torch.float32).contiguous() if proj is not None
                          else torch.zeros(0, 0, dtype=torch.float32, device=self.centroids.device))
        self.codes, self.code_scales, self.code_bias = codes_of(self.list_ids.to(torch.int64), self.code_proj)

    @torch.no_grad()
    def add_rows(self, part: Tensor, label: Tensor, codes: Tensor, scales: Tensor, code_bias: Tensor,
                 num_labels: int) -> None:
        """Grow to num_labels labels and merge the entries (partition, label,
        code row) into the lists, existing rows kept as they are: O(T) memory
        moves and no encoding (the caller encodes only the new rows). The
        entries must be distinct and not listed already."""
        if num_labels < self.num_labels:
            raise ValueError(f"num_labels can only grow, from {self.num_labels}; got {num_labels}")
        if not self.built:
            raise RuntimeError("add_rows() of an unbuilt index: build it first")
        all_part = torch.cat([self._row_partitions(), part.to(torch.int64)])
        all_label = torch.cat([self.list_ids.to(torch.int64), label.to(torch.int64)])
        order, offsets = self._layout(all_part, all_label, num_labels)
        self.num_labels = num_labels
        self.list_offsets = offsets
        self.list_ids = all_label[order].to(torch.int32)
        self.codes = torch.cat([self.codes, codes.to(self.codes.dtype)])[order]
        self.code_scales = torch.cat([self.code_scales, scales.to(torch.float32)])[order]
        self.code_bias = torch.cat([self.code_bias, code_bias.to(torch.float32)])[order]
        self._rows_cache = None

    @torch.no_grad()
    def drop_labels(self, labels: Tensor) -> int:
        """Remove every list entry of the labels (int64 ids): O(T). Returns the
        entries removed. The label ids stay (the layer keeps their rows)."""
        if not self.built:
            raise RuntimeError("drop_labels() of an unbuilt index: build it first")
        gone = torch.zeros(self.num_labels, dtype=torch.bool, device=self.list_ids.device)
        gone[labels.to(torch.int64)] = True
        keep = ~gone[self.list_ids.to(torch.int64)]
        removed = int((~keep).sum())
        if removed == 0:
            return 0
        offsets = torch.zeros(self.num_partitions + 1, dtype=torch.int64, device=keep.device)
        offsets[1:] = torch.cumsum(torch.bincount(self._row_partitions()[keep], minlength=self.num_partitions), 0)
        self.list_offsets = offsets.to(torch.int32)
        self.list_ids = self.list_ids[keep]
        self.codes = self.codes[keep]
        self.code_scales = self.code_scales[keep]
        self.code_bias = self.code_bias[keep]
        self._rows_cache = None
        return removed

    @torch.no_grad()
    def renumber(self, new_ids: Tensor, num_labels: int) -> None:
        """Relabel the lists by new_ids (int64 [N]: each label's new id, -1
        for labels that must not be listed any more) to num_labels labels.
        new_ids must be increasing over the kept labels (lists stay sorted)."""
        ids = new_ids.to(self.list_ids.device)[self.list_ids.to(torch.int64)]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_labels):
            raise ValueError("renumber: a listed label has no new id in range; drop it first")
        self.num_labels = checks.integer("num_labels", num_labels, 1, 2**31 - 1)
        self.list_ids = ids.to(torch.int32)
        self._rows_cache = None

    def set_search(self, nprobe: int, rerank: Optional[int]) -> None:
        """The calibrated probe count and shortlist."""
        self.nprobe = checks.integer("nprobe", nprobe, 1, self.num_partitions)
        self.rerank = None if rerank is None else checks.integer("rerank", rerank, 1)

    @torch.no_grad()
    def sync(self, weight, bias):
        # Keep the partitions and spill lists (what fit() learned); re-encode
        # the codes of every listed label from the current weights.
        if not self.built:
            raise RuntimeError("sync() of an unbuilt index: build it first (lsskernels.families.rebuild)")
        self.codes, self.code_scales, self.code_bias = encode_rows(weight, bias, self.list_ids.to(torch.int64),
                                                                   proj=self.code_proj)

    @torch.no_grad()
    def sync_rows(self, weight, bias, rows: Tensor) -> None:
        """Re-encode, in place, only the codes of the labels in rows (int
        ids, repeats allowed; every list entry of each, spill included) from
        the current weights: O(|rows| d) where sync() is O(N d). Partitions,
        spill lists and calibration are kept, as by sync(). Under a code
        projection the projected rows are centred on the label mean taken at
        the first sync_rows() after the codes were last rebuilt (sync, fit,
        rebuild, load): computing it afresh would cost the O(N d) this avoids.
        The weights' version is not recorded: the layer still sees a stale
        index and its next predict / candidates call runs the full sync()."""
        if not self.built:
            raise RuntimeError("sync_rows() of an unbuilt index: build it first (lsskernels.families.rebuild)")
        buf = self._buffers
        list_ids = buf["list_ids"]
        rows = rows.reshape(-1).to(device=list_ids.device, dtype=torch.int64)
        if rows.numel() == 0:
            return
        if int(rows.min()) < 0 or int(rows.max()) >= self.num_labels:
            raise ValueError(f"rows must be label ids in [0, {self.num_labels})")
        # Where each label sits in the lists (derived once per list layout).
        cache = getattr(self, "_rows_cache", None)
        if cache is None or cache[0] is not list_ids or cache[1] != list_ids._version:
            ids64 = list_ids.to(torch.int64)
            starts = torch.zeros(self.num_labels + 1, dtype=torch.int64, device=ids64.device)
            starts[1:] = torch.cumsum(torch.bincount(ids64, minlength=self.num_labels), 0)
            cache = (list_ids, list_ids._version, torch.argsort(ids64, stable=True), starts)
            self._rows_cache = cache
        order, starts = cache[2], cache[3]
        rows = torch.unique(rows)
        lo, n = starts[rows], starts[rows + 1] - starts[rows]
        seg = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), n)
        first = torch.cumsum(n, 0) - n
        pos = order[lo[seg] + torch.arange(seg.numel(), device=rows.device) - first[seg]]
        labels = list_ids[pos].to(torch.int64)
        proj = buf["code_proj"]
        codes = buf["codes"]
        if proj.numel() == 0:
            new_codes, scales, code_bias = encode_rows(weight, bias, labels)
        else:
            mean = getattr(self, "_rows_mean", None)
            if mean is None or mean[0] is not codes:
                mean = (codes, weight.detach().to(torch.float32).mean(0))
                self._rows_mean = mean
            w = (weight.detach()[labels].to(torch.float32) - mean[1]) @ proj
            new_codes = torch.zeros(labels.numel(), codes.shape[1], dtype=torch.int8, device=codes.device)
            scales = torch.empty(labels.numel(), dtype=torch.float32, device=codes.device)
            quantize_rows_into(w, new_codes, scales)
            code_bias = (bias.detach()[labels].to(torch.float32) if bias is not None
                         else torch.zeros(labels.numel(), dtype=torch.float32, device=codes.device))
        codes[pos] = new_codes
        buf["code_scales"][pos] = scales
        buf["code_bias"][pos] = code_bias

    # ---------------------------------------------------------- inference
    def _lists(self):
        return (self.list_offsets, self.codes, self.code_scales, self.code_bias, self.list_ids)

    def code_queries(self, x: Tensor) -> Tensor:
        """The queries as the codes see them: x, or U^T x (float32) under a code projection."""
        return reference.code_queries(x, self._buffers["code_proj"])

    def probe_codes(self) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor]]:
        """The centroids as the probe scores them: (codes int8 [P, Dp], scales
        float32 [P], the probe list (offsets, ids)); see
        lsskernels.codec.probe_codes. Derived on first use after the
        centroids change (fit, rebuild, load_state_dict, .to())."""
        c = self._buffers["centroids"]
        cached = self._probe_cache
        if torch.compiler.is_compiling() and cached is not None:
            # Dynamo cannot guard on _version; a compiled predict reads the
            # cache as an eager call last left it (see LSSLinear.sync_index).
            return cached[2], cached[3], cached[4]
        if cached is None or cached[0] is not c or cached[1] != c._version:
            codes, scales = probe_codes(c)
            cached = (c, c._version, codes, scales, reference.probe_list(c.shape[0], c.device))
            self._probe_cache = cached
        return cached[2], cached[3], cached[4]

    def probe(self, x: Tensor, nprobe: int, backend: Optional[str] = None) -> Tensor:
        """The nprobe partitions x [B, d] probes first, int32 [B, nprobe]: by
        int8 score of the centroid codes (quantized_probe), as predict() does."""
        codes, scales, probe_list = self.probe_codes()
        return _ops.quantized_probe(x, codes, scales, self._buffers["centroid_bias"], nprobe, probe_list,
                                    backend=backend)

    def candidates(self, x, max_candidates, backend=None, *, nprobe=None):
        nprobe = min(self.nprobe if nprobe is None else nprobe, self.num_partitions)
        probes = self.probe(x, nprobe, backend)
        return _ops.quantized_candidates(self.code_queries(x), probes, *self._lists(), self.num_labels,
                                         max_candidates, backend=backend)

    def predict_topk(self, x, weight, bias, max_candidates, k, backend=None, *, nprobe=None, rerank=None):
        # The best `shortlist` labels by quantized score are the first ones of
        # the max_candidates list (the same order), so this is predict on a
        # prefix of candidates().
        m = self.shortlist(max_candidates, k, rerank)
        nprobe = min(self.nprobe if nprobe is None else nprobe, self.num_partitions)
        # Not self.codes etc.: nn.Module's attribute fallback costs a lookup
        # per name on every call (docs/performance.md, "Measurements moved
        # out of code comments").
        buf = self._buffers
        if _native(x, backend) and x.device == buf["codes"].device and _fused_kernel(x.device.type):
            probe_codes, probe_scales, _ = self.probe_codes()
            proj = buf["code_proj"]
            return torch.ops.lsskernels.partition_predict_topk.default(
                x, probe_codes, probe_scales, buf["centroid_bias"], buf["list_offsets"], buf["codes"],
                buf["code_scales"], buf["code_bias"], buf["list_ids"], weight, bias, self.num_labels,
                nprobe, m, k, proj if proj.numel() else None)
        with torch.no_grad():
            ids, _ = self.candidates(x, m, backend, nprobe=nprobe)
            return rerank_topk(x, weight, bias, ids, k, m, backend)

    # ---------------------------------------------------------- validation
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # 0.2 state dicts have no code projection: their codes are of x itself.
        if prefix + "_extra_state" in state_dict and prefix + "code_proj" not in state_dict:
            state_dict[prefix + "code_proj"] = torch.zeros(0, 0, dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @torch.no_grad()
    def mismatch(self, weight, bias):
        codes, scales, code_bias = encode_rows(weight, bias, self.list_ids.to(torch.int64), proj=self.code_proj)
        # Codes may differ by one step where a projection's rounding differs
        # between machines or thread counts; a code of other weights differs by more.
        if codes.shape != self.codes.shape or bool(((codes.to(torch.int16) - self.codes.to(torch.int16)).abs() > 1).any()):
            return "the int8 codes differ from those of the weights"
        if not torch.allclose(scales, self.code_scales, rtol=1e-3, atol=1e-12):
            return "code_scales differ from those of the weights"
        if not torch.allclose(code_bias, self.code_bias, rtol=1e-5, atol=1e-6):
            return "code_bias differs from the bias"
        return None

    def validate_state(self, tensors, config):
        validate_partition_lists(tensors, config["num_labels"], config["dim"], config["num_partitions"])

    def _apply(self, fn, recurse=True):
        # The float buffers are float32 by contract (the int8 kernels read
        # them so): module.to(dtype) / .half() move them to the new device
        # but keep them float32 and unrounded.
        def keep_dtype(t):
            out = fn(t)
            return out if out.dtype == t.dtype else t.to(device=out.device)

        return super()._apply(keep_dtype, recurse)

    def index_bytes(self):
        # The buffers and what the probe holds besides (derived, not saved).
        codes, scales, probe_list = self.probe_codes()
        return super().index_bytes() + sum(t.numel() * t.element_size() for t in (codes, scales, *probe_list))

    def stats(self):
        out = super().stats()
        sizes = (self.list_offsets[1:] - self.list_offsets[:-1]).to(torch.float64)
        out.update(space=self.space, num_partitions=self.num_partitions, nprobe=self.nprobe, rerank=self.rerank,
                   code_dim=int(self.code_proj.shape[1]) if self.code_proj.numel() else self.dim,
                   rows=int(self.list_ids.numel()),
                   spill_rows=int(self.list_ids.numel()) - self.num_labels if self.built else 0,
                   mean_list=float(sizes.mean()) if sizes.numel() else 0.0,
                   max_list=int(sizes.max()) if sizes.numel() else 0)
        return out


def validate_partition_lists(tensors: Dict[str, Tensor], num_labels: int, dim: int, num_partitions: int) -> None:
    """Raise ValueError unless the buffers form a well-formed PartitionIndex."""
    c, cb = tensors["centroids"], tensors["centroid_bias"]
    checks.tensor("centroids", c, 2, (torch.float32,), f"float32 [P, d] = [{num_partitions}, {dim}]")
    if tuple(c.shape) != (num_partitions, dim):
        raise ValueError(f"centroids must be float32 [{num_partitions}, {dim}], got {tuple(c.shape)}")
    checks.tensor("centroid_bias", cb, 1, (torch.float32,), f"float32 [{num_partitions}]")
    if cb.shape[0] != num_partitions:
        raise ValueError(f"centroid_bias must be float32 [{num_partitions}], got {tuple(cb.shape)}")
    proj = tensors.get("code_proj")
    code_dim = dim
    if proj is not None and proj.numel():
        checks.tensor("code_proj", proj, 2, (torch.float32,), f"float32 [d = {dim}, r] or [0, 0]")
        if proj.shape[0] != dim or not 1 <= proj.shape[1] <= dim or not bool(torch.isfinite(proj).all()):
            raise ValueError(f"code_proj must be finite float32 [d = {dim}, r] with 1 <= r <= d, or [0, 0]; "
                             f"got {tuple(proj.shape)}")
        code_dim = proj.shape[1]
    x = torch.empty(1, code_dim, dtype=torch.float32, device=c.device)
    checks.partition_lists_args(x, tensors["list_offsets"], tensors["codes"], tensors["code_scales"],
                                tensors["code_bias"], tensors["list_ids"], num_labels)
    off = tensors["list_offsets"].to(torch.int64)
    if off.shape[0] != num_partitions + 1:
        raise ValueError(f"list_offsets must be int32 [P + 1] = [{num_partitions + 1}], got {tuple(off.shape)}")
    rows = tensors["codes"].shape[0]
    if int(off[0]) != 0 or int(off[-1]) != rows or bool((off[1:] < off[:-1]).any()):
        raise ValueError(f"list_offsets must start at 0, be non-decreasing and end at T = {rows}")
    ids = tensors["list_ids"]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_labels):
        raise ValueError(f"list_ids must be label ids in [0, {num_labels})")
    if not bool(torch.isfinite(tensors["code_scales"]).all() and torch.isfinite(tensors["code_bias"]).all()):
        raise ValueError("code_scales and code_bias must be finite")
    # Values the kernels rely on: finite probe scores, non-negative scales
    # (a negative one inverts a label's score), codes in the symmetric range
    # [-127, 127] the int8 dots assume, and each label at most once per list,
    # ascending (as the lists are built).
    if not bool(torch.isfinite(c).all() and torch.isfinite(cb).all()):
        raise ValueError("centroids and centroid_bias must be finite")
    if tensors["code_scales"].numel() and float(tensors["code_scales"].min()) < 0:
        raise ValueError("code_scales must be >= 0")
    if tensors["codes"].numel() and int(tensors["codes"].min()) < -QUANT_LEVELS:
        raise ValueError(f"codes must be in [-{QUANT_LEVELS}, {QUANT_LEVELS}]")
    if ids.numel() > 1:
        part = torch.repeat_interleave(torch.arange(num_partitions, device=off.device), off[1:] - off[:-1])
        key = part * num_labels + ids.to(torch.int64)
        if bool((key[1:] <= key[:-1]).any()):
            raise ValueError("list_ids must be ascending and distinct within each partition")
