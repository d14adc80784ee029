"""Builds lsskernels._C: the C++ CPU ops always, the CUDA ops when torch has
CUDA and nvcc is found.

Switches (environment):
  LSS_FORCE_CUDA=1   build the CUDA ops even where the heuristic says no
  LSS_NO_CUDA=1      never build the CUDA ops
  TORCH_CUDA_ARCH_LIST, CUDA_HOME   honoured as by torch.utils.cpp_extension;
                     CUDA_HOME defaults to /usr/local/cuda where nvcc is there,
                     and, with no GPU visible, TORCH_CUDA_ARCH_LIST to "8.0;9.0"
                     (A100, H100) instead of every architecture torch knows
  LSS_PTXAS_VERBOSE=1  ptxas register / spill / shared-memory report per kernel
  LSS_DEBUG=1        -O0 -g

No -std flag is passed: torch.utils.cpp_extension picks the standard its
headers need (C++20 since torch 2.13; torch 2.14's headers do not compile as
C++17).
"""
import glob
import os
import shutil


def _default_cuda_home():
    """torch.utils.cpp_extension reads CUDA_HOME when imported; unset, it takes
    the parent of the nvcc on PATH, which for a wrapper script such as
    /usr/local/bin/nvcc is /usr/local, and the link then looks for -lcudart in
    /usr/local/lib. Point it at /usr/local/cuda when that is the real toolkit."""
    if os.getenv("CUDA_HOME") or os.getenv("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")):
            return
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


_default_cuda_home()

import torch  # noqa: E402
from setuptools import find_packages, setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    return os.getenv(name, "0") not in ("", "0", "false", "False")


def want_cuda():
    if _env_flag("LSS_NO_CUDA"):
        return False
    if _env_flag("LSS_FORCE_CUDA"):
        return True
    has_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    return torch.version.cuda is not None and (has_nvcc or shutil.which("nvcc") is not None)


def extensions():
    rel = lambda pattern: sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))
    sources = ["csrc/ops.cpp", "csrc/predict_topk.cpp", "csrc/partition_predict_topk.cpp", "csrc/python_module.cpp"] + rel("csrc/cpu/*.cpp")
    debug = _env_flag("LSS_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is header-inlined OpenMP: without -fopenmp the kernels
    # would silently run on one thread.
    cxx = opt + ["-fopenmp"]
    extra = {"cxx": cxx}
    include_dirs = [os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "csrc")]
    if want_cuda():
        # Per op, kernels in csrc/cuda/<op>_cuda.cu (no torch headers: fast
        # to compile per architecture), their host side and registration in
        # csrc/cuda/<op>_host.cpp.
        sources += rel("csrc/cuda/*.cu") + rel("csrc/cuda/*.cpp")
        if not os.getenv("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        extra["cxx"] = cxx + ["-DLSS_WITH_CUDA"]
        extra["nvcc"] = opt + ["-DLSS_WITH_CUDA", "--expt-relaxed-constexpr", "-lineinfo"]
        if _env_flag("LSS_PTXAS_VERBOSE"):
            extra["nvcc"].append("-Xptxas=-v")
        ext = CUDAExtension
    else:
        ext = CppExtension
    return [
        ext(
            "lsskernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    packages=find_packages(include=["lsskernels", "lsskernels.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
