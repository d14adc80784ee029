"""Shared plumbing of the Triton backend: op registration, kernel launches,
block-size helpers and dtype maps.

Registration
------------
On a GPU build every op is a ``torch.library.triton_op`` whose body launches
its kernels through ``torch.library.wrap_triton``, so ``torch.compile`` sees
the kernels themselves (the body doubles as the fake kernel: it only
allocates outputs and launches kernels, never reads data).

Under ``TRITON_INTERPRET=1`` (CPU tensors, no GPU) ``@triton.jit`` returns an
``InterpretedFunction``; ``wrap_triton`` then hands back the raw kernel, and a
``triton_op`` still runs eagerly, but tracing it (``torch.compile``) would
either run the interpreter on FakeTensors (which fails) or, once decomposed
by AOTAutograd, silently drop the kernel launches. So under the interpreter
the same bodies are registered with plain ``torch.library.custom_op`` (opaque
to the compiler) and the body is reused as the fake kernel with its launches
skipped. ``LSS_TRITON_REGISTRATION=triton_op|custom_op`` forces either path
(eager calls work with both under the interpreter).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import torch
import triton
import triton.language as tl

NAMESPACE = "lsskernels_triton"


def _interpreting() -> bool:
    try:
        return bool(triton.knobs.runtime.interpret)
    except AttributeError:  # older Triton
        return os.environ.get("TRITON_INTERPRET", "0") == "1"


#: True when kernels run on the CPU through the Triton interpreter.
INTERPRET: bool = _interpreting()

_registration = os.environ.get("LSS_TRITON_REGISTRATION", "")
if _registration not in ("", "triton_op", "custom_op"):
    raise ValueError(f"LSS_TRITON_REGISTRATION must be 'triton_op' or 'custom_op', got {_registration!r}")
#: How the ops are registered (see the module docstring).
REGISTRATION: str = _registration or ("custom_op" if INTERPRET else "triton_op")


def define_op(name: str, fn: Callable) -> Any:
    """Registers ``fn`` as ``torch.ops.lsskernels_triton.<name>`` and returns
    the CustomOpDef (callable, with ``register_autograd``)."""
    qualname = f"{NAMESPACE}::{name}"
    if REGISTRATION == "triton_op":
        return torch.library.triton_op(qualname, mutates_args=())(fn)
    op = torch.library.custom_op(qualname, mutates_args=())(fn)
    op.register_fake(fn)  # launches are skipped on fake tensors, see launch()
    return op


def _is_fake(value: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(value, FakeTensor)


def launch(kernel: Callable, grid: tuple, *args: Any, **kwargs: Any) -> None:
    """kernel[grid](*args, **kwargs) through wrap_triton; an empty grid is a
    no-op. On the custom_op path a call with FakeTensors (the fake kernel) only
    allocated the outputs, so the launch is skipped."""
    if any(isinstance(g, int) and g == 0 for g in grid):
        return
    if REGISTRATION == "custom_op" and any(_is_fake(a) for a in list(args) + list(kwargs.values())):
        return
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def clamp_block(n: int, low: int, high: int) -> int:
    """The power of two >= n, clamped to [low, high] (both powers of two)."""
    return max(low, min(high, next_pow2(n)))


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


from ..reference import acc_dtype  # noqa: E402,F401  (the one accumulator rule)


TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def tl_acc(dtype: torch.dtype):
    return TL_DTYPES[acc_dtype(dtype)]


def dot_upcast(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot multiplies bfloat16 operands as their raw
    uint16 storage; upcasting them to float32 first (exact) is the interpreter
    workaround. Compiled kernels keep bfloat16 operands (tensor cores)."""
    return INTERPRET and dtype == torch.bfloat16


def contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


@triton.jit
def mma(a, b, acc, UPCAST: tl.constexpr):
    """acc + a @ b with IEEE fp32 (fp64) products: tensor cores for 16-bit
    operands, no TF32 rounding for fp32 ones."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def popcount32(v):
    """Set bits of each int32 word (SWAR; libdevice's popc has no interpreter
    counterpart)."""
    u = v.to(tl.uint32, bitcast=True)
    u = u - ((u >> 1) & 0x55555555)
    u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
    u = (u + (u >> 4)) & 0x0F0F0F0F
    u = (u * 0x01010101) >> 24
    return u.to(tl.int32)
