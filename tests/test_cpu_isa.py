"""Every CPU row-kernel path runs, not only the one this machine picks.

The hand-written AVX-512 and AVX2 kernels keep the same summation tree and
both fuse axpy's multiply-add, so they must give the same bits, forward
(dots) and backward (axpy); the generic code (baseline x86-64: no FMA) must
match the reference within tolerance, and its axpy must round the product
and the sum separately. LSS_CPU_ISA picks the kernel table at load time, for
every kernel at once, so each path runs in a subprocess.
"""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from helpers import GRAD_TOLERANCES, TOLERANCES, randn, random_ids

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")

TESTS = Path(__file__).resolve().parent

# Computes gathered logits (d = 64, 128, 256: the AVX-512 kernels compiled for
# those sizes; d = 75: the any-d kernel with a tail; four-row
# groups and leftovers) and hash codes in each dtype, and saves them.
SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
import lsskernels
from lsskernels import _ops
from helpers import randn, random_ids
torch.set_num_threads(1)
out = {{"isa": _ops._C.cpu_vector_isa(), "kernels": _ops._C.cpu_vector_kernels(),
       "bf16_dot": _ops._C.cpu_has_bf16_dot()}}
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for d in (64, 128, 256, 75):
        x, w, b = randn(3, d, seed=1).to(dtype), randn(300, d, seed=2).to(dtype), randn(300, seed=3).to(dtype)
        ids = random_ids(3, 37, 300, seed=4)
        out[(str(dtype), d, "logits")] = torch.ops.lsskernels.gathered_logits(x, w, b, ids)
        # The backward is axpy: grad_x[b] += g * W[id], grad_W[id] += g * x[b].
        grad = randn(3, 37, seed=6).to(dtype)
        gx, gw, gb = torch.ops.lsskernels.gathered_logits_backward(grad, x, w, ids, True, True, True)
        out[(str(dtype), d, "grad_x")], out[(str(dtype), d, "grad_w")], out[(str(dtype), d, "grad_b")] = gx, gw, gb
        proj = randn(5, 9, d, seed=5).to(dtype)
        out[(str(dtype), d, "codes")] = torch.ops.lsskernels.hash_codes(x, proj)
