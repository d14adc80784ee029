"""The Triton backend (lsskernels/triton) against lsskernels.reference.

No GPU here: the kernels run on CPU tensors under the Triton interpreter,
which must be switched on (TRITON_INTERPRET=1) before triton is first
imported and stays on for the whole process. To keep that from leaking into
the other test files of the same pytest run (and to work even when they have
already imported triton), the interpreter tests run in a child pytest
process: in the parent this file only holds the drivers
(test_interpreter_suite, test_triton_op_registration_eager) and the GPU
tests; in the child (LSS_TRITON_TEST_CHILD=1) it holds the kernel tests.
Run the child suite alone, with per-test output, by

    LSS_TRITON_TEST_CHILD=1 TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton.py -q

Inputs are fresh random small ragged shapes (B = 1 and 3..5 and 18, d = 1, 7,
33, N not a multiple of 32, empty buckets, M larger than the candidates,
all-padding rows, duplicate ids); integer outputs must match bit for bit,
float outputs within the per-dtype tolerance table (tests/helpers.py), and
gradients against the reference's autograd.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

IN_CHILD = os.environ.get("LSS_TRITON_TEST_CHILD") == "1"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _run_child(extra_env: dict, args: list, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, LSS_TRITON_TEST_CHILD="1", TRITON_INTERPRET="1", **extra_env)
    cmd = [sys.executable, "-m", "pytest", os.path.abspath(__file__), "-q", "-p", "no:cacheprovider",
           "-o", "addopts=", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


if not IN_CHILD:
    # ------------------------------------------------------------- drivers
    needs_triton = pytest.mark.skipif(not _triton_importable(), reason="triton not installed")

    @needs_triton
    def test_interpreter_suite():
        """Every kernel test below, in a child process under TRITON_INTERPRET=1."""
        proc = _run_child({}, ["-rfE"])
        tail = (proc.stdout + proc.stderr)[-6000:]
        print(tail)
        assert proc.returncode == 0, f"interpreter suite failed:\n{tail}"

    @needs_triton
    def test_triton_op_registration_eager():
        """The ops registered with torch.library.triton_op (the GPU
        registration) also run eagerly on CPU tensors under the interpreter."""
        proc = _run_child({"LSS_TRITON_REGISTRATION": "triton_op"}, ["-k", "smoke", "-rfE"])
        tail = (proc.stdout + proc.stderr)[-6000:]
        assert proc.returncode == 0, f"triton_op smoke tests failed:\n{tail}"
        assert " passed" in tail

    # ------------------------------------------------------------ real GPU
    gpu = pytest.mark.gpu
    needs_gpu = pytest.mark.skipif(not torch.cuda.is_available() or not _triton_importable(),
                                   reason="needs a CUDA device and triton")

    @gpu
    @needs_gpu
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    def test_gpu_gathered_and_bitmap_match_reference(dtype):
        from helpers import GRAD_TOLERANCES, TOLERANCES
        from lsskernels import reference
        from lsskernels import triton as lt

        torch.manual_seed(0)
        dev = "cuda"
        x = torch.randn(37, 200, device=dev).to(dtype).requires_grad_()
        w = torch.randn(1000, 200, device=dev).to(dtype).requires_grad_()
        b = torch.randn(1000, device=dev).to(dtype).requires_grad_()
        ids = torch.randint(-1, 1000, (37, 129), device=dev, dtype=torch.int32)
        got = lt.gathered_logits(x, w, b, ids)
        want = reference.gathered_logits(x, w, b, ids)
        torch.testing.assert_close(got, want, **TOLERANCES[dtype])
        g = torch.randn_like(got)
        gg = torch.autograd.grad(got, (x, w, b), g)
        gw = torch.autograd.grad(want, (x, w, b), g)
        for a, r in zip(gg, gw):
            torch.testing.assert_close(a, r, **GRAD_TOLERANCES[dtype])
        bitmap = reference.pack_bitmap(torch.rand(37, 1000, device=dev) < 0.05)
        values, row_ptr = lt.bitmap_sparse_matmul(x, w, b, bitmap)
        rv, rrp = reference.bitmap_sparse_matmul(x, w, b, bitmap)
        assert torch.equal(row_ptr, rrp)
        torch.testing.assert_close(values, rv, **TOLERANCES[dtype])

    @gpu
    @needs_gpu
    def test_gpu_lookup_and_topk_match_reference():
        from helpers import random_query_codes, random_tables
        from lsskernels import reference
        from lsskernels import triton as lt

        _, offsets, items = random_tables(3000, 8, 6, seed=1)
        offsets, items = offsets.cuda(), items.cuda()
        codes = random_query_codes(33, 8, 6, seed=2).cuda()
        ids, counts = lt.bucket_lookup(codes, offsets, items, 3000, 100, 2)
        rids, rcounts = reference.bucket_lookup(codes, offsets, items, 3000, 100, 2)
        assert torch.equal(ids, rids) and torch.equal(counts, rcounts)
        bm = lt.bucket_lookup_bitmap(codes, offsets, items, 3000, 1)
        assert torch.equal(bm, reference.bucket_lookup_bitmap(codes, offsets, items, 3000, 1))
        logits = torch.randn(33, 100, device="cuda")
        s, l = lt.topk_gathered(logits, ids, 10)
        rs, rl = reference.topk_gathered(logits, ids, 10)
        assert torch.equal(l, rl)
        torch.testing.assert_close(s, rs)

else:
    # ================================================================ child
    assert os.environ.get("TRITON_INTERPRET") == "1", "the child suite needs TRITON_INTERPRET=1"

    import lsskernels as lss
    from helpers import GRAD_TOLERANCES, TOLERANCES, gen, randn, random_ids
    from lsskernels import reference
    from lsskernels import triton as lt
    lookup = lt.module("bucket_lookup")  # the modules (the package's attributes are the functions)
    topk = lt.module("topk")

    FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

    def test_smoke_interpreter_is_on():
        assert lt.INTERPRET
        assert lt.REGISTRATION == os.environ.get("LSS_TRITON_REGISTRATION", "custom_op")

    # ---------------------------------------------------------- helpers
    def csr_tables(num_labels: int, num_tables: int, bits: int, seed: int, extra: int = 0, tail: int = 3):
        """Random CSR tables: every label in the bucket of its random code,
        plus `extra` label-superior insertions per table (a label in several
        buckets of one table), buckets sorted, items padded with -1 tails."""
        g = gen(seed)
        buckets = 1 << bits
        u = torch.rand(num_labels, num_tables, generator=g)
        codes = (u * u * buckets).to(torch.int64).clamp(max=buckets - 1)  # skewed: empty buckets
        offsets, rows = [], []
        for table in range(num_tables):
            lists = [set() for _ in range(buckets)]
            for label in range(num_labels):
                lists[int(codes[label, table])].add(label)
            if num_labels:
                for _ in range(extra):
                    label = int(torch.randint(0, num_labels, (1,), generator=g))
                    lists[int(torch.randint(0, buckets, (1,), generator=g))].add(label)
            sizes = [len(s) for s in lists]
            offsets.append([0] + torch.tensor(sizes).cumsum(0).tolist())
            rows.append([i for s in lists for i in sorted(s)])
        width = max(len(r) for r in rows) + tail
        items = torch.full((num_tables, width), -1, dtype=torch.int32)
        for table, r in enumerate(rows):
            items[table, : len(r)] = torch.tensor(r, dtype=torch.int32)
        return torch.tensor(offsets, dtype=torch.int32), items

    def query_codes(batch, num_tables, bits, seed):
        return torch.randint(0, 1 << bits, (batch, num_tables), generator=gen(seed), dtype=torch.int32)

    def leaves(*tensors):
        return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]

    # -------------------------------------------------------- hash codes
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("batch,dim,tables,bits", [(1, 7, 3, 5), (4, 33, 2, 30), (18, 1, 4, 1)])
    def test_smoke_hash_codes(dtype, batch, dim, tables, bits):
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

    # ----------------------------------------------------- bucket lookup
    LOOKUP_CASES = [
        # N, L, K, B, M, min_hits, extra
        (37, 3, 3, 1, 5, 1, 0),      # B = 1, truncation
        (45, 4, 3, 4, 100, 2, 6),    # M larger than the candidates, min_hits 2, multi-bucket labels
        (70, 5, 3, 5, 8, 1, 10),     # bigger buckets
        (20, 2, 4, 3, 300, 1, 0),    # M > RB (padding loop), empty buckets
        (0, 2, 1, 2, 3, 1, 0),       # no labels at all
        (33, 6, 4, 3, 7, 7, 4),      # min_hits above L: no candidates
    ]

    @pytest.mark.parametrize("case", LOOKUP_CASES)
    def test_smoke_bucket_lookup(case):
        n, tables, bits, batch, m, min_hits, extra = case
        offsets, items = csr_tables(n, tables, bits, seed=n + tables, extra=extra)
        codes = query_codes(batch, tables, bits, seed=batch + n)
        ids, counts = lt.bucket_lookup(codes, offsets, items, n, m, min_hits)
        want_ids, want_counts = reference.bucket_lookup(codes, offsets, items, n, m, min_hits)
        assert ids.dtype == torch.int32 and counts.dtype == torch.int32
        assert torch.equal(ids, want_ids)
        assert torch.equal(counts, want_counts)

    @pytest.mark.parametrize("case", LOOKUP_CASES)
    def test_bucket_lookup_bitmap(case):
        n, tables, bits, batch, _, min_hits, extra = case
        offsets, items = csr_tables(n, tables, bits, seed=n + tables + 1, extra=extra)
        codes = query_codes(batch, tables, bits, seed=batch + n + 1)
        for hits in sorted({1, min_hits}):
            got = lt.bucket_lookup_bitmap(codes, offsets, items, n, hits)
            assert torch.equal(got, reference.bucket_lookup_bitmap(codes, offsets, items, n, hits)), hits

    def test_bucket_lookup_oversized_queries_use_fallback(monkeypatch):
        """Queries retrieving more than MAX_RETRIEVED ids go to the torch
        path; the others stay on the kernel; the result is the same."""
        monkeypatch.setattr(lookup, "MAX_RETRIEVED", 16)
        offsets, items = csr_tables(60, 4, 3, seed=5, extra=5)
        codes = query_codes(5, 4, 3, seed=6)
        codes[0] = torch.argmin(offsets[:, 1:] - offsets[:, :-1], dim=1).to(torch.int32)  # a small query
        codes[1] = 0  # the biggest buckets (codes are skewed low)
        totals = lookup.retrieved_totals(codes, offsets, items.shape[1])
        assert bool((totals > 16).any()) and bool((totals <= 16).any()), totals
        for min_hits in (1, 2):
            ids, counts = lt.bucket_lookup(codes, offsets, items, 60, 9, min_hits)
            want_ids, want_counts = reference.bucket_lookup(codes, offsets, items, 60, 9, min_hits)
            assert torch.equal(ids, want_ids) and torch.equal(counts, want_counts)
            bm = lt.bucket_lookup_bitmap(codes, offsets, items, 60, min_hits)
            assert torch.equal(bm, reference.bucket_lookup_bitmap(codes, offsets, items, 60, min_hits))

    @pytest.mark.parametrize("op", ["list", "bitmap1", "bitmap2"])
    @pytest.mark.parametrize("defect", ["code", "offsets", "item"])
    def test_malformed_tables_raise(op, defect):
        offsets, items = csr_tables(40, 3, 2, seed=9)
        codes = query_codes(2, 3, 2, seed=10)
        if defect == "code":
            codes[1, 1] = 4
        elif defect == "offsets":
            offsets[:, 1:] = offsets[:, :1]  # every bucket but the last empty ...
            offsets[:, -1] = items.shape[1] + 5  # ... and the last one past the items
            codes[:, :] = 3
        else:
            items[:, : offsets[0, -1]] = 40  # label == num_labels
        with pytest.raises(ValueError, match="malformed tables"):
            if op == "list":
                lt.bucket_lookup(codes, offsets, items, 40, 8, 1)
            else:
                lt.bucket_lookup_bitmap(codes, offsets, items, 40, 1 if op == "bitmap1" else 2)

    # --------------------------------------------------- gathered logits
    GATHERED_CASES = [
        # B, d, N, M, bias
        (1, 7, 37, 5, True),
        (4, 33, 50, 20, False),
        (3, 1, 10, 40, True),   # d = 1, M > N: duplicates
        (5, 0, 9, 3, True),     # d = 0: bias only
    ]

    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("case", GATHERED_CASES)
    def test_smoke_gathered_logits(dtype, case):
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

    @pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
    def test_gathered_logits_partial_grads(needs):
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

    def test_gathered_logits_out_of_range_ids_are_never_read():
        """The kernels mask ids outside [-1, N) (NaN logit, no gradient)
        instead of reading out of bounds; rejecting them is the wrapper's job."""
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

    # ---------------------------------------------- bitmap sparse matmul
    BITMAP_CASES = [
        # B, d, N, density, bias
        (1, 7, 37, 0.3, True),
        (5, 33, 70, 0.1, False),
        (3, 1, 100, 0.05, True),
        (18, 5, 45, 0.2, True),    # two batch tiles
        (4, 6, 40, 0.0, True),     # no candidates at all
    ]

    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("case", BITMAP_CASES)
    def test_smoke_bitmap_sparse_matmul(dtype, case):
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

    def test_bitmap_sparse_matmul_rejects_stray_bits():
        x, w = randn(2, 4, seed=1), randn(40, 4, seed=2)
        bitmap = torch.zeros(2, 2, dtype=torch.int32)
        bitmap[1, 1] = 1 << 9  # label 41 >= N = 40
        with pytest.raises(ValueError, match="label ids >= num_labels"):
            lt.bitmap_sparse_matmul(x, w, None, bitmap)

    # --------------------------------------------------------------- top-k
    def special_scores(batch, m, dtype, seed):
        s = randn(batch, m, seed=seed, dtype=dtype)
        s[0, : min(2, m)] = float("nan")
        if m > 5:
            s[-1, 1:4] = 0.5  # ties
            s[-1, 4], s[-1, 5] = -0.0, 0.0
            s[0, 3] = float("-inf")  # a valid candidate scoring -inf
        return s

    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("batch,m,k", [(1, 7, 3), (4, 20, 25), (3, 6, 1), (5, 33, 8)])
    def test_topk_gathered(dtype, batch, m, k):
        seed = batch * 13 + m + k
        logits = special_scores(batch, m, dtype, seed)
        ids = random_ids(batch, m, 50, seed=seed + 1)
        ids[1 % batch] = -1 if batch > 1 else ids[0]
        s, l = lt.topk_gathered(logits, ids, k)
        rs, rl = reference.topk_gathered(logits, ids, k)
        assert l.dtype == torch.int64 and s.dtype == dtype
        assert torch.equal(l, rl)
        torch.testing.assert_close(s, rs, rtol=0, atol=0, equal_nan=True)

    @pytest.mark.parametrize("dtype", FLOAT_DTYPES)
    @pytest.mark.parametrize("batch,n,k", [(1, 37, 3), (4, 70, 30), (5, 33, 1)])
    def test_smoke_topk_packed(dtype, batch, n, k):
        seed = batch * 17 + n + k
        dense = torch.rand(batch, n, generator=gen(seed)) < 0.3
        dense[-1] = False
        bitmap = reference.pack_bitmap(dense)
        nnz = int(dense.sum())
        values = randn(nnz, seed=seed + 1, dtype=dtype)
        if nnz > 3:
            values[0], values[1], values[2] = float("nan"), 0.25, 0.25
        row_ptr = torch.zeros(batch + 1, dtype=torch.int64)
        row_ptr[1:] = dense.sum(1).cumsum(0)
        s, l = lt.topk_packed(values, row_ptr, bitmap, k)
        rs, rl = reference.topk_packed(values, row_ptr, bitmap, k)
        assert torch.equal(l, rl)
        torch.testing.assert_close(s, rs, rtol=0, atol=0, equal_nan=True)

    def test_topk_fallback_matches(monkeypatch):
        monkeypatch.setattr(topk, "TOPK_MAX_BLOCK", 4)
        logits = special_scores(3, 9, torch.float32, 3)
        ids = random_ids(3, 9, 30, seed=4)
        s, l = lt.topk_gathered(logits, ids, 5)
        rs, rl = reference.topk_gathered(logits, ids, 5)
        assert torch.equal(l, rl)
        torch.testing.assert_close(s, rs, rtol=0, atol=0, equal_nan=True)
        dense = torch.rand(3, 50, generator=gen(5)) < 0.3
        values = randn(int(dense.sum()), seed=6)
        row_ptr = torch.zeros(4, dtype=torch.int64)
        row_ptr[1:] = dense.sum(1).cumsum(0)
        bitmap = reference.pack_bitmap(dense)
        s, l = lt.topk_packed(values, row_ptr, bitmap, 4)
        rs, rl = reference.topk_packed(values, row_ptr, bitmap, 4)
        assert torch.equal(l, rl) and torch.equal(s, rs)

    def test_topk_packed_rejects_wrong_row_ptr():
        bitmap = reference.pack_bitmap(torch.rand(2, 40, generator=gen(1)) < 0.5)
        nnz = int(reference.unpack_bitmap(bitmap, 40).sum())
        with pytest.raises(ValueError, match="row_ptr"):
            lt.topk_packed(torch.zeros(nnz), torch.tensor([0, 1, nnz]), bitmap, 3)

    # ------------------------------------------- public wrappers, compile
    def test_smoke_public_wrapper_gathered_logits():
        x, w, b = leaves(randn(3, 7, seed=1), randn(45, 7, seed=2), randn(45, seed=3))
        xr, wr, br = leaves(x, w, b)
        ids = random_ids(3, 10, 45, seed=4)
        got = lss.gathered_logits(x, w, b, ids, backend="triton")
        want = lss.gathered_logits(xr, wr, br, ids, backend="reference")
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])
        got.sum().backward()
        want.sum().backward()
        for a, r in ((x, xr), (w, wr), (b, br)):
            torch.testing.assert_close(a.grad, r.grad, **GRAD_TOLERANCES[torch.float32])

    def test_public_wrappers_other_ops():
        offsets, items = csr_tables(50, 3, 3, seed=1, extra=3)
        codes = query_codes(3, 3, 3, seed=2)
        for got, want in zip(lss.bucket_lookup(codes, offsets, items, 50, 6, backend="triton"),
                             lss.bucket_lookup(codes, offsets, items, 50, 6, backend="reference")):
            assert torch.equal(got, want)
        bitmap = lss.bucket_lookup_bitmap(codes, offsets, items, 50, backend="triton")
        assert torch.equal(bitmap, reference.bucket_lookup_bitmap(codes, offsets, items, 50))
        x, w = randn(3, 5, seed=3), randn(50, 5, seed=4)
        values, row_ptr = lss.bitmap_sparse_matmul(x, w, None, bitmap, backend="triton")
        s, l = lss.topk_packed(values, row_ptr, bitmap, 4, backend="triton")
        rs, rl = reference.topk_packed(*reference.bitmap_sparse_matmul(x, w, None, bitmap), bitmap, 4)
        assert torch.equal(l, rl)
        torch.testing.assert_close(s, rs)

    def test_torch_compile_fullgraph_gathered_logits():
        x, w, b = randn(2, 6, seed=1), randn(30, 6, seed=2), randn(30, seed=3)
        ids = random_ids(2, 5, 30, seed=4)

        def f(x, w, b, ids):
            return lt.gathered_logits(x, w, b, ids).softmax(-1)

        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        xs, ws, bs = leaves(x, w, b)
        got = compiled(xs, ws, bs, ids)
        want = f(x, w, b, ids)
        torch.testing.assert_close(got, want)
        got.nan_to_num().sum().backward()
        assert xs.grad is not None and ws.grad is not None and bs.grad is not None

    def test_opcheck_gathered_logits():
        x, w, b = randn(2, 6, seed=1), randn(30, 6, seed=2), randn(30, seed=3)
        ids = random_ids(2, 5, 30, seed=4)
        torch.library.opcheck(torch.ops.lsskernels_triton.gathered_logits.default,
                              (x.requires_grad_(), w.requires_grad_(), b, ids))
        torch.library.opcheck(torch.ops.lsskernels_triton.hash_codes.default,
                              (x, randn(2, 5, 6, seed=5)))
