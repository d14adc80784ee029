"""quantized_candidates (and the partition family's composite,
partition_predict_topk) on every backend against lsskernels.reference, bit
for bit: ids and counts must be identical, so the int8 quantization of the
queries, the integer dots, the fp32 score (no FMA) and the order
(score desc, id asc, a label once) all have to be exactly the reference's.

Backends: reference, cpu, and each CPU int8 kernel (AVX-512 VNNI, AVX-512 BW,
AVX2, generic) through a child pytest run with LSS_CPU_ISA set (the kernel
table is picked once at load time); triton under TRITON_INTERPRET=1 and cuda
run where their kernels are registered, and are skipped otherwise.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lsskernels as lss
from lsskernels import _ops, reference
from backends import HERE, ISA_CHILD, ROOT, cpu_isa_available, cpu_isa_child, on, on_backends, require_backend
from helpers import FLOAT_DTYPES, TOLERANCES, gen, poison_heap, randn, random_partition_lists, random_probes
from lsskernels.partition.probe import probe_codes

def run_qc(backend, device, x, probes, lists, num_labels, max_candidates):
    offsets, codes, scales, bias, ids = on(device, *lists)
    x, probes = on(device, x, probes)
    poison_heap(x.shape[0] * max_candidates * 4)
    got = lss.quantized_candidates(x, probes, offsets, codes, scales, bias, ids, num_labels, max_candidates,
                                   backend=backend)
    return got[0].cpu(), got[1].cpu()


def expect_equal(got, x, probes, lists, num_labels, max_candidates):
    want_ids, want_counts = reference.quantized_candidates(x, probes, *lists, num_labels, max_candidates)
    assert got[0].dtype == torch.int32 and got[1].dtype == torch.int32
    assert got[0].shape == want_ids.shape and got[1].shape == want_counts.shape
    assert torch.equal(got[1], want_counts), (got[1], want_counts)
    assert torch.equal(got[0], want_ids), (got[0] != want_ids).nonzero()[:10]


def queries(batch, dim, seed, dtype, zero_rows=True):
    x = randn(batch, dim, seed=seed).to(dtype)
    if zero_rows and batch > 2:
        x[1] = 0  # a zero query: scale 0, every score is the row's bias
    return x


# --------------------------------------------------------------- random cases
CASES = [
    # batch, dim, labels, partitions, nprobe, M, mean partition size
    (1, 1, 33, 3, 2, 5, 8),            # d = 1 (one 32-wide block, VNNI half-width tail)
    (1, 37, 1000, 16, 4, 50, 30),      # B = 1, Dp = 64 (the kernels compiled for 64)
    (1, 128, 5000, 40, 8, 100, 150),   # the batch-1 shape; enough rows for the sample-and-filter selection
    (1, 128, 70, 12, 12, 10, 100),     # few labels, many duplicates: the selection falls back to exact
    (3, 100, 333, 10, 3, 2000, 30),    # M larger than the candidates; a zero query
    (5, 129, 4099, 30, 5, 64, 40),     # Dp = 160 (any width), N not a multiple of 32
    (4, 256, 1000, 20, 4, 30, 40),     # Dp = 256
    (17, 70, 1000, 8, 16, 7, 25),      # nprobe > P: repeated partitions; Dp = 96
    (70, 128, 3000, 24, 6, 40, 60),    # a batch scored partition-major, many queries per partition
]


@on_backends
@pytest.mark.parametrize("batch,dim,labels,partitions,nprobe,M,size", CASES)
def test_matches_reference_bit_for_bit(backend, batch, dim, labels, partitions, nprobe, M, size):
    device = require_backend(backend, "quantized_candidates")
    seed = 31 * batch + dim + labels + partitions
    lists = random_partition_lists(labels, partitions, dim, seed, mean_size=size)
    x = queries(batch, dim, seed + 1, torch.float32)
    probes = random_probes(batch, nprobe, partitions, seed + 2)
    got = run_qc(backend, device, x, probes, lists, labels, M)
    expect_equal(got, x, probes, lists, labels, M)


@on_backends
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_query_dtypes_quantize_in_fp32(backend, dtype):
    device = require_backend(backend, "quantized_candidates")
    lists = random_partition_lists(500, 12, 48, seed=7)
    x = queries(6, 48, 8, dtype)
    probes = random_probes(6, 4, 12, seed=9)
    got = run_qc(backend, device, x, probes, lists, 500, 40)
    expect_equal(got, x, probes, lists, 500, 40)


# ---------------------------------------------------------- constructed cases
def _tie_rows(specs, dim):
    """Lists for (codes row, scale, bias) specs, one partition, labels 0..n-1."""
    width = -(-dim // 32) * 32
    codes = torch.zeros(len(specs), width, dtype=torch.int8)
    scales = torch.empty(len(specs), dtype=torch.float32)
    bias = torch.empty(len(specs), dtype=torch.float32)
    for t, (row, scale, b) in enumerate(specs):
        codes[t, : row.numel()] = row
        scales[t], bias[t] = scale, b
    offsets = torch.tensor([0, len(specs)], dtype=torch.int32)
    return offsets, codes, scales, bias, torch.arange(len(specs), dtype=torch.int32)


@on_backends
def test_scores_are_not_contracted_into_fma(backend):
    """Each row A is flanked by two constant rows B, C whose score is A's
    score as the reference computes it, (float(acc) * s_q) * s_t + b_t in
    three fp32 roundings: an exact tie, so the order must be B (smaller id),
    A, C. Contracting the multiply and add into an FMA rounds once and lands
    one ulp off for every row picked here, which would move A before B or
    after C. (Built without the LSS_NO_FMA barrier, GCC does emit FMAs there.)"""
    device = require_backend(backend, "quantized_candidates")
    g = gen(11)
    dim = 64
    x = torch.zeros(1, dim)
    x[0, 0] = 127.0  # amax 127: scale 1, inv exactly 1, q = round(x)
    x[0, 1:] = torch.randint(-127, 128, (dim - 1,), generator=g).float()
    q, qscale = reference.quantize_queries(x)
    assert float(qscale[0]) == 1.0 and torch.equal(q[0].float(), x[0])
    specs, tried = [], 0
    while len(specs) < 3 * 40:
        tried += 1
        row = torch.randint(-127, 128, (dim,), generator=g, dtype=torch.int8)
        acc = int((row.to(torch.int64) * q[0].to(torch.int64)).sum())
        s32 = torch.tensor(torch.rand(1, generator=g).item() * 0.01 + 1e-4, dtype=torch.float32)
        b32 = torch.randn(1, generator=g)[0]
        unfused = (torch.tensor(float(acc), dtype=torch.float32) * 1.0) * s32 + b32
        fused = torch.tensor(float(acc) * float(s32) + float(b32), dtype=torch.float64).to(torch.float32)
        if fused == unfused:
            continue
        zero = torch.zeros(dim, dtype=torch.int8)
        specs += [(zero, 1.0, float(unfused)), (row, float(s32), float(b32)), (zero, 1.0, float(unfused))]
    assert tried < 1000  # about half of the rows round differently with an FMA
    lists = _tie_rows(specs, dim)
    probes = torch.zeros(1, 1, dtype=torch.int32)
    want = reference.quantized_candidates(x, probes, *lists, len(specs), len(specs))[0][0].tolist()
    for t in range(0, len(specs), 3):  # each triple exactly tied: B, A, C next to each other
        i = want.index(t)
        assert want[i : i + 3] == [t, t + 1, t + 2]
    got = run_qc(backend, device, x, probes, lists, len(specs), len(specs))
    expect_equal(got, x, probes, lists, len(specs), len(specs))


@on_backends
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantization_is_exact_elementwise(backend, dtype):
    """Row j of the lists is the unit vector e_j, so its score is
    q[j] * scale_q; two constant rows around it hold the reference's
    q[j] * scale_q. Any q[j] off by one (rounding ties, 127 / amax computed
    another way, NaN / inf handling) breaks the B, A, C order. Queries hold
    exact .5 ties (amax 127 makes x * inv = x), random values, an inf, a NaN
    row and a zero row."""
    device = require_backend(backend, "quantized_candidates")
    dim = 40
    g = gen(12)
    x = torch.randn(6, dim, generator=g) * 3
    x[0, :] = torch.arange(dim) - dim / 2 + 0.5  # ties: -19.5 ... 19.5
    x[0, 0] = 127.0
    x[1, :] = 0.0
    x[2, 3] = float("inf")
    x[3, 5] = float("nan")
    x[4, :] = torch.randn(dim, generator=g) * 1e-3
    x = x.to(dtype)
    for b in range(x.shape[0]):
        xb = x[b : b + 1]
        q, qscale = reference.quantize_queries(xb)
        specs = []
        for j in range(dim):
            e = torch.zeros(dim, dtype=torch.int8)
            e[j] = 1
            s = (torch.tensor(float(q[0, j]), dtype=torch.float32) * qscale[0]).item()
            specs += [(torch.zeros(dim, dtype=torch.int8), 1.0, s), (e, 1.0, 0.0), (torch.zeros(dim, dtype=torch.int8), 1.0, s)]
        lists = _tie_rows(specs, dim)
        probes = torch.zeros(1, 1, dtype=torch.int32)
        got = run_qc(backend, device, xb, probes, lists, len(specs), len(specs))
        expect_equal(got, xb, probes, lists, len(specs), len(specs))


@on_backends
def test_nan_signed_zero_and_duplicate_labels(backend):
    """NaN scores (a NaN scale, a NaN query) rank as -inf, by id; -0 ties +0;
    a label in several probed partitions (and twice in one) counts once, with
    its best score."""
    device = require_backend(backend, "quantized_candidates")
    dim = 32
    zero = torch.zeros(dim, dtype=torch.int8)
    one = torch.ones(dim, dtype=torch.int8)
    specs = [
        (zero, -1.0, -0.0),          # 0: (0 * s_q) * -1 + -0 = -0
        (zero, 1.0, 0.0),            # 1: +0
        (one, float("nan"), 0.0),    # 2: NaN
        (one, 1.0, float("-inf")),   # 3: -inf
        (one, 0.5, 1.0),             # 4
        (one, 0.5, 1.0),             # 5: ties 4
        (one, 0.25, 3.0),            # 6
        (zero, 1.0, -5.0),           # 7
    ]
    lists = list(_tie_rows(specs, dim))
    # Labels: rows 4, 6 and 7 are all label 3 (7 in two partitions); row 2 (NaN) is label 6.
    lists[4] = torch.tensor([5, 4, 6, 2, 3, 1, 3, 3], dtype=torch.int32)
    # Three partitions over the same rows, overlapping.
    lists[0] = torch.tensor([0, 5, 5, 8], dtype=torch.int32)
    lists_t = tuple(lists)
    probes = torch.tensor([[0, 1, 2], [2, -1, 0], [-1, -1, -1], [2, 2, 1]], dtype=torch.int32)
    x = torch.randn(4, dim, generator=gen(3)).abs() + 0.1
    x[1, 0] = float("nan")
    for M in (1, 3, 8, 20):
        got = run_qc(backend, device, x, probes, lists_t, 7, M)
        expect_equal(got, x, probes, lists_t, 7, M)


@on_backends
def test_empty_lists_and_all_skipped_probes(backend):
    device = require_backend(backend, "quantized_candidates")
    lists = random_partition_lists(100, 6, 20, seed=4, empty_fraction=1.0)  # every partition empty
    x = queries(3, 20, 5, torch.float32)
    probes = random_probes(3, 4, 6, seed=6)
    got = run_qc(backend, device, x, probes, lists, 100, 9)
    assert torch.equal(got[1], torch.zeros(3, dtype=torch.int32))
    assert bool((got[0] == -1).all())
    expect_equal(got, x, probes, lists, 100, 9)


def at_one_and_two_threads(call):
    """call()'s results with torch at 1 thread, then at 2 (restored after)."""
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            yield call()
    finally:
        torch.set_num_threads(old)


