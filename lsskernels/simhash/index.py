"""SimHashIndex, the candidate index of the "simhash" family, and
SimHashConfig, its constructor knobs (LSSLinear(index=SimHashConfig(...))): L
sign-random-projection tables of K bits, CSR per table (lsskernels/simhash/
tables.py), over the bias-augmented MIPS transform of lsskernels/simhash/
hashing.py; fit() (lsskernels/simhash/fit.py) learns asymmetric projections
and inserts labels label-superior style.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import _checks as checks
from .. import _ops
from ..configs import IndexConfig
from ..index import LSSIndex, _native
from .hashing import EXTRA_DIMS, augment_queries, label_codes, simhash_projections
from .tables import build_label_tables, bucket_size_stats, validate_tables

Tensor = torch.Tensor


@dataclass(frozen=True)
class SimHashConfig(IndexConfig):
    """The "simhash" family's knobs (SimHashIndex): num_tables (L), bits (K)
    and min_hits (tables a label must collide in to be a candidate)."""

    family: ClassVar[str] = "simhash"
    num_tables: int = 16
    bits: int = 12
    min_hits: int = 1

    def __post_init__(self):
        checks.integer("num_tables", self.num_tables, 1, checks.MAX_TABLES)
        checks.integer("bits", self.bits, 1, checks.MAX_BITS)
        checks.integer("min_hits", self.min_hits, 1, self.num_tables)


class SimHashIndex(LSSIndex):
    """L SimHash tables of K bits (see lsskernels/simhash/hashing.py for the
    bias-augmented MIPS transform and lsskernels/simhash/fit.py for fit())."""

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

    def install_tables(self, offsets: Tensor, items: Tensor) -> None:
        """Take fitted tables (lsskernels/simhash/fit.py: label_superior_tables)."""
        self.offsets, self.items = offsets, items
        self.fitted = True
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
            if not bool(torch.isfinite(t).all()):  # a NaN hyperplane hashes every query alike
                raise ValueError(f"{name} must be finite")
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

