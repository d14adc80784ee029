"""lsskernels/partition/calibration.py: the held-out strata and their Good-Turing
weight, the paired loss and its standard error, and the stop rule (a
setting is accepted on its confidence bound, the cheapest accepted wins)."""
import math

import pytest
import torch

from lsskernels.partition.calibration import CalibrationPoint, HoldOut, PairedLoss, choose_setting, hold_out, z_of


def test_hold_out_strata_and_good_turing():
    # Labels 0..9 occur 3 times each, labels 10..49 once: 40 singletons.
    y = torch.cat([torch.arange(10).repeat(3), torch.arange(10, 50)]).unsqueeze(1)
    held = hold_out(y, 5, torch.Generator().manual_seed(0))
    assert held.missing_mass == pytest.approx(40 / 70)
    assert held.seen.numel() == 5 and held.unseen.numel() == 5
    assert bool((y[held.unseen, 0] >= 10).all()) and bool((y[held.seen, 0] < 10).all())
    # Every pair is in exactly one of the three sets.
    all_ids = torch.cat([held.seen, held.unseen, held.train]).sort().values
    assert torch.equal(all_ids, torch.arange(70))
    w = held.weights()
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(w[5:].sum()) == pytest.approx(40 / 70)
    # A function of (labels, size, seed).
    again = hold_out(y, 5, torch.Generator().manual_seed(0))
    assert torch.equal(again.seen, held.seen) and torch.equal(again.unseen, held.unseen)


def test_hold_out_without_singletons_has_one_stratum():
    y = torch.arange(20).repeat(5).unsqueeze(1)
    held = hold_out(y, 1000, torch.Generator().manual_seed(1))
    assert held.missing_mass == 0 and held.unseen.numel() == 0
    assert held.seen.numel() == 20  # at most a fifth of the pairs
    assert held.strata() == [(slice(0, 20), 1.0)]


def test_hold_out_multi_label_pairs():
    # A pair is a singleton pair only when every label of it occurs once.
    y = torch.tensor([[0, 5], [0, -1], [6, -1], [7, 8], [1, -1], [1, 2]] * 1 + [[2, -1]] * 4)
    held = hold_out(y, 10, torch.Generator().manual_seed(2), max_fraction=1.0)
    unseen_rows = {tuple(r) for r in y[held.unseen].tolist()}
    assert unseen_rows <= {(6, -1), (7, 8)}


def test_paired_loss_is_stratified_and_floored():
    held = HoldOut(seen=torch.arange(4), unseen=torch.arange(4, 8), train=torch.empty(0, dtype=torch.int64),
                   missing_mass=0.25)
    dense = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0], dtype=torch.bool)
    hits = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0], dtype=torch.bool)
    z = z_of(0.9)
    got = PairedLoss.of(dense, hits, held, z)
    # seen: d = [0, 1, 0, -1], mean 0, var 2/3; unseen: d = [1, 0, 0, 0], mean 1/4, var 1/4.
    assert got.loss == pytest.approx(0.75 * 0 + 0.25 * 0.25)
    se = math.sqrt(0.75**2 * (2 / 3) / 4 + 0.25**2 * 0.25 / 4)
    assert got.se == pytest.approx(se) and got.bound == pytest.approx(got.loss + z * se)
    # Nothing disagrees: the bound is still z / n, never zero.
    same = PairedLoss.of(dense, dense, held, z)
    assert same.loss == 0 and same.bound == pytest.approx(z * math.sqrt(0.75**2 / 16 + 0.25**2 / 16))


def _point(nprobe, rows, loss, se):
    return CalibrationPoint(space="labels", partitions=16, code_dim=32, width=32, nprobe=nprobe, rows=rows,
                            recall=1.0, p1={64: 0.5}, loss={64: PairedLoss(loss, se, loss + 1.28 * se)})


