"""Every C++ CPU kernel against the pure-PyTorch reference on fresh random
inputs over ragged shapes: bit-exact for codes, tables, lookups and top-k
labels; assert_close with the per-dtype tolerance table for float outputs."""
import itertools

import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from helpers import (FLOAT_DTYPES, GRAD_TOLERANCES, TOLERANCES, poison_heap, randn, random_ids,
                     random_query_codes, random_tables)

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")


# ------------------------------------------------------------------ hash codes
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,tables,bits", [(1, 1, 1, 1), (5, 7, 3, 4), (17, 33, 4, 12),
                                                   (3, 129, 2, 30), (64, 300, 8, 16)])
def test_hash_codes_matches_reference(dtype, batch, dim, tables, bits):
    seed = batch * 1000 + dim
    x = randn(batch, dim, seed=seed, dtype=dtype)
    proj = randn(tables, bits, dim, seed=seed + 1, dtype=dtype)
    poison_heap(batch * tables * 4)
    got = lss.hash_codes(x, proj, backend="cpu")
    want = reference.hash_codes(x, proj)
    assert got.dtype == torch.int32 and got.shape == (batch, tables)
    # Bit-exact except where a projection is within rounding of zero.
    p = reference.projections(x, proj)
    scale = (x.double().abs().unsqueeze(1).unsqueeze(1) * proj.double().abs().unsqueeze(0)).sum(-1)
    near_zero = p.double().abs() <= 1e-5 * scale + 1e-30
    differs = ((got ^ want).unsqueeze(-1).to(torch.int64) >> torch.arange(bits)) & 1
    assert not bool((differs.bool() & ~near_zero).any())


# ---------------------------------------------------------------- build tables
@pytest.mark.parametrize("num_labels,tables,bits", [(1, 1, 1), (33, 2, 3), (1000, 4, 8), (4099, 3, 12)])
def test_build_tables_matches_reference(num_labels, tables, bits):
    g = torch.Generator().manual_seed(num_labels)
    codes = torch.randint(0, 1 << bits, (num_labels, tables), generator=g, dtype=torch.int32)
    offsets, items = lss.build_tables(codes, bits, backend="cpu")
    ref_offsets, ref_items = reference.build_tables(codes, bits)
    assert torch.equal(offsets, ref_offsets) and torch.equal(items, ref_items)


# ------------------------------------------------------------------ lookups
LOOKUP_CASES = [
    # num_labels, tables, bits, batch, max_candidates, min_hits
    (1, 1, 1, 1, 1, 1),
    (37, 3, 2, 1, 5, 1),          # M smaller than the candidates
    (100, 4, 6, 7, 500, 1),       # M larger than the candidates found
    (1000, 8, 4, 16, 64, 2),      # min_hits > 1
    (4099, 6, 10, 9, 300, 3),     # N not a multiple of 32, many empty buckets
    (513, 16, 3, 4, 1024, 16),    # min_hits == L
]


@pytest.mark.parametrize("num_labels,tables,bits,batch,max_candidates,min_hits", LOOKUP_CASES)
def test_bucket_lookup_matches_reference(num_labels, tables, bits, batch, max_candidates, min_hits):
    seed = num_labels + 7 * batch
    _, offsets, items = random_tables(num_labels, tables, bits, seed)
    codes = random_query_codes(batch, tables, bits, seed + 1)
    poison_heap(batch * max_candidates * 4)
    ids, counts = lss.bucket_lookup(codes, offsets, items, num_labels, max_candidates, min_hits, backend="cpu")
    ref_ids, ref_counts = reference.bucket_lookup(codes, offsets, items, num_labels, max_candidates, min_hits)
    assert torch.equal(ids, ref_ids)
    assert torch.equal(counts, ref_counts)


