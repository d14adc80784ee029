"""lsskernels/partition/kmeans.py: the k-means the partition index is built
with and its assignment."""
import pytest
import torch

from lsskernels.partition import kmeans as km


def clustered(n, d, clusters, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(clusters, d, generator=g)
    return centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, d, generator=g)


def test_nearest_centroid_does_not_depend_on_the_chunk():
    # nearest_centroid's row chunks are sized by the centroid count; a row's
    # result (ties included) must not depend on that size: fit() stays a
    # function of its inputs whatever P.
    g = torch.Generator().manual_seed(0)
    v, c = torch.randn(3000, 17, generator=g), torch.randn(300, 17, generator=g)
    c[7] = c[9]  # a tie: the smaller centroid wins
    v[:5] = c[9]
    want = torch.cdist(v.double(), c.double()).argmin(1)
    for block in (1 << 20, 300 * 256, 300 * 1000):
        got = km.nearest_centroid(v, c, block=block)
        assert torch.equal(got, km.nearest_centroid(v, c))
        assert (got == want).float().mean() > 0.999
    assert bool((km.nearest_centroid(v, c)[:5] == 7).all())
    assert km.nearest_centroid(v[:0], c).shape == (0,)


def test_kmeans_is_a_function_of_its_rows_count_and_seed():
    v = clustered(5000, 12, 40)
    a = km.kmeans(v, 64, iters=4, sample=16, gen=torch.Generator().manual_seed(3))
    b = km.kmeans(v, 64, iters=4, sample=16, gen=torch.Generator().manual_seed(3))
    assert a.shape == (64, 12) and torch.equal(a, b)
    assert not torch.equal(a, km.kmeans(v, 64, iters=4, sample=16, gen=torch.Generator().manual_seed(4)))
    # Lloyd's iterations only tighten the clusters of the seeded start.
    start = km.kmeans(v, 64, iters=0, sample=16, gen=torch.Generator().manual_seed(3))

    def spread(c):
        return (v - c[km.nearest_centroid(v, c)]).pow(2).sum(1).mean()

    assert spread(a) < spread(start)


def test_no_partition_is_left_empty_where_rows_can_fill_it():
    # Duplicate rows (labels never trained keep one weight row, e.g. zeros)
    # seed several identical centroids; the nearest-centroid tie sends every
    # row to the first, and the others stayed empty: list space wasted and,
    # in a label space, the largest clusters left unsplit.
    v = torch.cat([clustered(6000, 8, 12, seed=1), torch.zeros(600, 8)])
    for seed in range(3):
        c = km.kmeans(v, 48, iters=6, sample=64, gen=torch.Generator().manual_seed(seed))
        sizes = torch.bincount(km.nearest_centroid(v, c), minlength=48)
        assert int((sizes == 0).sum()) <= 1, sizes  # the zero rows cannot be split: at most their twin stays empty


def test_an_emptied_centroid_splits_the_largest_cluster():
    c = torch.arange(12, dtype=torch.float32).reshape(4, 3) + 1
    counts = torch.tensor([5, 0, 9, 0])
    out = km._split_largest(c.clone(), counts)
    step = torch.tensor([1.0, -1.0, 1.0]) / 1024
    # The first empty (1) halves the largest (2: 9 -> 5 + 4); the second
    # empty (3) the then largest, 0 and 2 tied at 5: the smaller index.
    assert torch.equal(out[1], c[2] * (1 + step))
    assert torch.equal(out[3], c[0] * (1 + step))
    assert torch.equal(out[0], c[0] * (1 - step))
    assert torch.equal(out[2], c[2] * (1 - step))
    # Nothing empty: unchanged.
    assert torch.equal(km._split_largest(c.clone(), torch.tensor([1, 2, 3, 4])), c)


def test_label_vectors_without_a_copy_are_the_same():
    # k-means of [w, b] given as weight + bias (bias=), and of the rows a
    # subset names (among=), as of the copies fit() used to make.
    w = clustered(3000, 11, 20, seed=4)
    b = torch.randn(3000, generator=torch.Generator().manual_seed(9))
    wb = torch.cat([w, b.unsqueeze(1)], 1)
    gen = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    c = km.kmeans(wb, 40, iters=3, sample=16, gen=gen())
    assert torch.equal(km.kmeans(w, 40, iters=3, sample=16, gen=gen(), bias=b), c)
    assert torch.equal(km.nearest_centroid(w, c, bias=b), km.nearest_centroid(wb, c))
    rows = torch.arange(0, 3000, 3)
    assert torch.equal(km.kmeans(w, 40, iters=3, sample=16, gen=gen(), among=rows),
                       km.kmeans(w[rows], 40, iters=3, sample=16, gen=gen()))
    with pytest.raises(ValueError, match="centroids have 12 columns, the rows 11"):
        km.nearest_centroid(w, c)
