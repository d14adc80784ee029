"""The SimHash family: L sign-random-projection tables of K bits over the
bias-augmented labels, learned by fit() (Label Superior Sampling).

    index.py    SimHashIndex (state, validation, inference) and SimHashConfig
                (its constructor knobs, LSSLinear(index=SimHashConfig(...)))
    hashing.py  the bias-augmented MIPS transform, projections, query and label codes
    tables.py   CSR tables: build from codes, validation, bucket statistics
    fit.py      fit(): learned asymmetric projections, label-superior buckets
                (SimHashFitConfig, SimHashFitReport)

Importing this package registers the "simhash" family
(lsskernels/families.py).
"""
from ..families import Family, register
from .fit import SimHashFitConfig, SimHashFitReport, build_simhash, fit_simhash
from .index import SimHashConfig, SimHashIndex

FAMILY = register(Family(name="simhash", index_class=SimHashIndex, knobs=SimHashConfig.knob_names(),
                         options=SimHashFitConfig, build=build_simhash, fit=fit_simhash, config=SimHashConfig))

__all__ = ["FAMILY", "SimHashConfig", "SimHashFitConfig", "SimHashFitReport", "SimHashIndex", "build_simhash",
           "fit_simhash"]
