"""Smoke tests of the benchmark suite (bench/): every section runs in-process
on tiny sizes and writes its outputs, so the benchmark code cannot rot, and
every baseline index is built and searched on a tiny problem with a sanity
check of its answers. Nothing here asserts on time. FAISS / hnswlib / ScaNN
parts are skipped (the sections report "not installed") when those packages
are missing."""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("matplotlib")

from bench import accuracy, e2e, evaluate, ops, scaling, tasks  # noqa: E402
from bench.common import RunContext, config_key, time_per_query  # noqa: E402
from bench.methods import (LSS, FaissHNSW, FaissIVF, FaissIVFPQ, Hnswlib, LSSConfig, ScaNN,  # noqa: E402
                           augmented_labels, augmented_queries, faiss_available, hnswlib_available,
                           mips_to_l2_labels, mips_to_l2_queries, scann_available)

FIXTURE_WORDNET = ROOT / "tests" / "data" / "wordnet"
FAKE_RATES = {"read_GBps": 10.0, "copy_GBps": 10.0, "bandwidth_GBps": 10.0, "matmul_GFLOPs": 50.0,
              "matmul_size": 64, "stream_MB": 1.0}


@pytest.fixture
def ctx(tmp_path):
    context = RunContext(tmp_path, quick=True, threads=1, verbose=False)
    context.min_time_override = 0.005
    return context


@pytest.fixture(autouse=True)
def _fresh_suites():
    evaluate.reset()
    yield
    evaluate.reset()


def _read(ctx, base):
    return json.loads((ctx.out_dir / f"{base}-quick.json").read_text())


def test_ids_to_bitmap_matches_dense_mask():
    gen = torch.Generator().manual_seed(0)
    n = 77
    ids = torch.randint(0, n, (3, 20), generator=gen)
    bitmap = ops.ids_to_bitmap(ids, n)
    assert bitmap.dtype == torch.int32 and bitmap.shape == (3, 3)
    bits = ((bitmap.to(torch.int64).unsqueeze(2) >> torch.arange(32)) & 1).reshape(3, -1)[:, :n].bool()
    want = torch.zeros(3, n, dtype=torch.bool)
    want[torch.arange(3).unsqueeze(1), ids] = True
    assert torch.equal(bits, want)


def test_ops_plan_prunes_with_reasons():
    plan = ops.build_plan(ops.FULL_GRID, FAKE_RATES, "full")
    assert {p.op for p in plan} == set(ops.OPS)
    # hash_codes depends on d and B only; topk_gathered on B and M only.
    assert len([p for p in plan if p.op == "hash_codes"]) == 12
    assert len([p for p in plan if p.op == "topk_gathered"]) == 12
    skipped = [p for p in plan if p.skip]
    assert any("M > N/4" in p.skip for p in skipped)
    assert any("memory" in p.skip for p in skipped)  # e.g. backward at N=3M, d=512
    assert all(p.memory <= ops.MEMORY_LIMIT for p in plan if not p.skip)
    assert ops.distinct_rows(1000, 1) == pytest.approx(1.0)
    assert ops.distinct_rows(1000, 1e6) == pytest.approx(1000.0)


def test_ops_section_tiny(ctx):
    grid = {"N": [1000], "d": [16], "B": [1, 3], "M": [64, 300]}
    payload = ops.run(ctx, grid=grid, min_time=0.001, rates=FAKE_RATES)
    rows = payload["rows"]
    ran = [r for r in rows if r["ms"] != "skipped"]
    assert {r["op"] for r in ran} == set(ops.OPS)
    assert any(r["ms"] == "skipped" and "M > N/4" in r["note"] for r in rows)  # M=300 > 1000/4
    for r in ran:
        assert r["ms"] > 0 and r["GB/s"] > 0
    assert any("dense / op" in r for r in ran)
    saved = _read(ctx, "ops")
    assert saved["machine"]["threads"] == torch.get_num_threads() and "git_commit" in saved["machine"]
    assert (ctx.out_dir / "ops-quick.md").exists()


def test_scaling_section_tiny(ctx):
    grid = {"N": [500, 2000], "N_batch": [1, 4], "batch_N": 2000, "B": [1, 4]}
    payload = scaling.run(ctx, candidates=32, dim=16, grid=grid)
    assert len(payload["rows_n"]) == 4 and len(payload["rows_batch"]) == 2
    for r in payload["rows_n"] + payload["rows_batch"]:
        assert 0 < r["candidates"] <= 32 and r["lss ms/q"] > 0
    for name in ("scaling_n-quick.png", "scaling_batch-quick.png", "scaling-quick.json"):
        assert (ctx.out_dir / name).stat().st_size > 0