def test_batch_one_with_many_rows_matches_reference():
    require_backend("cpu", "quantized_candidates")
    lists = random_partition_lists(20000, 8, 128, seed=21, mean_size=800, empty_fraction=0.0)
    x = queries(1, 128, 22, torch.float32)
    probes = torch.arange(8, dtype=torch.int32).view(1, 8)
    for got in at_one_and_two_threads(lambda: run_qc("cpu", torch.device("cpu"), x, probes, lists, 20000, 100)):
        expect_equal(got, x, probes, lists, 20000, 100)


def test_a_batch_larger_than_one_block_matches_reference():
    # The CPU op runs a batch in blocks of queries (its scratch sized by the
    # block): blocks, a ragged last one and the probe's shape (every query
    # on the same lists) give the reference's bits.
    require_backend("cpu", "quantized_candidates")
    lists = random_partition_lists(4000, 40, 64, seed=51, mean_size=100)
    x = queries(4500, 64, 52, torch.float32)
    probes = random_probes(4500, 4, 40, 53)
    expect_equal(run_qc("cpu", torch.device("cpu"), x, probes, lists, 4000, 20), x, probes, lists, 4000, 20)
    one = torch.zeros(4500, 1, dtype=torch.int32)
    expect_equal(run_qc("cpu", torch.device("cpu"), x, one, lists, 4000, 5), x, one, lists, 4000, 5)


