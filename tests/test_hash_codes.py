"""hash_codes on every backend against lsskernels.reference: bit-exact except
where a projection is within rounding of zero. The CPU cases run on every
CPU dot path (LSS_CPU_ISA=avx2, generic, in a child process); the Triton
cases run under the interpreter (tests/test_triton.py's child)."""
import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from backends import ISA_CHILD, cpu_isa_child, on, on_backends_but_triton, on_triton, require_backend
from helpers import FLOAT_DTYPES, poison_heap, randn


@on_backends_but_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,tables,bits", [(1, 1, 1, 1), (5, 7, 3, 4), (17, 33, 4, 12),
                                                   (3, 129, 2, 30), (64, 300, 8, 16)])
def test_hash_codes_matches_reference(backend, dtype, batch, dim, tables, bits):
    device = require_backend(backend, "hash_codes")
    seed = batch * 1000 + dim
    x = randn(batch, dim, seed=seed, dtype=dtype)
    proj = randn(tables, bits, dim, seed=seed + 1, dtype=dtype)
    poison_heap(batch * tables * 4)
    got = lss.hash_codes(*on(device, x, proj), backend=backend).cpu()
    want = reference.hash_codes(x, proj)
    assert got.dtype == torch.int32 and got.shape == (batch, tables)
    # Bit-exact except where a projection is within rounding of zero.
    p = reference.projections(x, proj)
    scale = (x.double().abs().unsqueeze(1).unsqueeze(1) * proj.double().abs().unsqueeze(0)).sum(-1)
    near_zero = p.double().abs() <= 1e-5 * scale + 1e-30
    differs = ((got ^ want).unsqueeze(-1).to(torch.int64) >> torch.arange(bits)) & 1
    assert not bool((differs.bool() & ~near_zero).any())


@on_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,tables,bits", [(1, 7, 3, 5), (4, 33, 2, 30), (18, 1, 4, 1)])
def test_smoke_hash_codes(backend, dtype, batch, dim, tables, bits):
    require_backend(backend, "hash_codes")
    from lsskernels import triton as lt

    seed = batch * 100 + dim + bits
    x = randn(batch, dim, seed=seed, dtype=dtype)
    proj = randn(tables, bits, dim, seed=seed + 1, dtype=dtype)
    got = lt.hash_codes(x, proj)
    want = reference.hash_codes(x, proj)
    assert got.dtype == torch.int32 and got.shape == (batch, tables)
    # bit-exact except where a projection is within rounding of zero
    p = reference.projections(x, proj)
    weights = torch.pow(2, torch.arange(bits, dtype=torch.int64))
    unsure = ((p.abs() < 1e-3 * (1 + p.abs().amax())).to(torch.int64) * weights).sum(-1)
    assert torch.equal((got.to(torch.int64) ^ want.to(torch.int64)) & ~unsure, torch.zeros_like(unsure))


@pytest.mark.skipif(ISA_CHILD, reason="already in a child")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_every_cpu_dot_path(isa):
    """The cpu tests of this file with LSS_CPU_ISA=isa, in a child process."""
    cpu_isa_child(__file__, isa, "on_cpu")