def _tiny_synthetic():
    return tasks.synthetic_problem(tasks.SyntheticConfig(3000, 16, 1500, 200), log=lambda *a: None)


TINY_LSS = LSSConfig(candidates=60, fit_options=(("holdout", 100),))


def test_e2e_and_accuracy_tiny(ctx):
    problem = _tiny_synthetic()
    # Named "wordnet" too, so the acceptance checks run.
    as_wordnet = replace(problem, name="wordnet", title="tiny synthetic posing as wordnet")
    problems = [(problem, TINY_LSS, {}), (as_wordnet, TINY_LSS, {"eval_queries": 100})]
    out = e2e.run(ctx, problems)
    rows = out["results"][0]["rows"]
    methods = [r["method"] for r in rows]
    assert rows[0]["matched"] == "reference" and any("naive gather" in m for m in methods)
    lss_row = next(r for r in rows if r.get("family") == "lss-fit")
    assert 0 <= lss_row["P@1"] <= 1 and 0 < lss_row["candidates"] <= TINY_LSS.candidates
    assert lss_row["speed-up b1"] > 0
    naive = next(r for r in rows if r.get("family") == "naive-gather")
    assert naive["P@1"] == pytest.approx(lss_row["P@1"])  # same candidates, same exact logits
    families = {r.get("family") for r in rows}
    if faiss_available():
        assert {"faiss-hnsw", "faiss-hnsw-l2", "faiss-ivf", "faiss-ivfpq"} <= families
        assert out["results"][0]["sweeps"]["faiss-ivf"][0]["computed %"] > 0
    if hnswlib_available():
        assert {"hnswlib", "hnswlib-l2"} <= families
    if scann_available():
        assert "scann" in families
        assert len(out["results"][0]["sweeps"]["scann"]) == 3
    for r in rows:
        if "family" in r and r["family"] != "dense":
            assert r["index MB"] > 0, r["family"]
    matched = out["results"][0]["matched"]
    assert {m["family"] for m in matched} == set(out["results"][0]["sweeps"]) - {"dense"}
    assert len({m["target"] for m in matched}) == 2
    for m in matched:
        if m["reached"] == "yes":
            assert m["P@1 b1"] >= m["target P@1"] - 1e-12 and m["P@1 b256"] >= m["target P@1"] - 1e-12
    assert "Matched P@1" in (ctx.out_dir / "e2e-quick.md").read_text()
    assert (ctx.out_dir / "e2e-quick.png").stat().st_size > 0

    acc = accuracy.run(ctx, problems)
    first, second = acc["results"]
    assert first["acceptance"] and second["acceptance"]
    assert all(isinstance(c["pass"], bool) for c in first["acceptance"] + second["acceptance"])
    fams = [r.get("family") for r in first["rows"]]
    assert fams[:3] == ["dense", "lss-fit", "lss-random"]
    dense = first["rows"][0]
    assert dense["P@1"] == pytest.approx(dense["agree"] * 0 + dense["P@1"]) and dense["agree"] == 1.0
    assert first["fit"]["nprobe"] >= 1 and first["fit"]["calibration"]
    assert (ctx.out_dir / "accuracy-quick.png").stat().st_size > 0
    saved = _read(ctx, "accuracy")
    assert saved["machine"]["mode"] == "quick"
    assert "P@1" in (ctx.out_dir / "e2e-quick.md").read_text()


def test_pareto_front_and_matched_rows():
    rows = [{"P@1": 0.50, "ms/q b1": 1.0, "ms/q b256": 0.10, "setting": 1},
            {"P@1": 0.45, "ms/q b1": 2.0, "ms/q b256": 0.05, "setting": 2},   # dominated at b1, not at b256
            {"P@1": 0.60, "ms/q b1": 3.0, "ms/q b256": 0.30, "setting": 3}]
    assert [r["setting"] for r in evaluate.pareto_front(rows, "ms/q b1")] == [1, 3]
    assert [r["setting"] for r in evaluate.pareto_front(rows, "ms/q b256")] == [2, 1, 3]
    for r in rows:
        r.update(method="m", knob="k", **{"build s": 1.0, "index MB": 2.0})
    out = evaluate.matched_rows({"x": rows}, [("low", 0.45), ("high", 0.55), ("unreachable", 0.9)])
    low, high, unreachable = out
    assert (low["setting b1"], low["setting b256"], low["reached"]) == (1, 2, "yes")  # cheapest per batch size
    assert (high["setting b1"], high["setting b256"]) == (3, 3)
    assert unreachable["reached"].startswith("no") and unreachable["P@1 b1"] == 0.60


