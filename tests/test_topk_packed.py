"""topk_packed on every backend against lsskernels.reference, bit for bit;
the Triton cases under the interpreter (tests/test_triton.py's child)."""
import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from backends import on, on_backends_but_triton, on_triton, require_backend
from helpers import TRITON_FLOAT_DTYPES, gen, packed_topk_problem, randn, random_bitmap


@on_backends_but_triton
@pytest.mark.parametrize("batch,num_labels,density,k", [(1, 1, 1.0, 1), (3, 70, 0.2, 5), (6, 1000, 0.01, 20),
                                                        (2, 33, 0.0, 4), (2, 1000, 0.2, 100)])
def test_topk_packed(backend, batch, num_labels, density, k):
    device = require_backend(backend, "topk_packed")
    seed = batch + num_labels
    bitmap = random_bitmap(batch, num_labels, density, seed)
    x, w = randn(batch, 8, seed=seed + 1), randn(num_labels, 8, seed=seed + 2)
    values, row_ptr = reference.bitmap_sparse_matmul(x, w, None, bitmap)
    values = values.round()  # ties
    scores, labels = (t.cpu() for t in lss.topk_packed(*on(device, values, row_ptr, bitmap), k, backend=backend))
    ref_scores, ref_labels = reference.topk_packed(values, row_ptr, bitmap, k)
    assert torch.equal(labels, ref_labels) and torch.equal(scores, ref_scores)


def test_topk_packed_rejects_row_ptr_that_disagrees_with_bitmap():
    require_backend("cpu", "topk_packed")
    bitmap = torch.tensor([[0b1011]], dtype=torch.int32)
    values = torch.randn(3)
    with pytest.raises(ValueError, match="row_ptr"):
        lss.topk_packed(values, torch.tensor([0, 2], dtype=torch.int64), bitmap, 2, backend="cpu")


# ------------------------------------------------- the Triton interpreter cases


@on_triton
@pytest.mark.parametrize("dtype", TRITON_FLOAT_DTYPES)
@pytest.mark.parametrize("batch,n,k", [(1, 37, 3), (4, 70, 30), (5, 33, 1)])
def test_smoke_topk_packed(backend, dtype, batch, n, k):
    require_backend(backend, "topk_packed")
    from lsskernels import triton as lt

    values, row_ptr, bitmap = packed_topk_problem(batch, n, 0.3, batch * 17 + n + k, dtype)
    s, l = lt.topk_packed(values, row_ptr, bitmap, k)
    rs, rl = reference.topk_packed(values, row_ptr, bitmap, k)
    assert torch.equal(l, rl)
    torch.testing.assert_close(s, rs, rtol=0, atol=0, equal_nan=True)


@on_triton
def test_topk_packed_rejects_wrong_row_ptr(backend):
    require_backend(backend, "topk_packed")
    from lsskernels import triton as lt

    bitmap = reference.pack_bitmap(torch.rand(2, 40, generator=gen(1)) < 0.5)
    nnz = int(reference.unpack_bitmap(bitmap, 40).sum())
    with pytest.raises(ValueError, match="row_ptr"):
        lt.topk_packed(torch.zeros(nnz), torch.tensor([0, 1, nnz]), bitmap, 3)
