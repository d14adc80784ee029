"""Every op's GPU kernels, CUDA C++ and Triton, against lsskernels.reference:
forward, and backward where the op has one, in fp32 / bf16 / fp16, on the
inputs of tests/samples.py (one generator per op). `pytest -m gpu` (and
`make gpu-check`) runs them; without a CUDA device they skip.

The reference runs on CPU copies of the inputs (it is the ground truth);
the backend under test runs on LSS_GPU_TEST_DEVICE. Comparisons: ids, codes,
tables, bitmaps, row_ptr, probes and top-k bit for bit; logits and gradients
within tests/helpers.py's per-dtype tolerances; hash codes bit for bit except
where a projection is within rounding of 0; random-float partition probes up
to swaps of partitions whose scores are within rounding.

Environment (what `make gpu-check-dry` sets to run these very tests on CPU,
so that they cannot rot where no GPU is):
  LSS_GPU_TEST_DEVICE    device of the backend under test (default "cuda")
  LSS_GPU_TEST_BACKENDS  comma-separated backends (default "cuda,triton")
  LSS_GPU_TEST_SIZES     "small" drops tests/samples.py's large cases
"""
from __future__ import annotations

import os

import pytest
import torch

import lsskernels as lss
from helpers import GRAD_TOLERANCES, TOLERANCES
from lsskernels import _ops, reference
from samples import SAMPLES

pytestmark = pytest.mark.gpu

DEVICE = os.environ.get("LSS_GPU_TEST_DEVICE", "cuda")
BACKENDS = [b for b in os.environ.get("LSS_GPU_TEST_BACKENDS", "cuda,triton").split(",") if b]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# What each backend lacks by design (see docs/triton.md).
NO_KERNEL = {("triton", "build_tables"): "no Triton kernel for build_tables (runs once per index build)"}


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def require(op: str, backend: str) -> None:
    """Skips unless `backend` can run `op` on DEVICE here."""
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    if (backend, op) in NO_KERNEL:
        pytest.skip(NO_KERNEL[(backend, op)])
    if backend == "triton":
        if not _triton_importable():
            pytest.skip("triton not installed")
        if DEVICE != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton off a GPU needs TRITON_INTERPRET=1")
    elif backend in ("cpu", "cuda"):
        if backend == "cuda" and not lss.cuda_kernels_built():
            pytest.skip("lsskernels built without the CUDA kernels")
        if not _ops.has_native_kernel(op, backend):
            pytest.skip(f"this build has no {backend} kernel for {op}")


def poison_device(num_bytes: int) -> None:
    """Fill and free num_bytes on DEVICE so the next allocation of that size
    (the op's output, through the caching allocator on CUDA) likely starts
    as garbage: a kernel that leaves an element unwritten cannot pass by
    luck."""
    if num_bytes > 0:
        torch.full((num_bytes,), 0xFF, dtype=torch.uint8, device=DEVICE)


def cpu(t):
    if isinstance(t, (tuple, list)):
        return type(t)(cpu(v) for v in t)
    return t.detach().cpu() if isinstance(t, torch.Tensor) else t


def assert_equal(got, want, what: str) -> None:
    got, want = cpu(got), cpu(want)
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)}"
    if got.is_floating_point():
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=what)
    else:
        assert torch.equal(got, want), f"{what}: values differ"


def assert_close(got, want, tol: dict, what: str) -> None:
    got, want = cpu(got), cpu(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    torch.testing.assert_close(got, want, **tol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def params(with_dtype: bool = True):
    marks = [pytest.mark.parametrize("backend", BACKENDS)]
    if with_dtype:
        marks.append(pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1]))

    def wrap(fn):
        for m in marks:
            fn = m(fn)
        return fn
    return wrap


def device_samples(op: str, dtype=None):
    for s in SAMPLES[op](dtype):
        yield s, s.to(DEVICE)


def leaves(args, grads_for):
    """args with the tensors at positions grads_for replaced by fresh leaves
    that require grad (None stays None)."""
    out = list(args)
    for i in grads_for:
        if out[i] is not None:
            out[i] = out[i].detach().clone().requires_grad_()
    return out


# --------------------------------------------------------------- forward
@params()
def test_hash_codes(backend, dtype):
    require("hash_codes", backend)
    for s, d in device_samples("hash_codes", dtype):
        x, proj = s.args
        poison_device(x.shape[0] * proj.shape[0] * 4)
        got = cpu(lss.hash_codes(*d.args, backend=backend))
        want = reference.hash_codes(x, proj)
        assert got.dtype == torch.int32 and got.shape == want.shape, s
        p = reference.projections(x, proj)
        weights = torch.pow(2, torch.arange(proj.shape[1], dtype=torch.int64))
        unsure = ((p.abs() < 1e-3 * (1 + p.abs().amax())).to(torch.int64) * weights).sum(-1)
        wrong = (got.to(torch.int64) ^ want.to(torch.int64)) & ~unsure
        assert not bool(wrong.any()), f"{s}: codes differ beyond projections within rounding of 0"


@params(with_dtype=False)
def test_build_tables(backend):
    require("build_tables", backend)
    for s, d in device_samples("build_tables"):
        got = lss.build_tables(*d.args, backend=backend)
        want = reference.build_tables(*s.args)
        for g, w, what in zip(got, want, ("offsets", "items")):
            assert_equal(g, w, f"{s} {what}")


