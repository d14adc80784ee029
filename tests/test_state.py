"""The layer's state holds whatever a user does to it: fit() is a function
of its inputs (a refit equals a fit on a fresh layer, in every space fit()
can choose), rebuild_index() is a fresh start, a loaded index is checked for
every value a kernel relies on and against the loaded weights, the index
follows the weights however they change, non-finite fit queries are
dropped, every default is valid for every N >= 1, backend= is honoured or
refused, and the default layer's predict / eval forward compile with
fullgraph=True. Each test but the forced-Triton one failed before the
fixes it guards. Later classes (0.9.1): a pickled or copied layer, a
compiled call before the index exists, a load without the index that
changes `removed`, compact() below the partition count, fit() / add_labels
with an impossible backend, fit() under inference_mode."""
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


def _optimizer_step(layer):
    # Fused optimizers, which leave the version counters alone:
    # test_an_optimizer_step_makes_the_index_stale_even_fused.
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
        "optimizer step": _optimizer_step,
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


def test_a_pickled_or_copied_layer_keeps_its_index(task):
    # torch.save of the whole module pickles it: the layer's record of which
    # weights it indexed (weak references) must not stop it.
    import copy
    layer = layer_for(task).eval()
    layer.fit(task.train_x, task.train_y, progress=False)
    x = task.test_x[:16]
    want = layer.predict(x, 3)
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    for other in (torch.load(buf, weights_only=False), copy.deepcopy(layer)):
        got = other.predict(x, 3)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
        assert other.fitted and other.index_is_current
        with torch.no_grad():
            other.weight.mul_(-1.0)  # the copy follows its own weights
        assert not other.index_is_current
        other.predict(x, 1)
        assert other.index.mismatch(other.weight, other.bias) is None
    assert torch.equal(layer.predict(x, 3)[1], want[1])  # the original untouched


def test_a_compiled_call_before_the_index_exists_raises(task):
    torch._dynamo.reset()
    layer = layer_for(task).eval()  # from_linear: built on first eager use
    predict = torch.compile(lambda x: layer.predict(x, 1), fullgraph=True)
    with pytest.raises(Exception, match="index is not built yet"):
        predict(task.test_x[:2])
    layer.sync_index()
    torch._dynamo.reset()
    predict = torch.compile(lambda x: layer.predict(x, 1), fullgraph=True)
    assert torch.equal(predict(task.test_x[:2])[1], layer.predict(task.test_x[:2], 1)[1])
    # Without fullgraph, the graph breaks there and the eager fallback builds it.
    torch._dynamo.reset()
    other = layer_for(task).eval()
    predict = torch.compile(lambda x: other.predict(x, 1))
    got = predict(task.test_x[:2])
    assert other.index.built and torch.equal(got[1], other.predict(task.test_x[:2], 1)[1])


def _without_index(sd):
    return {k: v for k, v in sd.items() if not k.startswith("index.")}


