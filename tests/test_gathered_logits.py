"""gathered_logits (and its backward) on every backend against
lsskernels.reference: logits and gradients within the per-dtype tolerance
table (tests/helpers.py), -inf at padding. The CPU cases run on every CPU
dot path (LSS_CPU_ISA=avx2, generic, in a child process); the Triton cases
(and the Triton kernels' own guarantees) under the interpreter
(tests/test_triton.py's child)."""
import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from backends import ISA_CHILD, cpu_isa_child, on, on_backends_but_triton, on_triton, require_backend
from helpers import FLOAT_DTYPES, GRAD_TOLERANCES, TOLERANCES, TRITON_FLOAT_DTYPES, leaves, poison_heap, randn, random_ids

# d = 64, 128, 256 take the AVX-512 kernels compiled for that row length.
GATHER_SHAPES = [(1, 1, 1, 1), (1, 7, 33, 5), (3, 33, 100, 17), (3, 64, 500, 41), (8, 128, 1000, 64), (2, 256, 777, 45),
                 (2, 300, 4099, 3)]


@on_backends_but_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,width", GATHER_SHAPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gathered_logits_forward(backend, dtype, batch, dim, num_labels, width, with_bias):
    device = require_backend(backend, "gathered_logits")
    seed = batch + dim + num_labels + width
    x = randn(batch, dim, seed=seed, dtype=dtype)
    w = randn(num_labels, dim, seed=seed + 1, dtype=dtype)
    b = randn(num_labels, seed=seed + 2, dtype=dtype) if with_bias else None
    ids = random_ids(batch, width, num_labels, seed + 3)
    poison_heap(batch * width * x.element_size())
    got = lss.gathered_logits(*on(device, x, w, b, ids), backend=backend).cpu()
    want = reference.gathered_logits(x, w, b, ids)
    assert got.dtype == dtype and got.shape == (batch, width)
    torch.testing.assert_close(got, want, **TOLERANCES[dtype])
    assert bool(torch.isneginf(got[ids < 0]).all())


@on_backends_but_triton
def test_gathered_logits_all_padding(backend):
    device = require_backend(backend, "gathered_logits")
    x, w = randn(3, 9, seed=1), randn(40, 9, seed=2)
    ids = torch.full((3, 6), -1, dtype=torch.int32)
    got = lss.gathered_logits(*on(device, x, w, None, ids), backend=backend).cpu()
    assert bool(torch.isneginf(got).all())


@on_backends_but_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,num_labels,width", GATHER_SHAPES)
def test_gathered_logits_backward(backend, dtype, batch, dim, num_labels, width):
    device = require_backend(backend, "gathered_logits", "gathered_logits_backward")
    seed = 11 * batch + dim + width
    ids = random_ids(batch, width, num_labels, seed + 3)
    inputs = [randn(batch, dim, seed=seed, dtype=dtype), randn(num_labels, dim, seed=seed + 1, dtype=dtype),
              randn(num_labels, seed=seed + 2, dtype=dtype)]
    grad = randn(batch, width, seed=seed + 4, dtype=dtype)
    grads = []
    for fn, dev in ((lambda *a: lss.gathered_logits(*a, ids.to(device), backend=backend), device),
                    (lambda *a: reference.gathered_logits(*a, ids), torch.device("cpu"))):
        args = leaves(*on(dev, *inputs))
        out = fn(*args)
        # Padding logits are -inf; their grads are ignored by both sides.
        out.backward(grad.masked_fill(ids < 0, 0).to(dev))
        grads.append([t.grad.cpu() for t in args])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, **GRAD_TOLERANCES[dtype])


@on_backends_but_triton
def test_gathered_logits_weight_grad_only_on_touched_rows(backend):
    device = require_backend(backend, "gathered_logits", "gathered_logits_backward")
    x, w = randn(2, 5, seed=1).to(device), randn(100, 5, seed=2).to(device).requires_grad_(True)
    ids = torch.tensor([[3, 7, -1], [7, 50, 3]], dtype=torch.int32, device=device)
    lss.gathered_logits(x, w, None, ids, backend=backend).sum().backward()
    touched = torch.zeros(100, dtype=torch.bool)
    touched[[3, 7, 50]] = True
    grad = w.grad.cpu()
    assert bool((grad[~touched] == 0).all()) and bool((grad[touched] != 0).any(dim=1).all())


