"""LSSLinear: a drop-in nn.Linear for wide output layers whose inference
computes exact logits only for the candidates its hash tables retrieve.

    layer = LSSLinear.from_linear(linear, num_tables=16, bits=12, max_candidates=2048)
    layer.train(); layer(x)          # exactly nn.Linear
    layer.eval();  layer(x)          # [B, N], -inf outside the candidates
    scores, ids = layer.predict(x, k)

The tables start as random SimHash tables over the bias-augmented label
vectors; `fit()` (lsskernels/training.py) learns them from (query, label)
pairs. Everything the tables need is in buffers, and the configuration in the
module's extra state, so `state_dict()` / `load_state_dict()` round-trip a
fitted layer exactly; loaded tables are validated before any kernel sees them.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as checks
from . import _ops
from .hashing import EXTRA_DIMS, augment_queries, label_codes, query_codes, simhash_projections
from .tables import build_label_tables, bucket_size_stats, validate_tables

Tensor = torch.Tensor

_TABLE_BUFFERS = ("query_proj", "label_proj", "offsets", "items")


class LSSLinear(nn.Module):
    """Linear layer y = x W^T + b with an LSS index for sparse inference.

    Args:
        in_features, out_features, bias: as nn.Linear.
        num_tables (L): hash tables; more tables raise recall and candidates.
        bits (K): bits per table; 2^K buckets; more bits give smaller buckets.
        max_candidates (M): candidates kept per query (more hits first).
        min_hits: a label must collide in at least this many tables.
        seed: seed of the random initial projections.
        backend: force a kernel backend (see lsskernels._ops); None = automatic.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 num_tables: int = 16, bits: int = 12, max_candidates: int = 2048,
                 min_hits: int = 1, seed: int = 0, backend: Optional[str] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        checks.integer("in_features", in_features, 1)
        checks.integer("out_features", out_features, 1, 2**31 - 1)
        checks.integer("num_tables", num_tables, 1, 0xFFFE)
        checks.integer("bits", bits, 1, checks.MAX_BITS)
        checks.integer("max_candidates", max_candidates, 1)
        checks.integer("min_hits", min_hits, 1, num_tables)
        self.in_features = in_features
        self.out_features = out_features
        self.num_tables = num_tables
        self.bits = bits
        self.max_candidates = max_candidates
        self.min_hits = min_hits
        self.seed = seed
        self.backend = backend
        self.fitted = False
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._reset_linear_parameters()
        proj = simhash_projections(num_tables, bits, in_features, seed=seed, device=device)
        self.register_buffer("query_proj", proj)
        self.register_buffer("label_proj", proj.clone())
        self.register_buffer("offsets", torch.zeros(num_tables, (1 << bits) + 1, dtype=torch.int32, device=device))
        self.register_buffer("items", torch.empty(num_tables, 0, dtype=torch.int32, device=device))
        # Tables are built on first use (or by from_linear / fit), not here:
        # hashing 10^7 freshly initialised rows would be wasted work.
        self._indexed_version = -1

    def _reset_linear_parameters(self) -> None:
        # Same initialisation as nn.Linear.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, num_tables: int = 16, bits: int = 12,
                    max_candidates: int = 2048, min_hits: int = 1, seed: int = 0,
                    backend: Optional[str] = None) -> "LSSLinear":
        """An LSSLinear with a copy of linear's weight and bias and random
        SimHash tables over them."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    num_tables=num_tables, bits=bits, max_candidates=max_candidates,
                    min_hits=min_hits, seed=seed, backend=backend,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.rebuild_tables()
        return layer

    # ------------------------------------------------------------------ index
    @torch.no_grad()
    def rebuild_tables(self) -> None:
        """Rehash every label with label_proj and rebuild the tables (one
        bucket per label per table). Call after changing the weights; fit()
        calls it on its own schedule."""
        codes = label_codes(self.weight, self.bias, self.label_proj, backend=self._native_backend())
        self.offsets, self.items = build_label_tables(codes, self.bits)
        self._indexed_version = self._weights_version()

    def _native_backend(self) -> Optional[str]:
        # Index building runs once; the Triton backend has no build kernel.
        return None if self.backend == "triton" else self.backend

    def _weights_version(self) -> int:
        v = self.weight._version
        return v + (self.bias._version << 32 if self.bias is not None else 0)

    def _ensure_index(self) -> None:
        if torch.compiler.is_compiling() or self.fitted:
            return
        if self._indexed_version != self._weights_version():
            # Random SimHash tables are a pure function of the weights: keep
            # them in sync. (Fitted tables are rebuilt only by fit().)
            self.rebuild_tables()

    def fit(self, queries: Tensor, labels: Tensor, *, seed: int = 0, **options):
        """Learn the hash from (hidden vector, label) pairs so that queries
        collide with their correct labels, and fill the buckets label-superior
        style. queries [n, d] float; labels int64 [n] or [n, m] padded with -1.
        Options and algorithm: lsskernels/training.py (FitConfig). Returns a
        FitReport (loss, label recall and candidates per epoch)."""
        from .training import fit

        return fit(self, queries, labels, seed=seed, **options)

    def table_stats(self) -> dict:
        stats = bucket_size_stats(self.offsets)
        stats.update(num_tables=self.num_tables, bits=self.bits, items_per_table=int(self.items.shape[1]))
        return stats

    # -------------------------------------------------------------- inference
    def _flat(self, x: Tensor) -> Tuple[Tensor, tuple]:
        checks.tensor("x", x, None, checks.FLOAT_DTYPES, f"[..., {self.in_features}] floating point")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be [..., in_features = {self.in_features}], got {tuple(x.shape)}")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's weight is {self.weight.dtype}")
        return x.reshape(-1, self.in_features), x.shape[:-1]

    def candidates(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Candidate ids int32 [B, M] (-1 padded, more hits first) and counts [B]
        for flat queries x [B, d]."""
        self._ensure_index()
        if self._use_native_ops(x):
            # The layer's own buffers were validated when built or loaded, so
            # the per-call Python checks of the public wrappers are skipped.
            ops = torch.ops.lsskernels
            codes = ops.hash_codes(augment_queries(x), self.query_proj.to(x.dtype))
            return ops.bucket_lookup(codes, self.offsets, self.items, self.out_features,
                                     self.max_candidates, self.min_hits)
        codes = query_codes(x, self.query_proj, backend=self._native_backend())
        return _ops.bucket_lookup(codes, self.offsets, self.items, self.out_features,
                                  self.max_candidates, self.min_hits, backend=self._native_backend())

    def _use_native_ops(self, x: Tensor) -> bool:
        if self.backend is None:
            return _ops.resolve_backend(None, x.device) in ("cpu", "cuda") and x.device == self.offsets.device
        return self.backend in ("cpu", "cuda")

    def sparse_logits(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Exact logits of the candidates: (logits [..., M] with -inf padding,
        ids int32 [..., M] with -1 padding). Differentiable."""
        flat, lead = self._flat(x)
        ids, _ = self.candidates(flat)
        logits = _ops.gathered_logits(flat, self.weight, self.bias, ids, backend=self.backend)
        return logits.reshape(lead + (-1,)), ids.reshape(lead + (-1,))

    def predict(self, x: Tensor, k: int = 1) -> Tuple[Tensor, Tensor]:
        """Top-k labels among the candidates: (scores [..., k] in x's dtype,
        ids int64 [..., k]); -inf / -1 where a query has fewer than k candidates.
        No gradient flows through predict."""
        checks.topk_k(k)
        flat, lead = self._flat(x)
        if self._use_native_ops(flat):
            # One op for the whole pipeline (hash, lookup, logits, top-k): at
            # batch 1 the per-op Python overhead is as large as the kernels.
            # It runs below autograd, so no no_grad() context is needed. The
            # layer's buffers were validated when built or loaded.
            self._ensure_index()
            scores, labels = torch.ops.lsskernels.predict_topk(
                flat, self.query_proj, self.offsets, self.items, self.weight, self.bias, self.out_features,
                self.max_candidates, self.min_hits, k)
        else:
            with torch.no_grad():
                ids, _ = self.candidates(flat)
                logits = _ops.gathered_logits(flat, self.weight, self.bias, ids, backend=self.backend)
                scores, labels = _ops.topk_gathered(logits, ids, k, backend=self.backend)
        if len(lead) == 1:
            return scores, labels
        return scores.reshape(lead + (k,)), labels.reshape(lead + (k,))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return F.linear(x, self.weight, self.bias)
        flat, lead = self._flat(x)
        ids, _ = self.candidates(flat)
        logits = _ops.gathered_logits(flat, self.weight, self.bias, ids, backend=self.backend)
        # Scatter into [B, N + 1]: padding goes to the spare last column.
        safe = torch.where(ids >= 0, ids.to(torch.int64), self.out_features)
        dense = logits.new_full((flat.shape[0], self.out_features + 1), float("-inf"))
        dense = dense.scatter(1, safe, logits)
        return dense[:, : self.out_features].reshape(lead + (self.out_features,))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, num_tables={self.num_tables}, bits={self.bits}, "
                f"max_candidates={self.max_candidates}, min_hits={self.min_hits}, fitted={self.fitted}")

    # ------------------------------------------------------------ state dict
    def get_extra_state(self) -> dict:
        return {"num_tables": self.num_tables, "bits": self.bits, "max_candidates": self.max_candidates,
                "min_hits": self.min_hits, "seed": self.seed, "fitted": self.fitted, "format": 1}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != 1:
            raise ValueError(f"LSSLinear: unrecognised extra state {state!r}")
        self.num_tables = int(state["num_tables"])
        self.bits = int(state["bits"])
        self.max_candidates = int(state["max_candidates"])
        self.min_hits = int(state["min_hits"])
        self.seed = int(state["seed"])
        self.fitted = bool(state["fitted"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Tables change size with fit(), so buffers take the incoming shapes;
        # they are validated first so that no kernel ever reads a bad table.
        incoming = {name: state_dict.get(prefix + name) for name in _TABLE_BUFFERS}
        if all(t is not None for t in incoming.values()):
            extra = state_dict.get(prefix + "_extra_state", self.get_extra_state())
            bits = int(extra.get("bits", self.bits)) if isinstance(extra, dict) else self.bits
            num_tables = int(extra.get("num_tables", self.num_tables)) if isinstance(extra, dict) else self.num_tables
            dim = self.in_features + EXTRA_DIMS
            for name in ("query_proj", "label_proj"):
                t = incoming[name]
                if not isinstance(t, Tensor) or tuple(t.shape) != (num_tables, bits, dim) or not t.is_floating_point():
                    raise ValueError(f"state_dict['{prefix}{name}'] must be a float tensor "
                                     f"[{num_tables}, {bits}, {dim}], got "
                                     f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
            try:
                validate_tables(incoming["offsets"], incoming["items"], self.out_features, bits)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"state_dict has malformed hash tables under '{prefix}': {exc}") from None
            if incoming["offsets"].shape[0] != num_tables:
                raise ValueError(f"state_dict['{prefix}offsets'] has {incoming['offsets'].shape[0]} tables, "
                                 f"extra state says {num_tables}")
            for name, t in incoming.items():
                setattr(self, name, torch.empty_like(t, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._indexed_version = self._weights_version()