@pytest.mark.parametrize("partitions,empty", [(1, 0.0), (3, 0.0), (9, 0.4)])
def test_a_partition_probed_by_the_whole_batch_is_shared_by_the_threads(partitions, empty):
    # The probe's shape: every query scans the same list(s); the batch path
    # splits such a partition's queries into runs scored by different
    # threads, next to empty lists and skipped (-1) probes. Same bits at 1
    # and 2 threads.
    require_backend("cpu", "quantized_candidates")
    lists = random_partition_lists(3000, partitions, 64, seed=41, mean_size=600, empty_fraction=empty)
    x = queries(300, 64, 42, torch.float32)
    probes = torch.arange(partitions, dtype=torch.int32).repeat(300, 1)
    if partitions > 1:
        probes[::5, 0] = -1
    for got in at_one_and_two_threads(lambda: run_qc("cpu", torch.device("cpu"), x, probes, lists, 3000, 9)):
        expect_equal(got, x, probes, lists, 3000, 9)


@pytest.mark.parametrize("batch,dim,labels,partitions,M,size", [
    # ~12,000-20,000 probed rows per query: past the 8,192 a sink holds uncompacted
    (64, 128, 6000, 80, 8, 200),   # sampled thresholds
    (48, 64, 300, 120, 50, 120),   # labels in many rows each
    (40, 70, 5000, 80, 16, 160),   # Dp = 96: the many-query kernel's half-vector tail
    (9, 160, 4000, 60, 5, 200),    # Dp = 160, groups of queries not a multiple of 8
    (3, 128, 4000, 60, 5, 200),    # fewer queries per partition than the many-query kernel takes
])
def test_a_batch_probing_most_partitions_keeps_only_keys_that_can_win(batch, dim, labels, partitions, M, size):
    # Each query's keys go to sinks (one per thread) that drop the keys below
    # a threshold once they fill (compact_sink): same bits as keeping every
    # key, at 1 and 2 threads (a query's keys then split over two sinks).
    require_backend("cpu", "quantized_candidates")
    seed = 7 * batch + dim + labels
    lists = random_partition_lists(labels, partitions, dim, seed, mean_size=size, empty_fraction=0.1)
    x = queries(batch, dim, seed + 1, torch.float32)
    g = gen(seed + 2)
    probes = torch.stack([torch.randperm(partitions, generator=g) for _ in range(batch)]).to(torch.int32)
    probes[::4, -1] = -1
    for got in at_one_and_two_threads(lambda: run_qc("cpu", torch.device("cpu"), x, probes, lists, labels, M)):
        expect_equal(got, x, probes, lists, labels, M)


