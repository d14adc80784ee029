"""PartitionIndex: the index of the "partitions" family (the default).

Data-dependent partitions (k-means) of the bias-augmented label vectors
[w, b] (or, where fit() finds it cheaper, of the training queries, probed
by L2 distance), codes of every label stored contiguously by partition, and,
after fit(), label-superior spill (each training label is also listed in the
partitions its training queries probe first). A query probes its best
partitions by the int8 score of the centroids' codes (the probe:
lsskernels/partition/probe.py), scores the codes of their lists (the lists:
lists.py, the codes: codec.py) and keeps the best max_candidates, whose
exact logits gathered_logits computes (rerank_topk, or the fused native
predict). Built and fitted in lsskernels/partition/fit.py, through the
methods here: nothing else writes the buffers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from .. import _checks as checks
from .. import reference
from ..configs import IndexConfig
from ..index import LSSIndex, _native_on, rerank_topk
from .codec import INT8
from .lists import CodesOf, PartitionLists, validate_partition_lists
from .lists import empty_buffers as list_buffers
from .probe import PartitionProbe
from .probe import empty_buffers as probe_buffers

Tensor = torch.Tensor

# Partition spaces: k-means of the label vectors [w, b] probed by inner
# product, or k-means of the training queries probed by L2 distance.
SPACES = ("labels", "queries")


@torch.compiler.assume_constant_result
def _fused_kernel(device_type: str) -> bool:
    """Whether this build has the native kernels partition_predict_topk
    composes for device_type (a constant of the build, for torch.compile)."""
    return INT8.has_fused_kernel(device_type)


_FUSED_PATH: dict = {}  # (device, backend) -> bool: constants of the build, looked up per eager call


def _fused_path(device: torch.device, backend: Optional[str]) -> bool:
    """Whether predict_topk runs the fused native op for x on device (and
    its index's buffers there). Eager calls read it from a table: a batch-1
    predict pays every microsecond of this on every query."""
    if torch.compiler.is_compiling():
        return _native_on(device, backend) and _fused_kernel(device.type)
    key = (device, backend)
    hit = _FUSED_PATH.get(key)
    if hit is None:
        hit = _FUSED_PATH[key] = bool(_native_on(device, backend) and _fused_kernel(device.type))
    return hit


@dataclass(frozen=True)
class PartitionConfig(IndexConfig):
    """The "partitions" family's knobs (PartitionIndex): num_partitions
    (None: chosen from N, and by fit() for a query-space index), nprobe
    (None: calibrated by fit() on held-out pairs). rerank is not a knob: fit()
    calibrates it, and SearchParams(rerank=...) sets it per call."""

    family: ClassVar[str] = "partitions"
    num_partitions: Optional[int] = None
    nprobe: Optional[int] = None

    def __post_init__(self):
        if self.num_partitions is not None:
            checks.integer("num_partitions", self.num_partitions, 1)
        if self.nprobe is not None:
            checks.integer("nprobe", self.nprobe, 1, self.num_partitions)


# Past N = (2.5 LABELS_PER_PARTITION)^2 = 10^6 labels, partitions hold about
# this many labels on average instead of the square-root rule's sqrt(N) / 2.5.
LABELS_PER_PARTITION = 400


def default_partitions(num_labels: int) -> int:
    """Partitions for N labels: the power of two nearest max(2.5 sqrt(N),
    N / LABELS_PER_PARTITION), at most one per 8 labels.

    Up to 10^6 labels, 2.5 sqrt(N): finer partitions make label-superior
    spill precise (a spilled label sits in the few partitions its queries
    probe first; the measurement that chose the rule: docs/performance.md,
    "Measurements moved out of code comments"), and the centroid scan (P
    rows per query) bounds it above. Beyond, lists that keep growing as
    sqrt(N) merge groups of labels that have little in common, and a
    centroid stops standing for its labels (the measurements at 10^6 and
    10^7: docs/scaling.md, "10^7 labels on one machine"); FAISS's
    guidelines ask for finer lists still at that size."""
    target = max(2.5 * math.sqrt(num_labels), num_labels / LABELS_PER_PARTITION)
    p = 2 ** max(0, round(math.log2(max(target, 1.0))))
    return int(max(1, min(p, num_labels // 8 if num_labels >= 8 else 1)))


# The spill width fit() tries (PartitionFitConfig.spill_probes) and that
# add_labels gives new labels' pairs until a fit chooses one.
SPILL_PROBES = 2


def default_nprobe(num_partitions: int) -> int:
    """Probes of an index that fit() has not calibrated yet: ~1.5% of the partitions."""
    return int(max(1, min(num_partitions, round(0.015 * num_partitions) or 1)))


class PartitionIndex(LSSIndex):
    """k-means partitions with int8 codes per partition and label-superior
    spill after fit(); the partitions are of [w, b] (space "labels") or,
    after fit(), possibly of the training queries (space "queries",
    centroid_bias = -|c|^2 / 2: probed by L2 distance). Parts:

    the probe (PartitionProbe, probe.py): centroids [P, d] and centroid_bias
        [P] (float32): a query x scores partition p by
        <x, centroids[p]> + centroid_bias[p];
    the lists (PartitionLists, lists.py): list_offsets int32 [P + 1],
        codes int8 [T, Dp], code_scales, code_bias float32 [T], list_ids
        int32 [T], code_proj; row t approximates label list_ids[t]'s logit;
    the codec (codec.INT8): how rows become codes, and the scan over them.

    Every buffer is registered on this module under its own name (the parts
    read and write them here), so state-dict keys are flat: ``centroids``,
    ``codes``, ...
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
        # (centroid_bias = -|c|^2 / 2). See lsskernels/partition/fit.py.
        self.space = "labels"
        # The spill width of the lists (fit()'s choice, 0: none): add_labels
        # spills new labels' pairs as wide, so added rows match the fit's.
        self.spill_probes = SPILL_PROBES
        # How many of the max_candidates best labels by quantized score predict()
        # scores exactly (None: all of them). fit() calibrates it on held-out
        # pairs: the int8 score ranks the candidates well enough that the
        # correct label is usually among the first few, and each exact row is
        # a random read of the weight matrix.
        self.rerank: Optional[int] = None
        self.codec = INT8
        for name, t in {**probe_buffers(p, dim, device), **list_buffers(p, dim, self.codec, device)}.items():
            self.register_buffer(name, t)
        self._probe = PartitionProbe(self._buffers, p, dim)
        self._lists = PartitionLists(self._buffers, p, self.codec)

    def config(self):
        return {"num_labels": self.num_labels, "dim": self.dim, "num_partitions": self.num_partitions,
                "nprobe": self.nprobe if self.nprobe_override else None, "seed": self.seed}

    def spec(self):
        # A fitted index may hold a partition count fit() chose (query
        # space); the user's spec has it only where the user set it.
        return {**self.config(), "num_partitions": self.num_partitions if self.partitions_override else None}

    def _extra_fields(self):
        return {"nprobe": self.nprobe, "rerank": self.rerank, "space": self.space,
                "partitions_set": self.partitions_override, "spill_probes": self.spill_probes}

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
        # Before 0.9 the width was not saved: the lists spilled 2 (or were never fitted).
        self.spill_probes = checks.integer("spill_probes", state.get("spill_probes", SPILL_PROBES), 0)

    def shortlist(self, max_candidates: int, k: int, rerank: Optional[int] = None) -> int:
        """Candidates predict(k) scores exactly: this call's rerank, else the
        calibrated one (at least k), never more than max_candidates."""
        return super().shortlist(max_candidates, k, self.rerank if rerank is None else rerank)

    # ------------------------------------------------- the one writer
    # Builders (lsskernels/partition/fit.py, lsskernels/label_updates.py)
    # compute partitions and lists and hand them here; the probe and the
    # lists write the buffers, nothing else does.
    @torch.no_grad()
    def set_partitions(self, centroids: Tensor, centroid_bias: Tensor, space: str) -> None:
        """New partitions (float32 [P, d], [P]) in space; the lists must be installed next."""
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        self._probe.set(centroids, centroid_bias)
        self.space = space
        self.built = False

    @torch.no_grad()
    def install_lists(self, part: Tensor, label: Tensor, codes_of: CodesOf) -> None:
        """Lists from (partition, label) pairs (int64, distinct): sorted by
        partition, labels ascending within one; codes_of(ids, proj) gives
        the rows' (codes, scales, biases) under the index's code projection."""
        self._lists.install(part, label, self.num_labels, codes_of)
        self.built = True

    def row_partitions(self) -> Tensor:
        """The partition of every list row, int64 [T]."""
        return self._lists.row_partitions()

    def list_sizes(self) -> Tensor:
        """Rows per partition, int32 [P]."""
        return self._lists.sizes()

    @torch.no_grad()
    def set_code_projection(self, proj: Optional[Tensor], codes_of: CodesOf) -> None:
        """Re-encode the listed rows with proj ([d, r]) or without a projection (None)."""
        self._lists.set_code_projection(proj, codes_of, self.centroids.device)

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
        self._lists.add_rows(part, label, codes, scales, code_bias, num_labels)
        self.num_labels = num_labels

    @torch.no_grad()
    def drop_labels(self, labels: Tensor) -> int:
        """Remove every list entry of the labels (int64 ids): O(T). Returns the
        entries removed. The label ids stay (the layer keeps their rows)."""
        if not self.built:
            raise RuntimeError("drop_labels() of an unbuilt index: build it first")
        return self._lists.drop_labels(labels, self.num_labels)

    @torch.no_grad()
    def renumber(self, new_ids: Tensor, num_labels: int) -> None:
        """Relabel the lists by new_ids (int64 [N]: each label's new id, -1
        for labels that must not be listed any more) to num_labels labels.
        new_ids must be increasing over the kept labels (lists stay sorted)."""
        num_labels = checks.integer("num_labels", num_labels, 1, 2**31 - 1)
        self._lists.renumber(new_ids, num_labels)
        self.num_labels = num_labels

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
        self._lists.encode_all(weight, bias)

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
        self._lists.sync_rows(weight, bias, rows, self.num_labels)

    # ---------------------------------------------------------- inference
    def code_queries(self, x: Tensor) -> Tensor:
        """The queries as the codes see them: x, or U^T x (float32) under a code projection."""
        return reference.code_queries(x, self._buffers["code_proj"])

    def probe_codes(self):
        """The centroids as the probe scores them: (codes int8 [P, Dp], scales
        float32 [P], the probe list (offsets, ids)); see
        lsskernels.partition.probe.probe_codes. Derived on first use after the
        centroids change (fit, rebuild, load_state_dict, .to())."""
        return self._probe.codes()

    def probe(self, x: Tensor, nprobe: int, backend: Optional[str] = None) -> Tensor:
        """The nprobe partitions x [B, d] probes first, int32 [B, nprobe]: by
        int8 score of the centroid codes (quantized_probe), as predict() does."""
        return self._probe.probe(x, nprobe, backend)

    def scan(self, x: Tensor, probes: Tensor, max_candidates: int, backend: Optional[str] = None):
        """Candidates of x over the lists probes (int32 [B, n]) names: ids
        int32 [B, M] (-1 padded, best quantized score first) and counts [B]."""
        return self.codec.scan(self.code_queries(x), probes, *self._lists.tensors(), self.num_labels,
                               max_candidates, backend=backend)

    def candidates(self, x, max_candidates, backend=None, *, nprobe=None):
        nprobe = min(self.nprobe if nprobe is None else nprobe, self.num_partitions)
        return self.scan(x, self.probe(x, nprobe, backend), max_candidates, backend)

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
        dev = x.device
        if _fused_path(dev, backend) and dev == buf["codes"].device:
            probe_codes, probe_scales, _ = self._probe.codes()
            proj = buf["code_proj"]
            return self.codec.fused_predict(
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

    def mismatch(self, weight, bias):
        return self._lists.mismatch(weight, bias)

    def validate_state(self, tensors, config):
        validate_partition_lists(tensors, config["num_labels"], config["dim"], config["num_partitions"], self.codec)

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
        codes, scales, probe_list = self._probe.codes()
        return super().index_bytes() + sum(t.numel() * t.element_size() for t in (codes, scales, *probe_list))

    def stats(self):
        out = super().stats()
        sizes = self.list_sizes().to(torch.float64)
        out.update(space=self.space, num_partitions=self.num_partitions, nprobe=self.nprobe, rerank=self.rerank,
                   code_dim=int(self.code_proj.shape[1]) if self.code_proj.numel() else self.dim,
                   rows=int(self.list_ids.numel()),
                   spill_rows=int(self.list_ids.numel()) - self.num_labels if self.built else 0,
                   mean_list=float(sizes.mean()) if sizes.numel() else 0.0,
                   max_list=int(sizes.max()) if sizes.numel() else 0)
        return out
