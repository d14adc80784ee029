"""LSSLinear(index=...): a family name or its config (PartitionConfig,
SimHashConfig) chooses the index; the per-family keywords of before still
work, warn (DeprecationWarning) and give the identical index; bad index=
values raise naming the argument; the old names FitConfig / FitReport of
lsskernels.training warn and resolve to SimHashFitConfig / SimHashFitReport."""
import dataclasses
import re
import warnings

import pytest
import torch

import lsskernels as lss
from lsskernels import families
from lsskernels.partition import PartitionConfig
from lsskernels.partition import PartitionIndex
from lsskernels.simhash import SimHashConfig, SimHashFitConfig, SimHashFitReport, SimHashIndex

from helpers import assert_same_entries, linear_of


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # index= never warns
        return fn(*args, **kw)


def assert_same_state(a, b):
    assert_same_entries(a.state_dict(), b.state_dict())


def _linear():
    torch.manual_seed(0)
    return linear_of(torch.randn(300, 12), torch.randn(300))


@pytest.mark.parametrize("name,cls,config_cls", [("partitions", PartitionIndex, PartitionConfig),
                                                 ("simhash", SimHashIndex, SimHashConfig)])
def test_index_by_name(name, cls, config_cls):
    layer = _quiet(lss.LSSLinear, 12, 300, index=name, max_candidates=20)
    assert isinstance(layer.index, cls) and layer.family == name
    assert families.family(name).config is config_cls
    # The name stands for its config's defaults.
    same = _quiet(lss.LSSLinear, 12, 300, index=config_cls(), max_candidates=20)
    assert layer.index.config() == same.index.config()


def test_default_is_partitions():
    assert isinstance(_quiet(lss.LSSLinear, 12, 300).index, PartitionIndex)


def test_index_by_config_reaches_the_index():
    s = _quiet(lss.LSSLinear, 12, 300, index=lss.SimHashConfig(num_tables=4, bits=6, min_hits=2))
    assert (s.index.num_tables, s.index.bits, s.index.min_hits) == (4, 6, 2)
    p = _quiet(lss.LSSLinear, 12, 300, index=lss.PartitionConfig(num_partitions=16, nprobe=3))
    assert (p.index.num_partitions, p.index.nprobe) == (16, 3)


@pytest.mark.parametrize("index,old", [
    ("simhash", dict(family="simhash")),
    (SimHashConfig(num_tables=4, bits=6), dict(num_tables=4, bits=6)),
    (SimHashConfig(num_tables=3, min_hits=2), dict(family="simhash", num_tables=3, min_hits=2)),
    (PartitionConfig(num_partitions=16, nprobe=2), dict(num_partitions=16, nprobe=2)),
    ("partitions", dict(family="partitions")),
])
def test_deprecated_keywords_warn_and_give_the_identical_index(index, old):
    lin = _linear()
    q = torch.randn(200, 12)
    new = _quiet(lss.LSSLinear.from_linear, lin, index=index, max_candidates=30, seed=3)
    replacement = "index=" + (repr(index) if isinstance(index, str) else type(index).__name__)
    with pytest.warns(DeprecationWarning, match=replacement.replace("(", r"\(")):
        legacy = lss.LSSLinear.from_linear(lin, max_candidates=30, seed=3, **old)
    new.sync_index(), legacy.sync_index()
    assert_same_state(new, legacy)
    assert torch.equal(new.predict(q, 3)[1], legacy.predict(q, 3)[1])
    with pytest.warns(DeprecationWarning, match=replacement.replace("(", r"\(")):
        legacy = lss.LSSLinear(12, 300, seed=3, **old)
    assert legacy.index.config() == _quiet(lss.LSSLinear, 12, 300, seed=3, index=index).index.config()


def test_simhash_properties_on_the_layer_are_deprecated():
    layer = _quiet(lss.LSSLinear, 12, 300, index=SimHashConfig(num_tables=4, bits=6, min_hits=2))
    for name, value in (("num_tables", 4), ("bits", 6), ("min_hits", 2)):
        with pytest.warns(DeprecationWarning, match=rf"layer.index.{name}"):
            assert getattr(layer, name) == value
    with pytest.raises(AttributeError):  # a partitions index has no SimHash knobs
        _quiet(lss.LSSLinear, 12, 300).num_tables


@pytest.mark.parametrize("bad,exc,match", [
    ("bogus", ValueError, r"index must be a family name, one of " + re.escape(str(families.names()))),
    (SimHashFitConfig(), TypeError, r"index must be a family name .* got SimHashFitConfig"),
    (3, TypeError, r"index must be a family name .* got int"),
    ({"num_tables": 4}, TypeError, r"index must be a family name .* got dict"),
])
def test_bad_index_raises_naming_the_argument(bad, exc, match):
    with pytest.raises(exc, match=match):
        lss.LSSLinear(12, 300, index=bad)
    with pytest.raises(exc, match=match):
        lss.LSSLinear.from_linear(_linear(), index=bad)


def test_index_and_deprecated_keywords_together_raise():
    with pytest.raises(TypeError, match=r"either as index= or as the deprecated keywords \['num_tables'\]"):
        lss.LSSLinear(12, 300, index="simhash", num_tables=4)


def test_configs_are_frozen_and_checked():
    cfg = SimHashConfig(num_tables=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits = 3
    with pytest.raises(ValueError, match=r"min_hits must be in \[1, 2\]"):
        SimHashConfig(num_tables=2, min_hits=3)
    with pytest.raises(ValueError, match=r"bits must be in \[1, "):
        SimHashConfig(bits=0)
    with pytest.raises(TypeError, match="num_partitions must be an int"):
        PartitionConfig(num_partitions=2.0)
    # The index still checks what the config cannot know (N).
    with pytest.raises(ValueError, match=r"num_partitions must be in \[1, 300\]"):
        lss.LSSLinear(12, 300, index=PartitionConfig(num_partitions=301))


def test_every_family_declares_its_config():
    for name in families.names():
        fam = families.family(name)
        assert dataclasses.is_dataclass(fam.config) and fam.config.__dataclass_params__.frozen
        assert fam.config.family == name and fam.config.knob_names() == tuple(fam.knobs)


@pytest.mark.parametrize("old,new", [("FitConfig", SimHashFitConfig), ("FitReport", SimHashFitReport)])
def test_deprecated_fit_names_warn(old, new):
    import lsskernels.training as training

    with pytest.warns(DeprecationWarning, match=rf"lsskernels.training.{old} is deprecated: use "
                                                rf"lsskernels.simhash.{new.__name__}"):
        assert getattr(training, old) is new
    with pytest.raises(AttributeError):
        training.SimHashFit  # the adapter is gone
