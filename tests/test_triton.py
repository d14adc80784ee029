"""The Triton backend (lsskernels/triton) against lsskernels.reference.

No GPU here: the kernels run on CPU tensors under the Triton interpreter,
which must be switched on (TRITON_INTERPRET=1) before triton is first
imported and stays on for the whole process. To keep that from leaking into
the other test files of the same pytest run (and to work even when they have
already imported triton), the interpreter tests run in a child pytest
process: in the parent this file only holds the drivers
(test_interpreter_suite, test_triton_op_registration_eager) and the GPU
tests; the child runs the on_triton tests of every per-op file
(TRITON_OP_FILES: tests/test_<op>.py, each op's Triton cases next to its
other backends) and, from this file (LSS_TRITON_TEST_CHILD=1), the tests of
the Triton backend as a whole: public wrappers, torch.compile, opcheck.
Run the child suite alone, with per-test output, by

    LSS_TRITON_TEST_CHILD=1 TRITON_INTERPRET=1 .venv/bin/python -m pytest tests/test_triton.py \
        tests/test_hash_codes.py tests/test_bucket_lookup.py tests/test_gathered_logits.py \
        tests/test_bitmap_sparse_matmul.py tests/test_topk_gathered.py tests/test_topk_packed.py \
        -q -k "on_triton or test_triton"

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


# The per-op files whose on_triton tests the child runs (with this file's).
TRITON_OP_FILES = ["test_hash_codes.py", "test_bucket_lookup.py", "test_gathered_logits.py",
                   "test_bitmap_sparse_matmul.py", "test_topk_gathered.py", "test_topk_packed.py"]
CHILD_TESTS = "on_triton or test_triton"


def _run_child(extra_env: dict, args: list, select: str = CHILD_TESTS,
               timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, LSS_TRITON_TEST_CHILD="1", TRITON_INTERPRET="1", **extra_env)
    files = [os.path.abspath(__file__)] + [os.path.join(HERE, f) for f in TRITON_OP_FILES]
    cmd = [sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           "-k", select, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


if not IN_CHILD:
    # ------------------------------------------------------------- drivers
    needs_triton = pytest.mark.skipif(not _triton_importable(), reason="triton not installed")

    @needs_triton
    def test_interpreter_suite():
        """Every on_triton test of the per-op files, and this file's child
        tests, in a child process under TRITON_INTERPRET=1."""
        proc = _run_child({}, ["-rfE"])
        tail = (proc.stdout + proc.stderr)[-6000:]
        print(tail)
        assert proc.returncode == 0, f"interpreter suite failed:\n{tail}"

    @needs_triton
    def test_triton_op_registration_eager():
        """The ops registered with torch.library.triton_op (the GPU
        registration) also run eagerly on CPU tensors under the interpreter."""
        proc = _run_child({"LSS_TRITON_REGISTRATION": "triton_op"}, ["-rfE"], select=f"smoke and ({CHILD_TESTS})")
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
    from helpers import GRAD_TOLERANCES, TOLERANCES, csr_tables, leaves, randn, random_ids, random_query_codes
    from lsskernels import reference
    from lsskernels import triton as lt

    def test_smoke_interpreter_is_on():
        assert lt.INTERPRET
        assert lt.REGISTRATION == os.environ.get("LSS_TRITON_REGISTRATION", "custom_op")

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
        codes = random_query_codes(3, 3, 3, seed=2)
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