def test_the_stop_rule_needs_the_bound_not_the_estimate():
    # The cheap setting's estimate passes the tolerance, its bound does not.
    noisy = _point(1, 100, 0.001, 0.004)
    solid = _point(4, 400, 0.0005, 0.0005)
    point, rerank, ok = choose_setting([noisy, solid], 0.002, dim=32, weight_bytes=4)
    assert ok and point is solid and rerank == 64
    # Cheapest of the accepted ones.
    solid2 = _point(8, 800, 0.0, 0.0001)
    assert choose_setting([solid2, solid], 0.002, dim=32, weight_bytes=4)[0] is solid
    # None accepted: least bound, flagged.
    point, _, ok = choose_setting([noisy, _point(2, 200, 0.01, 0.001)], 0.002, dim=32, weight_bytes=4)
    assert not ok and point is noisy
    # The budget excludes what it cannot afford, accepted or not.
    budget = solid.cost(64, 32, 4) - 1
    point, _, ok = choose_setting([noisy, solid], 0.002, dim=32, weight_bytes=4, budget=budget)
    assert not ok and point is noisy


def test_cost_model_prices_the_codecs_row_bytes():
    # The codes buffer is as wide as the codec says, and the cost model
    # prices a scanned row (and the probe's centroid rows) at those bytes
    # plus 20 (scale, bias, id, sort key).
    from lsskernels.partition import INT8, PartitionIndex
    from lsskernels.partition.calibration import scan_cost, setting_cost

    for dim in (1, 16, 33, 70):
        assert PartitionIndex(64, dim).codes.shape[1] == INT8.bytes_per_row(dim)
        assert scan_cost(10, INT8.bytes_per_row(dim)) == 10 * (INT8.bytes_per_row(dim) + 20)
        assert setting_cost(0, 0, 0, dim, 4, partitions=8) == 8 * (INT8.bytes_per_row(dim) + 20)


def _shard_point(nprobe, loss, se, rows=100.0):
    from lsskernels.partition.calibration import CalibrationPoint, PairedLoss
    return CalibrationPoint(space="labels", partitions=64, code_dim=32, width=32, nprobe=nprobe, rows=rows * nprobe,
                            recall=1.0, p1={16: 0.5}, loss={16: PairedLoss(loss=loss, se=se, bound=loss + 1.28 * se)})


def test_merged_settings_weight_losses_and_combine_standard_errors():
    from lsskernels.partition.calibration import merged_settings
    a = [_shard_point(1, 0.010, 0.004), _shard_point(2, 0.002, 0.002)]
    b = [_shard_point(1, 0.020, 0.004), _shard_point(2, 0.004, 0.002), _shard_point(4, 0.0, 0.001)]
    out = merged_settings([(0.25, a), (0.75, b)], z=1.0, dim=32, weight_bytes=4)
    assert [(s.nprobe, s.rerank) for s in out] == [(1, 16), (2, 16)]  # (4, 16) only on one shard
    assert out[0].loss.loss == pytest.approx(0.25 * 0.010 + 0.75 * 0.020)
    assert out[0].loss.se == pytest.approx(math.sqrt((0.25 * 0.004) ** 2 + (0.75 * 0.004) ** 2))
    assert out[1].cost == pytest.approx(a[1].cost(16, 32, 4) + b[1].cost(16, 32, 4))


def test_judge_shards_takes_a_cheaper_setting_only_within_tolerance():
    from lsskernels.partition.fit import judge_shards
    # Alone, each shard's bound at nprobe 2 (0.0015 + 1.28 * 0.0016 = 0.0036) misses
    # a 0.003 tolerance and it kept nprobe 4; merged, the SE shrinks by sqrt(2).
    pts = [_shard_point(1, 0.02, 0.004), _shard_point(2, 0.0015, 0.0016), _shard_point(4, 0.0, 0.001)]
    rep = {"space": "labels", "code_dim": 32, "nprobe": 4, "rerank": None, "spill_probes": 0, "calibration": pts}
    best, own = judge_shards([(0.5, rep), (0.5, rep)], max_candidates=16, dim=32, weight_bytes=4,
                             tolerance=0.003, confidence=0.9)
    assert best.nprobe == 2 and best.loss.bound <= 0.003 < pts[1].loss[16].bound
    assert best.cost < own
    # A tolerance nothing cheaper meets: the shards' own settings stand.
    assert judge_shards([(0.5, rep), (0.5, rep)], max_candidates=16, dim=32, weight_bytes=4,
                        tolerance=0.0005, confidence=0.9) is None


