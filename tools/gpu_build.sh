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
#  5. tools/triton_aot.py in the same venv, where that script exists.
#
# Non-interactive and idempotent: an existing venv is reused, the wheel and
# its staging copy are rebuilt from scratch (so the ptxas log is complete).
# Environment: LSS_GPU_VENV (venv path), PYTHON (interpreter for a new venv),
# CUDA_HOME (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default
# "8.0;9.0"), MAX_JOBS (default 2).
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

if [ -f "$root/tools/triton_aot.py" ]; then
  step "tools/triton_aot.py"
  (cd "$root" && "$venv/bin/python" tools/triton_aot.py)
else
  step "tools/triton_aot.py not present: skipped"
fi

step "done in $(elapsed)"
