"""fit(): it must do something (label recall rises over random tables on a
small task), accept multi-label input, be deterministic for a seed, and a
fitted layer must save and load back to identical predictions."""
import io

import pytest
import torch

import lsskernels as lss
from lsskernels.data import make_synthetic_task
from lsskernels.fit_pairs import label_recall
from lsskernels.simhash import SimHashFitConfig
from lsskernels.simhash.fit import label_superior_tables
from lsskernels.simhash.tables import validate_tables


@pytest.fixture(scope="module")
def task():
    return make_synthetic_task(num_labels=3000, dim=32, num_train=6000, num_test=600, seed=1)


def layer_for(task, **kw):
    lin = torch.nn.Linear(task.weight.shape[1], task.num_labels)
    with torch.no_grad():
        lin.weight.copy_(task.weight)
        lin.bias.copy_(task.bias)
    index = lss.simhash.SimHashConfig(num_tables=kw.pop("num_tables", 8), bits=kw.pop("bits", 7),
                                      min_hits=kw.pop("min_hits", 1))
    return lss.LSSLinear.from_linear(lin, index=index, **{"max_candidates": 120, **kw})


def test_fit_raises_label_recall_over_random_tables(task):
    random_layer = layer_for(task)
    recall_random, cands_random = label_recall(random_layer.candidates, task.test_x, task.test_y.unsqueeze(1))
    fitted = layer_for(task)
    report = fitted.fit(task.train_x, task.train_y, epochs=2, progress=False)
    recall_fit, cands_fit = label_recall(fitted.candidates, task.test_x, task.test_y.unsqueeze(1))
    assert cands_fit <= 120 and cands_random <= 120
    assert recall_fit > recall_random + 0.10, (recall_random, recall_fit)
    assert len(report.epochs) == 3 and report.epochs[-1]["recall"] > report.epochs[0]["recall"]
    # Precision follows recall: fitted top-1 agrees with the true label more often.
    p_random = (random_layer.predict(task.test_x, 1)[1][:, 0] == task.test_y).float().mean()
    p_fit = (fitted.predict(task.test_x, 1)[1][:, 0] == task.test_y).float().mean()
    assert p_fit > p_random


def test_learned_projections_move_and_help(task):
    frozen = layer_for(task)
    frozen.fit(task.train_x, task.train_y, epochs=2, learn_projections=False, progress=False)
    learned = layer_for(task)
    learned.fit(task.train_x, task.train_y, epochs=2, progress=False)
    assert not torch.equal(learned.index.query_proj, frozen.index.query_proj)
    assert not torch.equal(learned.index.query_proj, learned.index.label_proj)  # asymmetric
    y = task.test_y.unsqueeze(1)
    r_frozen, c_frozen = label_recall(frozen.candidates, task.test_x, y)
    r_learned, c_learned = label_recall(learned.candidates, task.test_x, y)
    # Better recall per candidate: higher recall, or as good with fewer candidates.
    assert r_learned / c_learned > r_frozen / c_frozen * 0.98, (r_frozen, c_frozen, r_learned, c_learned)


def test_multi_label_input(task):
    n = task.train_x.shape[0]
    g = torch.Generator().manual_seed(3)
    second = torch.randint(0, task.num_labels, (n,), generator=g)
    second[::3] = -1
    labels = torch.stack([task.train_y, second, torch.full((n,), -1)], 1)
    layer = layer_for(task, max_candidates=3000)
    layer.fit(task.train_x, labels, epochs=1, max_bucket_size=3000, progress=False)
    # Every (query, label) pair was inserted into the query's buckets and no
    # cap cut it, so every training query retrieves every one of its labels.
    ids, _ = layer.candidates(task.train_x[:200])
    has = (ids.long().unsqueeze(2) == labels[:200].unsqueeze(1)).any(1)
    valid = labels[:200] >= 0
    assert bool(has[valid].all())


def test_fit_is_deterministic_and_roundtrips_exactly(task):
    a, b = layer_for(task), layer_for(task)
    a.fit(task.train_x, task.train_y, epochs=1, seed=7, progress=False)
    b.fit(task.train_x, task.train_y, epochs=1, seed=7, progress=False)
    for name in ("query_proj", "label_proj", "offsets", "items"):
        assert torch.equal(getattr(a.index, name), getattr(b.index, name)), name
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = lss.LSSLinear(task.weight.shape[1], task.num_labels, max_candidates=5,
                      index=lss.simhash.SimHashConfig(num_tables=3, bits=4))
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert c.fitted
    x = task.test_x[:100]
    sa, ia = a.predict(x, 5)
    sc, ic = c.predict(x, 5)
    assert torch.equal(ia, ic) and torch.equal(sa, sc)
    # Fitted tables are not silently replaced by a weight-version rebuild.
    assert torch.equal(c.index.items, a.index.items)


def test_bucket_cap_bounds_candidates(task):
    layer = layer_for(task)
    cfg = SimHashFitConfig(max_bucket_size=5)
    offsets, items = label_superior_tables(layer.index, layer.weight.detach(), layer.bias.detach(), task.train_x,
                                           task.train_y.unsqueeze(1), cfg, layer.max_candidates)
    sizes = offsets[:, 1:] - offsets[:, :-1]
    assert int(sizes.max()) <= 5
    validate_tables(offsets, items, task.num_labels, layer.index.bits)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(labels=torch.zeros(5, dtype=torch.int64)), ValueError, r"labels must be \[n\] or \[n, m\] with n = queries.shape\[0\]"),
    (dict(labels=torch.full((6000,), 3000)), ValueError, r"labels must be in \[0, 3000\)"),
    (dict(labels=torch.full((6000, 2), -1)), ValueError, r"every query needs at least one label"),
    (dict(bogus=1), TypeError, r"unknown options \['bogus'\]"),
])
def test_fit_bad_input(task, kwargs, exc, match):
    layer = layer_for(task)
    labels = kwargs.pop("labels", task.train_y)
    with pytest.raises(exc, match=match):
        layer.fit(task.train_x, labels, progress=False, **kwargs)
