"""Labels added and removed without a rebuild (LSSLinear.add_labels /
remove_labels / compact): new labels are found, removed ones never come
back on any path or after any rebuild, state round-trips, bad input is
refused."""
import io
import random

import pytest
import torch

import lsskernels as lss
from helpers import linear_of
from lsskernels.data import make_synthetic_task

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")


@pytest.fixture(scope="module")
def task():
    return make_synthetic_task(num_labels=4000, dim=32, num_train=12000, num_test=2000, seed=9)


@pytest.mark.parametrize("spill", [0, 1, 2])
def test_added_labels_spill_as_wide_as_the_fit_did(task, spill):
    layer = lss.LSSLinear.from_linear(linear_of(task.weight[:3600], task.bias[:3600]), max_candidates=40)
    old = task.train_y < 3600
    report = layer.fit(task.train_x[old], task.train_y[old], progress=False, spaces=("queries",), spill_probes=spill)
    assert report.spill_probes == spill and layer.index.spill_probes == spill
    saved = io.BytesIO()
    torch.save(layer.state_dict(), saved)
    saved.seek(0)
    loaded = lss.LSSLinear.from_linear(linear_of(task.weight[:3600], task.bias[:3600]), max_candidates=40)
    loaded.load_state_dict(torch.load(saved))
    assert loaded.index.spill_probes == spill
    rows = layer.index.list_ids.numel()
    new = ~old
    layer.add_labels(task.weight[3600:], task.bias[3600:], queries=task.train_x[new],
                     query_labels=task.train_y[new] - 3600)
    spilled = layer.index.list_ids.numel() - rows - 400
    assert (spilled == 0) == (spill == 0)
    # The spilled rows are exactly the pairs' first `spill` partitions (own list excepted).
    probes = layer.index.probe(task.train_x[new], max(1, spill)).to(torch.int64)[:, :spill]
    listed = set()
    offsets = layer.index.list_offsets.tolist()
    for p in range(layer.index.num_partitions):
        for lab in layer.index.list_ids[offsets[p]:offsets[p + 1]].tolist():
            listed.add((p, lab))
    for q, lab in zip(probes.tolist(), task.train_y[new].tolist()):
        assert all((p, lab) in listed for p in q)


def test_added_labels_are_found_about_as_well_as_after_a_refit(task):
    n_old = 3600  # the last 10% of the labels arrive later, with their training pairs
    old = task.train_y < n_old
    layer = lss.LSSLinear.from_linear(linear_of(task.weight[:n_old], task.bias[:n_old]), max_candidates=40)
    layer.fit(task.train_x[old], task.train_y[old], progress=False)
    fitted_rows = layer.index.list_ids.numel()
    ids = layer.add_labels(task.weight[n_old:], task.bias[n_old:], queries=task.train_x[~old],
                           query_labels=task.train_y[~old] - n_old)
    assert torch.equal(ids, torch.arange(n_old, 4000)) and layer.out_features == 4000
    if layer.index.spill_probes:
        assert layer.index.list_ids.numel() > fitted_rows + 400  # own lists and spill
    else:  # the fit kept no spill: the added labels are not spilled either
        assert layer.index.list_ids.numel() == fitted_rows + 400
    assert layer.index.mismatch(layer.weight, layer.bias) is None
    refit = lss.LSSLinear.from_linear(linear_of(task.weight, task.bias), max_candidates=40)
    refit.fit(task.train_x, task.train_y, progress=False)
    new = task.test_y >= n_old
    x, y = task.test_x[new], task.test_y[new]
    p_added = (layer.eval().predict(x, 1)[1][:, 0] == y).double().mean().item()
    p_refit = (refit.eval().predict(x, 1)[1][:, 0] == y).double().mean().item()
    dense = (torch.nn.functional.linear(x, task.weight, task.bias).argmax(1) == y).double().mean().item()
    # About 200 test queries: a generous margin against noise (one query is 0.5 point).
    assert p_added >= p_refit - 0.05 and p_added >= dense - 0.06, (p_added, p_refit, dense)


