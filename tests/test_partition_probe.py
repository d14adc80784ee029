"""partition_probe on every backend against lsskernels.reference.

Scores are dots in fp32 (fp64 for fp64) whose rounding depends on the
summation order, so ids can legitimately differ where two partitions' scores
are within rounding. Random inputs therefore compare the *reference scores*
of the chosen partitions, sorted, with the reference's own top-nprobe scores
(within the dtype's tolerance), and check that the ids are distinct valid
partitions; inputs whose scores are well separated, or exactly tied (zero queries: every
score is its bias; the smaller p first), or NaN (ranked as -inf, by p), must
give the reference's ids exactly.
"""
from __future__ import annotations

import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from helpers import FLOAT_DTYPES, TOLERANCES, gen, poison_heap, randn
from backends import ISA_CHILD, cpu_isa_child, on, on_backends, require_backend

# Partition scores add up d products and a bias; the tolerance table is for
# one logit, so it scales with the score magnitudes here (|x| |c| ~ sqrt(d)).
SCORE_TOL = {dtype: dict(rtol=tol["rtol"], atol=tol["atol"] * 10) for dtype, tol in TOLERANCES.items()}


def run_probe(backend, device, x, centroids, cbias, nprobe):
    x, centroids, cbias = on(device, x, centroids, cbias)
    poison_heap(x.shape[0] * nprobe * 4)
    got = lss.partition_probe(x, centroids, cbias, nprobe, backend=backend)
    assert got.dtype == torch.int32 and got.shape == (x.shape[0], nprobe)
    return got.cpu()


def check_scores(got, x, centroids, cbias, nprobe):
    """got's partitions score like the reference's top nprobe."""
    x, centroids = x.cpu(), centroids.cpu()
    cbias = cbias.cpu() if cbias is not None else None
    P = centroids.shape[0]
    assert bool(((got >= 0) & (got < P)).all())
    for row in got:
        assert row.unique().numel() == nprobe
    s = torch.nan_to_num(reference.partition_scores(x, centroids, cbias), nan=float("-inf"))
    want = reference.partition_probe(x, centroids, cbias, nprobe)
    chosen = s.gather(1, got.long()).sort(1, descending=True).values
    best = s.gather(1, want.long())
    torch.testing.assert_close(chosen, best, **SCORE_TOL[x.dtype])
    # The order itself is score descending, up to rounding.
    ordered = s.gather(1, got.long())
    assert bool((ordered[:, :-1] >= ordered[:, 1:] - 10 * SCORE_TOL[x.dtype]["atol"]).all())


SHAPES = [
    # batch, dim, partitions, nprobe
    (1, 37, 50, 4),
    (1, 128, 2048, 8),    # the batch-1 shape (row kernels; split across threads with LSS_SPLIT_QUERY_BYTES)
    (1, 100, 300, 300),   # nprobe == P (collect and partial-sort)
    (3, 129, 257, 70),    # nprobe > the streaming buffer
    (5, 1, 9, 3),
    (20, 64, 500, 16),    # B >= 2: one GEMM for the batch
    (33, 100, 77, 1),
]


@on_backends
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,partitions,nprobe", SHAPES)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_random_scores_match_reference(backend, dtype, batch, dim, partitions, nprobe, with_bias):
    device = require_backend(backend, "partition_probe")
    seed = batch + dim + partitions + nprobe
    x = randn(batch, dim, seed=seed, dtype=dtype)
    if batch > 2:
        x[1] = 0  # every score is the bias: ties everywhere, ids by p
    centroids = randn(partitions, dim, seed=seed + 1, dtype=dtype)
    cbias = randn(partitions, seed=seed + 2, dtype=dtype) if with_bias else None
    got = run_probe(backend, device, x, centroids, cbias, nprobe)
    check_scores(got, x, centroids, cbias, nprobe)
    if batch > 2:
        assert torch.equal(got[1], reference.partition_probe(x[1:2], centroids, cbias, nprobe)[0])


def distinct_biases(partitions, dtype, g):
    """P distinct values of dtype, at least 2^-7 apart, in random order."""
    if dtype == torch.bfloat16:  # consecutive bf16 values from 1.0 (8-bit mantissa)
        grid = torch.arange(0x3F80, 0x3F80 + partitions, dtype=torch.int16).view(torch.bfloat16)
    else:
        grid = torch.arange(partitions).to(dtype)
    return grid[torch.randperm(partitions, generator=g)]