@pytest.mark.parametrize("num_labels,tables,bits,batch,max_candidates,min_hits", LOOKUP_CASES)
def test_bucket_lookup_bitmap_matches_reference(num_labels, tables, bits, batch, max_candidates, min_hits):
    seed = 3 * num_labels + batch
    _, offsets, items = random_tables(num_labels, tables, bits, seed)
    codes = random_query_codes(batch, tables, bits, seed + 1)
    bitmap = lss.bucket_lookup_bitmap(codes, offsets, items, num_labels, min_hits, backend="cpu")
    want = reference.bucket_lookup_bitmap(codes, offsets, items, num_labels, min_hits)
    assert bitmap.shape == (batch, (num_labels + 31) // 32)
    assert torch.equal(bitmap, want)


def test_lookup_with_label_superior_tables():
    """Tables where a label sits in several buckets of a table and some tables
    are shorter than items.shape[1] (the -1 padded tail is never read)."""
    from lsskernels.tables import tables_from_buckets

    g = torch.Generator().manual_seed(5)
    bits, num_labels = 3, 50
    lists = [[torch.randint(0, num_labels, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g)
              for _ in range(1 << bits)] for _ in range(4)]
    offsets, items = tables_from_buckets(lists, bits)
    codes = random_query_codes(6, 4, bits, 9)
    ids, counts = lss.bucket_lookup(codes, offsets, items, num_labels, 40, 1, backend="cpu")
    ref_ids, ref_counts = reference.bucket_lookup(codes, offsets, items, num_labels, 40, 1)
    assert torch.equal(ids, ref_ids) and torch.equal(counts, ref_counts)


# ---------------------------------------------------------- gathered logits
# d = 64, 128, 256 take the AVX-512 kernels compiled for that row length.
GATHER_SHAPES = [(1, 1, 1, 1), (1, 7, 33, 5), (3, 33, 100, 17), (3, 64, 500, 41), (8, 128, 1000, 64), (2, 256, 777, 45),
                 (2, 300, 4099, 3)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,width", GATHER_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gathered_logits_forward(dtype, batch, dim, num_labels, width, with_bias):
    seed = batch + dim + num_labels + width
    x = randn(batch, dim, seed=seed, dtype=dtype)
    w = randn(num_labels, dim, seed=seed + 1, dtype=dtype)
    b = randn(num_labels, seed=seed + 2, dtype=dtype) if with_bias else None
    ids = random_ids(batch, width, num_labels, seed + 3)
    poison_heap(batch * width * x.element_size())
    got = lss.gathered_logits(x, w, b, ids, backend="cpu")
    want = reference.gathered_logits(x, w, b, ids)
    assert got.dtype == dtype and got.shape == (batch, width)
    torch.testing.assert_close(got, want, **TOLERANCES[dtype])
    assert bool(torch.isneginf(got[ids < 0]).all())


def test_gathered_logits_all_padding():
    x, w = randn(3, 9, seed=1), randn(40, 9, seed=2)
    ids = torch.full((3, 6), -1, dtype=torch.int32)
    got = lss.gathered_logits(x, w, None, ids, backend="cpu")
    assert bool(torch.isneginf(got).all())


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,width", GATHER_SHAPES)
def test_gathered_logits_backward(dtype, batch, dim, num_labels, width):
    seed = 11 * batch + dim + width
    ids = random_ids(batch, width, num_labels, seed + 3)
    leaves = [randn(batch, dim, seed=seed, dtype=dtype), randn(num_labels, dim, seed=seed + 1, dtype=dtype),
              randn(num_labels, seed=seed + 2, dtype=dtype)]
    grad = randn(batch, width, seed=seed + 4, dtype=dtype)
    grads = []
    for fn in (lambda *a: lss.gathered_logits(*a, ids, backend="cpu"), lambda *a: reference.gathered_logits(*a, ids)):
        inputs = [t.clone().requires_grad_(True) for t in leaves]
        out = fn(*inputs)
        # Padding logits are -inf; their grads are ignored by both sides.
        out.backward(grad.masked_fill(ids < 0, 0))
        grads.append([t.grad for t in inputs])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[dtype])


def test_gathered_logits_weight_grad_only_on_touched_rows():
    x, w = randn(2, 5, seed=1), randn(100, 5, seed=2).requires_grad_(True)
    ids = torch.tensor([[3, 7, -1], [7, 50, 3]], dtype=torch.int32)
    lss.gathered_logits(x, w, None, ids, backend="cpu").sum().backward()
    touched = torch.zeros(100, dtype=torch.bool)
    touched[[3, 7, 50]] = True
    assert bool((w.grad[~touched] == 0).all()) and bool((w.grad[touched] != 0).any(dim=1).all())


# ------------------------------------------------------ bitmap sparse matmul
BITMAP_SHAPES = [(1, 1, 1, 0.5), (1, 7, 33, 0.3), (5, 33, 100, 0.1), (16, 64, 1000, 0.05),
                 (32, 128, 257, 0.6),  # dense enough for the union-GEMM path
                 (4, 300, 4099, 0.01)]


def random_bitmap(batch, num_labels, density, seed):
    g = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, num_labels, generator=g) < density
    return reference.pack_bitmap(dense)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,density", BITMAP_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bitmap_sparse_matmul_forward(dtype, batch, dim, num_labels, density, with_bias):
    seed = batch + dim + num_labels
    x = randn(batch, dim, seed=seed, dtype=dtype)
    w = randn(num_labels, dim, seed=seed + 1, dtype=dtype)
    b = randn(num_labels, seed=seed + 2, dtype=dtype) if with_bias else None
    bitmap = random_bitmap(batch, num_labels, density, seed + 3)
    values, row_ptr = lss.bitmap_sparse_matmul(x, w, b, bitmap, backend="cpu")
    ref_values, ref_row_ptr = reference.bitmap_sparse_matmul(x, w, b, bitmap)
    assert torch.equal(row_ptr, ref_row_ptr)
    torch.testing.assert_close(values, ref_values, **TOLERANCES[dtype])