@pytest.mark.skipif(ISA_CHILD, reason="already in a child")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_every_cpu_dot_path(isa):
    """The cpu tests of this file (forward: the dot kernels; backward: axpy)
    with LSS_CPU_ISA=isa, in a child process."""
    cpu_isa_child(__file__, isa, "on_cpu")


# ------------------------------------------------- the Triton interpreter cases
GATHERED_CASES = [
    # B, d, N, M, bias
    (1, 7, 37, 5, True),
    (4, 33, 50, 20, False),
    (3, 1, 10, 40, True),   # d = 1, M > N: duplicates
    (5, 0, 9, 3, True),     # d = 0: bias only
]


@on_triton
@pytest.mark.parametrize("dtype", TRITON_FLOAT_DTYPES)
@pytest.mark.parametrize("case", GATHERED_CASES)
def test_smoke_gathered_logits(backend, dtype, case):
    require_backend(backend, "gathered_logits")
    from lsskernels import triton as lt

    batch, dim, n, m, has_bias = case
    seed = batch * 7 + dim
    x, w = randn(batch, dim, seed=seed, dtype=dtype), randn(n, dim, seed=seed + 1, dtype=dtype)
    b = randn(n, seed=seed + 2, dtype=dtype) if has_bias else None
    ids = random_ids(batch, m, n, seed=seed + 3)
    ids[-1] = -1  # an all-padding row
    if m > 2:
        ids[0, 1] = ids[0, 2] = max(int(ids[0, 0]), 0)  # duplicate ids in one row
    xs, ws, bs = leaves(x, w, b)
    xr, wr, br = leaves(x, w, b)
    got = lt.gathered_logits(xs, ws, bs, ids)
    want = reference.gathered_logits(xr, wr, br, ids)
    assert got.dtype == dtype and got.shape == (batch, m)
    torch.testing.assert_close(got, want, **TOLERANCES[dtype])
    grad = randn(batch, m, seed=seed + 4, dtype=dtype)
    got.backward(grad)
    want.backward(grad)
    for a, r in ((xs, xr), (ws, wr), (bs, br)):
        if a is not None:
            torch.testing.assert_close(a.grad, r.grad, **GRAD_TOLERANCES[dtype])


@on_triton
@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_gathered_logits_partial_grads(backend, needs):
    require_backend(backend, "gathered_logits")
    from lsskernels import triton as lt

    x, w, b = randn(3, 9, seed=1), randn(20, 9, seed=2), randn(20, seed=3)
    ids = random_ids(3, 6, 20, seed=4)
    args = [t.detach().clone().requires_grad_(need) for t, need in zip((x, w, b), needs)]
    refs = [t.detach().clone().requires_grad_(need) for t, need in zip((x, w, b), needs)]
    lt.gathered_logits(*args, ids).sum().backward()
    reference.gathered_logits(*refs, ids).sum().backward()
    for a, r, need in zip(args, refs, needs):
        assert (a.grad is not None) == need
        if need:
            torch.testing.assert_close(a.grad, r.grad, **GRAD_TOLERANCES[torch.float32])


@on_triton
def test_gathered_logits_out_of_range_ids_are_never_read(backend):
    """The kernels mask ids outside [-1, N) (NaN logit, no gradient)
    instead of reading out of bounds; rejecting them is the wrapper's job."""
    require_backend(backend, "gathered_logits")
    from lsskernels import triton as lt

    x, w = leaves(randn(2, 5, seed=1), randn(10, 5, seed=2))
    ids = torch.tensor([[0, 10, -1], [1_000_000, 3, -7]], dtype=torch.int32)
    out = lt.gathered_logits(x, w, None, ids)
    assert torch.isnan(out[0, 1]) and torch.isnan(out[1, 0]) and torch.isnan(out[1, 2])
    assert out[0, 2] == float("-inf")
    want = reference.gathered_logits(x.detach(), w.detach(), None, torch.tensor([[0, -1, -1], [-1, 3, -1]]))
    torch.testing.assert_close(out[0, 0], want[0, 0])
    torch.testing.assert_close(out[1, 1], want[1, 1])
    out.nan_to_num(0.0, 0.0, 0.0).sum().backward()
    assert torch.isfinite(w.grad).all() and torch.equal(w.grad[4:], torch.zeros_like(w.grad[4:]))
