"""LSSLinear: a drop-in nn.Linear for wide output layers whose inference
computes exact logits only for the candidates its index retrieves.

    layer = LSSLinear.from_linear(linear, max_candidates=256)
    layer.fit(queries, labels)       # learns the index from (hidden vector, label) pairs
    layer.train(); layer(x)          # exactly nn.Linear
    layer.eval();  layer(x)          # [B, N], -inf outside the candidates
    scores, ids = layer.predict(x, k)

The layer holds the weights and one candidate index (lsskernels/index.py:
the "partitions" family by default, or "simhash", lsskernels/simhash/; chosen
by index=, a family name or its config); the index is a submodule,
so state_dict() / load_state_dict() round-trip a fitted layer exactly, and
loaded tables are validated before any kernel sees them. The rule that keeps
the index in sync with the weights lives in one place, _ensure_index().
"""
from __future__ import annotations

import math
import warnings
import weakref
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from . import _checks as checks
from .label_updates import keeps_lists, require_lists
from . import _ops
from . import families
from . import partition as _partition  # noqa: F401  (registers the "partitions" family)
from . import simhash as _simhash  # noqa: F401  (registers the "simhash" family)
from .configs import IndexConfig
from .families import index_from_extra_state, make_index
from .index import LSSIndex, SearchParams
from .simhash.index import SimHashIndex

Tensor = torch.Tensor

_V1_BUFFERS = ("query_proj", "label_proj", "offsets", "items")  # format 1: SimHash buffers on the layer


