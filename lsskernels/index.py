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
  exact logits ``gathered_logits`` computes. The package
  ``lsskernels/partition/`` (the index: ``partition/index.py``; built and
  fitted in ``partition/fit.py``).
* ``SimHashIndex`` (family ``"simhash"``): L sign-random-projection tables
  of K bits, CSR per table; ``fit()`` learns asymmetric projections and
  inserts labels label-superior style. The package ``lsskernels/simhash/``
  (the index: ``simhash/index.py``; fitted in ``simhash/fit.py``).

Every buffer is registered, and the configuration is the module's extra
state, so ``state_dict()`` / ``load_state_dict()`` round-trip an index
exactly; incoming buffers are validated before they replace the current
ones, so no kernel ever reads a malformed table. ``fit()`` returns a *new*
index (and a report) and is a function of (weights, pairs, options, seed).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from . import _checks as checks
from . import _ops

Tensor = torch.Tensor

_FORMAT = 2


def _native(x: Tensor, backend: Optional[str]) -> bool:
    """Whether the native ops run for x, so per-call Python checks can be
    skipped on the index's own (validated) buffers. A forced backend counts
    only on its own device: backend="cuda" with CPU tensors goes through the
    checked wrappers, which refuse it."""
    return _native_on(x.device, backend)


def _native_on(device: torch.device, backend: Optional[str]) -> bool:
    """_native for tensors on device."""
    if backend is None:
        return _ops.resolve_backend(None, device) in ("cpu", "cuda")
    return backend == device.type and backend in ("cpu", "cuda")


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