def test_judge_shards_compares_only_the_chosen_spill():
    from dataclasses import replace

    from lsskernels.partition.fit import judge_shards
    # One calibration with both variants. Alone, nprobe 1 of the unspilled
    # lists misses a 0.003 tolerance (0.0015 + 1.28 * 0.0016); merged over
    # two shards it passes. The spilled lists lose 2 points at nprobe 1.
    plain = [_shard_point(1, 0.0015, 0.0016), _shard_point(2, 0.0, 0.001)]
    spilled = [replace(_shard_point(p, loss, se), spill=2) for p, loss, se in ((1, 0.02, 0.004), (2, 0.0, 0.001))]
    rep = {"space": "labels", "code_dim": 32, "nprobe": 2, "rerank": None, "calibration": spilled + plain}
    kw = dict(max_candidates=16, dim=32, weight_bytes=4, tolerance=0.003, confidence=0.9)
    best, _ = judge_shards([(0.5, {**rep, "spill_probes": 0})] * 2, **kw)
    assert best.nprobe == 1 and best.loss.loss == pytest.approx(0.0015)
    # The shards kept the spilled lists: their nprobe 1 is judged, and fails.
    assert judge_shards([(0.5, {**rep, "spill_probes": 2})] * 2, **kw) is None


def test_equal_cost_ties_prefer_less_spill():
    from dataclasses import replace
    a = replace(_point(2, 200, 0.0, 0.0001), spill=2)
    b = _point(2, 200, 0.0, 0.0001)
    assert choose_setting([a, b], 0.002, dim=32, weight_bytes=4)[0] is b


def test_the_unfitted_index_sets_the_floor():
    # A cheap accepted setting less accurate than the unfitted index on the
    # held-out pairs loses to a dearer accepted one that reaches it; where no
    # accepted setting reaches the floor, the cheapest accepted wins as before.
    from dataclasses import replace
    cheap = replace(_point(2, 200, 0.0, 0.0001), p1={64: 0.60})
    level = replace(_point(8, 800, -0.002, 0.0001), p1={64: 0.62})
    dear = replace(_point(32, 3200, -0.002, 0.0001), p1={64: 0.63})
    assert choose_setting([cheap, level, dear], 0.003, dim=32, weight_bytes=4)[0] is cheap
    assert choose_setting([cheap, level, dear], 0.003, dim=32, weight_bytes=4, floor=0.62)[0] is level
    assert choose_setting([cheap, level, dear], 0.003, dim=32, weight_bytes=4, floor=0.64)[0] is cheap
    # The floor never admits a setting the bound rejects.
    loose = replace(_point(4, 400, 0.01, 0.0001), p1={64: 0.65})
    assert choose_setting([cheap, loose], 0.003, dim=32, weight_bytes=4, floor=0.62)[0] is cheap


