"""The family registry: what LSSLinear needs to know of an index family.

A family is an index class (an LSSIndex of lsskernels/index.py: state,
validation, inference), the knobs its constructor takes, how to build its unlearned
index from the weights, and how to fit it to (query, label) pairs with its
own options dataclass. Each family's builder module registers it
(lsskernels/partition/fit.py, lsskernels/training.py); this module imports no
family, so dependencies run one way: layer -> builders -> families -> index.

    family("partitions").fit(index, weight, bias, queries, labels, max_candidates=M, seed=0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Type

import torch

from .index import LSSIndex, check_extra_state

Tensor = torch.Tensor


@dataclass(frozen=True)
class Family:
    name: str
    index_class: Type[LSSIndex]
    knobs: Tuple[str, ...]             # constructor options a user may set (LSSLinear / make_index keywords)
    options: type                      # the dataclass of fit()'s options
    build: Callable[[LSSIndex, Tensor, Optional[Tensor]], None]   # the unlearned index, from the weights
    fit: Callable[..., tuple]          # (unbuilt index, weight, bias, queries, labels, *, max_candidates, seed,
                                       #  **options) -> (fitted index, report)


_REGISTRY: Dict[str, Family] = {}
DEFAULT = "partitions"


def register(fam: Family) -> Family:
    if fam.name in _REGISTRY and _REGISTRY[fam.name] != fam:
        raise ValueError(f"an index family named {fam.name!r} is registered already")
    if fam.index_class.family != fam.name:
        raise ValueError(f"{fam.index_class.__name__}.family is {fam.index_class.family!r}, not {fam.name!r}")
    _REGISTRY[fam.name] = fam
    return fam


def names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def family(name: str) -> Family:
    if name not in _REGISTRY:
        raise ValueError(f"family must be one of {names()}, got {name!r}")
    return _REGISTRY[name]


def make_index(num_labels: int, dim: int, *, family: Optional[str] = None, seed: int = 0, device=None,
               **knobs) -> LSSIndex:
    """An unbuilt index for N labels of dimension d. family None picks the
    family whose knobs were given (the default family when none was);
    knobs left as None take the family's defaults."""
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if family is None:
        owners = [f.name for f in _REGISTRY.values() if f.name != DEFAULT and any(k in f.knobs for k in knobs)]
        family = owners[0] if owners else DEFAULT
    fam = globals()["family"](family)
    wrong = sorted(set(knobs) - set(fam.knobs))
    if wrong:
        raise TypeError(f"options {wrong} do not apply to the {fam.name!r} family (its options: {list(fam.knobs)})")
    return fam.index_class(num_labels, dim, seed=seed, device=device, **knobs)


def index_from_extra_state(extra: dict, device=None) -> LSSIndex:
    """An unbuilt index with the family and configuration of a saved extra state."""
    check_extra_state(extra)
    return family(extra["family"]).index_class(**dict(extra["config"]), device=device)


@torch.no_grad()
def rebuild(index: LSSIndex, weight: Tensor, bias: Optional[Tensor]) -> None:
    """Build index (unbuilt, of the user's configuration) from the weights alone."""
    family(index.family).build(index, weight, bias)


def fit(index: LSSIndex, weight: Tensor, bias: Optional[Tensor], queries: Tensor, labels: Tensor, *,
        max_candidates: int, seed: int = 0, **options):
    """A new index of index's family and user configuration, fitted to the
    pairs, and the family's report. index itself is left as it is."""
    fresh = index.clone_empty().to(weight.device)
    return family(index.family).fit(fresh, weight, bias, queries, labels, max_candidates=max_candidates,
                                    seed=seed, **options)
