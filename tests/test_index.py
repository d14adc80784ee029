"""LSSIndex: the partition family's fit() learns something (spill and the
calibrated probes must raise recall and P@1 over the unfitted index), is a
function of its inputs and seed, saves and loads back exactly, rejects
malformed state, and follows weight changes; the SimHash family keeps its
contract behind the same object."""
import io

import pytest
import torch

import lsskernels as lss
from helpers import fp32_probes, layer_for
from lsskernels import reference
from lsskernels.data import make_synthetic_task
from lsskernels.families import make_index
from lsskernels.fit_pairs import label_recall
from lsskernels.partition.calibration import choose_setting
from lsskernels.partition.fit import PartitionFitConfig, label_homes, rerank_grid
from lsskernels.partition.index import PartitionIndex, default_partitions
from lsskernels.simhash import SimHashIndex


@pytest.fixture(scope="module")
def task():
    return make_synthetic_task(num_labels=4000, dim=32, num_train=8000, num_test=800, seed=3)


def precision(layer, x, y):
    return (layer.predict(x, 1)[1][:, 0] == y).double().mean().item()


@pytest.mark.parametrize("n", [1, 7, 8, 100, 34_226, 670_000, 10**6, 2 * 10**6, 4 * 10**6, 10**7, 3 * 10**8])
def test_default_partitions_follow_sqrt_n_then_bound_the_list_length(n):
    import math

    from lsskernels.partition.index import LABELS_PER_PARTITION

    p = default_partitions(n)
    assert p >= 1 and (n < 8 or p <= n // 8)
    assert p & (p - 1) == 0 or p == n // 8  # a power of two unless capped at one partition per 8 labels
    root = 2 ** round(math.log2(max(1.0, 2.5 * math.sqrt(n))))
    if n <= 10**6:  # the square-root rule, as measured on every bench task
        assert p == min(root, max(1, n // 8)) or n < 8
    else:  # lists of about LABELS_PER_PARTITION labels (within the power of two's rounding)
        assert p >= root and LABELS_PER_PARTITION / 1.5 <= n / p <= LABELS_PER_PARTITION * 1.5


def test_only_max_candidates_gives_the_partition_family(task):
    layer = layer_for(task)
    assert isinstance(layer.index, PartitionIndex) and layer.family == "partitions"
    assert layer.index.num_partitions == default_partitions(task.num_labels)
    # Built on first use (fit() builds its own, so from_linear + fit runs k-means once).
    assert not layer.fitted and not layer.index.built
    layer.predict(task.test_x[:2], 1)
    assert not layer.fitted and layer.index.built
    # Every label is listed exactly once before fit().
    assert torch.equal(layer.index.list_ids.sort().values.long(), torch.arange(task.num_labels))
    assert isinstance(layer_for(task, index=lss.simhash.SimHashConfig(num_tables=4, bits=6)).index, SimHashIndex)
    with pytest.raises(TypeError, match=r"do not apply to the 'partitions' family"):
        make_index(100, 8, family="partitions", bits=4)


def test_fit_spill_and_calibration_beat_the_unfitted_index(task):
    # Same probes for both, so the gain is the spill's; then the calibrated
    # nprobe must not lose P@1 against the unfitted index's default.
    base = layer_for(task, index=lss.partition.PartitionConfig(nprobe=2))
    spilled = layer_for(task, index=lss.partition.PartitionConfig(nprobe=2))
    report = spilled.fit(task.train_x, task.train_y, progress=False)
    assert report.spilled > 0 and spilled.fitted
    y = task.test_y.unsqueeze(1)
    r_base, _ = label_recall(base.candidates, task.test_x, y)
    r_fit, _ = label_recall(spilled.candidates, task.test_x, y)
    assert r_fit > r_base + 0.03, (r_base, r_fit)
    assert precision(spilled, task.test_x, task.test_y) > precision(base, task.test_x, task.test_y)
    # No spill: the same index as unfitted, so the test above can fail.
    plain = layer_for(task, index=lss.partition.PartitionConfig(nprobe=2))
    plain.fit(task.train_x, task.train_y, progress=False, spill_probes=0)
    assert torch.equal(plain.index.list_ids, base.index.list_ids)


def test_calibration_picks_the_cheapest_accepted_setting(task):
    layer = layer_for(task)
    report = layer.fit(task.train_x, task.train_y, progress=False)
    # The query space's walk may stop before its first probe count: its
    # centroids and lists alone can cost more than an accepted label-space setting.
    assert "labels" in {p.space for p in report.calibration} <= {"labels", "queries"}
    for space, spill in {(p.space, p.spill) for p in report.calibration}:
        grid = [p.nprobe for p in report.calibration if p.space == space and p.spill == spill]
        assert grid == sorted(grid) and grid[0] == 1
    # The label space is calibrated with and without spill (spill_variants).
    assert {p.spill for p in report.calibration if p.space == "labels"} == {0, PartitionFitConfig().spill_probes}
    assert layer.index.nprobe == report.nprobe and layer.index.space == report.space
    assert 0 < report.dense_p1 <= 1 and sum(report.held_out) > 0
    d = task.weight.shape[1]
    assert report.budget == PartitionFitConfig().max_cost * task.num_labels * d * 4
    tol = PartitionFitConfig().tolerance
    rerank = report.rerank or layer.max_candidates
    assert layer.index.rerank == report.rerank and rerank in rerank_grid(layer.max_candidates)
    chosen = next(p for p in report.calibration if p.space == report.space and p.spill == report.spill_probes
                  and p.nprobe == report.nprobe and p.code_dim == (report.code_dim or d))
    assert chosen.partitions == layer.index.num_partitions == report.num_partitions
    assert report.loss == chosen.loss[rerank]
    assert report.accepted and report.loss.bound <= tol and chosen.cost(rerank, d, 4) <= report.budget
    # The bound is the loss plus z standard errors, and a setting's loss is paired against dense.
    assert report.loss.bound == pytest.approx(report.loss.loss + 1.2815515655446004 * report.loss.se)
    assert chosen.p1[rerank] == pytest.approx(report.dense_p1 - report.loss.loss)
    # No other accepted setting within budget is modelled cheaper.
    for p in report.calibration:
        for r, loss in p.loss.items():
            if loss.bound <= tol and p.cost(r, d, 4) <= report.budget:
                assert p.cost(r, d, 4) >= chosen.cost(rerank, d, 4)
    # Off: every candidate is scored exactly.
    plain = layer_for(task)
    assert plain.fit(task.train_x, task.train_y, progress=False, calibrate_rerank=False).rerank is None


def test_fit_is_no_less_accurate_than_the_unfitted_index_on_its_held_out_pairs(task):
    # The unfitted index's own setting (label space, no spill, default
    # nprobe, all M exact) is evaluated whatever the walk, and the chosen
    # setting's held-out P@1 reaches it wherever an accepted setting does.
    from lsskernels.partition import default_nprobe
    layer = layer_for(task)
    report = layer.fit(task.train_x, task.train_y, progress=False)
    parts = [p for p in report.calibration if p.space == "labels"][0].partitions
    u = [p for p in report.calibration if p.space == "labels" and p.spill == 0 and p.code_dim == task.weight.shape[1]
         and p.nprobe == default_nprobe(parts)]
    assert len(u) == 1 and report.unfitted_p1 == u[0].p1[40]
    chosen = [p for p in report.calibration if (p.space, p.spill, p.code_dim, p.nprobe) ==
              (report.space, report.spill_probes, report.code_dim or task.weight.shape[1], report.nprobe)][0]
    reach = [p for p in report.calibration for r in p.loss
             if p.loss[r].bound <= 0.003 + 1e-12 and p.p1[r] >= report.unfitted_p1 - 1e-12]
    if reach:
        assert chosen.p1[report.rerank or 40] >= report.unfitted_p1 - 1e-12


def test_the_chosen_spill_is_the_one_installed(task):
    # Where the calibration keeps the spilled lists they hold the spill of
    # every pair; where it keeps no spill, the lists are the unfitted index's.
    unfitted = layer_for(task)
    unfitted.predict(task.test_x[:1], 1)
    for spill in (0, 2):
        layer = layer_for(task)
        report = layer.fit(task.train_x, task.train_y, progress=False, spaces=("labels",),
                           spill_probes=spill)
        assert {p.spill for p in report.calibration} == ({0} if spill == 0 else {0, spill})
        # Force each variant through the calibration's choice: only its own points.
        for keep in sorted({p.spill for p in report.calibration}):
            points = [p for p in report.calibration if p.spill == keep]
            assert choose_setting(points, 0.003, dim=32, weight_bytes=4)[0].spill == keep
        rows = layer.index.list_ids.numel()
        if report.spill_probes == 0:
            assert report.spilled == 0 and rows == task.num_labels
            assert torch.equal(layer.index.list_ids, unfitted.index.list_ids)
            assert torch.equal(layer.index.list_offsets, unfitted.index.list_offsets)
        else:
            assert report.spilled > 0 and rows == task.num_labels + report.spilled


def test_the_cost_budget_bounds_the_chosen_setting(task):
    d = task.weight.shape[1]
    dense_bytes = task.num_labels * d * 4

    def chosen_cost(report):
        p = next(p for p in report.calibration if p.nprobe == report.nprobe
                 and p.code_dim == (report.code_dim or d))
        return p.cost(report.rerank or 40, d, 4)

    # Without spill (and with every candidate scored exactly) it takes several probes.
    opts = {"progress": False, "spaces": ("labels",), "spill_probes": 0, "calibrate_rerank": False}
    free = layer_for(task).fit(task.train_x, task.train_y, max_cost=100.0, **opts)
    assert free.nprobe > 1
    # A budget below what the unbounded calibration chose (above its cheapest setting).
    cheapest = min(p.cost(r, d, 4) for p in free.calibration for r in p.loss)
    limit = 0.5 * (cheapest + chosen_cost(free))
    report = layer_for(task).fit(task.train_x, task.train_y, max_cost=limit / dense_bytes, **opts)
    assert report.budget == pytest.approx(limit)
    assert chosen_cost(report) <= report.budget
    # It binds (so this test can fail): fewer probes than without it, a looser bound.
    assert report.nprobe < free.nprobe and report.loss.bound > free.loss.bound


def test_label_homes_are_where_a_label_stands_out():
    # Two centroids; label 0's logit is the largest at centroid 1, but it
    # stands out at centroid 0, where every other label scores low.
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([[2.0, 3.0], [0.0, 4.0], [0.1, 4.2], [-0.1, 3.9], [0.05, 4.1]])
    homes = label_homes(w, None, c)
    assert int(homes[0]) == 0 and (homes[1:] == 1).all()
    assert int((w @ c.T)[0].argmax()) == 1  # a raw argmax would have sent it to 1


@pytest.mark.parametrize("space", ["labels", "queries"])
def test_the_int8_probe_is_the_fp32_probe_up_to_rounding(task, space):
    # predict() probes by the int8 score of the centered centroid codes; it
    # must rank partitions as <x, c> + c_b does, but for near-ties.
    layer = layer_for(task).eval()
    layer.fit(task.train_x, task.train_y, progress=False, spaces=(space,))
    idx = layer.index
    x = task.test_x[:400]
    got = idx.probe(x, 4).long()
    want = fp32_probes(x, idx.centroids, idx.centroid_bias, 4).long()
    overlap = (got.unsqueeze(2) == want.unsqueeze(1)).any(2).float().mean().item()
    assert overlap >= 0.97, overlap
    assert torch.equal(got, reference.quantized_probe(x, *idx.probe_codes()[:2], idx.centroid_bias, 4).long())
    assert idx.probe_codes()[0].dtype == torch.int8 and idx.probe_codes()[0] is idx.probe_codes()[0]  # cached


def test_probe_codes_follow_the_centroids():
    layer = layer_for(make_synthetic_task(num_labels=600, dim=16, num_train=10, num_test=10, seed=4)).eval()
    layer.rebuild_index()
    idx = layer.index
    before = idx.probe_codes()[0].clone()
    with torch.no_grad():
        idx.centroids.mul_(-1)  # in place: the cache must notice
    assert torch.equal(idx.probe_codes()[0], -before)
    fresh = layer_for(make_synthetic_task(num_labels=600, dim=16, num_train=10, num_test=10, seed=4)).eval()
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.index.probe_codes()[0], -before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_built_partition_index_keeps_float32_buffers_through_to_dtype(dtype):
    layer = layer_for(make_synthetic_task(num_labels=600, dim=16, num_train=10, num_test=10, seed=5)).eval()
    layer.rebuild_index()
    centroids = layer.index.centroids.clone()
    layer = layer.to(dtype)
    assert layer.weight.dtype == dtype
    assert all(b.dtype != dtype for b in layer.index.buffers())
    assert torch.equal(layer.index.centroids, centroids)  # not rounded through dtype
    scores, labels = layer.predict(torch.randn(3, 16).to(dtype), k=4)
    assert scores.dtype == dtype and labels.shape == (3, 4) and bool((labels[:, 0] >= 0).all())


def test_query_space_partitions_spill_and_round_trip(task):
    n_train = task.train_x.shape[0] - min(PartitionFitConfig().holdout, task.train_x.shape[0] // 5)
    layer = layer_for(task).eval()
    report = layer.fit(task.train_x, task.train_y, progress=False, spaces=("queries",))
    idx = layer.index
    assert report.space == idx.space == "queries" and idx.num_partitions == default_partitions(n_train)
    # Probed by L2 distance to the centroids of the queries.
    torch.testing.assert_close(idx.centroid_bias, -0.5 * idx.centroids.pow(2).sum(1))
    x = task.test_x[:100]
    probes = fp32_probes(x, idx.centroids, idx.centroid_bias, 3).long()
    assert torch.equal(probes, torch.cdist(x, idx.centroids).topk(3, largest=False).indices)
    # Every label is in its home list.
    homes = label_homes(task.weight, task.bias, idx.centroids)
    part = torch.repeat_interleave(torch.arange(idx.num_partitions), (idx.list_offsets[1:] - idx.list_offsets[:-1]).long())
    listed = set((part * task.num_labels + idx.list_ids.long()).tolist())
    assert all(int(h) * task.num_labels + l in listed for l, h in enumerate(homes.tolist()))
    # Spill raises recall at the same probes (so it does something).
    y = task.test_y.unsqueeze(1)
    two_probes = lss.partition.PartitionConfig(nprobe=2)
    spilled, plain = layer_for(task, index=two_probes), layer_for(task, index=two_probes)
    spilled.fit(task.train_x, task.train_y, progress=False, spaces=("queries",))
    plain.fit(task.train_x, task.train_y, progress=False, spaces=("queries",), spill_probes=0)
    assert spilled.index.space == plain.index.space == "queries"
    assert label_recall(spilled.candidates, task.test_x, y)[0] > label_recall(plain.candidates, task.test_x, y)[0] + 0.03
    # Saved and loaded into a default layer (another partition count): exact.
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = lss.LSSLinear(task.weight.shape[1], task.num_labels, max_candidates=40)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.index.space == "queries" and fresh.index.num_partitions == idx.num_partitions
    for backend in (None, "reference", "cpu"):
        fresh.backend = backend
        assert torch.equal(fresh.predict(x, 5)[1], layer.predict(x, 5)[1]), backend
    # A partition count the user set is kept in the query space too.
    fixed = layer_for(task, index=lss.partition.PartitionConfig(num_partitions=64))
    fixed.fit(task.train_x, task.train_y, progress=False, spaces=("queries",))
    assert fixed.index.num_partitions == 64 and fixed.index.space == "queries"


def test_too_few_queries_for_the_query_space(task):
    # 60 pairs, 12 held out: 48 queries cannot make 64 partitions. Both
    # spaces: the label space alone; the query space alone: a clear error.
    x, y = task.train_x[:60], task.train_y[:60]
    report = layer_for(task, index=lss.partition.PartitionConfig(num_partitions=64)).fit(x, y, progress=False)
    assert report.space == "labels" and {p.space for p in report.calibration} == {"labels"}
    with pytest.raises(ValueError, match=r"the query space needs at least num_partitions = 64 training queries"):
        layer_for(task, index=lss.partition.PartitionConfig(num_partitions=64)).fit(x, y, progress=False,
                                                                       spaces=("queries",))
    # The default count for 48 queries (at most one partition per 8) works.
    small = layer_for(task).fit(x, y, progress=False, spaces=("queries",))
    assert small.space == "queries" and small.num_partitions == default_partitions(48)


@pytest.mark.parametrize("opts,match", [
    ({"spaces": ("labels", "words")}, r"spaces must be a non-empty tuple of distinct names"),
    ({"spaces": ()}, r"spaces must be a non-empty tuple"),
    ({"max_cost": 0}, r"max_cost must be a number > 0"),
    ({"max_cost": "all"}, r"max_cost must be a number > 0"),
])
def test_bad_fit_options_raise_clear_errors(task, opts, match):
    with pytest.raises(ValueError, match=match):
        layer_for(task).fit(task.train_x, task.train_y, progress=False, **opts)


def test_predict_scores_exactly_the_calibrated_prefix_of_the_candidates(task):
    layer = layer_for(task).eval()
    layer.fit(task.train_x, task.train_y, progress=False)
    layer.index.rerank = 16  # what fit() may pick; force a short list
    x = task.test_x[:300]
    for k in (1, 20):
        m = layer.index.shortlist(layer.max_candidates, k)
        assert m == max(k, 16)
        ids, _ = layer.candidates(x)
        logits = lss.gathered_logits(x, layer.weight, layer.bias, ids[:, :m].contiguous())
        want = lss.topk_gathered(logits, ids[:, :m].contiguous(), k)
        got = layer.predict(x, k)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
        for backend in ("reference", "cpu"):
            layer.backend = backend
            assert torch.equal(layer.predict(x, k)[1], want[1]), backend
        layer.backend = None
    # A shorter list changes the answer somewhere, so the check above can fail.
    layer.index.rerank = None
    full = layer.predict(x, 1)[1]
    layer.index.rerank = 1
    assert not torch.equal(layer.predict(x, 1)[1], full)


@pytest.mark.parametrize("kw", [{}, {"index": lss.simhash.SimHashConfig(num_tables=4, bits=6)}])
def test_fit_is_a_function_of_its_inputs_and_seed(task, kw):
    a, b = layer_for(task, **kw), layer_for(task, **kw)
    opts = {"epochs": 1} if kw else {}
    a.fit(task.train_x, task.train_y, seed=5, progress=False, **opts)
    # Fitting b twice: the second fit starts from b's configuration, not
    # from the first fit's index.
    b.fit(task.train_x, task.train_y, seed=5, progress=False, **opts)
    b.fit(task.train_x, task.train_y, seed=5, progress=False, **opts)
    for (name, ta), (_, tb) in zip(a.index.named_buffers(), b.index.named_buffers()):
        assert torch.equal(ta, tb), name


def test_partition_state_dict_roundtrips_predictions_exactly(task):
    layer = layer_for(task)
    layer.fit(task.train_x, task.train_y, progress=False)
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    # A fresh layer of another family and shape of index takes the saved one.
    fresh = lss.LSSLinear(task.weight.shape[1], task.num_labels, max_candidates=7,
                          index=lss.simhash.SimHashConfig(num_tables=3, bits=4))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.family == "partitions" and fresh.fitted and fresh.max_candidates == 40
    assert fresh.index.nprobe == layer.index.nprobe and fresh.index.rerank == layer.index.rerank
    x = task.test_x[:200]
    sa, ia = layer.predict(x, 5)
    sb, ib = fresh.predict(x, 5)
    assert torch.equal(ia, ib) and torch.equal(sa, sb)


@pytest.mark.parametrize("corrupt,match", [
    (lambda sd: sd["index.list_ids"].fill_(10**6), r"list_ids must be label ids in \[0, 4000\)"),
    (lambda sd: sd["index.list_offsets"].__setitem__(3, -5), r"list_offsets must start at 0, be non-decreasing"),
    (lambda sd: sd.__setitem__("index.codes", sd["index.codes"][:, :16]), r"codes must be int8 \[T, Dp\]"),
    (lambda sd: sd.__setitem__("index.codes", sd["index.codes"].float()), r"codes must have dtype"),
    (lambda sd: sd.__setitem__("index.code_bias", sd["index.code_bias"][:-1]), r"code_bias must be \[T\]"),
    (lambda sd: sd.__setitem__("index.centroids", sd["index.centroids"][:-1]), r"centroids must be float32"),
    (lambda sd: sd["index.code_scales"].__setitem__(0, float("nan")), r"must be finite"),
])
def test_loading_a_malformed_partition_index_raises_clear_error(task, corrupt, match):
    layer = layer_for(task)
    layer.rebuild_index()
    sd = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in layer.state_dict().items()}
    corrupt(sd)
    fresh = lss.LSSLinear(task.weight.shape[1], task.num_labels, max_candidates=40)
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)


def test_weight_change_reencodes_codes_and_keeps_what_fit_learned(task):
    layer = layer_for(task)
    layer.fit(task.train_x, task.train_y, progress=False)
    ids_before = layer.index.list_ids.clone()
    codes_before = layer.index.codes.clone()
    with torch.no_grad():
        layer.weight.mul_(-1)
    x = task.test_x[:50]
    _, labels = layer.predict(x, 3)  # triggers the sync
    assert torch.equal(layer.index.list_ids, ids_before)  # partitions and spill kept
    assert torch.equal(layer.index.codes, -codes_before)  # symmetric int8 codes of -W
    # The exact logits use the new weights.
    scores, labels = layer.predict(x, 1)
    want = (x @ layer.weight.T + layer.bias).gather(1, labels)
    torch.testing.assert_close(scores, want, rtol=1e-5, atol=1e-4)


def test_format_1_simhash_state_dict_loads(task):
    layer = layer_for(task, index=lss.simhash.SimHashConfig(num_tables=4, bits=6))
    layer.rebuild_index()  # 0.1 layers always held built tables
    sd = layer.state_dict()
    # The 0.1 layout: SimHash buffers on the layer, format 1 extra state.
    old = {"weight": sd["weight"], "bias": sd["bias"]}
    for name in ("query_proj", "label_proj", "offsets", "items"):
        old[name] = sd["index." + name]
    old["_extra_state"] = {"num_tables": 4, "bits": 6, "max_candidates": 40, "min_hits": 1, "seed": 0,
                           "fitted": False, "format": 1}
    fresh = lss.LSSLinear(task.weight.shape[1], task.num_labels)
    fresh.load_state_dict(old)
    assert fresh.family == "simhash" and fresh.index.num_tables == 4
    x = task.test_x[:30]
    assert torch.equal(fresh.predict(x, 3)[1], layer.predict(x, 3)[1])


@pytest.fixture(scope="module")
def low_rank_task():
    # Label vectors in a 40-dimensional subspace of d = 256 (plus a little
    # noise): codes of the top 128 principal directions lose nothing that
    # matters, so a calibrated fit() should take them.
    g = torch.Generator().manual_seed(11)
    n, d, r = 3000, 256, 40
    w = torch.randn(n, r, generator=g) @ torch.randn(r, d, generator=g) / r**0.5 + 0.01 * torch.randn(n, d, generator=g)
    b = 0.1 * torch.randn(n, generator=g)
    y = torch.randint(0, n, (9000,), generator=g)
    x = w[y] + 0.3 * torch.randn(9000, d, generator=g)
    return w, b, x[:8000], y[:8000], x[8000:], y[8000:]


def test_fit_takes_principal_direction_codes_where_they_cost_less(low_rank_task):
    w, b, xtr, ytr, xte, yte = low_rank_task
    lin = torch.nn.Linear(256, 3000)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    layer = lss.LSSLinear.from_linear(lin, max_candidates=64).eval()
    report = layer.fit(xtr, ytr, progress=False)
    assert {p.code_dim for p in report.calibration} == {256, 128}
    assert report.code_dim == 128 and tuple(layer.index.code_proj.shape) == (256, 128)
    assert layer.index.codes.shape[1] == 128
    # predict() is the pipeline on the projected queries, on every backend.
    x = xte[:200]
    ids, _ = layer.candidates(x)
    m = layer.index.shortlist(layer.max_candidates, 3)
    want = lss.topk_gathered(lss.gathered_logits(x, layer.weight, layer.bias, ids[:, :m].contiguous()),
                             ids[:, :m].contiguous(), 3)
    for backend in (None, "reference", "cpu"):
        layer.backend = backend
        got = layer.predict(x, 3)
        assert torch.equal(got[1], want[1]), backend
        torch.testing.assert_close(got[0].detach(), want[0].detach())  # reference logits round differently
    layer.backend = None
    # Saved and loaded exactly, projection included.
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    fresh = lss.LSSLinear(256, 3000, max_candidates=64)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh.index.code_proj, layer.index.code_proj)
    assert torch.equal(fresh.predict(x, 3)[1], want[1])
    # Off: codes of all d dimensions.
    plain = lss.LSSLinear.from_linear(lin, max_candidates=64)
    assert plain.fit(xtr, ytr, progress=False, project_codes=False).code_dim == 256
    assert plain.index.code_proj.numel() == 0 and plain.index.codes.shape[1] == 256
    # A malformed projection is refused on load.
    sd = dict(layer.state_dict())
    sd["index.code_proj"] = sd["index.code_proj"][:100]
    with pytest.raises(ValueError, match=r"code_proj must be"):
        lss.LSSLinear(256, 3000, max_candidates=64).load_state_dict(sd)


def test_a_0_2_partition_state_dict_without_code_projection_loads(task):
    layer = layer_for(task)
    layer.fit(task.train_x, task.train_y, progress=False, spaces=("labels",))  # 0.2 had the label space only
    sd = dict(layer.state_dict())
    del sd["index.code_proj"]  # 0.2 had no code projection
    sd["index._extra_state"] = {k: v for k, v in sd["index._extra_state"].items()
                                if k not in ("rerank", "space", "partitions_set")}
    fresh = lss.LSSLinear(task.weight.shape[1], task.num_labels, max_candidates=40)
    fresh.load_state_dict(sd)
    assert fresh.index.code_proj.numel() == 0 and fresh.index.rerank is None and fresh.index.space == "labels"
    layer.index.rerank = None
    x = task.test_x[:100]
    assert torch.equal(fresh.predict(x, 3)[1], layer.predict(x, 3)[1])
