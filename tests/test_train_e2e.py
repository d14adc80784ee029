"""Smoke test of bench/train_e2e.py (python -m bench.train e2e): every
method trains a tiny model end to end and the outputs (table, JSON, plot)
are written. No timing assertions."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("matplotlib")

from bench import train_e2e  # noqa: E402
from bench.common import RunContext  # noqa: E402
from bench.data.gcide_lm import GcideLMConfig  # noqa: E402

FIXTURE_WORDNET = ROOT / "tests" / "data" / "wordnet"


@pytest.fixture
def ctx(tmp_path):
    return RunContext(tmp_path, quick=True, threads=1, verbose=False)


def _check(payload, ctx, tasks):
    rows = payload["rows"]
    for name in tasks:
        got = {r["method"]: r for r in rows if r["task"] == name}
        assert set(got) == set(train_e2e.METHODS), (name, got.keys())
        for r in got.values():
            assert "error" not in r, r
            assert 0.0 <= r["P@1"] <= 1.0 and 0.0 <= r["lss_P@1"] <= 1.0
            assert r["steps"] == tasks[name].steps and r["train_s"] > 0
            assert [p["step"] for p in r["curve"]][-1] == r["steps"]
            assert all(0.0 <= p["P@1"] <= 1.0 for p in r["curve"])
        assert got["full"]["speedup"] == 1.0 and "diff_vs_full" in got["lss-sparse"]
        assert "vs_uniform" in got["lss-adamw"]
    md = (ctx.out_dir / "train-e2e-quick.md").read_text()
    for m in train_e2e.METHODS:
        assert f"| {m} |" in md
    assert "Acceptance bars" in md and "machine:" in md
    saved = json.loads((ctx.out_dir / "train-e2e-quick.json").read_text())
    assert saved["machine"]["mode"] == "quick" and len(saved["rows"]) == len(rows)
    assert (ctx.out_dir / "train-e2e-quick.png").exists()


def test_e2e_training_tiny_synthetic(ctx):
    torch.set_num_threads(1)
    task = train_e2e.synthetic_task(ctx, 8, num_labels=1500, dim=16, num_train=3000, num_test=400,
                                    curve_queries=200, fit_pairs=1000)
    payload = train_e2e.run(ctx, {"synthetic": task}, fit=train_e2e.METHODS)
    _check(payload, ctx, {"synthetic": task})


def test_e2e_training_tiny_wordnet_and_lm(ctx):
    """The WordNet fixture (multi-label rows) and a made-up text for the LM."""
    torch.set_num_threads(1)
    wn = train_e2e.wordnet_task(ctx, 4, parts=("noun", "verb", "adj", "adv"), root=str(FIXTURE_WORDNET),
                                min_token_count=1, curve_queries=50,
                                fit_pairs=50)
    words = "the cat sat on the mat . a dog ran to the park , and the cat ran after it".split()
    texts = [(i, " ".join(words[i % 7:] + words[: i % 7])) for i in range(60)]
    cfg = GcideLMConfig(vocab_size=30, context=2, embed_dim=4, hidden=8, dim=8, max_test=50, test_fraction=0.2)
    lm = train_e2e.lm_task(ctx, 4, cfg=cfg, texts=texts, curve_queries=20, fit_pairs=100)
    payload = train_e2e.run(ctx, {"wordnet": wn, "lm": lm}, fit=train_e2e.METHODS)
    _check(payload, ctx, {"wordnet": wn, "lm": lm})


def test_batch_schedule_is_seeded_and_covers_epochs():
    a = train_e2e.batch_schedule(10, 7, 4, seed=3)
    b = train_e2e.batch_schedule(10, 7, 4, seed=3)
    assert len(a) == 7 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a[:2]).tolist()) == sorted(set(torch.cat(a[:2]).tolist()))  # no repeat in an epoch
    assert train_e2e.checkpoints(300) == [50, 100, 150, 200, 250, 300]


def test_full_mode_trains_wordnet_and_synthetic_one_epoch(monkeypatch):
    # STEPS' EPOCH entries resolve to training rows // batch once the task is built.
    ctx = RunContext(None, quick=False, threads=1, verbose=False)
    assert train_e2e.STEPS["wordnet"] is train_e2e.EPOCH and train_e2e.STEPS["synthetic"] is train_e2e.EPOCH
    small = train_e2e.synthetic_task
    monkeypatch.setattr(train_e2e, "synthetic_task",
                        lambda c, steps: small(c, steps, num_labels=500, dim=8, num_train=1300, num_test=50))
    task = train_e2e.build_task(ctx, "synthetic", None)
    assert task.steps == 1300 // train_e2e.BATCH == 5
    assert train_e2e.build_task(ctx, "synthetic", 7).steps == 7  # --steps still wins