def test_a_load_without_the_index_applies_removed_labels_to_it(task):
    gone = torch.tensor([5, 7, 11])
    source = layer_for(task)
    source.remove_labels(gone)
    sd = _without_index(source.state_dict())
    layer = layer_for(task).eval()
    layer.fit(task.train_x, task.train_y, progress=False)
    layer.load_state_dict(sd, strict=False)
    assert layer.fitted  # the fitted index is kept ...
    assert not bool(torch.isin(layer.index.list_ids.to(torch.int64), gone).any())  # ... without the removed
    queries = task.test_x[torch.isin(task.test_y, gone)]
    if queries.shape[0]:
        assert not bool(torch.isin(layer.predict(queries, 5)[1], gone).any())
    # A state that brings removed labels back: the index cannot list them
    # again without a fit, so it is rebuilt (with a warning), and lists them.
    with pytest.warns(RuntimeWarning, match="restores labels"):
        layer.load_state_dict(_without_index(layer_for(task).state_dict()), strict=False)
    layer.sync_index()
    assert not layer.fitted and not layer.has_removed_labels
    assert bool(torch.isin(gone, layer.index.list_ids.to(torch.int64)).all())
    # A plain nn.Linear's state (no `removed`) keeps the layer's removed
    # labels and its index: nothing to warn about.
    layer.remove_labels(gone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.load_state_dict(torch.nn.Linear(task.weight.shape[1], task.num_labels).state_dict(), strict=False)
    assert layer.has_removed_labels and bool(layer.removed[gone].all())
    assert not bool(torch.isin(layer.predict(task.test_x[:50], 5)[1], gone).any())


def test_removed_labels_are_refused_by_a_layer_that_cannot_leave_labels_out(task):
    source = layer_for(task)
    source.remove_labels(torch.tensor([3]))
    simhash = layer_for(task, index="simhash").eval()
    simhash.predict(task.test_x[:2], 1)  # built
    with pytest.raises(ValueError, match="cannot leave labels out"):
        simhash.load_state_dict(_without_index(source.state_dict()), strict=False)
    assert not simhash.has_removed_labels


def test_compact_below_the_partition_count_leaves_a_loadable_layer(task):
    layer = layer_for(task).eval()
    layer.fit(task.train_x, task.train_y, progress=False)
    parts = layer.index.num_partitions
    keep = parts // 2
    layer.remove_labels(torch.arange(keep, task.num_labels))
    with pytest.warns(RuntimeWarning, match="fewer than the index's"):
        layer.compact()
    x = task.test_x[:8]
    want = layer.predict(x, 2)
    assert layer.index.num_partitions <= keep
    fresh = lss.LSSLinear(task.weight.shape[1], keep, max_candidates=40)
    fresh.load_state_dict(layer.state_dict())
    got = fresh.predict(x, 2)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    # Where the user set the partition count, compact() refuses, untouched.
    fixed = layer_for(task, index=lss.partition.PartitionConfig(num_partitions=parts))
    fixed.remove_labels(torch.arange(keep, task.num_labels))
    with pytest.raises(ValueError, match="num_partitions"):
        fixed.compact()
    assert fixed.out_features == task.num_labels and fixed.has_removed_labels
    # A probe count the new size cannot have: refused before anything changes.
    probes = layer_for(task, index=lss.partition.PartitionConfig(nprobe=parts // 2))
    probes.remove_labels(torch.arange(keep, task.num_labels))
    with pytest.raises(ValueError, match="nprobe"):
        probes.compact()
    assert probes.out_features == task.num_labels and probes.weight.shape[0] == task.num_labels


@pytest.mark.skipif(pytest.importorskip("os").environ.get("TRITON_INTERPRET") == "1", reason="interpreted Triton runs on CPU")
def test_fit_and_add_labels_refuse_a_backend_the_tensors_cannot_run(task):
    pytest.importorskip("triton")
    layer = layer_for(task, backend="triton")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        layer.fit(task.train_x, task.train_y, progress=False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        layer.add_labels(torch.randn(2, task.weight.shape[1]))
    assert layer.out_features == task.num_labels


@pytest.mark.parametrize("removed", [False, True])
def test_fit_under_inference_mode(removed):
    torch.manual_seed(0)
    task = make_synthetic_task(num_labels=800, dim=16, num_train=800, num_test=50, seed=1)
    a, b = layer_for(task), layer_for(task)
    if removed:  # the fit then drops them from its lists: normal tensors too
        a.remove_labels(torch.arange(0, 800, 7))
        b.remove_labels(torch.arange(0, 800, 7))
    with torch.inference_mode():
        a.fit(task.train_x, task.train_y, progress=False)
        got = a.eval().predict(task.test_x, 2)
    b.fit(task.train_x, task.train_y, progress=False)
    assert torch.equal(got[1], b.eval().predict(task.test_x, 2)[1])
    assert not any(t.is_inference() for t in a.index.buffers())
    with torch.no_grad():
        a.weight.mul_(2.0)  # the index built under inference mode still syncs
    a.predict(task.test_x, 1)
    assert a.index_is_current
    a.index.sync_rows(a.weight, a.bias, torch.tensor([1, 2, 3]))  # writes into the lists in place