def test_pick_matched():
    rows = [{"P@1": 0.50, "ms/q b1": 1.0}, {"P@1": 0.595, "ms/q b1": 2.0}, {"P@1": 0.60, "ms/q b1": 3.0}]
    assert evaluate.pick_matched(rows, 0.60)["ms/q b1"] == 2.0
    assert evaluate.pick_matched(rows, 0.60, 0.0)["ms/q b1"] == 3.0
    best = evaluate.pick_matched(rows, 0.9)
    assert best["P@1"] == 0.60 and best["matched"].startswith("no")


def test_wordnet_model_trains_once_then_loads_from_cache(tmp_path):
    if not (FIXTURE_WORDNET / "data.noun").exists():
        pytest.skip("WordNet fixture missing")
    cfg = tasks.WordNetModelConfig(dim=8, epochs=1, batch_size=4)
    logs = []
    first = tasks.wordnet_problem(cfg, tmp_path, logs.append, root=str(FIXTURE_WORDNET), min_token_count=1)
    assert first.setup["model_cached"] is False
    assert first.train_x.shape == (first.train_y.shape[0], 8) and first.weight.shape[1] == 8
    assert list(tmp_path.glob("wordnet-model-*.pt"))
    tasks._PROBLEMS.clear()
    second = tasks.wordnet_problem(cfg, tmp_path, logs.append, root=str(FIXTURE_WORDNET), min_token_count=1)
    assert second.setup["model_cached"] is True
    assert torch.equal(first.weight, second.weight) and torch.equal(first.test_x, second.test_x)