@pytest.mark.parametrize("density_threshold", ["0", "2"])  # force union GEMM / per-entry path
def test_bitmap_sparse_matmul_both_strategies(density_threshold):
    import subprocess
    import sys
    code = (
        "import torch, lsskernels as lss; from lsskernels import reference as r\n"
        "g=torch.Generator().manual_seed(0)\n"
        "x=torch.randn(9,20,generator=g); w=torch.randn(70,20,generator=g); b=torch.randn(70,generator=g)\n"
        "bm=r.pack_bitmap(torch.rand(9,70,generator=g)<0.3)\n"
        "v,rp=lss.bitmap_sparse_matmul(x,w,b,bm,backend='cpu'); rv,rrp=r.bitmap_sparse_matmul(x,w,b,bm)\n"
        "assert torch.equal(rp,rrp); torch.testing.assert_close(v,rv,rtol=1e-5,atol=1e-5)\n"
    )
    env = dict(__import__("os").environ, LSS_UNION_GEMM_DENSITY=density_threshold)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,density", BITMAP_SHAPES)
def test_bitmap_sparse_matmul_backward(dtype, batch, dim, num_labels, density):
    seed = 5 * batch + dim + num_labels
    bitmap = random_bitmap(batch, num_labels, density, seed + 3)
    leaves = [randn(batch, dim, seed=seed, dtype=dtype), randn(num_labels, dim, seed=seed + 1, dtype=dtype),
              randn(num_labels, seed=seed + 2, dtype=dtype)]
    grads = []
    for fn in (lambda *a: lss.bitmap_sparse_matmul(*a, bitmap, backend="cpu"),
               lambda *a: reference.bitmap_sparse_matmul(*a, bitmap)):
        inputs = [t.clone().requires_grad_(True) for t in leaves]
        values, _ = fn(*inputs)
        values.backward(randn(values.numel(), seed=seed + 4, dtype=dtype))
        grads.append([t.grad for t in inputs])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[dtype])


def test_bitmap_with_stray_bits_past_num_labels_is_rejected():
    x, w = randn(1, 4, seed=1), randn(40, 4, seed=2)
    bitmap = torch.zeros(1, 2, dtype=torch.int32)
    bitmap[0, 1] = 1 << 9  # label 41 >= N = 40
    with pytest.raises(RuntimeError, match="num_labels"):
        lss.bitmap_sparse_matmul(x, w, None, bitmap, backend="cpu")


