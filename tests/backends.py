"""Backends of the per-op tests (tests/test_<op>.py), shared by all of them.

Every comparison test takes a `backend` parameter with ids on_<backend>
(`on_backends`, or `on_triton` for the Triton-only cases), so a child run
selects one backend with -k:

  reference  lsskernels.reference through the public wrapper
  cpu        the C++ kernels, on the CPU's best instruction set; the other
             sets (LSS_CPU_ISA=avx2, generic) in a child pytest of the same
             file (`cpu_isa_child`: the kernel tables are picked once, at
             load time)
  triton     on a GPU, or on CPU tensors under TRITON_INTERPRET=1, which
             must be set before triton is imported: tests/test_triton.py
             runs the on_triton tests of every per-op file in a child
  cuda       the CUDA C++ kernels, where a device and the kernels exist
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lsskernels as lss
from lsskernels import _ops

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ISA_CHILD = os.environ.get("LSS_ISA_TEST_CHILD") == "1"
BACKENDS = ["reference", "cpu", "triton", "cuda"]
on_backends = pytest.mark.parametrize("backend", BACKENDS, ids=[f"on_{b}" for b in BACKENDS])
# The backends of tests whose cases are too large for the Triton interpreter
# (the Triton cases of the op are their own tests, on_triton).
NOT_TRITON = [b for b in BACKENDS if b != "triton"]
on_backends_but_triton = pytest.mark.parametrize("backend", NOT_TRITON, ids=[f"on_{b}" for b in NOT_TRITON])
on_triton = pytest.mark.parametrize("backend", ["triton"], ids=["on_triton"])


def require_backend(backend: str, *ops: str) -> torch.device:
    """Skips unless `backend` has kernels for `ops` here; returns the device to run on."""
    if backend == "reference":
        return torch.device("cpu")
    if backend == "cpu":
        if not lss.extension_loaded():
            pytest.skip("compiled extension not built")
        return torch.device("cpu")
    if backend == "cuda":
        if not torch.cuda.is_available() or not all(_ops.has_native_kernel(op, "cuda") for op in ops):
            pytest.skip(f"no CUDA kernels for {ops} here")
        return torch.device("cuda")
    # triton: on a GPU, or on CPU tensors under the interpreter.
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not interpreted and not torch.cuda.is_available():
        pytest.skip("triton needs a GPU or TRITON_INTERPRET=1")
    try:
        from lsskernels import triton as triton_ops
    except ImportError:
        pytest.skip("triton not importable")
    if not all(hasattr(triton_ops, op) for op in ops):
        pytest.skip(f"no Triton kernels for {ops} yet")
    return torch.device("cpu" if interpreted else "cuda")


def on(device, *tensors):
    """The tensors moved to device (None and non-tensors as they are)."""
    return [t.to(device) if isinstance(t, torch.Tensor) else t for t in tensors]


def cpu_isa_available(isa: str) -> bool:
    """Whether this CPU can run the LSS_CPU_ISA=isa kernels."""
    vector = _ops._C.cpu_vector_isa() if lss.extension_loaded() else ""
    return {"avx512bw": "AVX-512" in vector, "avx2": "AVX" in vector}.get(isa, True)


def run_pytest_child(path: str, env: dict, args: list, timeout: float = 900) -> subprocess.CompletedProcess:
    """pytest on one test file in a child process, with env added."""
    cmd = [sys.executable, "-m", "pytest", os.path.abspath(path), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           *args]
    return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=timeout)


def cpu_isa_child(path: str, isa: str, select: str = "on_cpu") -> None:
    """The tests of `path` that -k `select` picks, in a child process with
    LSS_CPU_ISA=isa; fails with the child's output unless they pass."""
    if not lss.extension_loaded():
        pytest.skip("compiled extension not built")
    if not cpu_isa_available(isa):
        pytest.skip(f"this CPU cannot run {isa}")
    proc = run_pytest_child(path, {"LSS_CPU_ISA": isa, "LSS_ISA_TEST_CHILD": "1"}, ["-x", "-k", select])
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail, tail