def _returned(layer, x):
    _, ids = layer.predict(x, 5)
    cand, _ = layer.candidates(x)
    logits, sparse_ids = layer.sparse_logits(x)
    layer.eval()
    eval_out = layer(x)
    layer.train()
    train_out = layer(x)
    layer.eval()
    shown = set(ids[ids >= 0].tolist()) | set(cand[cand >= 0].tolist()) | set(sparse_ids[sparse_ids >= 0].tolist())
    finite_eval = set(torch.nonzero(torch.isfinite(eval_out))[:, 1].tolist())
    finite_train = set(torch.nonzero(torch.isfinite(train_out))[:, 1].tolist())
    return shown | finite_eval, finite_train


@pytest.mark.parametrize("seed", range(4))
def test_removed_ids_never_come_back(task, seed):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    layer = lss.LSSLinear.from_linear(linear_of(task.weight[:1000], task.bias[:1000]), max_candidates=64).eval()
    removed = set()
    x = task.test_x[:32]
    for step in range(6):
        action = rng.choice(["add", "remove", "remove", "fit", "rebuild"])
        n = layer.out_features
        if action == "add":
            k = rng.randint(1, 50)
            layer.add_labels(torch.randn(k, 32, generator=gen) * 3, torch.randn(k, generator=gen),
                             queries=torch.randn(8, 32, generator=gen), query_labels=torch.randint(0, k, (8,), generator=gen))
        elif action == "remove":
            ids = torch.randint(0, n, (rng.randint(1, 200),), generator=gen)
            layer.remove_labels(ids)
            removed |= set(ids.tolist())
        elif action == "fit":
            y = torch.randint(0, n, (600,), generator=gen)
            layer.fit(torch.randn(600, 32, generator=gen), y, progress=False)
        else:
            layer.rebuild_index()
        shown, finite_train = _returned(layer, x)
        assert not (shown & removed), (step, action)
        assert not (finite_train & removed), (step, action)
        assert len(finite_train) == layer.out_features - len(removed)


def test_state_round_trip_and_compact(task):
    layer = lss.LSSLinear.from_linear(linear_of(task.weight[:2000], task.bias[:2000]), max_candidates=64).eval()
    layer.fit(task.train_x[task.train_y < 2000], task.train_y[task.train_y < 2000], progress=False)
    layer.add_labels(task.weight[2000:2100], task.bias[2000:2100])
    layer.remove_labels(torch.arange(0, 2100, 7))
    x = task.test_x[:100]
    want = layer.predict(x, 5)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    other = lss.LSSLinear(32, 2100, max_candidates=64).eval()
    other.load_state_dict(torch.load(buf, weights_only=True))
    got = other.predict(x, 5)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    assert bool(other.removed[::7].all()) and int(other.removed.sum()) == 300
    # compact: the same answers under the new numbering.
    mapping = layer.compact()
    assert layer.out_features == 1800 and not bool(layer.removed.any())
    scores, ids = layer.predict(x, 5)
    want_ids = torch.where(want[1] >= 0, mapping[want[1].clamp(min=0)], -1)
    assert torch.equal(ids, want_ids) and torch.equal(scores, want[0])


def test_bad_input_is_refused(task):
    layer = lss.LSSLinear.from_linear(linear_of(task.weight[:500], task.bias[:500]), max_candidates=16)
    with pytest.raises(ValueError, match="in_features = 32"):
        layer.add_labels(torch.randn(3, 31))
    with pytest.raises(ValueError, match="bias must be"):
        layer.add_labels(torch.randn(3, 32), torch.randn(4))
    with pytest.raises(ValueError, match="give both or neither"):
        layer.add_labels(torch.randn(3, 32), queries=torch.randn(2, 32))
    with pytest.raises(ValueError, match="query_labels must be in"):
        layer.add_labels(torch.randn(3, 32), queries=torch.randn(2, 32), query_labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="must be finite"):
        layer.add_labels(torch.full((1, 32), float("nan")))
    with pytest.raises(ValueError, match=r"ids must be label ids in \[0, 500\)"):
        layer.remove_labels(torch.tensor([500]))
    with pytest.raises(TypeError, match="ids must be int64"):
        layer.remove_labels(torch.tensor([1.0]))
    simhash = lss.LSSLinear(32, 100, index=lss.simhash.SimHashConfig(num_tables=4, bits=6))
    with pytest.raises(TypeError, match="needs the partitions family"):
        simhash.add_labels(torch.randn(2, 32))
    assert layer.out_features == 500  # nothing changed by the refusals
