"""lsskernels/row_argmax.py: the best table row of many rows, the
assignment of k-means and the calibration's dense top-1 (exact, or through
a bf16 screen with fp32 rescoring)."""
import pytest
import torch

from lsskernels import fit_pairs
from lsskernels import row_argmax as ra
from lsskernels.partition import kmeans as km


def test_two_stage_argmax_is_the_first_maximum():
    # Integer scores with many ties: the first index of each row's maximum,
    # as torch.max(1) returns it.
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 6, (500, 4 * ra._COLS), generator=g).float()
    scores[3] = 5.0  # a whole row tied: index 0
    out = torch.empty(500, dtype=torch.int64)
    ra.first_argmax(scores, out)
    assert torch.equal(out, scores.max(1).indices) and out[3] == 0


def test_screen_finds_the_best_entries_in_the_best_blocks():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(300, 6 * ra._COLS, generator=g)
    scores[0, 5] = scores[0, 6] = scores[0, 7] = 50.0  # three best in one block
    got = ra.screened(scores, 4).sort(1).values
    assert torch.equal(got, scores.topk(4, 1).indices.sort(1).values)
    # More kept than blocks: still the best `keep` columns.
    small = torch.randn(20, ra._COLS, generator=g)
    assert torch.equal(ra.screened(small, 4).sort(1).values, small.topk(4, 1).indices.sort(1).values)


def integer_points(n, p, d=9, seed=2):
    # Small integer coordinates: every fp32 score is exact, so ties are real
    # and "nearest" has one answer (the first of the tied).
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-4, 5, (n, d), generator=g).float(),
            torch.randint(-4, 5, (p, d), generator=g).float())


def nearest_sq(v, c):
    return torch.cdist(v.double(), c.double()).pow(2).round()


def test_padded_blocks_keep_the_exact_first_nearest():
    # P = 4,100 takes the two-stage argmax and is not a multiple of its
    # block: the padding rows must never win, ties go to the first.
    assert ra.TWO_STAGE_MIN_ROWS <= 4100 < ra.SCREEN_MIN_ROWS
    v, c = integer_points(2000, 4100)
    c[50] = c[4090]
    v[:3] = c[4090]
    got = km.nearest_centroid(v, c)
    d2 = nearest_sq(v, c)
    want = (d2 == d2.min(1, keepdim=True).values).int().argmax(1)
    assert torch.equal(got, want) and bool((got[:3] == 50).all())


@pytest.fixture
def forced_screen(monkeypatch):
    # bf16 GEMMs run on any CPU, only slower: the screen can be tested here.
    monkeypatch.setattr(ra, "SCREEN_MIN_ROWS", 0)
    monkeypatch.setattr(ra._ops, "cpu_has_bf16_dot", lambda: True)


def test_bf16_screen_keeps_the_nearest(forced_screen):
    v, c = integer_points(3000, 600)
    c[7] = c[590]
    v[:4] = c[590]
    assert ra.screens_in_bf16(v.device, c.shape[0])
    got = km.nearest_centroid(v, c)
    # Ties go to the smaller index among the kept; a row's answer is at the
    # nearest distance unless the screen lost every nearest centroid (bf16
    # keeps ~3 digits: rows with more than SCREEN_KEEP centroids within one
    # unit of integer distance).
    assert bool((got[:4] == 7).all())
    d2 = nearest_sq(v, c)
    assert (d2.gather(1, got[:, None]) == d2.min(1, keepdim=True).values).float().mean() > 0.99
    # Clustered rows far from the origin: without the centring bf16 loses
    # the digits that separate the centroids.
    x = 4 * torch.randn(300, 32, generator=torch.Generator().manual_seed(5)) + 50.0
    rows = x[torch.randint(300, (4000,), generator=torch.Generator().manual_seed(6))]
    rows = rows + torch.randn(4000, 32, generator=torch.Generator().manual_seed(7))
    want = torch.cdist(rows.double(), x.double()).argmin(1)
    assert (km.nearest_centroid(rows, x) == want).float().mean() > 0.999
    # Chunk sizes do not change a row's answer.
    assert torch.equal(km.nearest_centroid(rows, x, block=300 * 256), km.nearest_centroid(rows, x, block=300 * 900))


def test_bf16_screen_is_off_without_native_bf16(monkeypatch):
    monkeypatch.setattr(ra._ops, "cpu_has_bf16_dot", lambda: False)
    assert not ra.screens_in_bf16(torch.device("cpu"), 1 << 20)
    monkeypatch.setattr(ra._ops, "cpu_has_bf16_dot", lambda: True)
    assert ra.screens_in_bf16(torch.device("cpu"), ra.SCREEN_MIN_ROWS)
    assert not ra.screens_in_bf16(torch.device("cpu"), ra.SCREEN_MIN_ROWS - 1)


@pytest.mark.parametrize("screen", [False, True])
def test_dense_top1_over_label_blocks(monkeypatch, screen):
    # Three label blocks (the last one short); a tie across blocks keeps the
    # earlier block's smaller label; the fp16 weight takes F.linear.
    monkeypatch.setattr(fit_pairs, "LABEL_BLOCK", 400)
    if screen:
        monkeypatch.setattr(ra, "SCREEN_MIN_ROWS", 0)
        monkeypatch.setattr(ra._ops, "cpu_has_bf16_dot", lambda: True)
    g = torch.Generator().manual_seed(8)
    w, b, q = torch.randn(1000, 24, generator=g), torch.randn(1000, generator=g), torch.randn(700, 24, generator=g)
    w[950], b[950] = w[30], b[30]
    q[:5] = 20 * w[30]
    want = torch.nn.functional.linear(q.double(), w.double(), b.double()).argmax(1)
    got = fit_pairs.dense_top1(w, b, q)
    assert bool((got[:5] == 30).all()) and (got == want).float().mean() > 0.995
    assert torch.equal(fit_pairs.dense_top1(w, None, q),
                       torch.nn.functional.linear(q.double(), w.double()).argmax(1)) or screen
    assert (fit_pairs.dense_top1(w.half(), b.half(), q) == want).float().mean() > 0.95