# fit()'s bf16 screen: the AVX-512 and generic row passes give the same ids.
ties = torch.randint(-8, 8, (50, 1000), generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
out["row_topk"] = _ops._C.bf16_row_topk(ties, 4)
torch.save(out, {path!r})
"""


def run_with_isa(isa, tmp_path):
    path = tmp_path / f"{isa or 'default'}.pt"
    env = dict(os.environ)
    env.pop("LSS_CPU_ISA", None)
    if isa:
        env["LSS_CPU_ISA"] = isa
    subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS), path=str(path))], env=env, check=True,
                   timeout=300)
    return torch.load(path)


def _isa_level():
    isa = lss._ops._C.cpu_vector_isa()
    return 4 if "AVX-512" in isa else 3 if "AVX2" in isa else 0


def test_forced_isa_is_reported(tmp_path):
    got = run_with_isa("generic", tmp_path)
    assert got["isa"].startswith("generic") and "LSS_CPU_ISA" in got["isa"]


@pytest.mark.skipif(_isa_level() < 3, reason="this CPU has no AVX2 + FMA")
def test_avx2_gives_the_same_bits_as_the_default_path(tmp_path):
    default, avx2 = run_with_isa(None, tmp_path), run_with_isa("avx2", tmp_path)
    assert "AVX2" in avx2["isa"]
    for key, value in default.items():
        if key not in ("isa", "kernels", "bf16_dot"):
            assert torch.equal(value, avx2[key]), key


def test_generic_path_matches_the_reference(tmp_path):
    got = run_with_isa("generic", tmp_path)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        tol = TOLERANCES[dtype]
        for d in (64, 128, 256, 75):
            x, w, b = randn(3, d, seed=1).to(dtype), randn(300, d, seed=2).to(dtype), randn(300, seed=3).to(dtype)
            ids = random_ids(3, 37, 300, seed=4)
            want = reference.gathered_logits(x, w, b, ids)
            torch.testing.assert_close(got[(str(dtype), d, "logits")], want, **tol)


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_forced_isa_lowers_every_kernel(isa, tmp_path):
    """The table row of every kernel, dot to axpy, is the forced one (fp64
    has only the generic row; AVX2 has no next_topk_candidate of its own)."""
    if isa == "avx2" and _isa_level() < 3:
        pytest.skip("this CPU has no AVX2 + FMA")
    got_all = run_with_isa(isa, tmp_path)
    kernels = got_all["kernels"]
    assert not got_all["bf16_dot"]  # k-means' bf16 screen is an AVX-512 path too
    assert {k for k in kernels if k.startswith("axpy_")} == {"axpy_f32", "axpy_bf16", "axpy_f16", "axpy_f64"}
    for kernel, got in kernels.items():
        want = "generic" if kernel.endswith("_f64") or kernel == "next_topk_candidate" else isa
        assert got == want, (kernel, got)


def test_default_path_reports_its_kernels():
    kernels = lss._ops._C.cpu_vector_kernels()
    level = _isa_level()
    want = "avx512" if level == 4 else "avx2" if level == 3 else "generic"
    assert kernels["axpy_f32"] == kernels["dot_f32"] == want


def _unfused_grad_x(dtype, d):
    """grad_x of SCRIPT's gathered_logits_backward call, as a sequence of
    fp32 multiplies and adds, each rounded (no FMA), in the kernel's order."""
    x, w = randn(3, d, seed=1).to(dtype), randn(300, d, seed=2).to(dtype)
    ids = random_ids(3, 37, 300, seed=4)
    grad = randn(3, 37, seed=6).to(dtype).float()
    rows = []
    for b in range(3):
        acc = torch.zeros(d)
        for k in range(37):
            if ids[b, k] >= 0:
                acc = acc + grad[b, k] * w[ids[b, k]].float()
        rows.append(acc)
    return torch.stack(rows).to(dtype)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="baseline x86-64 has no FMA; others may")
def test_generic_axpy_rounds_product_and_sum_separately(tmp_path):
    """Proof that LSS_CPU_ISA=generic lowers axpy too: its grad_x equals
    unfused fp32 arithmetic bit for bit, while the AVX paths (one FMA per
    element) do not."""
    generic = run_with_isa("generic", tmp_path)
    default = run_with_isa(None, tmp_path) if _isa_level() >= 3 else None
    fused_differs = False
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for d in (64, 128, 256, 75):
            want = _unfused_grad_x(dtype, d)
            assert torch.equal(generic[(str(dtype), d, "grad_x")], want), (dtype, d)
            if default is not None:
                fused_differs |= not torch.equal(default[(str(dtype), d, "grad_x")], want)
    assert default is None or fused_differs, "the AVX axpy gave the unfused bits everywhere"


def test_generic_path_backward_matches_the_reference(tmp_path):
    got = run_with_isa("generic", tmp_path)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for d in (64, 128, 256, 75):
            x, w, b = randn(3, d, seed=1).to(dtype), randn(300, d, seed=2).to(dtype), randn(300, seed=3).to(dtype)
            ids = random_ids(3, 37, 300, seed=4)
            grad = randn(3, 37, seed=6).to(dtype)
            leaves = [t.clone().requires_grad_() for t in (x, w, b)]
            reference.gathered_logits(*leaves, ids).backward(grad.masked_fill(ids < 0, 0))
            for name, leaf in zip(("grad_x", "grad_w", "grad_b"), leaves):
                torch.testing.assert_close(got[(str(dtype), d, name)], leaf.grad, **GRAD_TOLERANCES[dtype])