@params(with_dtype=False)
def test_bucket_lookup(backend):
    require("bucket_lookup", backend)
    for s, d in device_samples("bucket_lookup"):
        poison_device(s.args[0].shape[0] * s.args[4] * 4)
        got = lss.bucket_lookup(*d.args, backend=backend)
        want = reference.bucket_lookup(*s.args)
        assert_equal(got[0], want[0], f"{s} ids")
        assert_equal(got[1], want[1], f"{s} counts")


@params(with_dtype=False)
def test_bucket_lookup_bitmap(backend):
    require("bucket_lookup_bitmap", backend)
    for s, d in device_samples("bucket_lookup_bitmap"):
        got = lss.bucket_lookup_bitmap(*d.args, backend=backend)
        assert_equal(got, reference.bucket_lookup_bitmap(*s.args), f"{s} bitmap")


def check_topk(op: str, backend: str, dtype) -> None:
    """`op` (topk_gathered or topk_packed) on its samples: labels and scores bit for bit."""
    require(op, backend)
    for s, d in device_samples(op, dtype):
        got = getattr(lss, op)(*d.args, backend=backend)
        want = getattr(reference, op)(*s.args)
        assert_equal(got[1], want[1], f"{s} labels")
        assert_equal(got[0], want[0], f"{s} scores")


@params()
def test_topk_gathered(backend, dtype):
    check_topk("topk_gathered", backend, dtype)


@params()
def test_topk_packed(backend, dtype):
    check_topk("topk_packed", backend, dtype)


@params()
def test_quantized_candidates(backend, dtype):
    require("quantized_candidates", backend)
    for s, d in device_samples("quantized_candidates", dtype):
        got = _ops.quantized_candidates(*d.args, backend=backend)
        want = reference.quantized_candidates(*s.args)
        assert_equal(got[0], want[0], f"{s} ids")
        assert_equal(got[1], want[1], f"{s} counts")


# ------------------------------------------------------ forward + backward
def _grads(out, inputs, grad):
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, wanted, grad)


@params()
def test_gathered_logits_forward_backward(backend, dtype):
    require("gathered_logits", backend)
    if backend != "triton":
        require("gathered_logits_backward", backend)
    for s, d in device_samples("gathered_logits", dtype):
        ref_in = leaves(s.args, (0, 1, 2))
        dev_in = leaves(d.args, (0, 1, 2))
        poison_device(s.args[3].numel() * s.args[0].element_size())
        got = lss.gathered_logits(*dev_in, backend=backend)
        want = reference.gathered_logits(*ref_in)
        assert_close(got, want, TOLERANCES[dtype], f"{s} logits")
        g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        g = torch.where(s.args[3] >= 0, g, torch.zeros((), dtype=dtype))  # no gradient into padding
        for a, r, what in zip(_grads(got, dev_in[:3], g.to(DEVICE)), _grads(want, ref_in[:3], g),
                              ("grad_x", "grad_weight", "grad_bias")):
            assert_close(a, r, GRAD_TOLERANCES[dtype], f"{s} {what}")


@params()
def test_bitmap_sparse_matmul_forward_backward(backend, dtype):
    require("bitmap_sparse_matmul", backend)
    if backend != "triton":
        require("bitmap_sparse_matmul_backward", backend)
    for s, d in device_samples("bitmap_sparse_matmul", dtype):
        ref_in = leaves(s.args, (0, 1, 2))
        dev_in = leaves(d.args, (0, 1, 2))
        values, row_ptr = lss.bitmap_sparse_matmul(*dev_in, backend=backend)
        want_values, want_row_ptr = reference.bitmap_sparse_matmul(*ref_in)
        assert_equal(row_ptr, want_row_ptr, f"{s} row_ptr")
        assert_close(values, want_values, TOLERANCES[dtype], f"{s} values")
        if want_values.numel() == 0:
            continue
        g = torch.randn(want_values.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
        for a, r, what in zip(_grads(values, dev_in[:3], g.to(DEVICE)), _grads(want_values, ref_in[:3], g),
                              ("grad_x", "grad_weight", "grad_bias")):
            assert_close(a, r, GRAD_TOLERANCES[dtype], f"{s} {what}")


# ------------------------------------------------------------ end to end
@pytest.mark.parametrize("backend", BACKENDS)
def test_lssl_linear_predict(backend):
    """LSSLinear.predict (partitions family) on DEVICE: its labels are
    among the layer's candidates and its scores are their exact logits,
    best first."""
    require("quantized_candidates", backend)
    torch.manual_seed(0)
    N, d, B, k = 5000, 64, 33, 5
    linear = torch.nn.Linear(d, N)
    layer = lss.LSSLinear.from_linear(linear, max_candidates=64).to(DEVICE)
    layer.backend = backend
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    scores, labels = layer.predict(x, k)
    ids, _ = layer.candidates(x)
    scores, labels, ids = cpu(scores), cpu(labels), cpu(ids)
    assert labels.dtype == torch.int64 and labels.shape == (B, k)
    for b in range(B):
        cand = set(ids[b][ids[b] >= 0].tolist())
        got = [int(v) for v in labels[b] if v >= 0]
        assert set(got) <= cand, f"row {b}: predicted labels outside the candidates"
    dense = cpu(linear.weight) @ cpu(x).T + cpu(linear.bias)[:, None]  # [N, B]
    valid = labels >= 0
    exact = dense.T.gather(1, labels.clamp(min=0))
    torch.testing.assert_close(scores[valid], exact[valid], **TOLERANCES[torch.float32])
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), "scores not in descending order"