# -------------------------------------------------------------------- top-k
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# k = 64 is the largest k of the streaming path; larger k collect and partial-sort.
@pytest.mark.parametrize("batch,width,k", [(1, 1, 1), (1, 5, 10), (4, 37, 3), (7, 200, 20), (3, 300, 64),
                                           (3, 300, 100)])
def test_topk_gathered(dtype, batch, width, k):
    seed = batch * width + k
    ids = random_ids(batch, width, 10_000, seed, pad_fraction=0.3)
    # Rounded scores make ties; ties must break by the smaller label.
    logits = (randn(batch, width, seed=seed + 1) * 4).round().to(dtype)
    logits[0, 0] = float("nan")
    scores, labels = lss.topk_gathered(logits, ids, k, backend="cpu")
    ref_scores, ref_labels = reference.topk_gathered(logits, ids, k)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(scores, ref_scores, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 10, 64])
@pytest.mark.parametrize("width", [15, 16, 17, 2000])
def test_topk_gathered_fp32_skip_ahead(width, k):
    """The fp32 streaming path skips 16 entries at a time to the ones that can
    enter the top-k: NaN, +-inf and ties placed late (after the buffer is
    full) and at the vector tail must still be found exactly as the reference
    finds them."""
    seed = width + 7 * k
    ids = random_ids(2, width, 1_000_000, seed, pad_fraction=0.1)
    logits = (randn(2, width, seed=seed + 1) * 3).round()
    g = torch.Generator().manual_seed(seed + 2)
    for row in range(2):
        late = torch.randint(width // 2, width, (4,), generator=g)
        logits[row, late[0]] = float("nan")
        logits[row, late[1]] = float("inf")
        logits[row, late[2]] = float("-inf")
        logits[row, late[3]] = logits[row].nan_to_num(neginf=0, posinf=0).max()  # a tie with the best
    logits[1, -1] = float("nan")  # the scalar tail
    scores, labels = lss.topk_gathered(logits, ids, k, backend="cpu")
    ref_scores, ref_labels = reference.topk_gathered(logits, ids, k)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(scores, ref_scores, equal_nan=True, rtol=0, atol=0)


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_gathered_kernel_rejects_ids_below_minus_one(dtype):
    ids = torch.zeros(1, 40, dtype=torch.int32)
    ids[0, 33] = -2
    with pytest.raises(RuntimeError, match=r"ids must be -1 \(padding\) or >= 0"):
        torch.ops.lsskernels.topk_gathered(randn(1, 40, seed=1, dtype=dtype), ids, 5)


@pytest.mark.parametrize("batch,num_labels,density,k", [(1, 1, 1.0, 1), (3, 70, 0.2, 5), (6, 1000, 0.01, 20),
                                                        (2, 33, 0.0, 4), (2, 1000, 0.2, 100)])
def test_topk_packed(batch, num_labels, density, k):
    seed = batch + num_labels
    bitmap = random_bitmap(batch, num_labels, density, seed)
    x, w = randn(batch, 8, seed=seed + 1), randn(num_labels, 8, seed=seed + 2)
    values, row_ptr = reference.bitmap_sparse_matmul(x, w, None, bitmap)
    values = values.round()  # ties
    scores, labels = lss.topk_packed(values, row_ptr, bitmap, k, backend="cpu")
    ref_scores, ref_labels = reference.topk_packed(values, row_ptr, bitmap, k)
    assert torch.equal(labels, ref_labels) and torch.equal(scores, ref_scores)


def test_topk_packed_rejects_row_ptr_that_disagrees_with_bitmap():
    bitmap = torch.tensor([[0b1011]], dtype=torch.int32)
    values = torch.randn(3)
    with pytest.raises(RuntimeError, match="row_ptr"):
        lss.topk_packed(values, torch.tensor([0, 2], dtype=torch.int64), bitmap, 2, backend="cpu")