def test_a_sink_whose_best_keys_hold_few_labels_keeps_the_exact_threshold():
    # A fifth of the rows are copies of 10 labels scored far above the rest:
    # the best 2M keys of a sink hold 10 labels, fewer than M = 20, so the
    # sampled threshold must be refused for the M-th distinct label's key.
    require_backend("cpu", "quantized_candidates")
    offsets, codes, scales, bias, ids = random_partition_lists(2000, 120, 64, seed=91, mean_size=100, empty_fraction=0.0)
    hot = torch.arange(ids.numel()) % 5 == 0
    ids[hot] = (torch.arange(ids.numel(), dtype=torch.int32) % 10)[hot]
    bias[hot] += 50.0
    lists = (offsets, codes, scales, bias, ids)
    x = queries(48, 64, 92, torch.float32)
    probes = torch.arange(120, dtype=torch.int32).repeat(48, 1)
    for got in at_one_and_two_threads(lambda: run_qc("cpu", torch.device("cpu"), x, probes, lists, 2000, 20)):
        expect_equal(got, x, probes, lists, 2000, 20)
        assert bool((got[1] == 20).all())


@pytest.mark.skipif(ISA_CHILD, reason="already in a child")
def test_batch_one_split_across_threads():
    """LSS_SPLIT_QUERY_BYTES=0: every batch-1 call splits its partitions
    across the threads; same bits."""
    require_backend("cpu", "quantized_candidates")
    env = dict(os.environ, LSS_SPLIT_QUERY_BYTES="0", LSS_ISA_TEST_CHILD="1")
    cmd = [sys.executable, "-m", "pytest", os.path.join(HERE, "test_quantized_candidates.py"),
           "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-x",
           "-k", "(on_cpu and (bit_for_bit or fma)) or many_rows"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0 and " passed" in tail, tail


# ------------------------------------------------------------- the composite
def partition_problem(batch, dim, labels, partitions, seed, dtype=torch.float32, with_bias=True):
    """Random int8 centroid codes (the probe) and lists, and exact logits:
    x, (centroid codes, scales, bias), lists, weight, bias."""
    g = gen(seed)
    x = torch.randn(batch, dim, generator=g).to(dtype)
    probe = probe_codes(torch.randn(partitions, dim, generator=g)) + (torch.randn(partitions, generator=g),)
    lists = random_partition_lists(labels, partitions, dim, seed + 1)
    weight = torch.randn(labels, dim, generator=g).to(dtype)
    bias = torch.randn(labels, generator=g).to(dtype) if with_bias else None
    return x, probe, lists, weight, bias


@on_backends
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("batch,dim,labels,partitions,nprobe,M,k", [
    (1, 37, 1000, 16, 4, 50, 5), (3, 100, 300, 10, 3, 500, 20), (5, 64, 4099, 30, 6, 64, 10)])
def test_partition_predict_topk_matches_reference(backend, dtype, batch, dim, labels, partitions, nprobe, M, k):
    device = require_backend(backend, "quantized_candidates")
    x, probe, lists, weight, bias = partition_problem(batch, dim, labels, partitions, batch + dim, dtype)
    args = on(device, x, *probe, *lists, weight, bias)
    scores, got = lss.partition_predict_topk(*args, labels, nprobe, M, k, backend=backend)
    want_scores, want = reference.partition_predict_topk(x, *probe, *lists, weight, bias, labels, nprobe, M, k)
    assert scores.dtype == dtype and got.dtype == torch.int64 and got.shape == (batch, k)
    torch.testing.assert_close(scores.cpu(), want_scores, **TOLERANCES[dtype])
    if dtype in (torch.float32, torch.float64):
        assert torch.equal(got.cpu(), want)
    else:  # 16-bit logits can tie after rounding: the labels must hold the same scores
        assert torch.equal(got.cpu() >= 0, want >= 0)


def projected_problem(batch, dim, rank, labels, partitions, seed, dtype=torch.float32):
    """partition_problem with codes of a rank-r projection: code_proj an
    orthonormal float32 [d, r], codes [T, r rounded up to 32]."""
    x, probe, _, weight, bias = partition_problem(batch, dim, labels, partitions, seed, dtype)
    proj = torch.linalg.qr(torch.randn(dim, rank, generator=gen(seed + 2)))[0].contiguous()
    return x, probe, random_partition_lists(labels, partitions, rank, seed + 3), weight, bias, proj


@on_backends
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,dim,rank,labels,partitions,nprobe,M,k", [
    (1, 96, 40, 1000, 16, 4, 50, 5), (4, 130, 64, 3000, 24, 5, 80, 10)])
