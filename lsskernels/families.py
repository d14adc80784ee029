"""The family registry: what LSSLinear needs to know of an index family.

A family is an index class (lsskernels/index.py: state, validation,
inference), the knobs its constructor takes and the frozen dataclass that
holds them (its config: LSSLinear(index=...) takes a family name or one of
these; lsskernels/configs.py), how to build its unlearned index from the
weights, and how to fit it to (query, label) pairs with its own options
dataclass. Each family's builder module registers it
(lsskernels/partition/fit.py, lsskernels/simhash/__init__.py); this module
imports no family, so dependencies run one way: layer -> builders ->
families -> index.

    family("partitions").fit(index, weight, bias, queries, labels, max_candidates=M, seed=0)
    index_config("simhash")                 # SimHashConfig() (the family's defaults)
    make_index(N, d, config=SimHashConfig(num_tables=8))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Type, Union

import torch

from .configs import IndexConfig
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
    config: Optional[Type[IndexConfig]] = None  # the frozen dataclass of the knobs (its fields: knobs)


_REGISTRY: Dict[str, Family] = {}
DEFAULT = "partitions"


def register(fam: Family) -> Family:
    if fam.name in _REGISTRY and _REGISTRY[fam.name] != fam:
        raise ValueError(f"an index family named {fam.name!r} is registered already")
    if fam.index_class.family != fam.name:
        raise ValueError(f"{fam.index_class.__name__}.family is {fam.index_class.family!r}, not {fam.name!r}")
    if fam.config is None or fam.config.family != fam.name or fam.config.knob_names() != tuple(fam.knobs):
        raise ValueError(f"family {fam.name!r} needs a config: an IndexConfig subclass with family = {fam.name!r} "
                         f"and the fields {tuple(fam.knobs)}, got {fam.config!r}")
    _REGISTRY[fam.name] = fam
    return fam


def names() -> Tuple[str, ...]:
    return tuple(_REGISTRY)


def family(name: str) -> Family:
    if name not in _REGISTRY:
        raise ValueError(f"family must be one of {names()}, got {name!r}")
    return _REGISTRY[name]


def configs() -> Tuple[Type[IndexConfig], ...]:
    """The registered families' config classes."""
    return tuple(f.config for f in _REGISTRY.values())


def index_config(index: Union[str, IndexConfig], name: str = "index") -> IndexConfig:
    """The configuration `index` stands for: a family name (that family's
    config with its defaults) or a registered family's config instance.
    ValueError for an unknown name, TypeError for anything else (the
    messages call the argument `name`)."""
    if isinstance(index, str):
        if index not in _REGISTRY:
            raise ValueError(f"{name} must be a family name, one of {names()}, or a config "
                             f"({', '.join(c.__name__ for c in configs())}); got {index!r}")
        return _REGISTRY[index].config()
    if isinstance(index, IndexConfig) and type(index) in configs():
        return index
    raise TypeError(f"{name} must be a family name {names()} or a config "
                    f"({', '.join(c.__name__ for c in configs())}), got {type(index).__name__}")


def config_from_knobs(family: Optional[str] = None, **knobs) -> IndexConfig:
    """The configuration of the per-family keywords (family=, num_tables=,
    ...: LSSLinear's before index=). family None picks the family whose knobs
    were given (the default family when none was); knobs left as None take
    the family's defaults."""
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if family is None:
        owners = [f.name for f in _REGISTRY.values() if f.name != DEFAULT and any(k in f.knobs for k in knobs)]
        family = owners[0] if owners else DEFAULT
    fam = globals()["family"](family)
    wrong = sorted(set(knobs) - set(fam.knobs))
    if wrong:
        raise TypeError(f"options {wrong} do not apply to the {fam.name!r} family (its options: {list(fam.knobs)})")
    return fam.config(**knobs)


def make_index(num_labels: int, dim: int, *, family: Optional[str] = None, config: Optional[IndexConfig] = None,
               seed: int = 0, device=None, **knobs) -> LSSIndex:
    """An unbuilt index for N labels of dimension d, of config (an
    IndexConfig), or of the family and knobs given (config_from_knobs)."""
    if config is None:
        config = config_from_knobs(family, **knobs)
    elif family is not None or any(v is not None for v in knobs.values()):
        raise TypeError("make_index takes config= or family= and knobs, not both")
    config = index_config(config, "config")
    return globals()["family"](config.family).index_class(num_labels, dim, seed=seed, device=device,
                                                          **config.knobs())


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