# Every optimizer step anywhere, counted: fused optimizers (AdamW(fused=True),
# SGD(fused=True)) write the parameters without bumping their version
# counters, so the version alone would call a stepped layer's index current.
# Counting steps is conservative: a step of an unrelated model also makes the
# next predict re-check (sync) the index, an O(N d) re-encode it would pay
# after its own step anyway.
_OPTIMIZER_STEPS = [0]


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class LSSLinear(nn.Module):
    """Linear layer y = x W^T + b with a candidate index for sparse inference.

    Args:
        in_features, out_features, bias: as nn.Linear.
        max_candidates (M): exact logits computed per query, the one knob.
        index: the index family and its knobs: a family name, "partitions"
            (the default) or "simhash", for its defaults, or a config
            (lsskernels.partition.PartitionConfig(num_partitions, nprobe: None
            chooses them from N and calibrates nprobe in fit()),
            lsskernels.simhash.SimHashConfig(num_tables, bits, min_hits)).
        seed: seed of the index (k-means sample, projections, fit()).
        backend: force a kernel backend (see lsskernels._ops); None = automatic.
        family, num_partitions, nprobe, num_tables, bits, min_hits:
            deprecated (DeprecationWarning): the index= of before; family
            None picks "simhash" when a SimHash knob is given.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 max_candidates: int = 256, index: Union[str, IndexConfig, None] = None,
                 seed: int = 0, backend: Optional[str] = None, device=None, dtype=None,
                 family: Optional[str] = None, num_partitions: Optional[int] = None, nprobe: Optional[int] = None,
                 num_tables: Optional[int] = None, bits: Optional[int] = None,
                 min_hits: Optional[int] = None) -> None:
        config = _index_config(index, "LSSLinear", family=family, num_partitions=num_partitions, nprobe=nprobe,
                               num_tables=num_tables, bits=bits, min_hits=min_hits)
        super().__init__()
        checks.integer("in_features", in_features, 1)
        checks.integer("out_features", out_features, 1, 2**31 - 1)
        checks.integer("max_candidates", max_candidates, 1)
        self.in_features = in_features
        self.out_features = out_features
        self.max_candidates = max_candidates
        self.seed = seed
        self.backend = backend  # checked by the property below
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self._reset_linear_parameters()
        # The index is built on first use (or by from_linear / fit), not
        # here: indexing 10^7 freshly initialised rows would be wasted work.
        self.index: LSSIndex = make_index(out_features, in_features, config=config, seed=seed, device=device)
        # Removed labels (remove_labels): never listed by the index, -inf in
        # every logit the layer returns; their ids stay until compact().
        self.register_buffer("removed", torch.zeros(out_features, dtype=torch.bool, device=device))
        self._any_removed = False
        self._indexed_version: Optional[tuple] = None
        # Holds the indexed parameters weakly: id() alone could be reused by
        # a new parameter once the old one is freed.
        self._indexed_params: tuple = ()
        self._loading_index = False
        self._removed_before: Optional[Tensor] = None  # `removed` before a load that keeps the index
        self.register_load_state_dict_post_hook(LSSLinear._after_load)

    @property
    def backend(self) -> Optional[str]:
        """The kernel backend every call of this layer runs on (None:
        automatic). Set to a backend this build cannot run, it raises at
        once; set to one that cannot run on the layer's tensors' device
        (backend="cuda" with CPU tensors), every call raises."""
        return self._backend

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self._backend = _ops.check_backend(value)

    def _reset_linear_parameters(self) -> None:
        # Same initialisation as nn.Linear.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, max_candidates: int = 256,
                    index: Union[str, IndexConfig, None] = None, seed: int = 0, backend: Optional[str] = None,
                    family: Optional[str] = None, num_partitions: Optional[int] = None, nprobe: Optional[int] = None,
                    num_tables: Optional[int] = None, bits: Optional[int] = None,
                    min_hits: Optional[int] = None) -> "LSSLinear":
        """An LSSLinear with a copy of linear's weight and bias. Its unlearned
        index (k-means partitions, or random SimHash) is built on first use,
        or by rebuild_index(); fit() builds its own, so from_linear + fit
        runs k-means once. index: as the constructor's (family, ...,
        min_hits: deprecated, as there)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        config = _index_config(index, "LSSLinear.from_linear", family=family, num_partitions=num_partitions,
                               nprobe=nprobe, num_tables=num_tables, bits=bits, min_hits=min_hits)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    max_candidates=max_candidates, index=config, seed=seed, backend=backend,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    # ------------------------------------------------------------------ index
    @property
    def family(self) -> str:
        return self.index.family

    @property
    def fitted(self) -> bool:
        return self.index.fitted

    def _simhash(self, name: str):
        # Deprecated: the knobs are the index's (layer.index.num_tables).
        if not isinstance(self.index, SimHashIndex):
            raise AttributeError(f"{name} is a SimHash knob; this layer's index is {self.index.family!r}")
        warnings.warn(f"LSSLinear.{name} is deprecated; use layer.index.{name}", DeprecationWarning, stacklevel=3)
        return getattr(self.index, name)

    num_tables = property(lambda self: self._simhash("num_tables"))
    bits = property(lambda self: self._simhash("bits"))
    min_hits = property(lambda self: self._simhash("min_hits"))

    @torch.no_grad()
    def rebuild_index(self) -> None:
        """A fresh start: the unlearned index of the user's configuration,
        built from the current weights. Everything fit() learned or chose
        (partition space and count, probes, spill, shortlist, projection)
        is discarded; call fit() again to learn it."""
        index = self.index.clone_empty().to(self.weight.device)
        families.rebuild(index, self.weight, self.bias)
        self._drop_removed(index)
        self.index = index
        self._mark_indexed()


    def _weights_version(self) -> tuple:
        """What identifies the weights' current values: each parameter's
        object, storage and in-place version count, and the count of
        optimizer steps taken anywhere (a fused optimizer writes without
        bumping versions). Replacing a parameter (layer.weight = p),
        swapping its data (.data = t, module.to()), writing into it (copy_,
        load_state_dict) or any optimizer step changes it."""
        # Through _parameters: nn.Module's attribute fallback costs a lookup
        # per name, which a batch-1 predict pays on every call (measured:
        # docs/performance.md, "Measurements moved out of code comments").
        params = self._parameters
        w, b = params["weight"], params.get("bias")
        return (id(w), w.data_ptr(), w._version,
                id(b) if b is not None else 0, b.data_ptr() if b is not None else 0, b._version if b is not None else 0,
                _OPTIMIZER_STEPS[0])

    def _mark_indexed(self) -> None:
        """The index now reflects the current weights."""
        params = self._parameters
        w, b = params["weight"], params.get("bias")
        self._indexed_version = self._weights_version()
        self._indexed_params = (weakref.ref(w), weakref.ref(b) if b is not None else None)

    def __getstate__(self) -> dict:
        # torch.save(layer) / copy / multiprocessing pickle the module: the
        # weak references cannot be pickled, and a record of which weights
        # were indexed means nothing in another process. Without it the
        # index is synced with the weights on first use there.
        state = super().__getstate__()  # nn.Module's: a copy of __dict__
        state["_indexed_version"], state["_indexed_params"] = None, ()
        return state

    def _index_current(self) -> bool:
        if self._indexed_version != self._weights_version():
            return False
        params = self._parameters
        refs = self._indexed_params
        b = params.get("bias")
        return refs[0]() is params["weight"] and (refs[1]() if refs[1] is not None else None) is b

    @property
    def index_is_current(self) -> bool:
        """Whether the index reflects the current weight and bias (the same
        Parameters, unchanged since it was built or last synced); a stale
        index is brought up to date on the next call that uses it."""
        return self._index_current()

    @property
    def has_removed_labels(self) -> bool:
        """Whether any label is removed (remove_labels; layer.removed holds which)."""
        return self._any_removed

    def _ensure_index(self) -> None:
        """The one rule keeping the index in sync with the weights: build it
        on first use; after a weight change, let the family update what it
        derives from the weights (SimHashIndex: random tables rebuilt, fitted
        ones kept; PartitionIndex: codes re-encoded, partitions and spill kept)."""
        index = self._modules["index"]
        if torch.compiler.is_compiling():
            # Dynamo cannot trace the check; a compiled caller must call
            # sync_index() after changing the weights (docs/api.md). An index
            # never built would answer every query with no candidate.
            if not index.built:
                raise RuntimeError("LSSLinear: the index is not built yet; call layer.sync_index() (or fit()) "
                                   "before calling the layer under torch.compile")
            return
        if index.built and self._index_current():
            return
        # Index state is built as normal tensors even under a caller's
        # torch.inference_mode(): an inference tensor has no version counter,
        # which the index's own caches and later syncs read.
        with torch.inference_mode(False), torch.no_grad():
            if not index.built:
                families.rebuild(index, self.weight, self.bias)
                self._drop_removed(index)
            else:
                index.sync(self.weight, self.bias)
        self._mark_indexed()

    def sync_index(self) -> None:
        """Bring the index up to date with the weights now (what every
        predict / candidates / eval forward does first, outside torch.compile)."""
        self._ensure_index()

    def fit(self, queries: Tensor, labels: Tensor, *, seed: Optional[int] = None, **options):
        """Learn the index from (hidden vector, label) pairs so that queries
        find their correct labels: queries [n, d] float; labels int64 [n] or
        [n, m] padded with -1. A function of (weights, pairs, options, seed):
        the index's own configuration is the starting point, never a previous
        fit. Options: PartitionFitConfig (lsskernels/partition/fit.py) or
        SimHashFitConfig (lsskernels/simhash/fit.py). Returns the family's report; the
        new index is installed (report.index)."""
        _ops.resolve_backend(self._backend, self.weight.device)  # refused here as in predict()
        # Normal tensors even under a caller's inference_mode (as _ensure_index).
        with torch.inference_mode(False):
            index, report = families.fit(self.index, self.weight, self.bias, queries, labels,
                                         max_candidates=self.max_candidates,
                                         seed=self.seed if seed is None else seed, **options)
            self._drop_removed(index)
        self.index = index
        self._mark_indexed()
        return report

    def table_stats(self) -> dict:
        """The index's statistics (family, sizes, index bytes)."""
        return self.index.stats()

    # -------------------------------------------------------------- inference
    def _flat(self, x: Tensor) -> Tuple[Tensor, tuple]:
        checks.tensor("x", x, None, checks.FLOAT_DTYPES, f"[..., {self.in_features}] floating point")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must be [..., in_features = {self.in_features}], got {tuple(x.shape)}")
        weight = self._parameters["weight"]
        if x.dtype != weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's weight is {weight.dtype}")
        return (x if x.dim() == 2 else x.reshape(-1, self.in_features)), x.shape[:-1]

    def _search(self, params: Optional[SearchParams]) -> Tuple[int, Optional[str], Optional[int], Optional[int]]:
        """(max_candidates, backend, nprobe, rerank) of a call: params' fields, else the layer's / index's."""
        if params is None:
            return self.max_candidates, self._backend, None, None
        if not isinstance(params, SearchParams):
            raise TypeError(f"params must be a lsskernels.SearchParams, got {type(params).__name__}")
        return (self.max_candidates if params.max_candidates is None else params.max_candidates,
                self._backend if params.backend is None else params.backend, params.nprobe, params.rerank)

    def candidates(self, x: Tensor, *, params: Optional[SearchParams] = None) -> Tuple[Tensor, Tensor]:
        """Candidate ids int32 [B, M] (-1 padded, best first) and counts [B]
        for flat queries x [B, d]; params: this call's search settings."""
        m, backend, nprobe, _ = self._search(params)
        self._ensure_index()
        return self.index.candidates(x, m, backend, nprobe=nprobe)

    def sparse_logits(self, x: Tensor, *, params: Optional[SearchParams] = None) -> Tuple[Tensor, Tensor]:
        """Exact logits of the candidates: (logits [..., M] with -inf padding,
        ids int32 [..., M] with -1 padding). Differentiable."""
        flat, lead = self._flat(x)
        ids, _ = self.candidates(flat, params=params)
        logits = _ops.gathered_logits(flat, self.weight, self.bias, ids, backend=self._search(params)[1])
        return logits.reshape(lead + (-1,)), ids.reshape(lead + (-1,))

    def predict(self, x: Tensor, k: int = 1, *, params: Optional[SearchParams] = None) -> Tuple[Tensor, Tensor]:
        """Top-k labels among the candidates: (scores [..., k] in x's dtype,
        ids int64 [..., k]); -inf / -1 where a query has fewer than k candidates.
        params: this call's search settings (lsskernels.SearchParams). No
        gradient flows through predict."""
        checks.topk_k(k)
        flat, lead = self._flat(x)
        self._ensure_index()
        # The native path is one composite op (below autograd); the others
        # run under no_grad inside the index.
        p = self._parameters
        if params is None:
            scores, labels = self._modules["index"].predict_topk(flat, p["weight"], p.get("bias"),
                                                                 self.max_candidates, k, self._backend)
        else:
            m, backend, nprobe, rerank = self._search(params)
            scores, labels = self._modules["index"].predict_topk(flat, p["weight"], p.get("bias"), m, k, backend,
                                                                 nprobe=nprobe, rerank=rerank)
        if len(lead) == 1:
            return scores, labels
        return scores.reshape(lead + (k,)), labels.reshape(lead + (k,))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            out = F.linear(x, self.weight, self.bias)
            return out.masked_fill(self.removed, float("-inf")) if self._any_removed else out
        flat, lead = self._flat(x)
        ids, _ = self.candidates(flat)
        logits = _ops.gathered_logits(flat, self.weight, self.bias, ids, backend=self.backend)
        # Scatter into [B, N + 1]: padding goes to the spare last column.
        safe = torch.where(ids >= 0, ids.to(torch.int64), self.out_features)
        dense = logits.new_full((flat.shape[0], self.out_features + 1), float("-inf"))
        dense = dense.scatter(1, safe, logits)
        return dense[:, : self.out_features].reshape(lead + (self.out_features,))

    # ---------------------------------------------------- labels over time
    def _drop_removed(self, index: LSSIndex) -> None:
        if self._any_removed:
            require_lists(index, "remove_labels")
            index.drop_labels(torch.nonzero(self.removed).squeeze(1))

    def _follow_removed(self, before: Tensor) -> None:
        """After a load that kept the built index: drop the labels the loaded
        `removed` adds; where it restores labels the index had dropped, the
        index cannot list them again without a fit, so it is rebuilt on
        first use, with a warning (what fit() learned is lost)."""
        index = self._modules["index"]
        if bool((before & ~self.removed).any()):
            warnings.warn("LSSLinear.load_state_dict: the loaded state restores labels this layer had removed, "
                          "and its index no longer lists them: the index is rebuilt from the loaded weights on "
                          "first use (call fit() again to learn it)", RuntimeWarning, stacklevel=4)
            self.index = index.clone_empty().to(self.weight.device)
        elif bool((self.removed & ~before).any()):
            self._drop_removed(index)  # labels already dropped are not listed: dropping them again is a no-op

    @torch.no_grad()
    def add_labels(self, weight: Tensor, bias: Optional[Tensor] = None, *, queries: Optional[Tensor] = None,
                   query_labels: Optional[Tensor] = None) -> Tensor:
        """Append labels (weight [n, d], bias [n] or None: zeros) without a
        rebuild; returns their ids, int64 [n] (N, N+1, ...). The optional
        (queries [q, d], query_labels int64 [q] or [q, m] padded with -1,
        indexing the new rows: 0 = the first added) spill them into the
        partitions their queries probe, as wide as fit() spilled the lists
        (not at all where it kept none). Cost: the new rows'
        codes and a merge of the lists, no k-means (lsskernels/label_updates.py).
        The weight and bias become new, larger Parameters: an optimizer
        holding the old ones must be rebuilt (docs/api.md)."""
        from .label_updates import add_to_index, check_new_labels

        require_lists(self.index, "add_labels")
        _ops.resolve_backend(self._backend, self.weight.device)  # refused here as in predict()
        dtype, device = self.weight.dtype, self.weight.device
        n, queries, query_labels = check_new_labels(weight, bias, queries, query_labels, dim=self.in_features,
                                                    has_bias=self.bias is not None, num_labels=self.out_features,
                                                    device=device)
        self._ensure_index()
        first = self.out_features
        w = torch.cat([self.weight.detach(), weight.detach().to(device=device, dtype=dtype)])
        self.weight = nn.Parameter(w, requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            extra = (bias.detach().to(device=device, dtype=dtype) if bias is not None
                     else torch.zeros(n, dtype=dtype, device=device))
            self.bias = nn.Parameter(torch.cat([self.bias.detach(), extra]), requires_grad=self.bias.requires_grad)
        self.removed = torch.cat([self.removed, torch.zeros(n, dtype=torch.bool, device=device)])
        self.out_features = first + n
        add_to_index(self.index, self.weight, self.bias, first, queries, query_labels)
        self._mark_indexed()
        return torch.arange(first, first + n, dtype=torch.int64, device=device)

    @torch.no_grad()
    def remove_labels(self, ids) -> None:
        """Never return the labels ids (int64, in [0, N)) again: out of every
        index list at once (O(T)), -inf in train-mode logits. Their ids stay
        allocated (ids the caller holds keep their meaning) until compact()."""
        require_lists(self.index, "remove_labels")
        ids = torch.as_tensor(ids, device=self.removed.device)
        if ids.dtype not in (torch.int64, torch.int32) or ids.dim() > 1:
            raise TypeError(f"ids must be int64 label ids [n], got {ids.dtype} {tuple(ids.shape)}")
        ids = ids.reshape(-1).to(torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.out_features):
            raise ValueError(f"ids must be label ids in [0, {self.out_features})")
        self.removed[ids] = True
        self._any_removed = bool(self.removed.any())
        if self.index.built:
            self.index.drop_labels(ids)

    @torch.no_grad()
    def compact(self) -> Tensor:
        """Drop the removed labels' rows and renumber the others (order
        kept); returns old id -> new id, int64 [old N] (-1 for removed).
        The weight and bias become new Parameters."""
        require_lists(self.index, "compact")
        keep = ~self.removed
        n = int(keep.sum())
        if n == 0:
            raise ValueError("compact() would leave no label")
        # A partition index holds at most one partition per label (its
        # constructor's rule, which a load of the saved state applies): below
        # that, the index of the user's configuration for n labels replaces
        # it, made here, before anything changes, so a configuration that
        # cannot hold n labels is refused with the layer intact.
        parts = getattr(self.index, "num_partitions", 0)
        fresh = None
        if n < parts:
            try:
                fresh = type(self.index)(**{**self.index.spec(), "num_labels": n}).to(keep.device)
            except ValueError as exc:
                raise ValueError(f"compact() would leave {n} labels, fewer than the index's {parts} partitions, and "
                                 f"its configuration cannot index {n} labels: {exc}") from None
        new_ids = torch.full((self.out_features,), -1, dtype=torch.int64, device=keep.device)
        new_ids[keep] = torch.arange(n, device=keep.device)
        self._ensure_index()
        self.weight = nn.Parameter(self.weight.detach()[keep].clone(), requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach()[keep].clone(), requires_grad=self.bias.requires_grad)
        self.index.renumber(new_ids, n)
        if self.index.code_proj.numel():  # codes centred on the mean label, which moved
            self.index.sync(self.weight, self.bias)
        self.out_features = n
        self.removed = torch.zeros(n, dtype=torch.bool, device=keep.device)
        self._any_removed = False
        if fresh is not None:
            warnings.warn(f"compact() left {n} labels, fewer than the index's {parts} partitions: the index is "
                          f"rebuilt for {n} labels on first use (call fit() again to learn it)", RuntimeWarning,
                          stacklevel=2)
            self.index = fresh
        self._mark_indexed()
        return new_ids

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, max_candidates={self.max_candidates}, family={self.family}, "
                f"fitted={self.fitted}")

    # ------------------------------------------------------------ state dict
    def get_extra_state(self) -> dict:
        return {"max_candidates": self.max_candidates, "seed": self.seed, "format": 2}

    def set_extra_state(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") not in (1, 2):
            raise ValueError(f"LSSLinear: unrecognised extra state {state!r}")
        self.max_candidates = checks.integer("max_candidates", int(state["max_candidates"]), 1)
        self.seed = int(state["seed"])

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        extra = state_dict.get(prefix + "_extra_state")
        if isinstance(extra, dict) and extra.get("format") == 1:
            _upgrade_v1(state_dict, prefix, extra, self.in_features, self.out_features)
        # The index takes the saved family and configuration; its own
        # _load_from_state_dict validates the buffers before taking them.
        saved = state_dict.get(prefix + "index._extra_state")
        if isinstance(saved, dict):
            try:
                if saved.get("family") != self.index.family or saved.get("config") != self.index.config():
                    cfg = saved.get("config", {})
                    if cfg.get("num_labels") != self.out_features or cfg.get("dim") != self.in_features:
                        raise ValueError(f"the saved index is for {cfg.get('num_labels')} labels of dimension "
                                         f"{cfg.get('dim')}, this layer has {self.out_features} x {self.in_features}")
                    self.index = index_from_extra_state(saved, device=self.weight.device)
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"state_dict['{prefix}index._extra_state'] is not a usable index: {exc}") from None
        # The index loads whole or not at all (strict=False included): a
        # part of it would leave a layer that says it is built and is not.
        parts = ["_extra_state"] + [n for n, _ in self.index.named_buffers(recurse=False)
                                    if n not in self.index.optional_buffers]
        present = [n for n in parts if prefix + "index." + n in state_dict]
        if present and len(present) != len(parts):
            missing = [n for n in parts if n not in present]
            raise ValueError(f"state_dict holds part of the layer's index under '{prefix}index.': missing {missing}; "
                             "save and load the whole layer, or leave every index entry out (the index is then "
                             "brought up to date with the loaded weights on first use)")
        self._loading_index = bool(present)
        # Without an index in the state, the built one stays: it must follow
        # the loaded `removed` too (_after_load).
        self._removed_before = self.removed.clone() if not present and self.index.built else None
        if prefix + "removed" not in state_dict and prefix + "_extra_state" in state_dict:  # LSSLinear before 0.6
            state_dict[prefix + "removed"] = torch.zeros(self.out_features, dtype=torch.bool)
        removed = state_dict.get(prefix + "removed")
        if (isinstance(removed, torch.Tensor) and removed.dtype == torch.bool and bool(removed.any())
                and not keeps_lists(self.index)):
            raise ValueError(f"state_dict['{prefix}removed'] marks removed labels, and this layer's index "
                             f"({self.index.family!r}) cannot leave labels out: load it into a layer of the "
                             f"partitions family")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @staticmethod
    def _after_load(module: "LSSLinear", incompatible_keys) -> None:
        # Runs after the index (a child) has loaded. A loaded index must be
        # that of the loaded weights: else it is refused, loudly. Without one,
        # the index is left stale and is synced with the weights on first use.
        module._any_removed = bool(module.removed.any())
        if not getattr(module, "_loading_index", False):
            before, module._removed_before = getattr(module, "_removed_before", None), None
            if before is not None:
                module._follow_removed(before)
            return
        module._loading_index = False
        index = module._modules["index"]
        if index.built:
            reason = index.mismatch(module.weight, module.bias)
            if reason is not None:
                module.index = index.clone_empty().to(module.weight.device)  # rebuilt on first use
                raise ValueError(f"the state_dict's index was not built from its weights: {reason}")
        module._mark_indexed()