def test_partition_predict_topk_with_a_code_projection(backend, dtype, batch, dim, rank, labels, partitions, nprobe,
                                                       M, k):
    device = require_backend(backend, "quantized_candidates")
    x, probe, lists, weight, bias, proj = projected_problem(batch, dim, rank, labels, partitions, batch + rank, dtype)
    args = on(device, x, *probe, *lists, weight, bias)
    scores, got = lss.partition_predict_topk(*args, labels, nprobe, M, k, proj.to(device), backend=backend)
    want_scores, want = reference.partition_predict_topk(x, *probe, *lists, weight, bias, labels, nprobe, M, k, proj)
    torch.testing.assert_close(scores.cpu(), want_scores, **TOLERANCES[dtype])
    if dtype == torch.float32:
        assert torch.equal(got.cpu(), want)
    else:  # 16-bit logits can tie after rounding
        assert torch.equal(got.cpu() >= 0, want >= 0)
    # The candidates are those of the code queries x @ code_proj (so the
    # projection is used, not ignored): the same pipeline step by step.
    probes = reference.quantized_probe(x, *probe, nprobe)
    ids, _ = reference.quantized_candidates(x.float() @ proj, probes, *lists, labels, M)
    step_scores, step = reference.topk_gathered(reference.gathered_logits(x, weight, bias, ids), ids, k)
    assert torch.equal(want, step) and torch.equal(want_scores, step_scores)


