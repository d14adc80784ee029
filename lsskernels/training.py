"""Deprecated: the SimHash family's fit moved to lsskernels/simhash/fit.py
(lsskernels.simhash). FitConfig and FitReport are SimHashFitConfig and
SimHashFitReport there; the other names of this module are the same there.
Every name read from here warns (DeprecationWarning) and gives the new one.
"""
from __future__ import annotations

import warnings

from .simhash import fit as _fit

_RENAMED = {"FitConfig": "SimHashFitConfig", "FitReport": "SimHashFitReport"}
_MOVED = ("fit_simhash", "build_simhash", "label_superior_tables", "label_recall", "bucket_cap")


def __getattr__(name: str):
    if name in _RENAMED or name in _MOVED:
        new = _RENAMED.get(name, name)
        warnings.warn(f"lsskernels.training.{name} is deprecated: use lsskernels.simhash.{new}"
                      if name in _RENAMED else
                      f"lsskernels.training.{name} is deprecated: use lsskernels.simhash.fit.{new}",
                      DeprecationWarning, stacklevel=2)
        return getattr(_fit, new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_RENAMED) + list(_MOVED))