def test_dense_top1_and_topk_in_label_blocks_equal_the_whole_product(monkeypatch):
    # At N = 10^7 the dense teacher runs in blocks of labels; the blocks must
    # give the whole product's argmax (ties: smaller label) and top-k.
    import lsskernels.fit_pairs as fit_pairs
    torch.manual_seed(0)
    w, b, q = torch.randn(5000, 16), torch.randn(5000), torch.randn(300, 16)
    b[1234] = b[4321] = 50.0  # a tie across blocks
    w[1234] = w[4321] = 0.0
    logits = torch.nn.functional.linear(q, w, b)
    monkeypatch.setattr(fit_pairs, "LABEL_BLOCK", 777)
    assert torch.equal(fit_pairs.dense_top1(w, b, q), logits.argmax(1))
    assert bool((fit_pairs.dense_top1(w, b, q) == 1234).all())
    assert torch.equal(fit_pairs.dense_topk(w, None, q, 7), torch.topk(q @ w.T, 7, dim=1).indices)


@pytest.mark.parametrize("M, m", [(4, 3), (256, 1), (256, 28), (37, 5)])
def test_labels_found_equals_the_full_comparison(M, m):
    # Both paths (the [n, M, m] comparison and the sorted lookup) against
    # the definition, with -1 padding in ids and in y, duplicates, absent labels.
    from lsskernels.fit_pairs import labels_found
    g = torch.Generator().manual_seed(M * 100 + m)
    n, N = 400, 300
    ids = torch.randint(-1, N, (n, M), generator=g)
    y = torch.randint(-1, N, (n, m), generator=g)
    y[: n // 4] = -1  # rows with no label at all
    ids[n // 4 : n // 2] = -1  # rows with no candidate
    y[n // 2 : n // 2 + 20, 0] = ids[n // 2 : n // 2 + 20, M - 1]  # a label that is the last candidate
    want = torch.tensor([any(int(a) >= 0 and int(a) in [int(b) for b in yr if b >= 0] for a in ir)
                         for ir, yr in zip(ids, y)])
    assert torch.equal(labels_found(ids, y), want)
    assert torch.equal(labels_found(ids.to(torch.int32), y), want)


def test_the_screen_samples_each_stratum_and_drops_only_settings_far_past_the_tolerance():
    held = HoldOut(seen=torch.arange(0, 400), unseen=torch.arange(400, 500), train=torch.arange(500, 600),
                   missing_mass=0.3)
    sample, first, rest = held.screen(4)
    assert sample.seen.numel() == 100 and sample.unseen.numel() == 25 and sample.missing_mass == 0.3
    assert torch.equal(held.queries[first], sample.queries)
    assert sorted(torch.cat([first, rest]).tolist()) == list(range(500))
    from lsskernels.partition.calibration import screened_out
    dense = torch.ones(125, dtype=torch.bool)
    far = {16: torch.zeros(125, dtype=torch.bool)}            # loses everything
    near = {16: torch.ones(125, dtype=torch.bool)}
    near[16][:2] = False                                      # loses 2 of 125: within reach of 0.3 point
    assert screened_out(dense, far, sample, 0.003)
    assert not screened_out(dense, near, sample, 0.003)
    # One shortlist within reach keeps the setting.
    assert not screened_out(dense, {16: far[16], 256: near[16]}, sample, 0.003)


def test_the_screen_never_drops_a_setting_the_whole_sample_accepts():
    # Simulated: settings whose whole-sample bound is within tolerance are
    # (almost) never screened out on their quarter.
    from lsskernels.partition.calibration import screened_out
    g = torch.Generator().manual_seed(0)
    held = HoldOut(seen=torch.arange(0, 2000), unseen=torch.arange(2000, 4000), train=torch.arange(4000, 4100),
                   missing_mass=0.4)
    sample, first, _ = held.screen(4)
    dropped = accepted = 0
    for _ in range(300):
        dense = torch.rand(4000, generator=g) < 0.6
        hits = dense.clone()
        flip = torch.rand(4000, generator=g) < 0.01
        hits[flip] = torch.rand(int(flip.sum()), generator=g) < 0.6
        if PairedLoss.of(dense, hits, held, z_of(0.9)).bound <= 0.003:
            accepted += 1
            dropped += screened_out(dense[first], {16: hits[first]}, sample, 0.003)
    assert accepted > 200 and dropped == 0