def test_partition_predict_topk_without_biases():
    require_backend("cpu", "quantized_candidates")
    x, probe, lists, weight, _ = partition_problem(4, 33, 500, 9, seed=3, with_bias=False)
    got = lss.partition_predict_topk(x, *probe, *lists, weight, None, 500, 3, 40, 7, backend="cpu")
    want = reference.partition_predict_topk(x, *probe, *lists, weight, None, 500, 3, 40, 7)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])


@pytest.mark.parametrize("projected", [False, True])
def test_the_unboxed_door_is_the_registered_op(projected):
    # _C.partition_predict_topk (eager predict's call, csrc/python_module.cpp)
    # is the dispatcher's partition_predict_topk: the same bits, the same
    # argument errors, on ragged shapes with and without bias / projection.
    require_backend("cpu", "quantized_candidates")
    from lsskernels import _ops
    door = _ops.unboxed("partition_predict_topk")
    assert door is not torch.ops.lsskernels.partition_predict_topk.default  # the build has the door
    for batch, dim, labels, parts, nprobe, M, k in ((1, 37, 1000, 16, 4, 50, 5), (7, 70, 333, 9, 9, 40, 40)):
        if projected:
            x, probe, lists, weight, bias, proj = projected_problem(batch, dim, 32, labels, parts, seed=batch)
        else:
            x, probe, lists, weight, bias = partition_problem(batch, dim, labels, parts, batch, with_bias=batch > 1)
            proj = None
        args = (x, *probe, *lists, weight, bias, labels, nprobe, M, k, proj)
        got, want = door(*args), torch.ops.lsskernels.partition_predict_topk.default(*args)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match=r"partition_predict_topk: k must be in \[1, inf\]"):
        door(*args[:-2], 0, proj)


def test_partition_predict_topk_compiles_with_fullgraph():
    require_backend("cpu", "quantized_candidates")
    torch._dynamo.reset()
    x, probe, lists, weight, bias = partition_problem(3, 40, 600, 12, seed=5)
    fn = lambda x: lss.partition_predict_topk(x, *probe, *lists, weight, bias, 600, 4, 50, 6)
    want = fn(x)
    got = torch.compile(fn, fullgraph=True)(x)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])


def test_partition_predict_topk_takes_no_gradient():
    require_backend("cpu", "quantized_candidates")
    x, probe, lists, weight, bias = partition_problem(2, 16, 200, 5, seed=6)
    weight.requires_grad_(True)
    scores, _ = lss.partition_predict_topk(x, *probe, *lists, weight, bias, 200, 2, 20, 3)
    assert not scores.requires_grad


# ------------------------------------------------------------------- opcheck
def test_opcheck_quantized_candidates_and_composite():
    require_backend("cpu", "quantized_candidates")
    lists = random_partition_lists(300, 10, 45, seed=13)
    x = queries(3, 45, 14, torch.float32)
    probes = random_probes(3, 4, 10, seed=15)
    torch.library.opcheck(torch.ops.lsskernels.quantized_candidates.default, (x, probes, *lists, 300, 25))
    xb, probe, lists2, weight, bias = partition_problem(3, 45, 300, 10, seed=16)
    torch.library.opcheck(torch.ops.lsskernels.partition_predict_topk.default,
                          (xb, *probe, *lists2, weight, bias, 300, 3, 25, 5))
    xp, probe, lists3, weight, bias, proj = projected_problem(3, 45, 20, 300, 10, seed=17)
    torch.library.opcheck(torch.ops.lsskernels.partition_predict_topk.default,
                          (xp, *probe, *lists3, weight, bias, 300, 3, 25, 5, proj))


# ---------------------------------------------------------------- bad input
def _good(batch=2, dim=20):
    lists = random_partition_lists(100, 5, dim, seed=17)
    return [queries(batch, dim, 18, torch.float32), random_probes(batch, 3, 5, seed=19), *lists, 100, 10]


def _with(index, value):
    args = _good()
    args[index] = value(args) if callable(value) else value
    return args


