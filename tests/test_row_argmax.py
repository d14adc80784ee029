"""lsskernels/row_argmax.py: the best table row of many rows, the
assignment of k-means and the calibration's dense top-1 (exact, or through
a bf16 screen with fp32 rescoring)."""
import pytest
import torch

from lsskernels import _ops, fit_pairs
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


def row_topk_reference(scores, k):
    # Larger first, ties to the smaller column; NaN and -inf never enter, a
    # short row is filled with column 0.
    s = scores.float().nan_to_num(nan=float("-inf"))
    order = torch.sort(-s, dim=1, stable=True).indices[:, :k]
    ok = s.gather(1, order) > float("-inf")
    return torch.where(ok, order, 0)


@pytest.mark.parametrize("p", [1, 31, 32, 33, 100, 1000])
def test_bf16_row_topk_matches_the_reference(p):
    g = torch.Generator().manual_seed(p)
    # Few distinct values: ties everywhere.
    scores = torch.randint(-8, 8, (70, p), generator=g).to(torch.bfloat16)
    scores[0] = 3.0
    if p > 4:
        scores[1, :-2] = float("nan")
        scores[2, 1::2] = float("-inf")
    for k in (1, 2, 4, 16):
        if k <= p:
            assert torch.equal(_ops.bf16_row_topk(scores, k), row_topk_reference(scores, k)), (p, k)
    fine = torch.randn(300, p, generator=g).to(torch.bfloat16)
    assert torch.equal(_ops.bf16_row_topk(fine, min(4, p)), row_topk_reference(fine, min(4, p)))


def test_bf16_row_topk_refuses_bad_arguments():
    with pytest.raises(ValueError, match="2-D bfloat16"):
        _ops.bf16_row_topk(torch.zeros(3, 5), 2)
    with pytest.raises(ValueError, match="k must be"):
        _ops.bf16_row_topk(torch.zeros(3, 5, dtype=torch.bfloat16), 6)
    with pytest.raises(ValueError, match="k must be"):
        _ops.bf16_row_topk(torch.zeros(3, 50, dtype=torch.bfloat16), 17)
    # A non-contiguous block is read as its contiguous copy.
    x = torch.randn(40, 64).to(torch.bfloat16)
    assert torch.equal(_ops.bf16_row_topk(x.T, 3), row_topk_reference(x.T, 3))


def integer_points(n, p, d=9, seed=2):
    # Small integer coordinates: every fp32 score is exact, so ties are real
    # and "nearest" has one answer (the first of the tied).
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-4, 5, (n, d), generator=g).float(),
            torch.randint(-4, 5, (p, d), generator=g).float())


def nearest_sq(v, c):
    return torch.cdist(v.double(), c.double()).pow(2).round()


def test_padded_blocks_keep_the_exact_first_nearest(monkeypatch):
    # P = 4,100 takes the two-stage argmax and is not a multiple of its
    # block: the padding rows must never win, ties go to the first.
    monkeypatch.setattr(ra, "SCREEN_MIN_ROWS", 1 << 40)
    assert ra.TWO_STAGE_MIN_ROWS <= 4100
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


def test_screen_gives_valid_ids_to_nan_rows(forced_screen):
    g = torch.Generator().manual_seed(9)
    c, rows = torch.randn(300, 8, generator=g), torch.randn(10, 8, generator=g)
    rows[3] = float("nan")
    got = km.nearest_centroid(rows, c)
    assert bool(((got >= 0) & (got < 300)).all())
    assert torch.equal(got[:3], torch.cdist(rows[:3].double(), c.double()).argmin(1))


def test_dense_top1_screen_false_is_the_exact_path(forced_screen, monkeypatch):
    monkeypatch.setattr(fit_pairs, "LABEL_BLOCK", 400)
    g = torch.Generator().manual_seed(10)
    w, b, q = torch.randn(1000, 24, generator=g), torch.randn(1000, generator=g), torch.randn(300, 24, generator=g)
    exact = fit_pairs.dense_top1(w, b, q, screen=False)
    monkeypatch.setattr(ra, "SCREEN_MIN_ROWS", 1 << 40)
    assert torch.equal(exact, fit_pairs.dense_top1(w, b, q))


@pytest.mark.parametrize("screen", [False, True])
def test_a_bias_column_is_the_tables_last_column(screen):
    # RowArgmax(w, bias=b) is RowArgmax([w, b]) without the copy: the same
    # scores, indices and padding, on both paths.
    g = torch.Generator().manual_seed(5)
    w, b = torch.randn(4100, 12, generator=g), torch.randn(4100, generator=g)
    rows = torch.cat([torch.randn(300, 12, generator=g), torch.ones(300, 1)], 1)
    want = ra.RowArgmax(torch.cat([w, b.unsqueeze(1)], 1), screen=screen).best(rows)
    got = ra.RowArgmax(w, screen=screen, bias=b).best(rows)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert int(got[1].max()) < 4100  # padding rows never win