def test_main_plan_and_helpers(tmp_path, capsys):
    from bench.__main__ import main, parse_args

    args = parse_args(["e2e", "accuracy", "--quick", "--wordnet-candidates", "100"])
    assert args.sections == ["e2e", "accuracy"] and args.wordnet_candidates == 100
    assert parse_args([]).sections == ["ops", "scaling", "e2e", "accuracy"]
    assert main(["ops", "--plan", "--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert "ops plan" in capsys.readouterr().out
    assert config_key({"a": 1}) == config_key({"a": 1}) != config_key({"a": 2})
    x = torch.randn(10, 4)
    assert time_per_query(lambda xb: xb.sum(), x, 32, min_time=0.001) > 0  # batch larger than the queries


def test_main_e2e_on_tiny_synthetic_through_the_cli(tmp_path, capsys):
    from bench.__main__ import main

    argv = ["e2e", "--quick", "--threads", "1", "--out", str(tmp_path), "--min-time", "0.005", "--quiet",
            "--tasks", "synthetic", "--synthetic-labels", "3000", "--synthetic-train", "1000",
            "--synthetic-test", "100", "--synthetic-candidates", "60"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "End to end, synthetic, N=3,000" in out
    saved = json.loads((tmp_path / "e2e-quick.json").read_text())
    assert saved["results"][0]["lss"]["candidates"] == 60


# ------------------------------------------------------------- baselines
def _mips_problem(n=2000, d=16, b=64, seed=0):
    """Random labels with very different norms (as trained output layers
    have), a bias, and queries; the dense top-5 labels."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, d, generator=gen) * (0.2 + 2 * torch.rand(n, 1, generator=gen))
    bias = torch.randn(n, generator=gen)
    x = torch.randn(b, d, generator=gen)
    top = torch.topk(torch.nn.functional.linear(x, weight, bias), 5).indices
    return weight, bias, x, top


def test_mips_to_l2_transform_preserves_inner_product_order():
    import numpy as np

    weight, bias, x, _ = _mips_problem(n=500)
    labels, radius = mips_to_l2_labels(weight, bias)
    queries = mips_to_l2_queries(x)
    assert labels.shape == (500, 18) and queries.shape == (64, 18)
    p, q = labels.astype(np.float64), queries.astype(np.float64)
    # Every transformed label has norm U, the largest augmented norm.
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), radius, rtol=1e-6)
    logits = (x.double() @ weight.double().T + bias.double()).numpy()
    d2 = ((q[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    # |q - p|^2 = |q|^2 + U^2 - 2 <[x, 1], [w, b]>: L2 order is inner-product order.
    np.testing.assert_allclose(d2, (q * q).sum(1, keepdims=True) + radius**2 - 2 * logits, rtol=1e-5, atol=1e-4)
    by_l2 = np.argsort(d2, axis=1, kind="stable")[:, :10]
    by_ip = np.argsort(-logits, axis=1, kind="stable")[:, :10]
    assert (by_l2 == by_ip).all()
    # Without the transform, L2 on [w, b] vs [x, 1] ranks differently: the check has teeth.
    raw = ((augmented_queries(x).astype(np.float64)[:, None, :]
            - augmented_labels(weight, bias).astype(np.float64)[None, :, :]) ** 2).sum(-1)
    assert (np.argmin(raw, axis=1) != by_ip[:, 0]).mean() > 0.2


def _agreement(method, x, top, k=5):
    out = method.search(x, k)
    assert out.shape == (x.shape[0], k) and out.dtype == torch.int64
    assert torch.equal(method.search(x[:1], k)[0], out[0])  # the batch-1 path gives the same answer
    ev = method.evaluate(x, k)
    assert torch.equal(ev.top[:, 0], out[:, 0])
    assert method.index_bytes > 0 and method.build_seconds >= 0
    return (out[:, 0] == top[:, 0]).double().mean().item()


@pytest.mark.skipif(not scann_available(), reason="scann not installed")
def test_scann_with_every_leaf_searched_finds_the_dense_top1():
    weight, bias, x, top = _mips_problem()
    m = ScaNN(weight, bias, threads=1)
    assert m.num_leaves == round(2 * 2000 ** 0.5) and m.info["training_sample_size"] == 2000
    m.set(10**6)
    assert m.setting == m.num_leaves  # clamped
    assert _agreement(m, x, top) >= 0.95
    ev = m.evaluate(x, 5)
    assert ev.candidates.shape[1] == m.reorder and (ev.num_candidates == m.reorder).all()
    # Candidates come back best first, by exact score (ScaNN's float reorder).
    ids = ev.candidates.clamp(min=0)
    scores = torch.where(ev.candidates >= 0, (weight[ids] @ x.unsqueeze(2)).squeeze(2) + bias[ids],
                         torch.tensor(float("-inf")))
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-4).all()
    m.set(1)  # one leaf: fewer candidates, -1 padded, never a bogus id
    ev = m.evaluate(x, 5)
    assert (ev.num_candidates < m.reorder).any() and ((ev.candidates >= -1) & (ev.candidates < 2000)).all()
    valid = ev.candidates[ev.candidates >= 0]
    assert valid.numel() > 0


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_hnsw_on_the_l2_transform_beats_raw_inner_product():
    weight, bias, x, top = _mips_problem()
    l2 = FaissHNSW(weight, bias, transform="l2", threads=1)
    l2.set(256)
    assert l2.family == "faiss-hnsw-l2" and "MIPS-to-L2" in l2.label
    assert _agreement(l2, x, top) >= 0.95
    raw = FaissHNSW(weight, bias, transform="ip", threads=1)
    assert "misconfigured" in raw.label
    raw.set(256)
    _agreement(raw, x, top)  # builds and searches; no accuracy claim for the misconfigured row


@pytest.mark.skipif(not hnswlib_available(), reason="hnswlib not installed")
def test_hnswlib_on_the_l2_transform():
    weight, bias, x, top = _mips_problem()
    m = Hnswlib(weight, bias, transform="l2", threads=1)
    m.set(256)
    assert m.family == "hnswlib-l2" and m.info["ef_construction"] == 200
    assert _agreement(m, x, top) >= 0.95
    raw = Hnswlib(weight, bias, transform="ip", threads=1)
    raw.set(64)
    _agreement(raw, x, top)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
def test_faiss_ivf_flat_and_ivfpq_fastscan():
    weight, bias, x, top = _mips_problem()
    pq = FaissIVFPQ(weight, bias, threads=1, nlist=32)
    assert pq.info["factory"] == "IVF32,PQ9x4fs" and pq.info["padded_dim"] == 18 and pq.max_setting == 32
    pq.set(32)  # every list: only the 4-bit codes and the top-R cut stand between it and exact
    assert _agreement(pq, x, top) >= 0.9
    pq.set(1)  # the cheap end: fewer candidates than with every list
    cheap = pq.evaluate(x, 5).num_candidates.mean()
    pq.set(32)
    assert cheap < pq.evaluate(x, 5).num_candidates.mean()
    flat = FaissIVF(weight, bias, threads=1, nlist=32)
    flat.set(32)
    assert _agreement(flat, x, top) >= 0.99
    # PQ codes are smaller than the flat vectors.
    assert pq.index_bytes < flat.index_bytes


def test_lss_reports_index_bytes():
    weight, bias, _, _ = _mips_problem(n=500)
    m = LSS("lss", weight, bias, LSSConfig(candidates=50))
    layer = m.layer
    buffers = sum(t.numel() * t.element_size() for t in layer.index.buffers())  # the layer's own "removed" mask is not the index's
    # ... and the probe's centroid codes (derived from the centroids, not saved)
    codes, scales, (offsets, ids) = layer.index.probe_codes()
    derived = sum(t.numel() * t.element_size() for t in (codes, scales, offsets, ids))
    assert m.index_bytes == buffers + derived and buffers > 0 and derived > 0


def test_partition_ops_micro_benchmark_tiny(tmp_path, capsys):
    """bench/partition_ops.py end to end on tiny sizes, the avx2 child included."""
    from bench import partition_ops

    partition_ops.main(["--labels", "3000", "--dim", "40", "--partitions", "32", "--nprobe", "2", "--candidates", "10",
                        "--batches", "1", "3", "--threads", "1", "--pool", "4", "--min-time", "0.005",
                        "--isas", "native", "avx2", "--out", str(tmp_path), "--name", "tiny"])
    out = capsys.readouterr().out
    assert "quantized_candidates" in out and "quantized_probe" in out
    rows = json.loads((tmp_path / "tiny.json").read_text())["rows"]
    assert len(rows) == 2 * 2 * 2  # ops x batches x isas
    if "AVX" in lsskernels_vector_isa():
        assert "avx2" in {r["int8 isa"] for r in rows}


def lsskernels_vector_isa() -> str:
    from lsskernels import _ops

    return _ops._C.cpu_vector_isa() if _ops.extension_loaded() else ""


def test_calibration_section_reports_the_loss_and_the_unfitted_index(monkeypatch):
    from bench import calibration
    monkeypatch.setitem(calibration.REGIMES, "tiny", dict(num_labels=3000, dim=32, num_train=4000, num_test=600,
                                                          seed=5))
    row = calibration.run("tiny", 40)
    for key in ("dense P@1", "LSS P@1", "unfitted P@1"):
        assert 0.0 <= row[key] <= 1.0
    assert row["loss, points"] == pytest.approx(100 * (row["dense P@1"] - row["LSS P@1"]))
    assert row["fitted - unfitted, points"] == pytest.approx(100 * (row["LSS P@1"] - row["unfitted P@1"]))
    assert row["fitted - unfitted SE, points"] >= 0.0 and row["space"] in ("labels", "queries")


def test_row_argmax_micro_benchmark_quick(tmp_path, capsys):
    """bench/row_argmax.py --quick end to end: every way agrees with the
    0.9.5 GEMM + max path on its clustered rows."""
    from bench import row_argmax

    row_argmax.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    assert "dense top-1" in capsys.readouterr().out
    results = json.loads((tmp_path / "row_argmax-quick.json").read_text())["results"]
    assert {r["way"] for r in results} >= {"gemm + max", "exact"}
    assert all(float(r["same as gemm + max"]) > 0.999 for r in results)


def test_partition_balance_benchmark_quick(tmp_path, capsys):
    """bench/partition_balance.py --quick end to end: both k-means ways per
    seed, shares in [0, 1] that only grow with the probes, and the split
    leaves no list empty."""
    from bench import partition_balance

    partition_balance.main(["--quick", "--seeds", "0", "--threads", "1", "--out", str(tmp_path)])
    assert "found@8" in capsys.readouterr().out
    results = json.loads((tmp_path / "partition_balance-quick.json").read_text())["results"]
    assert [r["way"] for r in results] == list(partition_balance.WAYS)
    for r in results:
        found = [r[f"found@{k}"] for k in partition_balance.PROBES if f"found@{k}" in r]
        rows = [r[f"rows@{k}"] for k in partition_balance.PROBES if f"rows@{k}" in r]
        assert all(0.0 <= f <= 1.0 for f in found) and found == sorted(found) and rows == sorted(rows)
    assert results[1]["empty lists"] == 0