@pytest.mark.parametrize("args,exc,match", [
    (_with(0, lambda a: a[0][0]), ValueError, r"x must be \[B, d\]"),
    (_with(0, lambda a: a[0].long()), TypeError, r"x must have dtype"),
    (_with(1, lambda a: a[1][:1]), ValueError, r"probes must be \[B, nprobe\] with B = x.shape\[0\] = 2"),
    (_with(1, lambda a: a[1].float()), TypeError, r"probes must have dtype"),
    (_with(2, lambda a: a[2].long()), TypeError, r"list_offsets must have dtype"),
    (_with(2, lambda a: a[2][:1]), ValueError, r"list_offsets must be int32 \[P \+ 1\] with P >= 1"),
    (_with(3, lambda a: a[3][:, :16]), ValueError, r"codes must be int8 \[T, Dp\] with Dp = d rounded up"),
    (_with(3, lambda a: a[3].to(torch.int32)), TypeError, r"codes must have dtype"),
    (_with(4, lambda a: a[4][1:]), ValueError, r"code_scales must be \[T\]"),
    (_with(5, lambda a: a[5].double()), TypeError, r"code_bias must have dtype"),
    (_with(6, lambda a: a[6][1:]), ValueError, r"list_ids must be \[T\]"),
    (_with(7, 0), ValueError, r"num_labels must be in \[1, "),
    (_with(8, 0), ValueError, r"max_candidates must be in \[1, "),
    (_with(8, 2.0), TypeError, r"max_candidates must be an int"),
])
def test_bad_arguments_raise_clear_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        lss.quantized_candidates(*args, backend="reference")
    if lss.extension_loaded():
        with pytest.raises(exc, match=match):
            lss.quantized_candidates(*args, backend="cpu")


def test_probe_values_are_checked_by_the_reference_wrapper():
    # (native kernels check them as they read them: test_malformed_structures_raise_in_the_kernel)
    args = _with(1, lambda a: a[1].fill_(5))
    with pytest.raises(ValueError, match=r"probes values must be in \[-1, 5\)"):
        lss.quantized_candidates(*args, backend="reference")


def test_partition_predict_topk_bad_arguments():
    x, probe, lists, weight, bias = partition_problem(2, 16, 200, 5, seed=6)
    with pytest.raises(ValueError, match=r"num_labels must be <= weight.shape\[0\] = 200"):
        lss.partition_predict_topk(x, *probe, *lists, weight, bias, 201, 2, 20, 3)
    with pytest.raises(ValueError, match=r"list_offsets must be int32 \[P \+ 1\] = \[5\]"):
        lss.partition_predict_topk(x, *(t[:4] for t in probe), *lists, weight, bias, 200, 2, 20, 3)
    with pytest.raises(ValueError, match=r"k must be in \[1, "):
        lss.partition_predict_topk(x, *probe, *lists, weight, bias, 200, 2, 20, 0)
    with pytest.raises(ValueError, match=r"weight must be \[N, d\]"):
        lss.partition_predict_topk(x, *probe, *lists, weight[:, :3], bias, 200, 2, 20, 3)
    with pytest.raises(ValueError, match=r"centroid_codes must be int8 \[P, Dp\] with P >= 1 and Dp = d"):
        lss.partition_predict_topk(x, probe[0][:, :0], *probe[1:], *lists, weight, bias, 200, 2, 20, 3)
    with pytest.raises(ValueError, match=r"centroid_scales must be \[P\] = \[5\]"):
        lss.partition_predict_topk(x, probe[0], probe[1][:4], probe[2], *lists, weight, bias, 200, 2, 20, 3)
    with pytest.raises(TypeError, match=r"centroid_bias must have dtype"):
        lss.partition_predict_topk(x, *probe[:2], probe[2].double(), *lists, weight, bias, 200, 2, 20, 3)
    with pytest.raises(ValueError, match=r"nprobe must be in \[1, 5\]"):
        lss.partition_predict_topk(x, *probe, *lists, weight, bias, 200, 6, 20, 3)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_partition_predict_topk_bad_code_projections(backend):
    if backend == "cpu":
        require_backend("cpu", "quantized_candidates")
    x, probe, lists, weight, bias, proj = projected_problem(2, 48, 20, 200, 5, seed=8)
    call = lambda lists, proj: lss.partition_predict_topk(x, *probe, *lists, weight, bias, 200, 2, 20, 3, proj,
                                                          backend=backend)
    with pytest.raises(ValueError, match=r"code_proj must be float32 \[d = 48, r\] with 1 <= r <= d"):
        call(lists, proj[:40])
    with pytest.raises(ValueError, match=r"code_proj must be float32 \[d = 48, r\] with 1 <= r <= d"):
        call(lists, torch.randn(48, 49))
    with pytest.raises(TypeError, match=r"code_proj must have dtype"):
        call(lists, proj.double())
    with pytest.raises(ValueError, match=r"codes must be int8 \[T, Dp\] with Dp = the code width r rounded up"):
        call(lists, proj[:, :19].repeat(1, 2))  # r = 38: codes of width 32 do not fit
    with pytest.raises(ValueError, match=r"codes must be int8 \[T, Dp\] with Dp = d rounded up"):
        call(lists, None)  # 32-wide codes of projected vectors cannot be scored with 48-wide x


