"""bitmap_sparse_matmul (and its backward) on every backend against
lsskernels.reference: row_ptr bit for bit, values and gradients within the
per-dtype tolerance table. The CPU cases run on every CPU dot path
(LSS_CPU_ISA=avx2, generic, in a child process) and through both CPU
strategies (union GEMM, per entry); the Triton cases under the interpreter
(tests/test_triton.py's child)."""
import os
import subprocess
import sys

import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from backends import ISA_CHILD, cpu_isa_child, on, on_backends_but_triton, on_triton, require_backend
from helpers import FLOAT_DTYPES, GRAD_TOLERANCES, TOLERANCES, TRITON_FLOAT_DTYPES, gen, leaves, randn, random_bitmap

BITMAP_SHAPES = [(1, 1, 1, 0.5), (1, 7, 33, 0.3), (5, 33, 100, 0.1), (16, 64, 1000, 0.05),
                 (32, 128, 257, 0.6),  # dense enough for the union-GEMM path
                 (4, 300, 4099, 0.01)]


@on_backends_but_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,density", BITMAP_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bitmap_sparse_matmul_forward(backend, dtype, batch, dim, num_labels, density, with_bias):
    device = require_backend(backend, "bitmap_sparse_matmul")
    seed = batch + dim + num_labels
    x = randn(batch, dim, seed=seed, dtype=dtype)
    w = randn(num_labels, dim, seed=seed + 1, dtype=dtype)
    b = randn(num_labels, seed=seed + 2, dtype=dtype) if with_bias else None
    bitmap = random_bitmap(batch, num_labels, density, seed + 3)
    values, row_ptr = (t.cpu() for t in lss.bitmap_sparse_matmul(*on(device, x, w, b, bitmap), backend=backend))
    ref_values, ref_row_ptr = reference.bitmap_sparse_matmul(x, w, b, bitmap)
    assert torch.equal(row_ptr, ref_row_ptr)
    torch.testing.assert_close(values, ref_values, **TOLERANCES[dtype])


@pytest.mark.parametrize("density_threshold", ["0", "2"])  # force union GEMM / per-entry path
def test_bitmap_sparse_matmul_both_strategies(density_threshold):
    require_backend("cpu", "bitmap_sparse_matmul")
    code = (
        "import torch, lsskernels as lss; from lsskernels import reference as r\n"
        "g=torch.Generator().manual_seed(0)\n"
        "x=torch.randn(9,20,generator=g); w=torch.randn(70,20,generator=g); b=torch.randn(70,generator=g)\n"
        "bm=r.pack_bitmap(torch.rand(9,70,generator=g)<0.3)\n"
        "v,rp=lss.bitmap_sparse_matmul(x,w,b,bm,backend='cpu'); rv,rrp=r.bitmap_sparse_matmul(x,w,b,bm)\n"
        "assert torch.equal(rp,rrp); torch.testing.assert_close(v,rv,rtol=1e-5,atol=1e-5)\n"
    )
    env = dict(os.environ, LSS_UNION_GEMM_DENSITY=density_threshold)
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@on_backends_but_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,density", BITMAP_SHAPES)
def test_bitmap_sparse_matmul_backward(backend, dtype, batch, dim, num_labels, density):
    device = require_backend(backend, "bitmap_sparse_matmul", "bitmap_sparse_matmul_backward")
    seed = 5 * batch + dim + num_labels
    bitmap = random_bitmap(batch, num_labels, density, seed + 3)
    inputs = [randn(batch, dim, seed=seed, dtype=dtype), randn(num_labels, dim, seed=seed + 1, dtype=dtype),
              randn(num_labels, seed=seed + 2, dtype=dtype)]
    grads = []
    for fn, dev in ((lambda *a: lss.bitmap_sparse_matmul(*a, bitmap.to(device), backend=backend), device),
                    (lambda *a: reference.bitmap_sparse_matmul(*a, bitmap), torch.device("cpu"))):
        args = leaves(*on(dev, *inputs))
        values, _ = fn(*args)
        values.backward(randn(values.numel(), seed=seed + 4, dtype=dtype).to(dev))
        grads.append([t.grad.cpu() for t in args])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[dtype])


def test_bitmap_with_stray_bits_past_num_labels_is_rejected():
    require_backend("cpu", "bitmap_sparse_matmul")
    x, w = randn(1, 4, seed=1), randn(40, 4, seed=2)
    bitmap = torch.zeros(1, 2, dtype=torch.int32)
    bitmap[0, 1] = 1 << 9  # label 41 >= N = 40
    with pytest.raises(ValueError, match="num_labels"):
        lss.bitmap_sparse_matmul(x, w, None, bitmap, backend="cpu")


@pytest.mark.skipif(ISA_CHILD, reason="already in a child")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_every_cpu_dot_path(isa):
    """The cpu tests of this file (forward: the dot kernels; backward: axpy)
    with LSS_CPU_ISA=isa, in a child process."""
    cpu_isa_child(__file__, isa, "on_cpu")


# ------------------------------------------------- the Triton interpreter cases
BITMAP_CASES = [
    # B, d, N, density, bias
    (1, 7, 37, 0.3, True),
    (5, 33, 70, 0.1, False),
    (3, 1, 100, 0.05, True),
    (18, 5, 45, 0.2, True),    # two batch tiles
    (4, 6, 40, 0.0, True),     # no candidates at all
]


@on_triton
@pytest.mark.parametrize("dtype", TRITON_FLOAT_DTYPES)
@pytest.mark.parametrize("case", BITMAP_CASES)
def test_smoke_bitmap_sparse_matmul(backend, dtype, case):
    require_backend(backend, "bitmap_sparse_matmul")
    from lsskernels import triton as lt

    batch, dim, n, density, has_bias = case
    seed = batch * 11 + dim + n
    x, w = randn(batch, dim, seed=seed, dtype=dtype), randn(n, dim, seed=seed + 1, dtype=dtype)
    b = randn(n, seed=seed + 2, dtype=dtype) if has_bias else None
    dense = torch.rand(batch, n, generator=gen(seed + 3)) < density
    if batch > 2:
        dense[1] = False  # an empty row
    bitmap = reference.pack_bitmap(dense)
    xs, ws, bs = leaves(x, w, b)
    xr, wr, br = leaves(x, w, b)
    values, row_ptr = lt.bitmap_sparse_matmul(xs, ws, bs, bitmap)
    want_values, want_row_ptr = reference.bitmap_sparse_matmul(xr, wr, br, bitmap)
    assert row_ptr.dtype == torch.int64 and torch.equal(row_ptr, want_row_ptr)
    assert values.dtype == dtype
    torch.testing.assert_close(values, want_values, **TOLERANCES[dtype])
    if values.numel():
        grad = randn(values.numel(), seed=seed + 4, dtype=dtype)
        values.backward(grad)
        want_values.backward(grad)
        for a, r in ((xs, xr), (ws, wr), (bs, br)):
            if a is not None:
                torch.testing.assert_close(a.grad, r.grad, **GRAD_TOLERANCES[dtype])


@on_triton
def test_bitmap_sparse_matmul_rejects_stray_bits(backend):
    require_backend(backend, "bitmap_sparse_matmul")
    from lsskernels import triton as lt

    x, w = randn(2, 4, seed=1), randn(40, 4, seed=2)
    bitmap = torch.zeros(2, 2, dtype=torch.int32)
    bitmap[1, 1] = 1 << 9  # label 41 >= N = 40
    with pytest.raises(ValueError, match="label ids >= num_labels"):
        lt.bitmap_sparse_matmul(x, w, None, bitmap)
