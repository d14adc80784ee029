"""lsskernels/partition/kmeans.py: the k-means the partition index is built
with and its assignment."""
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

