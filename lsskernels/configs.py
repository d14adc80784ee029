"""Index configurations: each family's constructor knobs as a frozen
dataclass, what LSSLinear(index=...) takes (lsskernels/families.py keeps
which family each belongs to: Family.config).

    LSSLinear(d, N, index="simhash")                              # the family's defaults
    LSSLinear(d, N, index=SimHashConfig(num_tables=8, bits=10))    # lsskernels/simhash/index.py
    LSSLinear(d, N, index=PartitionConfig(num_partitions=1024))    # lsskernels/partition/index.py

A knob left None takes the family's choice (made from N and the pairs fit()
sees). The layer's own arguments (max_candidates, seed, backend) are not
index knobs. Checked on construction, with the index constructor's messages.
This module imports no family.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Dict, Tuple



@dataclass(frozen=True)
class IndexConfig:
    """Base class of a family's index configuration (a frozen dataclass
    whose fields are the index constructor's knobs)."""

    family: ClassVar[str] = ""

    @classmethod
    def knob_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def knobs(self) -> Dict[str, object]:
        """The knobs that are set (not None): the index constructor's keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