def _malformed():
    """Structures the Python wrapper does not scan (only the kernel reads
    them): each must raise ValueError (TypeError for a dtype) from the kernel,
    never crash."""
    dim = 20
    lists = random_partition_lists(100, 5, dim, seed=23, empty_fraction=0.0)
    x = queries(2, dim, 24, torch.float32)
    probes = torch.tensor([[0, 1], [4, -1]], dtype=torch.int32)
    offsets, codes, scales, bias, ids = lists
    T = codes.shape[0]
    cases = {}
    bad = offsets.clone(); bad[2] = bad[1] - 1
    cases["offsets not monotone"] = (x, probes, bad, codes, scales, bias, ids)
    bad = offsets.clone(); bad[-1] = T + 1
    cases["offsets past T"] = (x, probes, bad, codes, scales, bias, ids)
    bad = offsets.clone(); bad[4] = -5
    cases["negative offset"] = (x, probes, bad, codes, scales, bias, ids)
    cases["probe >= P"] = (x, torch.tensor([[0, 5], [1, 2]], dtype=torch.int32), offsets, codes, scales, bias, ids)
    cases["probe < -1"] = (x, torch.tensor([[0, -2], [1, 2]], dtype=torch.int32), offsets, codes, scales, bias, ids)
    bad = ids.clone(); bad[int(offsets[1])] = 100
    cases["list id >= N"] = (x, probes, offsets, codes, scales, bias, bad)
    bad = ids.clone(); bad[0] = -1
    cases["list id < 0"] = (x, probes, offsets, codes, scales, bias, bad)
    cases["codes too narrow"] = (x, probes, offsets, codes[:, :0], scales, bias, ids)
    cases["probes int64"] = (x, probes.long(), offsets, codes, scales, bias, ids)
    cases["scales short"] = (x, probes, offsets, codes, scales[:-1], bias, ids)
    return cases


@pytest.mark.parametrize("case", sorted(_malformed()))
def test_malformed_structures_raise_in_the_kernel(case):
    require_backend("cpu", "quantized_candidates")
    args = _malformed()[case]
    with pytest.raises(TypeError if case == "probes int64" else ValueError, match="quantized_candidates"):
        torch.ops.lsskernels.quantized_candidates(*args, 100, 10)


# ------------------------------------------------------ every CPU int8 kernel
EXPECTED_INT8_ISA = {None: None, "avx512bw": "avx512bw", "avx2": "avx2", "generic": "generic"}


def test_int8_kernel_is_the_one_asked_for():
    require_backend("cpu", "quantized_candidates")
    forced = os.environ.get("LSS_CPU_ISA")
    got = _ops._C.cpu_int8_isa()
    if forced in ("avx512bw", "avx2", "generic"):
        assert got == forced or not cpu_isa_available(forced), (forced, got)
    else:
        assert got in ("avx512-vnni", "avx512bw", "avx2", "generic")


@pytest.mark.skipif(ISA_CHILD, reason="already in a child")
@pytest.mark.parametrize("isa", ["avx512bw", "avx2", "generic"])
def test_every_cpu_kernel_matches_reference(isa):
    """The cpu tests of this file in a child process with LSS_CPU_ISA=isa
    (the kernel table is chosen once, at load time)."""
    cpu_isa_child(__file__, isa, "not on_reference and not on_triton and not on_cuda and not every_cpu_kernel and not compiles")