_DEPRECATED_KNOBS = ("family", "num_partitions", "nprobe", "num_tables", "bits", "min_hits")


def _index_config(index, where: str, **legacy) -> IndexConfig:
    """The index configuration of LSSLinear's arguments: index= (a family name
    or a config; None: the default family), or the deprecated per-family
    keywords (legacy), with a DeprecationWarning that names the index= to
    write instead. Both at once is a TypeError."""
    given = {k: v for k, v in legacy.items() if v is not None}
    if not given:
        return families.index_config(families.DEFAULT if index is None else index)
    if index is not None:
        raise TypeError(f"{where}: give the index either as index= or as the deprecated keywords "
                        f"{sorted(given)}, not both (got index={index!r})")
    config = families.config_from_knobs(**given)
    knobs = {k: v for k, v in given.items() if k != "family"}
    instead = (f"index={config.family!r}" if not knobs else
               f"index={type(config).__name__}({', '.join(f'{k}={v!r}' for k, v in knobs.items())})")
    old = ", ".join(f"{k}={v!r}" for k, v in given.items())
    warnings.warn(f"{where}({old}) is deprecated: pass {instead}", DeprecationWarning, stacklevel=3)
    return config


def _upgrade_v1(state_dict, prefix, extra, dim, num_labels) -> None:
    """Rewrite a format-1 state dict (SimHash buffers on the layer) into the
    index layout, in place."""
    cfg = {"num_labels": num_labels, "dim": dim, "num_tables": int(extra["num_tables"]), "bits": int(extra["bits"]),
           "min_hits": int(extra["min_hits"]), "seed": int(extra["seed"])}
    for name in _V1_BUFFERS:
        if prefix + name in state_dict:
            state_dict[prefix + "index." + name] = state_dict.pop(prefix + name)
    state_dict[prefix + "index._extra_state"] = {"format": 2, "family": "simhash", "config": cfg,
                                                 "fitted": bool(extra["fitted"]), "built": True}
    state_dict[prefix + "_extra_state"] = {"format": 2, "max_candidates": int(extra["max_candidates"]),
                                           "seed": int(extra["seed"])}
