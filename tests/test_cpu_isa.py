"""Every CPU dot-product path runs, not only the one this machine picks.

The hand-written AVX-512 and AVX2 kernels keep the same summation tree, so
they must give the same bits; the generic target_clones code (no FMA on
baseline x86-64) must match the reference within tolerance. LSS_CPU_ISA
lowers the dispatch level at load time, so each path runs in a subprocess.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from helpers import TOLERANCES, randn, random_ids

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
out = {{"isa": _ops._C.cpu_vector_isa()}}
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for d in (64, 128, 256, 75):
        x, w, b = randn(3, d, seed=1).to(dtype), randn(300, d, seed=2).to(dtype), randn(300, seed=3).to(dtype)
        ids = random_ids(3, 37, 300, seed=4)
        out[(str(dtype), d, "logits")] = torch.ops.lsskernels.gathered_logits(x, w, b, ids)
        proj = randn(5, 9, d, seed=5).to(dtype)
        out[(str(dtype), d, "codes")] = torch.ops.lsskernels.hash_codes(x, proj)
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
        if key != "isa":
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
