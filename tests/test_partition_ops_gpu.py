"""The GPU backends of the partition family (quantized_candidates, and the
quantized_probe and partition_predict_topk built on it) against
lsskernels.reference.

Triton: the kernels run on CPU tensors under the Triton interpreter, in a
child pytest process as in tests/test_triton.py (TRITON_INTERPRET=1 must be
set before triton is first imported and would leak into other test files).
Run the child suite alone, with per-test output, by

    LSS_PARTITION_TEST_CHILD=1 TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_partition_ops_gpu.py -q

CUDA C++ (and Triton on a real GPU): tests marked `gpu`, skipped where no
CUDA device is visible.

Inputs are fresh random ragged lists: B = 1 and a few, d not a multiple of 32
(and a multiple), empty partitions, -1 probes, rows probing nothing, labels
listed in several partitions (with identical and with different codes), M
larger than the candidates, N not a multiple of 32, garbage in the codes past
d, ties, NaN and infinite scores. quantized_candidates must match bit for
bit.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

IN_CHILD = os.environ.get("LSS_PARTITION_TEST_CHILD") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ inputs
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_lists(num_parts: int, d: int, num_labels: int, seed: int, max_size: int = 9,
                 device: str = "cpu", sizes=None):
    """Partition lists in the layout of reference.quantized_candidates: some
    partitions empty (unless `sizes` gives them), labels repeated across
    partitions (once with a copy of the same code row, so the two copies tie
    exactly), garbage in the codes past d."""
    g = gen(seed)
    if sizes is None:
        sizes = torch.randint(0, max_size + 1, (num_parts,), generator=g)
        sizes[torch.randperm(num_parts, generator=g)[: max(1, num_parts // 4)]] = 0  # empty partitions
    else:
        sizes = torch.tensor(sizes)
    offsets = torch.zeros(num_parts + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(sizes, 0)
    rows = int(offsets[-1])
    width = -(-d // 32) * 32
    codes = torch.randint(-127, 128, (rows, width), generator=g, dtype=torch.int8)
    scales = torch.rand(rows, generator=g) * 0.02 + 1e-3
    bias = torch.randn(rows, generator=g) * 0.1
    ids = torch.randint(0, num_labels, (rows,), generator=g, dtype=torch.int32)  # duplicates
    if rows >= 4:
        # label ids[0] listed again at the last row, with the very same code row
        codes[-1], scales[-1], bias[-1], ids[-1] = codes[0], scales[0], bias[0], ids[0]
    out = offsets, codes, scales, bias, ids
    return tuple(t.to(device) for t in out)


def random_probes(batch: int, nprobe: int, num_parts: int, seed: int, device: str = "cpu"):
    g = gen(seed)
    probes = torch.stack([torch.randperm(num_parts, generator=g)[:nprobe] for _ in range(batch)]).to(torch.int32)
    probes[torch.rand(batch, nprobe, generator=g) < 0.2] = -1
    if batch > 2:
        probes[1] = -1  # a query probing nothing
    return probes.to(device)


if not IN_CHILD:
    # ----------------------------------------------------------- driver
    @pytest.mark.skipif(not _triton_importable(), reason="triton not installed")
    def test_triton_interpreter_suite():
        """Every Triton test below, in a child process under TRITON_INTERPRET=1."""
        env = dict(os.environ, LSS_PARTITION_TEST_CHILD="1", TRITON_INTERPRET="1")
        cmd = [sys.executable, "-m", "pytest", os.path.abspath(__file__), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "-rfE"]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        tail = (proc.stdout + proc.stderr)[-6000:]
        print(tail)
        assert proc.returncode == 0, f"interpreter suite failed:\n{tail}"

    def test_cuda_kernels_registered_where_built():
        import lsskernels as lss

        if not lss.cuda_kernels_built():
            pytest.skip("extension built without CUDA")
        for op in ("quantized_candidates",):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lsskernels::{op}", "CUDA"), op

    # ------------------------------------------------- real GPU (CUDA, Triton)
    gpu = pytest.mark.gpu
    needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

    def _gpu_backends():
        import lsskernels as lss

        out = []
        if torch.cuda.is_available() and lss.cuda_kernels_built():
            out.append("cuda")
        if torch.cuda.is_available() and _triton_importable():
            out.append("triton")
        return out or ["none"]

    @gpu
    @needs_gpu
    @pytest.mark.parametrize("backend", ["cuda", "triton"])
    @pytest.mark.parametrize("d", [45, 128, 200])
    def test_gpu_quantized_candidates_bit_exact(backend, d):
        from lsskernels import _ops, reference

        if backend not in _gpu_backends():
            pytest.skip(f"{backend} backend not available")
        N, P = 3001, 40
        lists = random_lists(P, d, N, seed=d, max_size=120, device="cuda")
        for batch, nprobe, m in ((1, 6, 50), (37, 8, 200), (5, 3, 5000)):
            x = torch.randn(batch, d, generator=gen(batch + d)).cuda()
            probes = random_probes(batch, nprobe, P, seed=batch, device="cuda")
            got = _ops.quantized_candidates(x, probes, *lists, N, m, backend=backend)
            want = reference.quantized_candidates(x, probes, *lists, N, m)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), (batch, nprobe, m)

    @gpu
    @needs_gpu
    def test_gpu_cuda_rejects_malformed_lists():
        if "cuda" not in _gpu_backends():
            pytest.skip("CUDA kernels not built")
        ops = torch.ops.lsskernels
        offsets, codes, scales, bias, ids = random_lists(6, 20, 50, seed=1, device="cuda")
        x = torch.randn(2, 20, device="cuda")
        probes = torch.tensor([[0, 1], [2, -1]], dtype=torch.int32, device="cuda")
        with pytest.raises(ValueError, match="probes must be in"):
            ops.quantized_candidates(x, probes + 10, offsets, codes, scales, bias, ids, 50, 4)
        bad = offsets.clone()
        bad[-1] = codes.shape[0] + 3
        with pytest.raises(ValueError, match="list_offsets"):
            ops.quantized_candidates(x, probes, bad, codes, scales, bias, ids, 50, 4)
        with pytest.raises(ValueError, match="list_ids"):
            ops.quantized_candidates(x, probes, offsets, codes, scales, bias, ids + 50, 50, 4)

else:
    # ================================================================ child
    assert os.environ.get("TRITON_INTERPRET") == "1", "the child suite needs TRITON_INTERPRET=1"

    import lsskernels as lss
    from lsskernels import _ops  # the wrappers (not exported at the package root yet)
    from lsskernels import reference
    from lsskernels import triton as lt
    import importlib

    qc_mod = importlib.import_module("lsskernels.triton.quantized_candidates")

    def test_interpreter_is_on():
        assert lt.INTERPRET
        assert lss.__file__.startswith(ROOT), lss.__file__

    # ---------------------------------------------------- quantize_queries
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    def test_quantize_queries_bit_exact(dtype):
        x = torch.randn(7, 45, generator=gen(1)) * 3
        x[1] = 0.0  # amax == 0
        x[2, 5] = float("nan")  # NaN row
        x[3, 7] = float("inf")  # inf row
        x[4] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, 63.5] * 6 + [0.0, -127.0, 3.5])  # .5 ties
        x[5] = x[5] * 1e-39  # subnormal amax: 127 / amax overflows to inf
        x = x.to(dtype)
        q, s = lt.quantize_queries(x)
        rq, rs = reference.quantize_queries(x)
        assert q.dtype == torch.int8 and s.dtype == torch.float32
        assert torch.equal(q, rq)
        assert torch.equal(s.view(torch.int32), rs.view(torch.int32))  # bit for bit, NaN included

    # ------------------------------------------------ quantized_candidates
    QC_CASES = [
        # B, d, P, nprobe, N, M, max rows per partition
        (1, 45, 7, 3, 37, 5, 9),      # B = 1, truncation
        (4, 32, 9, 4, 70, 200, 9),    # d a multiple of 32, M > candidates
        (3, 7, 6, 6, 33, 8, 12),      # tiny d, every partition probed
        (5, 70, 12, 2, 1000, 16, 20), # wider d (Dp = 96), few duplicates
    ]

    @pytest.mark.parametrize("case", QC_CASES)
    def test_quantized_candidates_bit_exact(case):
        batch, d, parts, nprobe, n, m, size = case
        seed = batch * 1000 + d
        lists = random_lists(parts, d, n, seed=seed, max_size=size)
        probes = random_probes(batch, nprobe, parts, seed=seed + 1)
        x = torch.randn(batch, d, generator=gen(seed + 2))
        ids, counts = lt.quantized_candidates(x, probes, *lists, n, m)
        want_ids, want_counts = reference.quantized_candidates(x, probes, *lists, n, m)
        assert ids.dtype == torch.int32 and counts.dtype == torch.int32
        assert ids.shape == (batch, m) and counts.shape == (batch,)
        assert torch.equal(ids, want_ids)
        assert torch.equal(counts, want_counts)
        valid = ids >= 0
        assert torch.equal(valid.sum(1).to(torch.int32), counts)
        for row in ids:  # each label at most once
            kept = row[row >= 0].tolist()
            assert len(kept) == len(set(kept))

    def test_quantized_candidates_ties_nan_inf_and_duplicates():
        """Scores with exact ties (zero scales: the score is the bias), NaN
        and +-inf scores, and a label in two partitions with different
        scores: the best one counts, ordered (score desc, id asc)."""
        d, n = 40, 29
        lists = list(random_lists(5, d, n, seed=7, sizes=[6, 0, 5, 7, 4]))
        offsets, codes, scales, bias, ids = lists
        rows = codes.shape[0]
        g = gen(8)
        scales[: rows // 2] = 0.0
        bias[: rows // 2] = torch.randint(-2, 3, (rows // 2,), generator=g).float()
        bias[1] = float("nan")
        bias[2] = float("inf")
        bias[3] = float("-inf")
        scales[4] = float("nan")
        bias[5] = -0.0
        bias[6] = 0.0
        ids[7] = ids[rows - 2]  # the same label, other code row, other partition
        x = torch.randn(3, d, generator=g)
        probes = torch.tensor([[0, 1, 2, 3, 4], [4, 3, -1, 1, 0], [-1, -1, -1, -1, 2]], dtype=torch.int32)
        for m in (1, 4, 64):
            got = lt.quantized_candidates(x, probes, offsets, codes, scales, bias, ids, n, m)
            want = reference.quantized_candidates(x, probes, offsets, codes, scales, bias, ids, n, m)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), m

    def test_quantized_candidates_order_of_special_scores():
        """The order by hand: score desc, then id asc; NaN ties with -inf,
        -0.0 with +0.0; a label's best score counts."""
        d, n = 5, 10
        #         label:   1      3        2        0       5        4    6     7     4 (again, worse)
        bias = torch.tensor([0.0, -1e30, -1e30, 0.0, 3.4e38, 1.0, -0.0, 0.0, -5.0])
        scales = torch.tensor([float("nan"), float("inf"), 1.0, float("inf"), 0.0, 0.0, 0.0, 0.0, 0.0])
        ids = torch.tensor([1, 3, 2, 0, 5, 4, 6, 7, 4], dtype=torch.int32)
        codes = torch.zeros(9, 32, dtype=torch.int8)
        codes[:, 0] = torch.tensor([1, -1, 0, 1, 0, 0, 0, 0, 0], dtype=torch.int8)
        bias[2] = float("-inf")
        offsets = torch.tensor([0, 4, 4, 9], dtype=torch.int32)
        x = torch.ones(1, d)  # q = 127 everywhere: label 1 scores NaN, 3 and 2 -inf, 0 +inf
        probes = torch.tensor([[2, 1, 0]], dtype=torch.int32)
        want = torch.tensor([[0, 5, 4, 6, 7, 1, 2, 3, -1, -1, -1]], dtype=torch.int32)
        got = lt.quantized_candidates(x, probes, offsets, codes, scales, bias, ids, n, 11)
        ref = reference.quantized_candidates(x, probes, offsets, codes, scales, bias, ids, n, 11)
        assert torch.equal(ref[0], want), ref
        assert torch.equal(got[0], want) and torch.equal(got[1], torch.tensor([8], dtype=torch.int32))

    def test_quantized_candidates_special_queries():
        """Queries that are all zero, hold a NaN or an infinity: their scale
        is 0, NaN or inf, exactly as the reference's."""
        d, n = 33, 50
        lists = random_lists(4, d, n, seed=11, max_size=8)
        x = torch.randn(4, d, generator=gen(12))
        x[0] = 0.0
        x[1, 3] = float("nan")
        x[2, 9] = float("-inf")
        probes = torch.tensor([[0, 1, 2, 3]] * 4, dtype=torch.int32)
        got = lt.quantized_candidates(x, probes, *lists, n, 10)
        want = reference.quantized_candidates(x, probes, *lists, n, 10)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
    def test_quantized_candidates_other_dtypes(dtype):
        batch, d, parts, n = 2, 19, 5, 40
        lists = random_lists(parts, d, n, seed=21, max_size=7)
        probes = random_probes(batch, 3, parts, seed=22)
        x = torch.randn(batch, d, generator=gen(23)).to(dtype)
        got = lt.quantized_candidates(x, probes, *lists, n, 9)
        want = reference.quantized_candidates(x, probes, *lists, n, 9)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    def test_quantized_candidates_nothing_probed():
        lists = random_lists(3, 10, 20, seed=31)
        x = torch.randn(2, 10, generator=gen(32))
        probes = torch.full((2, 2), -1, dtype=torch.int32)
        ids, counts = lt.quantized_candidates(x, probes, *lists, 20, 4)
        assert torch.equal(ids, torch.full((2, 4), -1, dtype=torch.int32))
        assert torch.equal(counts, torch.zeros(2, dtype=torch.int32))

    def test_quantized_candidates_public_wrapper():
        batch, d, parts, n = 3, 21, 6, 45
        lists = random_lists(parts, d, n, seed=41)
        probes = random_probes(batch, 3, parts, seed=42).to(torch.int64)  # int64 probes are converted
        x = torch.randn(batch, d, generator=gen(43))
        got = _ops.quantized_candidates(x, probes, *lists, n, 7, backend="triton")
        want = _ops.quantized_candidates(x, probes, *lists, n, 7, backend="reference")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    @pytest.mark.parametrize("defect", ["probe", "offsets_decreasing", "offsets_past_rows", "label"])
    def test_quantized_candidates_malformed_lists_raise(defect):
        offsets, codes, scales, bias, ids = random_lists(5, 12, 30, seed=51, sizes=[3, 2, 0, 4, 2])
        x = torch.randn(2, 12, generator=gen(52))
        probes = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)
        match = "probes" if defect == "probe" else ("list_ids" if defect == "label" else "list_offsets")
        if defect == "probe":
            probes[1, 1] = 5
        elif defect == "offsets_decreasing":
            offsets[2] = offsets[3] + 1
        elif defect == "offsets_past_rows":
            offsets[-1] = codes.shape[0] + 1
        else:
            ids[offsets[3]] = 30  # == num_labels, in probed partition 3
        with pytest.raises(ValueError, match=match):
            lt.quantized_candidates(x, probes, offsets, codes, scales, bias, ids, 30, 4)

    # ---------------------------------- the probe and the composite (Triton path)
    @pytest.mark.parametrize("projected", [False, True])
    def test_quantized_probe_and_partition_predict_topk_public_wrappers(projected):
        from lsskernels.partition.probe import probe_codes

        batch, d, parts, n, rank = 3, 40, 8, 120, 20
        x = torch.randn(batch, d, generator=gen(81))
        probe = (*probe_codes(torch.randn(parts, d, generator=gen(82))), torch.randn(parts, generator=gen(83)))
        got = _ops.quantized_probe(x, *probe, 3, backend="triton")
        assert torch.equal(got, reference.quantized_probe(x, *probe, 3))
        proj = torch.linalg.qr(torch.randn(d, rank, generator=gen(84)))[0].contiguous() if projected else None
        lists = random_lists(parts, rank if projected else d, n, seed=85)
        weight, bias = torch.randn(n, d, generator=gen(86)), torch.randn(n, generator=gen(87))
        args = (x, *probe, *lists, weight, bias, n, 3, 12, 4, proj)
        scores, labels = _ops.partition_predict_topk(*args, backend="triton")
        want_scores, want_labels = reference.partition_predict_topk(*args)
        assert torch.equal(labels, want_labels)
        torch.testing.assert_close(scores, want_scores)

    def test_max_code_width_bound():
        # 127^2 * MAX_CODE_WIDTH fits in int32, one more block of 32 would not be guaranteed to
        assert 127 * 127 * qc_mod.MAX_CODE_WIDTH < 2**31
        assert qc_mod.MAX_CODE_WIDTH % 32 == 0
