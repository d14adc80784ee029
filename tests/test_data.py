"""Tests for lsskernels.data: sparse bags, label tasks, the synthetic task
and the XC reader.  (The benchmarks' WordNet task and metrics are tested in
tests/test_bench_data.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsskernels.data import (
    LabelTask,
    SparseBag,
    SyntheticTask,
    make_synthetic_task,
    pad_label_lists,
    read_xc_file,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data.metrics import dense_precision_at_1, dense_top1  # noqa: E402  (the synthetic task's P@1)

# ---------------------------------------------------------------------------
# SparseBag
# ---------------------------------------------------------------------------


def _example_bag() -> SparseBag:
    # Row 1 is empty, row 3 repeats feature 4 (EmbeddingBag sums repeats).
    return SparseBag.from_rows(
        [([0, 3], [1.0, 0.5]), ([], []), ([2], [2.0]), ([4, 1, 4], [0.25, -1.0, 0.75])],
        num_features=5,
    )


def test_sparse_bag_feeds_embedding_bag():
    torch.manual_seed(0)
    bag = _example_bag()
    emb = torch.nn.EmbeddingBag(bag.num_features, 6, mode="sum")
    got = emb(bag.indices, bag.offsets[:-1], per_sample_weights=bag.weights)
    want = bag.to_dense() @ emb.weight
    torch.testing.assert_close(got, want)
    assert len(bag) == 4 and bag.nnz == 6
    assert got[1].abs().sum() == 0  # the empty row


def test_sparse_bag_subset_matches_dense_rows():
    bag = _example_bag()
    dense = bag.to_dense()
    for rows in ([3, 0, 0, 1], [], [2], torch.tensor([1, 1])):
        sub = bag.subset(rows)
        idx = torch.as_tensor(rows, dtype=torch.int64)
        assert len(sub) == idx.numel()
        torch.testing.assert_close(sub.to_dense(), dense[idx])
        assert sub.num_features == bag.num_features
    mask = torch.tensor([True, False, False, True])
    torch.testing.assert_close(bag.subset(mask).to_dense(), dense[mask])


def test_sparse_bag_to_keeps_contents():
    bag = _example_bag()
    moved = bag.to("cpu")
    assert torch.equal(moved.indices, bag.indices) and torch.equal(moved.offsets, bag.offsets)
    assert torch.equal(moved.weights, bag.weights) and moved.num_features == bag.num_features
    meta = bag.to("meta")
    assert meta.indices.device.type == "meta" and len(meta) == len(bag)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 5), min_size=0, max_size=12),
    num_features=st.integers(1, 9),
    data=st.data(),
)
def test_sparse_bag_subset_property(lengths, num_features, data):
    rng = np.random.default_rng(len(lengths) * 31 + num_features)
    rows = [
        (rng.integers(0, num_features, size=n).tolist(), rng.standard_normal(n).astype(np.float32).tolist())
        for n in lengths
    ]
    bag = SparseBag.from_rows(rows, num_features)
    picks = data.draw(st.lists(st.integers(0, max(0, len(lengths) - 1)), max_size=10)) if lengths else []
    sub = bag.subset(picks)
    dense = bag.to_dense()
    torch.testing.assert_close(sub.to_dense(), dense[torch.tensor(picks, dtype=torch.int64)])
    torch.testing.assert_close(sub.row_lengths(), bag.row_lengths()[torch.tensor(picks, dtype=torch.int64)])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(indices=torch.tensor([0, 5]), offsets=torch.tensor([0, 2]), num_features=5), "indices must lie in"),
        (dict(indices=torch.tensor([-1, 0]), offsets=torch.tensor([0, 2]), num_features=5), "indices must lie in"),
        (dict(indices=torch.tensor([0, 1]), offsets=torch.tensor([0, 1]), num_features=5), "end at nnz=2"),
        (dict(indices=torch.tensor([0, 1]), offsets=torch.tensor([0, 2, 1, 2]), num_features=5), "non-decreasing"),
        (
            dict(indices=torch.tensor([0, 1], dtype=torch.int32), offsets=torch.tensor([0, 2]), num_features=5),
            "indices must be a 1-D torch.int64",
        ),
    ],
)
def test_sparse_bag_rejects_malformed(kwargs, message):
    weights = torch.ones(kwargs["indices"].numel())
    with pytest.raises(ValueError, match=message):
        SparseBag(weights=weights, **kwargs)


def test_sparse_bag_rejects_bad_weights_and_rows():
    with pytest.raises(ValueError, match="weights has 1 entries but indices has 2"):
        SparseBag(torch.tensor([0, 1]), torch.tensor([0, 2]), torch.ones(1), 3)
    with pytest.raises(ValueError, match="weights must be a 1-D torch.float32"):
        SparseBag(torch.tensor([0, 1]), torch.tensor([0, 2]), torch.ones(2, dtype=torch.float64), 3)
    bag = _example_bag()
    with pytest.raises(ValueError, match=r"row ids must lie in \[0, 4\)"):
        bag.subset([4])
    with pytest.raises(ValueError, match="bool mask"):
        bag.subset(torch.tensor([True]))


def test_pad_label_lists():
    y = pad_label_lists([[3], [], [1, 2, 0]])
    assert y.dtype == torch.int64
    assert y.tolist() == [[3, -1, -1], [-1, -1, -1], [1, 2, 0]]
    assert pad_label_lists([[], []]).shape == (2, 1)
    assert pad_label_lists([]).shape == (0, 1)


def test_label_task_validates():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="train_x has 3 rows but train_y has 2"):
        LabelTask("t", x, torch.zeros(2, dtype=torch.int64), x, torch.zeros(3, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match=r"test_y must lie in \[0, num_labels=4\)"):
        LabelTask("t", x, torch.zeros(3, dtype=torch.int64), x, torch.tensor([0, 4, -1]), 4)
    with pytest.raises(ValueError, match="must be int64"):
        LabelTask("t", x, torch.zeros(3, dtype=torch.int32), x, torch.zeros(3, dtype=torch.int64), 4)
    task = LabelTask("t", x, torch.tensor([[0, -1], [1, 2], [3, -1]]), x, torch.zeros(3, dtype=torch.int64), 4)
    assert task.input_dim == 2 and task.meta == {}
    # Short reprs: a task's meta can hold 100K-entry lists.
    task.meta["labels"] = ["w"] * 100_000
    assert len(repr(task)) < 400 and "num_labels=4" in repr(task)
    assert repr(_example_bag()) == "SparseBag(n=4, nnz=6, num_features=5, device=cpu)"


# ---------------------------------------------------------------------------
# Synthetic task (small instance; the default size is measured in the module docs)
# ---------------------------------------------------------------------------

SMALL = dict(num_labels=5000, dim=64, num_train=30_000, num_test=4000, seed=3)


@pytest.fixture(scope="module")
def small_task() -> SyntheticTask:
    return make_synthetic_task(**SMALL)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return torch.corrcoef(torch.stack([ra, rb]))[0, 1].item()


def _zipf_slope(labels: torch.Tensor, num_labels: int, top: int) -> float:
    counts = torch.bincount(labels, minlength=num_labels).sort(descending=True).values[:top].double()
    ranks = torch.arange(1, top + 1, dtype=torch.float64)
    return float(np.polyfit(ranks.log().numpy(), counts.clamp(min=1).log().numpy(), 1)[0])


def test_synthetic_shapes_and_dtypes(small_task):
    t = small_task
    n, d = SMALL["num_labels"], SMALL["dim"]
    assert isinstance(t, LabelTask)
    assert t.weight.shape == (n, d) and t.weight.dtype == torch.float32
    assert t.bias.shape == (n,) and t.bias.dtype == torch.float32
    assert t.train_x.shape == (SMALL["num_train"], d) and t.train_x.dtype == torch.float32
    assert t.test_x.shape == (SMALL["num_test"], d)
    assert t.train_y.dtype == torch.int64 and t.train_y.shape == (SMALL["num_train"],)
    assert 0 <= int(t.train_y.min()) and int(t.train_y.max()) < n
    assert t.num_labels == n and t.input_dim == d
    assert torch.isfinite(t.weight).all() and torch.isfinite(t.bias).all() and torch.isfinite(t.train_x).all()


def test_synthetic_is_deterministic():
    kw = dict(num_labels=600, dim=16, num_train=300, num_test=50)
    a, b = make_synthetic_task(**kw, seed=7), make_synthetic_task(**kw, seed=7)
    c = make_synthetic_task(**kw, seed=8)
    for name in ("weight", "bias", "train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.weight, c.weight) and not torch.equal(a.train_y, c.train_y)


def test_synthetic_labels_are_clustered(small_task):
    t = small_task
    cluster = t.meta["cluster"]
    u = torch.nn.functional.normalize(t.weight, dim=1)
    g = torch.Generator().manual_seed(0)
    i = torch.randint(t.num_labels, (20000,), generator=g)
    j = torch.randint(t.num_labels, (20000,), generator=g)
    same = (cluster[i] == cluster[j]) & (i != j)
    cos = (u[i] * u[j]).sum(1)
    assert cos[same].mean() > 0.6 and cos[~same].abs().mean() < 0.2
    # Random hyperplane hashing (8 bits) collides siblings far more than strangers.
    proj = torch.randn(t.weight.shape[1], 8, generator=g)
    code = ((t.weight @ proj > 0).long() << torch.arange(8)).sum(1)
    collide = code[i] == code[j]
    assert collide[same].float().mean() > 10 * collide[~same].float().mean()
    assert collide[same].float().mean() > 0.1


def test_synthetic_label_frequencies_follow_zipf(small_task):
    t = small_task
    for labels in (t.train_y, t.test_y):
        slope = _zipf_slope(labels, t.num_labels, top=30)
        assert -1.35 < slope < -0.7, slope
    # Train and test draw from the same prior, the one in meta.
    prior = t.meta["prior"]
    assert torch.isclose(prior.sum(), torch.tensor(1.0))
    top = prior.argsort(descending=True)[:20]
    counts = torch.bincount(t.train_y, minlength=t.num_labels).double()
    expected = prior.double() * t.train_y.numel()
    assert torch.allclose(counts[top], expected[top], rtol=0.25)


def test_synthetic_norms_and_biases_vary_like_a_trained_layer(small_task):
    t = small_task
    norms = t.weight.norm(dim=1)
    assert torch.quantile(norms, 0.99) > 2.5 * torch.quantile(norms, 0.01)
    # Within a cluster (equal geometry), more popular labels get a larger bias.
    cluster, log_prior = t.meta["cluster"], t.meta["prior"].log()
    rhos = [
        _spearman(t.bias[cluster == k], log_prior[cluster == k])
        for k in range(t.meta["num_clusters"])
        if int((cluster == k).sum()) > 50
    ]
    assert sum(rhos) / len(rhos) > 0.3
    # The top-1 popular labels have a larger bias than the average label.
    top = log_prior >= torch.quantile(log_prior, 0.99)
    assert t.bias[top].mean() > t.bias[~top].mean()


def test_synthetic_true_logit_is_often_moderate(small_task):
    """What defeats a MIPS index: many correctly classified queries win with
    a logit below the typical top logit of other queries, and their label's
    bias-augmented vector is short compared with the longest one."""
    t = small_task
    x, y = t.test_x, t.test_y
    pred = dense_top1(t.weight, t.bias, x)
    top_logit = (x * t.weight[pred]).sum(1) + t.bias[pred]
    correct = pred == y
    below_median = top_logit[correct] < top_logit.median()
    assert below_median.float().mean() > 0.2
    augmented = torch.cat([t.weight, t.bias.unsqueeze(1)], 1).norm(dim=1)
    assert (augmented[y] / augmented.max()).median() < 0.5
    spread = torch.quantile(top_logit, 0.9) - torch.quantile(top_logit, 0.1)
    assert spread > 10


def test_synthetic_dense_precision_is_meaningful_but_imperfect(small_task):
    t = small_task
    p1 = dense_precision_at_1(t.weight, t.bias, t.test_x, t.test_y, chunk=512)
    assert 0.3 < p1 < 0.85, p1
    # Mistakes are mostly between near-duplicate siblings.
    pred = dense_top1(t.weight, t.bias, t.test_x)
    wrong = pred != t.test_y
    cluster = t.meta["cluster"]
    assert (cluster[pred[wrong]] == cluster[t.test_y[wrong]]).float().mean() > 0.7


def test_synthetic_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_clusters must be in"):
        make_synthetic_task(num_labels=10, dim=4, num_train=5, num_test=5, num_clusters=11)
    with pytest.raises(ValueError, match="need num_labels >= 1"):
        make_synthetic_task(num_labels=0)


# ---------------------------------------------------------------------------
# Extreme Classification Repository files
# ---------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "train.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_xc_file_parses_all_line_shapes(tmp_path):
    path = _write(
        tmp_path,
        "5 6 4\n"
        "0,3 1:0.5 4:2\n"  # labels and features
        " 2:1.5\n"  # no labels, line starts with a space
        "5:0.25 0:1\n"  # no labels, line starts with a feature
        "1\n"  # labels, no features
        "2,2 3:-1e-1\n",  # repeated label kept
    )
    bag, labels, num_labels = read_xc_file(path)
    assert num_labels == 4 and bag.num_features == 6 and len(bag) == 5
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[0, 3], [-1, -1], [-1, -1], [1, -1], [2, 2]]
    assert bag.offsets.tolist() == [0, 2, 3, 5, 5, 6]
    assert bag.indices.tolist() == [1, 4, 2, 5, 0, 3]
    torch.testing.assert_close(bag.weights, torch.tensor([0.5, 2.0, 1.5, 0.25, 1.0, -0.1]))


def test_read_xc_file_tolerates_trailing_newlines_and_crlf(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"2 3 2\r\n1 0:1\r\n0,1 2:3\r\n\n\n")
    bag, labels, _ = read_xc_file(path)
    assert labels.tolist() == [[1, -1], [0, 1]]
    assert bag.indices.tolist() == [0, 2]


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.integers(0, 6), max_size=4),
            st.lists(st.tuples(st.integers(0, 9), st.floats(-100, 100, width=32)), max_size=5),
        ),
        max_size=8,
    )
)
def test_read_xc_file_round_trip(tmp_path_factory, rows):
    lines = [f"{len(rows)} 10 7"]
    for labels, feats in rows:
        lines.append(",".join(map(str, labels)) + " " + " ".join(f"{f}:{v!r}" for f, v in feats))
    path = tmp_path_factory.mktemp("xc") / "rt.txt"
    path.write_text("\n".join(lines) + "\n")
    bag, labels, num_labels = read_xc_file(path)
    assert num_labels == 7 and len(bag) == len(rows)
    assert labels.tolist() == pad_label_lists([r[0] for r in rows]).tolist()
    want = SparseBag.from_rows([([f for f, _ in fs], [v for _, v in fs]) for _, fs in rows], 10)
    assert torch.equal(bag.indices, want.indices) and torch.equal(bag.offsets, want.offsets)
    assert torch.equal(bag.weights, want.weights)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"empty file"),
        ("2 3\n0 1:1\n1 2:1\n", r"bad.txt:1: bad header"),
        ("2 3 x\n0 1:1\n1 2:1\n", r"bad.txt:1: bad header"),
        ("3 3 2\n0 1:1\n1 2:1\n", r"bad.txt: header says 3 points but the file has 2 data lines"),
        ("1 3 2\n0 1:1\n1 2:1\n", r"header says 1 points but the file has 2"),
        ("2 3 2\n0 1:1\n2 2:1\n", r"bad.txt:3: label id 2 out of range \[0, 2\)"),
        ("2 3 2\n0 1:1\n-1 2:1\n", r"bad.txt:3: label id -1 out of range"),
        ("2 3 2\n0 3:1\n1 2:1\n", r"bad.txt:2: feature id 3 out of range \[0, 3\)"),
        ("2 3 2\n0 1:1\n1 2\n", r"bad.txt:3: bad feature '2'"),
        ("2 3 2\n0 1:abc\n1 2:1\n", r"bad.txt:2: bad feature '1:abc'"),
        ("2 3 2\n0,x 1:1\n1 2:1\n", r"bad.txt:2: bad label list '0,x'"),
        ("2 3 2\n0,,1 1:1\n1 2:1\n", r"bad.txt:2: bad label list"),
        ("2 3 2\n0 1:1\n\n1 2:1\n", r"bad.txt:3: empty line"),
    ],
)
def test_read_xc_file_errors_name_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, text, "bad.txt")
    with pytest.raises(ValueError, match=message):
        read_xc_file(path)
