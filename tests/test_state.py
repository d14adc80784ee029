"""The layer's state holds whatever a user does to it: fit() is a function
of its inputs (a refit equals a fit on a fresh layer, in every space fit()
can choose), rebuild_index() is a fresh start, a loaded index is checked for
every value a kernel relies on and against the loaded weights, the index
follows the weights however they change, non-finite fit queries are
dropped, every default is valid for every N >= 1, backend= is honoured or
refused, and the default layer's predict / eval forward compile with
fullgraph=True. Each test but the forced-Triton one failed before the
fixes it guards."""
import io
import warnings

import pytest
import torch

import lsskernels as lss
from helpers import assert_same_entries, layer_for
from lsskernels.data import make_synthetic_task

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")


@pytest.fixture(scope="module")
def task():
    return make_synthetic_task(num_labels=3000, dim=32, num_train=3000, num_test=300, seed=5)


def index_state(layer):
    return {k: v for k, v in layer.state_dict().items() if k.startswith("index.")}


def assert_same_index(a, b):
    assert_same_entries(index_state(a), index_state(b))


@pytest.fixture(scope="module")
def few_queries():
    # Fewer fit queries than labels: a query-space index gets fewer
    # partitions (64) than the label space's default (128).
    return make_synthetic_task(num_labels=3000, dim=32, num_train=1000, num_test=300, seed=6)


@pytest.mark.parametrize("first_space", ["labels", "queries"])
def test_refit_equals_a_fit_on_a_fresh_layer(few_queries, first_space):
    # The first fit ends in first_space (a query-space index has its own
    # partition count); nothing of it may leak into the next fit.
    task = few_queries
    layer = layer_for(task)
    report = layer.fit(task.train_x, task.train_y, spaces=(first_space,), progress=False)
    assert report.space == first_space
    if first_space == "queries":
        assert layer.index.num_partitions != layer_for(task).index.num_partitions
    layer.fit(task.train_x, task.train_y, progress=False)
    fresh = layer_for(task)
    fresh.fit(task.train_x, task.train_y, progress=False)
    assert_same_index(layer, fresh)
    x = task.test_x[:64]
    assert torch.equal(layer.predict(x, 3)[1], fresh.predict(x, 3)[1])


def test_rebuild_index_is_a_fresh_start(task):
    layer = layer_for(task)
    layer.fit(task.train_x, task.train_y, spaces=("queries",), progress=False)
    layer.rebuild_index()
    fresh = layer_for(task)
    fresh.rebuild_index()
    assert not layer.fitted and layer.index.space == "labels" and layer.index.rerank is None
    assert_same_index(layer, fresh)


def _fitted_state(task):
    layer = layer_for(task)
    layer.fit(task.train_x, task.train_y, progress=False)
    return layer, layer.state_dict()


def _corrupt(name, fn):
    def apply(sd):
        sd = dict(sd)
        sd["index." + name] = fn(sd["index." + name].clone())
        return sd
    return apply


def _swap_two_ids_in_first_list(t):
    t[0], t[1] = t[1].clone(), t[0].clone()
    return t


@pytest.mark.parametrize("corrupt,match", [
    (_corrupt("code_scales", lambda t: -t), "code_scales must be >= 0"),
    (_corrupt("centroids", lambda t: t.index_fill(0, torch.tensor([0]), float("nan"))), "must be finite"),
    (_corrupt("centroid_bias", lambda t: t.index_fill(0, torch.tensor([1]), float("inf"))), "must be finite"),
    (_corrupt("codes", lambda t: t.index_fill(0, torch.tensor([3]), -128)), r"codes must be in \[-127, 127\]"),
    (_corrupt("list_ids", _swap_two_ids_in_first_list), "ascending and distinct"),
    # Well-formed, but not the codes of the saved weights.
    (_corrupt("code_scales", lambda t: t * 1.5), "not built from its weights"),
    (_corrupt("codes", lambda t: -t), "not built from its weights"),
])
def test_a_corrupted_index_is_refused(task, corrupt, match):
    layer, sd = _fitted_state(task)
    target = layer_for(task)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(corrupt(sd))
    # A refused load leaves no half-loaded index behind.
    assert not target.index.built or target.index.mismatch(target.weight, target.bias) is None


def test_index_of_other_weights_is_refused(task):
    _, sd = _fitted_state(task)
    sd = dict(sd)
    sd["weight"] = sd["weight"] + 0.5 * torch.randn_like(sd["weight"])
    with pytest.raises(ValueError, match="not built from its weights"):
        layer_for(task).load_state_dict(sd)


def test_a_partial_index_is_refused_even_with_strict_false(task):
    _, sd = _fitted_state(task)
    partial = {k: v for k, v in sd.items() if not k.startswith("index.") or k == "index._extra_state"}
    with pytest.raises(ValueError, match="part of the layer's index"):
        layer_for(task).load_state_dict(partial, strict=False)
    partial = {k: v for k, v in sd.items() if k != "index.codes"}
    with pytest.raises(ValueError, match="part of the layer's index"):
        layer_for(task).load_state_dict(partial, strict=False)


def _no_grad(fn, *args):
    with torch.no_grad():
        fn(*args)


