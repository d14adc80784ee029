#!/usr/bin/env python
"""Compile every lsskernels Triton kernel ahead of time for real GPUs.

No GPU is needed: triton.compile(ASTSource(...), target=GPUTarget("cuda",
arch, 32)) runs the whole pipeline (TTIR -> TTGIR -> LLVM IR -> PTX -> cubin
with the ptxas that ships with Triton). For each kernel variant (the
representative constexprs and dtypes listed by each module's aot_specs())
and each target (sm_80, sm_90) it prints: shared memory bytes, registers and
spill stores/loads (from ptxas -v), for the kernels that are meant to use
tensor cores (the fp16/bf16 bitmap matmul kernels; the partition score kernels
went with the partition_probe op, removed in 0.6)
whether the PTX contains mma.sync (sm_80) / wgmma (sm_90), and for the
kernels whose fp32 arithmetic must be exact IEEE operation by operation
(quantized_candidates, spec "exact_fp32") that the PTX holds no fp32 fma
and no .ftz.

Exit status 1 if any kernel fails to compile, a tensor-core kernel lacks
its tensor-core instruction, or an exact-fp32 kernel has an fma or .ftz.

    .venv/bin/python tools/triton_aot.py [--arch 80 90] [--filter NAME] [--json out.json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time

# Compiling needs real @triton.jit kernels, not the interpreter's.
os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
# A fresh cache so ptxas really runs (its -v log gives registers and spills).
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="lss_triton_aot_")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import lsskernels.triton as lss_triton  # noqa: E402

_REGS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_TC = {80: "mma.sync", 90: "wgmma"}
_FMA = re.compile(r"\bfma\.(rn\.)?(ftz\.)?f32\b")


def compile_spec(spec: dict, arch: int) -> dict:
    kernel = spec["kernel"]
    constexprs = dict(spec["constexprs"])
    signature = {}
    attrs = {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in spec["signature"]:
            signature[name] = spec["signature"][name]
            # What the JIT launcher specializes on at run time: torch
            # allocations are 16-byte aligned, and integer arguments that are
            # multiples of 16 (d, M in the common case) are flagged as such.
            if signature[name].startswith("*") or name in spec.get("divisible", ()):
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise KeyError(f"{spec['name']}: no type for argument {name!r}")
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": spec.get("num_warps", 4), "num_stages": spec.get("num_stages", 3)})
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    triton.knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(src, target=target, options=options.__dict__)
    seconds = time.perf_counter() - start
    text = log.getvalue()
    regs = _REGS.findall(text)
    spills = _SPILLS.findall(text)
    ptx = compiled.asm["ptx"]
    row = {
        "kernel": spec["name"],
        "arch": f"sm_{arch}",
        "shared_bytes": int(compiled.metadata.shared),
        "registers": int(regs[-1]) if regs else None,
        "spill_stores": int(spills[-1][0]) if spills else None,
        "spill_loads": int(spills[-1][1]) if spills else None,
        "num_warps": compiled.metadata.num_warps,
        "tensor_core_expected": bool(spec["tensor_cores"]),
        "mma.sync": "mma.sync" in ptx,
        "wgmma": "wgmma" in ptx,
        "cubin_bytes": len(compiled.asm["cubin"]),
        "seconds": round(seconds, 2),
    }
    # Kernels whose fp32 arithmetic must be IEEE operation by operation
    # (quantized_candidates, bit-exact with the reference): no fp32 fma
    # (contraction) and no .ftz (flushed subnormals) anywhere in the PTX.
    row["exact_fp32_expected"] = bool(spec.get("exact_fp32", False))
    row["fma_in_ptx"] = bool(_FMA.search(ptx))
    row["ftz_in_ptx"] = ".ftz" in ptx
    row["ok"] = ((not row["tensor_core_expected"]) or row[_TC[arch]]) and not (
        row["exact_fp32_expected"] and (row["fma_in_ptx"] or row["ftz_in_ptx"]))
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    specs = [s for s in lss_triton.aot_specs() if args.filter in s["name"]]
    rows, failures = [], []
    start = time.perf_counter()
    header = (f"{'kernel':44} {'arch':6} {'smem B':>7} {'regs':>5} {'spill st/ld':>11} {'warps':>5} "
              f"{'tensor cores':>14} {'s':>5}")
    print(header)
    print("-" * len(header))
    for spec in specs:
        for arch in args.arch:
            try:
                row = compile_spec(spec, arch)
            except Exception as exc:  # report every failure, then exit non-zero
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                why = f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]
                failures.append(f"{spec['name']} sm_{arch}: {why}")
                print(f"{spec['name']:44} sm_{arch:<6} COMPILE FAILED: {why}")
                continue
            rows.append(row)
            spill = "?" if row["spill_stores"] is None else f"{row['spill_stores']}/{row['spill_loads']}"
            if row["tensor_core_expected"]:
                tc = f"{_TC[arch]}: {'yes' if row[_TC[arch]] else 'NO'}"
            else:
                tc = "mma" if row["mma.sync"] else ("wgmma" if row["wgmma"] else "-")
            print(f"{row['kernel']:44} {row['arch']:6} {row['shared_bytes']:>7} {str(row['registers']):>5} "
                  f"{spill:>11} {row['num_warps']:>5} {tc:>14} {row['seconds']:>5}")
            if row["exact_fp32_expected"]:
                print(f"{'':44} {'':6} exact fp32: fma {'YES' if row['fma_in_ptx'] else 'none'}, "
                      f".ftz {'YES' if row['ftz_in_ptx'] else 'none'}")
            if not row["ok"]:
                if row["exact_fp32_expected"] and (row["fma_in_ptx"] or row["ftz_in_ptx"]):
                    why = "fp32 fma or .ftz in the PTX of an exact-fp32 kernel"
                else:
                    why = f"no {_TC[arch]} in the PTX"
                failures.append(f"{row['kernel']} {row['arch']}: {why}")
    total = time.perf_counter() - start
    print(f"\n{len(rows)} compilations in {total:.1f} s (triton {triton.__version__})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "failures": failures, "seconds": total}, f, indent=2)
    if failures:
        print("\nFAILURES:")
        for f in failures:
            print("  " + f)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