@on_backends
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,partitions,nprobe", SHAPES)
def test_separated_scores_give_exact_ids(backend, dtype, batch, dim, partitions, nprobe):
    """Distinct biases dominate tiny dots, so rounding cannot reorder them; a
    tenth of the centroids hold a NaN (score NaN = -inf, ties by p)."""
    device = require_backend(backend, "partition_probe")
    g = gen(batch * 7 + partitions)
    x = torch.randn(batch, dim, generator=g).to(dtype)
    centroids = torch.randn(partitions, dim, generator=g) * 1e-5
    nan_rows = torch.randperm(partitions, generator=g)[: max(1, partitions // 10)]
    centroids[nan_rows, 0] = float("nan")
    centroids = centroids.to(dtype)
    cbias = distinct_biases(partitions, dtype, g)
    got = run_probe(backend, device, x, centroids, cbias, nprobe)
    assert torch.equal(got, reference.partition_probe(x, centroids, cbias, nprobe))


@on_backends
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,partitions,nprobe", SHAPES)
def test_tied_scores_go_by_partition_id(backend, dtype, batch, dim, partitions, nprobe):
    """Zero queries score every partition at exactly its bias (in any
    summation order); biases from a handful of values tie everywhere."""
    device = require_backend(backend, "partition_probe")
    g = gen(batch * 5 + partitions)
    x = torch.zeros(batch, dim, dtype=dtype)
    centroids = torch.randn(partitions, dim, generator=g).to(dtype)
    cbias = torch.randint(-2, 3, (partitions,), generator=g).to(dtype)
    got = run_probe(backend, device, x, centroids, cbias, nprobe)
    assert torch.equal(got, reference.partition_probe(x, centroids, cbias, nprobe))
    got = run_probe(backend, device, x, centroids, None, nprobe)  # all zero: p ascending
    assert torch.equal(got, torch.arange(nprobe, dtype=torch.int32).expand(batch, nprobe))


def test_opcheck_partition_probe():
    require_backend("cpu", "partition_probe")
    x, c, b = randn(3, 20, seed=1), randn(40, 20, seed=2), randn(40, seed=3)
    torch.library.opcheck(torch.ops.lsskernels.partition_probe.default, (x, c, b, 5))
    torch.library.opcheck(torch.ops.lsskernels.partition_probe.default, (randn(17, 20, seed=4), c, None, 40))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: lss.partition_probe(randn(2, 5, seed=0), randn(9, 4, seed=1), None, 2), ValueError,
     r"centroids must be \[P, d\] with d = x.shape\[1\] = 5"),
    (lambda: lss.partition_probe(randn(2, 4, seed=0)[0], randn(9, 4, seed=1), None, 2), ValueError, r"x must be \[B, d\]"),
    (lambda: lss.partition_probe(randn(2, 4, seed=0), randn(9, 4, seed=1, dtype=torch.float64), None, 2), TypeError,
     r"centroids has dtype"),
    (lambda: lss.partition_probe(randn(2, 4, seed=0), randn(9, 4, seed=1), randn(8, seed=2), 2), ValueError,
     r"centroid_bias must be \[P\] = \[9\]"),
    (lambda: lss.partition_probe(randn(2, 4, seed=0), randn(9, 4, seed=1), None, 10), ValueError,
     r"nprobe must be in \[1, 9\]"),
    (lambda: lss.partition_probe(randn(2, 4, seed=0), randn(9, 4, seed=1), None, 0), ValueError,
     r"nprobe must be in \[1, 9\]"),
    (lambda: lss.partition_probe(torch.ones(2, 4, dtype=torch.int32), randn(9, 4, seed=1), None, 2), TypeError,
     r"x must have dtype"),
    (lambda: lss.partition_probe(randn(2, 4, seed=0), [[1.0]], None, 2), TypeError, r"centroids must be a torch.Tensor"),
])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_arguments_raise_clear_errors(call, exc, match, backend):
    if backend == "cpu" and not lss.extension_loaded():
        pytest.skip("compiled extension not built")
    with pytest.raises(exc, match=match):
        call()


def test_kernel_checks_its_arguments():
    require_backend("cpu", "partition_probe")
    op = torch.ops.lsskernels.partition_probe
    with pytest.raises(ValueError, match="partition_probe: nprobe must be in"):
        op(randn(2, 4, seed=0), randn(9, 4, seed=1), None, 10)
    with pytest.raises(ValueError, match="partition_probe: centroids must hold at least one partition"):
        op(randn(2, 4, seed=0), randn(0, 4, seed=1), None, 1)
    with pytest.raises(TypeError, match="partition_probe: x must have dtype in"):
        op(torch.ones(2, 4, dtype=torch.int64), randn(9, 4, seed=1), None, 1)


@pytest.mark.skipif(ISA_CHILD, reason="already in a child")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_every_cpu_dot_path(isa):
    """The cpu tests of this file with LSS_CPU_ISA=isa, in a child process."""
    require_backend("cpu", "partition_probe")
    cpu_isa_child(__file__, isa, "on_cpu")