def _sgd_step(layer):
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.train()
    torch.nn.functional.cross_entropy(layer(torch.randn(4, layer.in_features)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    layer.eval()


def test_the_index_follows_weights_however_they_change(task):
    other = torch.nn.Linear(task.weight.shape[1], task.num_labels)
    x = task.test_x[:8]
    changes = {
        "load_state_dict(strict=False)": lambda l: l.load_state_dict(other.state_dict(), strict=False),
        "parameter replaced": lambda l: setattr(l, "weight", torch.nn.Parameter(other.weight.detach().clone())),
        "bias replaced": lambda l: setattr(l, "bias", torch.nn.Parameter(other.bias.detach().clone())),
        ".data swapped": lambda l: setattr(l.weight, "data", other.weight.detach().clone()),
        "in place": lambda l: _no_grad(l.weight.mul_, 2.0),
        "optimizer step": _sgd_step,
    }
    for name, change in changes.items():
        layer = layer_for(task).eval()
        layer.fit(task.train_x, task.train_y, progress=False)
        layer.predict(x, 1)
        change(layer)
        assert layer.index.mismatch(layer.weight, layer.bias) is not None, name  # stale until used
        scores, ids = layer.predict(x, 1)
        assert layer.index.mismatch(layer.weight, layer.bias) is None, name
        # predict's scores are the current weights' exact logits.
        want = torch.nn.functional.linear(x, layer.weight, layer.bias).gather(1, ids)
        torch.testing.assert_close(scores, want.detach(), rtol=1e-5, atol=1e-5, msg=name)


def test_non_finite_fit_queries_are_dropped_with_a_warning(task):
    q, y = task.train_x.clone(), task.train_y.clone()
    bad = torch.tensor([3, 50, 700])
    q[bad[0], 0] = float("nan")
    q[bad[1], 5] = float("inf")
    q[bad[2]] = float("-inf")
    keep = torch.ones(q.shape[0], dtype=torch.bool)
    keep[bad] = False
    a = layer_for(task)
    with pytest.warns(RuntimeWarning, match="dropped 3 of"):
        a.fit(q, y, spaces=("queries",), progress=False)
    assert bool(torch.isfinite(a.index.centroids).all())
    b = layer_for(task)
    b.fit(q[keep], y[keep], spaces=("queries",), progress=False)
    assert_same_index(a, b)
    with pytest.raises(ValueError, match="every fit query"):
        layer_for(task).fit(torch.full((4, task.weight.shape[1]), float("nan")), y[:4], progress=False)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 17])
def test_defaults_hold_for_every_n(n):
    torch.manual_seed(n)
    layer = lss.LSSLinear(6, n, max_candidates=4)
    q = torch.randn(40, 6)
    y = torch.randint(0, n, (40,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about either
        layer.fit(q, y, progress=False)
    scores, ids = layer.eval().predict(q[:5], 2)
    assert bool(((ids >= -1) & (ids < n)).all())
    assert bool((ids[:, 0] >= 0).all())  # every query finds a candidate
    assert layer(q[:5]).shape == (5, n)


def test_backend_is_checked_when_set(task):
    with pytest.raises(ValueError, match="backend must be one of"):
        lss.LSSLinear(4, 10, backend="nope")
    if not lss.cuda_kernels_built():
        with pytest.raises(RuntimeError, match="built with CUDA"):
            layer_for(task, backend="cuda")
    layer = layer_for(task)
    with pytest.raises(ValueError, match="backend must be one of"):
        layer.backend = "gpu"


@pytest.mark.skipif(pytest.importorskip("os").environ.get("TRITON_INTERPRET") == "1", reason="interpreted Triton runs on CPU")
def test_a_forced_backend_is_never_silently_replaced(task):
    pytest.importorskip("triton")
    # Triton without the interpreter cannot run CPU tensors: every path refuses.
    layer = layer_for(task, backend="triton").eval()
    x = task.test_x[:2]
    for call in (lambda: layer.predict(x, 1), lambda: layer.candidates(x), lambda: layer.sparse_logits(x),
                 lambda: layer(x)):
        with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
            call()


def test_default_layer_compiles_with_fullgraph(task):
    torch._dynamo.reset()
    layer = layer_for(task).eval()
    layer.fit(task.train_x, task.train_y, progress=False)
    x = task.test_x[:5]
    predict = torch.compile(lambda x: layer.predict(x, 3), fullgraph=True)
    scores, ids = predict(x)
    want_scores, want_ids = layer.predict(x, 3)
    assert torch.equal(ids, want_ids) and torch.equal(scores, want_scores)
    forward = torch.compile(layer, fullgraph=True)
    assert torch.equal(forward(x), layer(x))


def test_first_predict_under_inference_mode_builds_a_usable_index():
    # The index built inside a caller's torch.inference_mode() must be made of
    # normal tensors: its caches and syncs read version counters.
    torch.manual_seed(0)
    layer = lss.LSSLinear(16, 2000, max_candidates=32).eval()
    x = torch.randn(3, 16)
    with torch.inference_mode():
        first = layer.predict(x, 2)
        again = layer.predict(x, 2)
    outside = layer.predict(x, 2)
    assert torch.equal(first[1], again[1]) and torch.equal(first[1], outside[1])
    with torch.no_grad():
        layer.weight.mul_(2.0)
    with torch.inference_mode():
        after = layer.predict(x, 2)  # the sync runs inside inference mode too
    assert torch.equal(after[1], layer.predict(x, 2)[1])
    assert layer.index_is_current


@pytest.mark.parametrize("fused", [False, True])
def test_an_optimizer_step_makes_the_index_stale_even_fused(fused):
    # A fused AdamW writes the parameters without bumping their version
    # counters; the layer must still see them change.
    torch.manual_seed(0)
    layer = lss.LSSLinear(16, 500, max_candidates=16)
    x, t = torch.randn(32, 16), torch.randint(0, 500, (32,))
    layer.predict(x[:1])
    assert layer.index_is_current
    opt = torch.optim.AdamW(layer.parameters(), lr=0.5, fused=fused)
    torch.nn.functional.cross_entropy(layer(x), t).backward()
    opt.step()
    assert not layer.index_is_current
    layer.eval()
    layer.predict(x[:1])
    assert layer.index_is_current and layer.index.mismatch(layer.weight, layer.bias) is None
