"""Tests for the benchmarks' data (bench/data/): the dense metrics and the
WordNet task (on a tiny fixture; on the real files when installed)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data.metrics import dense_precision_at_1, dense_top1, hits_at_1  # noqa: E402
from bench.data.wordnet import make_wordnet_task  # noqa: E402
from lsskernels.data import LabelTask, SparseBag  # noqa: E402

FIXTURE_WORDNET = Path(__file__).parent / "data" / "wordnet"
REAL_WORDNET = "/usr/share/wordnet"

# ---------------------------------------------------------------------------
# Dense evaluation helpers
# ---------------------------------------------------------------------------


def test_dense_top1_matches_full_argmax_across_tiles():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(1000, 24, generator=g), torch.randn(1000, generator=g)
    x = torch.randn(77, 24, generator=g)
    want = (x @ w.T + b).argmax(1)
    # Tiny chunks and tiles force many query chunks and label tiles, ragged at both ends.
    assert torch.equal(dense_top1(w, b, x, chunk=10, max_tile_elements=10 * 33), want)
    assert torch.equal(dense_top1(w, None, x), (x @ w.T).argmax(1))


def test_dense_precision_at_1_single_and_multi_label():
    w = torch.eye(4)
    x = torch.eye(4)[[0, 1, 2, 3]] * 5
    assert dense_precision_at_1(w, None, x, torch.tensor([0, 1, 3, 3])) == pytest.approx(0.75)
    multi = torch.tensor([[2, 0], [1, -1], [-1, -1], [0, 3]])
    assert dense_precision_at_1(w, None, x, multi) == pytest.approx(0.75)
    assert hits_at_1(torch.tensor([0, -1]), torch.tensor([[-1, -1], [-1, -1]])).tolist() == [False, False]
    with pytest.raises(ValueError, match="x has 4 rows but y has 3"):
        dense_precision_at_1(w, None, x, torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------------------
# WordNet task: tiny fixture in WordNet's data-file format
# ---------------------------------------------------------------------------


def _label_tokens(name: str) -> set[str]:
    return set(name.replace("_", " ").replace("-", " ").split())


def test_wordnet_fixture_labels_and_shapes():
    task = make_wordnet_task(FIXTURE_WORDNET, seed=0, test_fraction=0.3, min_token_count=1)
    names = task.meta["labels"]
    # Lemmas of synsets with usage examples; "faucet" has none; "(a)" marker stripped.
    assert names == sorted(
        "able bell bell_ringing choke douse drench drippy endlessly go_running leaky run running soak stamp toll"
        .split()
    )
    assert task.num_labels == len(names)
    # 10 synsets with a label-set lemma give definitions; 15 usage examples are split 30/70.
    assert len(task.train_x) + len(task.test_x) == 10 + 15
    assert len(task.test_x) == round(0.3 * 15)
    assert task.train_y.shape[1] == 3  # drench / douse / soak
    assert isinstance(task.train_x, SparseBag) and task.train_x.num_features == len(task.meta["vocabulary"])
    assert task.input_dim == len(task.meta["vocabulary"])
    # "run" is a label of both its noun and its verb synsets (merged across parts of speech).
    run = names.index("run")
    assert int((task.train_y == run).any(1).sum() + (task.test_y == run).any(1).sum()) >= 2 + 4 - 1


def test_wordnet_fixture_all_lemmas():
    task = make_wordnet_task(FIXTURE_WORDNET, label_set="all", min_token_count=1)
    assert "faucet" in task.meta["labels"] and task.num_labels == 16


def test_wordnet_masks_the_target_word_and_its_inflections():
    # test_fraction 0.99 puts every usage example in the test split.
    task = make_wordnet_task(FIXTURE_WORDNET, test_fraction=0.99, min_token_count=1, with_definition=False)
    names = task.meta["labels"]
    texts = task.meta["test_text"]
    assert len(texts) == len(task.test_x)
    for text, row in zip(texts, task.test_y.tolist()):
        tokens = set(text.split())
        for label in (names[i] for i in row if i >= 0):
            assert not tokens & _label_tokens(label), (text, label)
    joined = " | ".join(texts)
    # Inflected ("choked", "drenched", "running") and irregular ("ran", from verb.exc) forms are gone,
    # the rest of the context stays.
    for gone in ("choked", "drenched", "running", "ran", "bells", "endlessly"):
        assert gone not in joined.split(), gone
    for kept in ("store", "emotion", "garden", "envelope", "faucet"):
        assert kept in joined.split(), kept


def test_wordnet_features_are_normalised_tfidf_from_training_text():
    task = make_wordnet_task(FIXTURE_WORDNET, seed=1, test_fraction=0.5, min_token_count=2)
    vocab = task.meta["vocabulary"]
    for bag in (task.train_x, task.test_x):
        dense = bag.to_dense()
        norms = dense.norm(dim=1)
        nonempty = bag.row_lengths() > 0
        torch.testing.assert_close(norms[nonempty], torch.ones(int(nonempty.sum())))
        assert (dense >= 0).all()
    # Every kept test row has a known token; training rows may not (tokens seen once are dropped).
    assert (task.test_x.row_lengths() > 0).all()
    # min_token_count=2: every vocabulary token occurs in at least two training rows.
    df = (task.train_x.to_dense() > 0).sum(0)
    assert (df >= 2).all() and len(vocab) == df.numel()


def test_wordnet_split_is_deterministic_by_seed():
    a = make_wordnet_task(FIXTURE_WORDNET, seed=5, min_token_count=1)
    b = make_wordnet_task(FIXTURE_WORDNET, seed=5, min_token_count=1)
    assert a.meta["test_text"] == b.meta["test_text"] and torch.equal(a.test_y, b.test_y)
    assert torch.equal(a.train_x.indices, b.train_x.indices) and torch.equal(a.train_x.weights, b.train_x.weights)
    splits = {tuple(make_wordnet_task(FIXTURE_WORDNET, seed=s, min_token_count=1).meta["test_text"]) for s in range(6)}
    assert len(splits) > 1


def test_wordnet_with_definition_adds_the_gloss_to_test_text():
    task = make_wordnet_task(FIXTURE_WORDNET, test_fraction=0.99, min_token_count=1)
    text = next(t for t in task.meta["test_text"] if t.startswith("he put a on the envelope"))
    assert text.split(" | ")[1].startswith("a small adhesive token")


def test_wordnet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        make_wordnet_task(tmp_path)
    with pytest.raises(ValueError, match="label_set must be"):
        make_wordnet_task(FIXTURE_WORDNET, label_set="some")
    with pytest.raises(ValueError, match="test_fraction must be in"):
        make_wordnet_task(FIXTURE_WORDNET, test_fraction=1.0)
    bad = tmp_path / "data.noun"
    bad.write_text("  1 header\n00001740 03 n 01 entity 0 000 | fine\n00001930 03 n zz thing 0 000 | broken\n")
    with pytest.raises(ValueError, match=r"data.noun:3: not a WordNet data line"):
        make_wordnet_task(tmp_path, parts=("noun",))


# ---------------------------------------------------------------------------
# WordNet task on the real files (Debian package wordnet-base)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_wordnet() -> LabelTask:
    if not os.path.exists(os.path.join(REAL_WORDNET, "data.noun")):
        pytest.skip(f"WordNet not installed at {REAL_WORDNET} (apt-get install wordnet-base)")
    return make_wordnet_task(REAL_WORDNET, seed=0)


def test_real_wordnet_sizes(real_wordnet):
    t = real_wordnet
    assert 30_000 < t.num_labels < 40_000
    assert 70_000 < len(t.train_x) < 100_000
    assert 10_000 < len(t.test_x) < 14_000
    assert 10_000 < t.train_x.num_features < 30_000
    assert t.train_y.shape[1] >= 10 and (t.train_y[:, 0] >= 0).all() and (t.test_y[:, 0] >= 0).all()


def test_real_wordnet_test_text_never_contains_the_answer(real_wordnet):
    names, texts = real_wordnet.meta["labels"], real_wordnet.meta["test_text"]
    for text, row in zip(texts, real_wordnet.test_y.tolist()):
        tokens = set(text.replace("|", " ").split())
        for label in (names[i] for i in row if i >= 0):
            assert not tokens & set(label.replace("_", " ").split()), (text, label)


def test_real_wordnet_feeds_embedding_bag(real_wordnet):
    x = real_wordnet.test_x.subset(torch.arange(100))
    emb = torch.nn.EmbeddingBag(x.num_features, 8, mode="sum")
    h = emb(x.indices, x.offsets[:-1], per_sample_weights=x.weights)
    assert h.shape == (100, 8) and torch.isfinite(h).all()
