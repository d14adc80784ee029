#!/usr/bin/env bash
# The real GPU build of lsskernels (`make gpu-build`), runnable on a machine
# without a GPU: it proves the CUDA C++ kernels compile, link and register
# against a CUDA build of torch. Nothing here executes a CUDA kernel.
#
#  1. a separate venv (.venv-gpu) with the CUDA 13.0 build of torch 2.14.1;
#  2. one wheel, built with the CUDA ops forced on, for sm_80 and sm_90, with
#     ptxas' per-kernel report captured in dist-gpu/build.log;
#  3. that wheel installed into the venv (what a user's `pip install` does);
#  4. tools/check_gpu_build.py run from outside the source tree, so it imports
#     the installed wheel: CUDA and CPU kernels registered for every op, the
#     CPU ops against the reference, the ptxas table (fails on spills);
#  5. the CMake build (CMakeLists.txt) with LSS_WITH_CUDA=ON against the same
#     torch, CMAKE_CUDA_ARCHITECTURES="80;90", in build/cmake-cuda (log:
#     dist-gpu/cmake-cuda.log), and its C++ smoke test (ctest): what a
#     libtorch user builds, so that it cannot rot;
#  6. tools/triton_aot.py in the same venv, where that script exists.
#
# Non-interactive and idempotent: an existing venv is reused, the wheel and
# its staging copy are rebuilt from scratch (so the ptxas log is complete).
# Environment: LSS_GPU_VENV (venv path), PYTHON (interpreter for a new venv),
# CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default
# "8.0;9.0"), CMAKE_CUDA_ARCHITECTURES (default "80;90"), MAX_JOBS (default 2),
# LSS_GPU_SKIP_CMAKE=1 (skip step 5).
set -euo pipefail

start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start ))s"; }
step() { echo "== [$(elapsed)] $*"; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${LSS_GPU_VENV:-$root/.venv-gpu}"
out="$root/dist-gpu"
stage="$root/build/gpu-stage"
log="$out/build.log"

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; break; fi
  done
fi

step "venv $venv"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==2.14.1" numpy pybind11 ninja setuptools wheel pytest
"$venv/bin/python" - <<'EOF'
import torch
assert torch.version.cuda, f"torch {torch.__version__} in the GPU venv is not a CUDA build"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}")
EOF

export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
export MAX_JOBS="${MAX_JOBS:-2}"
export LSS_FORCE_CUDA=1 LSS_PTXAS_VERBOSE=1
unset LSS_NO_CUDA PYTHONPATH || true
if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "error: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi

# Build from a copy of the work tree (uncommitted changes included) so the
# CPU development build's build/ directory and in-place .so are untouched.
step "staging sources in ${stage#$root/}"
rm -rf "$stage"
mkdir -p "$stage" "$out"
tar -C "$root" \
  --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude='./dist*' \
  --exclude='*.so' --exclude='*.egg-info' --exclude=__pycache__ --exclude=wheelhouse \
  -cf - . | tar -C "$stage" -xf -

step "building the wheel (CUDA ${TORCH_CUDA_ARCH_LIST}, MAX_JOBS=$MAX_JOBS; log: ${log#$root/})"
rm -f "$out"/lsskernels-*.whl
build_start=$(date +%s)
if ! (cd "$stage" && "$venv/bin/python" -m pip wheel --no-build-isolation --no-deps \
        --disable-pip-version-check -v -w "$out" .) >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "error: the GPU wheel did not build (full log: $log)" >&2
  exit 1
fi
echo "   built in $(( $(date +%s) - build_start ))s: $(cd "$out" && ls lsskernels-*.whl)"

step "installing the wheel into the venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
  --no-deps "$out"/lsskernels-*.whl

step "checking the installed wheel (from outside the source tree)"
(cd "${TMPDIR:-/tmp}" && "$venv/bin/python" "$root/tools/check_gpu_build.py" --ptxas-log "$log")

if [ "${LSS_GPU_SKIP_CMAKE:-0}" = 1 ]; then
  step "CMake build with CUDA: skipped (LSS_GPU_SKIP_CMAKE=1)"
else
  cmake_dir="$root/build/cmake-cuda"
  cmake_log="$out/cmake-cuda.log"
  cmake_archs="${CMAKE_CUDA_ARCHITECTURES:-80;90}"
  step "CMake build with CUDA (CMAKE_CUDA_ARCHITECTURES=$cmake_archs, ${cmake_dir#$root/}; log: ${cmake_log#$root/})"
  cmake_bin="$(command -v cmake || true)"
  if [ -z "$cmake_bin" ]; then
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check cmake
    cmake_bin="$venv/bin/cmake"
  fi
  ctest_bin="$(dirname "$cmake_bin")/ctest"
  cmake_args=(-DLSS_WITH_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$cmake_archs"
              "-DCMAKE_CUDA_COMPILER=$CUDA_HOME/bin/nvcc"
              "-DCMAKE_PREFIX_PATH=$("$venv/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')")
  # Torch's CMake needs libnvrtc; a toolkit without it (a minimal one) can
  # use the copy in the venv's nvidia wheels.
  if ! ls "$CUDA_HOME"/lib64/libnvrtc.so* >/dev/null 2>&1; then
    nvrtc="$("$venv/bin/python" -c '
import glob, os
try:
    import nvidia
    paths = list(nvidia.__path__)
except ImportError:
    paths = []
hits = [p for d in paths for p in sorted(glob.glob(os.path.join(d, "*", "lib", "libnvrtc.so*")))
        if "builtins" not in p and ".alt." not in p]
print(hits[0] if hits else "")
')"
    if [ -n "$nvrtc" ]; then
      cmake_args+=("-DCUDA_nvrtc_LIBRARY=$nvrtc")
      echo "   no libnvrtc in $CUDA_HOME/lib64: using $nvrtc"
    fi
  fi
  cmake_start=$(date +%s)
  if ! { "$cmake_bin" -S "$root" -B "$cmake_dir" "${cmake_args[@]}" &&
         "$cmake_bin" --build "$cmake_dir" -j "$MAX_JOBS" &&
         "$ctest_bin" --test-dir "$cmake_dir" --output-on-failure; } >"$cmake_log" 2>&1; then
    tail -n 60 "$cmake_log" >&2
    echo "error: the CMake build with CUDA failed (full log: $cmake_log)" >&2
    exit 1
  fi
  echo "   configured, built and tested in $(( $(date +%s) - cmake_start ))s ($(grep -c 'Building CUDA object' "$cmake_log" || true) CUDA and $(grep -c 'Building CXX object' "$cmake_log" || true) C++ objects built); ctest: $(grep -E 'tests passed' "$cmake_log" | tail -n 1)"
fi

if [ -f "$root/tools/triton_aot.py" ]; then
  step "tools/triton_aot.py"
  (cd "$root" && "$venv/bin/python" tools/triton_aot.py)
else
  step "tools/triton_aot.py not present: skipped"
fi

step "done in $(elapsed)"
