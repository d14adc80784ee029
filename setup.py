"""Builds lsskernels._C: the C++ CPU ops always, the CUDA ops when torch has
CUDA and nvcc is found.

Switches (environment):
  LSS_FORCE_CUDA=1   build the CUDA ops even where the heuristic says no
  LSS_NO_CUDA=1      never build the CUDA ops
  TORCH_CUDA_ARCH_LIST, CUDA_HOME   honoured as by torch.utils.cpp_extension
  LSS_DEBUG=1        -O0 -g
"""
import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

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
    sources = ["csrc/ops.cpp", "csrc/python_module.cpp"] + rel("csrc/cpu/*.cpp")
    debug = _env_flag("LSS_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # at::parallel_for is header-inlined OpenMP: without -fopenmp the kernels
    # would silently run on one thread.
    cxx = opt + ["-fopenmp", "-std=c++17"]
    extra = {"cxx": cxx}
    include_dirs = [os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "csrc")]
    if want_cuda():
        sources += rel("csrc/cuda/*.cu")
        extra["cxx"] = cxx + ["-DLSS_WITH_CUDA"]
        extra["nvcc"] = opt + ["-DLSS_WITH_CUDA", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
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
