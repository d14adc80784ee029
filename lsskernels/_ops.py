"""Loading of the compiled ops, their fake kernels and autograd, and the
public wrappers that validate arguments and dispatch to a backend.

Backends (`backend=` on every wrapper):
  "reference"  pure PyTorch (lsskernels/reference.py), any device
  "cpu"        the C++ kernels under torch.ops.lsskernels, CPU tensors
  "cuda"       the CUDA C++ kernels under torch.ops.lsskernels, CUDA tensors
  "triton"     the Triton kernels (lsskernels/triton), CUDA tensors, or CPU
               tensors under TRITON_INTERPRET=1
  None         automatic: CUDA tensors use Triton where it imports, else the
               CUDA C++ kernels; CPU tensors use the C++ kernels; without the
               compiled extension everything falls back to the reference,
               with a one-time warning.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from . import _checks as checks
from . import reference

Tensor = torch.Tensor
BACKENDS = ("reference", "cpu", "cuda", "triton")

try:
    from . import _C  # noqa: F401  (registers torch.ops.lsskernels.*)

    EXTENSION_ERROR: Optional[BaseException] = None
except ImportError as exc:  # the package still works, on the reference
    _C = None
    EXTENSION_ERROR = exc

_warned_fallback = False


def extension_loaded() -> bool:
    return _C is not None


def unboxed(op: str):
    """torch.ops.lsskernels.<op>.default, or where the extension has a
    direct door to it (csrc/python_module.cpp: the same dispatcher entry,
    called unboxed), that door: the call skips the boxed conversion of
    every argument against the schema. Eager callers only: torch.compile
    traces the registered op."""
    door = getattr(_C, op, None) if _C is not None else None
    return door if door is not None else getattr(torch.ops.lsskernels, op).default


@functools.lru_cache(maxsize=None)
def cpu_has_bf16_dot() -> bool:
    """Whether the CPU multiplies bf16 natively (AVX-512 BF16) and
    LSS_CPU_ISA leaves AVX-512 on; False without the extension."""
    return _C is not None and bool(_C.cpu_has_bf16_dot())


def bf16_row_topk(scores: Tensor, k: int) -> Tensor:
    """Column ids int64 [n, k] of each row's k largest entries of a bf16
    [n, P] CPU block, larger first, ties to the smaller column (the
    extension's CPU helper of fit()'s bf16 screen: csrc/cpu/row_topk.h)."""
    if _C is None:
        raise RuntimeError(f"bf16_row_topk needs the compiled extension ({EXTENSION_ERROR})")
    return _C.bf16_row_topk(scores, k)


def cuda_kernels_built() -> bool:
    return _C is not None and bool(_C.built_with_cuda())


@functools.lru_cache(maxsize=None)
def has_native_kernel(op: str, device_type: str) -> bool:
    """Whether this build has a native kernel of torch.ops.lsskernels.<op>
    for device_type ("cpu": the C++ kernels, "cuda": the CUDA C++ kernels).
    A constant of the build (cached): False without the compiled extension,
    for any other device type, and for the composite ops, which have no
    kernel per device (composite_op_names())."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return (_C is not None and key is not None
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"lsskernels::{op}", key))


def _warn_fallback_once() -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"lsskernels: compiled extension not available ({EXTENSION_ERROR}); "
            "falling back to the pure-PyTorch reference (slow)",
            RuntimeWarning,
            stacklevel=3,
        )


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(backend: Optional[str]) -> Optional[str]:
    """backend itself if this build can run it on some device, else a clear
    error (what a layer checks when its backend is set, before any call)."""
    if backend is None:
        return None
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "cpu" and not extension_loaded():
        raise RuntimeError(f"backend='cpu' needs the compiled extension: {EXTENSION_ERROR}")
    if backend == "cuda" and not cuda_kernels_built():
        raise RuntimeError("backend='cuda' needs lsskernels built with CUDA (see docs/gpu.md)")
    if backend == "triton" and not _triton_importable():
        raise RuntimeError("backend='triton' needs the triton package")
    return backend


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend an op call runs on; raises ValueError for an impossible choice."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend is None:
        if device.type == "cuda":
            if _triton_importable():
                return "triton"
            if cuda_kernels_built():
                return "cuda"
            _warn_fallback_once()
            return "reference"
        if device.type == "cpu" and extension_loaded():
            return "cpu"
        if device.type == "cpu":
            _warn_fallback_once()
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, got tensors on {device}")
        if not extension_loaded():
            raise RuntimeError(f"backend='cpu' needs the compiled extension: {EXTENSION_ERROR}")
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        if not cuda_kernels_built():
            raise RuntimeError("backend='cuda' needs lsskernels built with CUDA (see docs/gpu.md)")
    if backend == "triton":
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if device.type != "cuda" and not (device.type == "cpu" and interpreted):
            raise ValueError(f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device}")
    return backend


def _triton():
    from . import triton as triton_ops

    return triton_ops


# --------------------------------------------------------------------------
# Fake kernels (shapes only) so torch.compile can trace the ops, and autograd.
# --------------------------------------------------------------------------
if _C is not None:

    @torch.library.register_fake("lsskernels::hash_codes")
    def _hash_codes_fake(x, proj):
        return x.new_empty((x.shape[0], proj.shape[0]), dtype=torch.int32)

    @torch.library.register_fake("lsskernels::build_tables")
    def _build_tables_fake(codes, bits):
        n, num_tables = codes.shape
        return (codes.new_empty((num_tables, (1 << bits) + 1), dtype=torch.int32),
                codes.new_empty((num_tables, n), dtype=torch.int32))

    @torch.library.register_fake("lsskernels::bucket_lookup")
    def _bucket_lookup_fake(codes, offsets, items, num_labels, max_candidates, min_hits):
        batch = codes.shape[0]
        return (codes.new_empty((batch, max_candidates), dtype=torch.int32),
                codes.new_empty((batch,), dtype=torch.int32))

    @torch.library.register_fake("lsskernels::bucket_lookup_bitmap")
    def _bucket_lookup_bitmap_fake(codes, offsets, items, num_labels, min_hits):
        return codes.new_empty((codes.shape[0], (num_labels + 31) // 32), dtype=torch.int32)

    @torch.library.register_fake("lsskernels::gathered_logits")
    def _gathered_logits_fake(x, weight, bias, ids):
        return x.new_empty(ids.shape)

    def _grads_fake(x, weight, need_x, need_weight, need_bias):
        return (x.new_empty(x.shape if need_x else (0,)),
                weight.new_empty(weight.shape if need_weight else (0,)),
                weight.new_empty((weight.shape[0],) if need_bias else (0,)))

    @torch.library.register_fake("lsskernels::gathered_logits_backward")
    def _gathered_logits_backward_fake(grad, x, weight, ids, need_x, need_weight, need_bias):
        return _grads_fake(x, weight, need_x, need_weight, need_bias)

    @torch.library.register_fake("lsskernels::bitmap_sparse_matmul")
    def _bitmap_sparse_matmul_fake(x, weight, bias, bitmap):
        nnz = torch.library.get_ctx().new_dynamic_size()
        return x.new_empty((nnz,)), x.new_empty((x.shape[0] + 1,), dtype=torch.int64)

    @torch.library.register_fake("lsskernels::bitmap_sparse_matmul_backward")
    def _bitmap_sparse_matmul_backward_fake(grad_values, x, weight, bitmap, row_ptr, need_x, need_weight, need_bias):
        return _grads_fake(x, weight, need_x, need_weight, need_bias)

    @torch.library.register_fake("lsskernels::topk_gathered")
    def _topk_gathered_fake(logits, ids, k):
        batch = logits.shape[0]
        return logits.new_empty((batch, k)), logits.new_empty((batch, k), dtype=torch.int64)

    @torch.library.register_fake("lsskernels::topk_packed")
    def _topk_packed_fake(values, row_ptr, bitmap, k):
        batch = bitmap.shape[0]
        return values.new_empty((batch, k)), values.new_empty((batch, k), dtype=torch.int64)

    def _gathered_setup(ctx, inputs, output):
        x, weight, bias, ids = inputs
        ctx.save_for_backward(x, weight, ids)
        ctx.has_bias = bias is not None

    def _gathered_backward(ctx, grad):
        x, weight, ids = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = bool(need_b and ctx.has_bias)
        gx, gw, gb = torch.ops.lsskernels.gathered_logits_backward(
            grad, x, weight, ids, bool(need_x), bool(need_w), need_b)
        return (gx if need_x else None, gw if need_w else None, gb if need_b else None, None)

    torch.library.register_autograd("lsskernels::gathered_logits", _gathered_backward,
                                    setup_context=_gathered_setup)

    def _bitmap_setup(ctx, inputs, output):
        x, weight, bias, bitmap = inputs
        ctx.save_for_backward(x, weight, bitmap, output[1])
        ctx.has_bias = bias is not None

    def _bitmap_backward(ctx, grad_values, _grad_row_ptr):
        x, weight, bitmap, row_ptr = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = bool(need_b and ctx.has_bias)
        gx, gw, gb = torch.ops.lsskernels.bitmap_sparse_matmul_backward(
            grad_values, x, weight, bitmap, row_ptr, bool(need_x), bool(need_w), need_b)
        return (gx if need_x else None, gw if need_w else None, gb if need_b else None, None)

    torch.library.register_autograd("lsskernels::bitmap_sparse_matmul", _bitmap_backward,
                                    setup_context=_bitmap_setup)

    @torch.library.register_fake("lsskernels::quantized_candidates")
    def _quantized_candidates_fake(x, probes, list_offsets, codes, code_scales, code_bias, list_ids,
                                   num_labels, max_candidates):
        return (x.new_empty((x.shape[0], max_candidates), dtype=torch.int32),
                x.new_empty((x.shape[0],), dtype=torch.int32))

    # partition_predict_topk is CompositeImplicitAutograd (csrc/partition_predict_topk.cpp):
    # no fake of its own (torch refuses one); it decomposes into the ops above.


# --------------------------------------------------------------------------
# The op table: per public op, its reference, where a native kernel exists,
# its Triton function, and its checks. _dispatch is the one place that
# resolves a backend and calls it.
# --------------------------------------------------------------------------
def _native(backend: str) -> bool:
    return backend in ("cpu", "cuda")


def _triton_fn(name: str) -> Callable:
    """lsskernels.triton.<name>, imported on first call (Triton is heavy)."""
    def call(*args):
        return getattr(_triton(), name)(*args)
    call.__name__ = f"triton.{name}"
    return call


def _no_grad(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def call(*args):
        with torch.no_grad():
            return fn(*args)
    return call


@dataclass(frozen=True)
class Op:
    reference: Callable               # lsskernels.reference.<op>
    check: Callable                   # checks.<op>_args: raises, returns the (normalized) args
    triton: Optional[Callable]        # the Triton function, or None (then: the CUDA kernel, else the reference)
    native: Tuple[str, ...] = ("cpu", "cuda")  # devices with a torch.ops.lsskernels kernel
    values: Optional[Callable] = None  # checks.<op>_values: value checks the native kernels make themselves
    values_on_cpu: bool = False       # ... and that the CPU path runs in Python anyway (cheap there)
    composite: bool = False           # a CompositeImplicitAutograd op (no kernel per device)
    backward: Optional[str] = None    # its backward kernel op, registered alongside


def _partition_predict_topk_triton(x, centroid_codes, centroid_scales, centroid_bias, list_offsets, codes,
                                   code_scales, code_bias, list_ids, weight, bias, num_labels, nprobe,
                                   max_candidates, k, code_proj=None):
    probes = quantized_probe(x, centroid_codes, centroid_scales, centroid_bias, nprobe, backend="triton")
    ids, _ = quantized_candidates(reference.code_queries(x, code_proj), probes, list_offsets, codes, code_scales,
                                  code_bias, list_ids, num_labels, max_candidates, backend="triton")
    return topk_gathered(gathered_logits(x, weight, bias, ids, backend="triton"), ids, k, backend="triton")


OPS: Dict[str, Op] = {
    "hash_codes": Op(reference.hash_codes, checks.hash_codes_args, _triton_fn("hash_codes")),
    "build_tables": Op(reference.build_tables, checks.build_tables_args, None),  # runs once per index build
    "bucket_lookup": Op(reference.bucket_lookup, checks.bucket_lookup_args, _triton_fn("bucket_lookup"),
                        values=checks.tables_values, values_on_cpu=True),
    "bucket_lookup_bitmap": Op(reference.bucket_lookup_bitmap, checks.bucket_lookup_bitmap_args,
                               _triton_fn("bucket_lookup_bitmap"), values=checks.tables_values, values_on_cpu=True),
    "gathered_logits": Op(reference.gathered_logits, checks.gathered_logits_args, _triton_fn("gathered_logits"),
                          values=checks.gathered_logits_values, backward="gathered_logits_backward"),
    "bitmap_sparse_matmul": Op(reference.bitmap_sparse_matmul, checks.bitmap_sparse_matmul_args,
                               _triton_fn("bitmap_sparse_matmul"), backward="bitmap_sparse_matmul_backward"),
    "topk_gathered": Op(reference.topk_gathered, checks.topk_gathered_args, _triton_fn("topk_gathered"),
                        values=checks.topk_gathered_values),
    "topk_packed": Op(reference.topk_packed, checks.topk_packed_args, _triton_fn("topk_packed")),
    "quantized_candidates": Op(reference.quantized_candidates, checks.quantized_candidates_args,
                               _triton_fn("quantized_candidates"), values=checks.quantized_candidates_values),
    # One composite op (csrc/partition_predict_topk.cpp), below autograd; no gradient flows through it.
    "partition_predict_topk": Op(_no_grad(reference.partition_predict_topk), checks.partition_predict_topk_args,
                                 _no_grad(_partition_predict_topk_triton), composite=True),
}
# Composites with no public wrapper of their own (LSSIndex.predict_topk calls it).
EXTRA_COMPOSITES = ("predict_topk",)


def kernel_op_names() -> Tuple[str, ...]:
    """Every torch.ops.lsskernels op with a kernel per device (backward ops included)."""
    names = []
    for name, op in OPS.items():
        if not op.composite:
            names.append(name)
            if op.backward:
                names.append(op.backward)
    return tuple(names)


def composite_op_names() -> Tuple[str, ...]:
    """Every CompositeImplicitAutograd op of torch.ops.lsskernels."""
    return EXTRA_COMPOSITES + tuple(name for name, op in OPS.items() if op.composite)


def _device(t) -> torch.device:
    return t.device if isinstance(t, Tensor) else torch.device("cpu")


def _dispatch(name: str, backend: Optional[str], device: torch.device, *args):
    """Run op `name` on `backend` (None: automatic) for args already through
    the op's checks: resolves the backend, runs the value checks the chosen
    backend does not make itself, and calls it."""
    op = OPS[name]
    chosen = resolve_backend(backend, device)
    if chosen == "triton" and op.triton is None:
        chosen = "cuda" if cuda_kernels_built() and device.type == "cuda" else "reference"
    if _native(chosen) and device.type not in op.native:
        chosen = "reference"
    if op.values is not None and (chosen == "reference" or (device.type != "cuda"
                                                            and (chosen == "triton" or op.values_on_cpu))):
        op.values(*args)
    if _native(chosen):
        return getattr(torch.ops.lsskernels, name)(*args)
    if chosen == "triton":
        return op.triton(*args)
    return op.reference(*args)


# --------------------------------------------------------------------------
# Public wrappers: docstring, the CPU fast path where there is one, the named
# checks, _dispatch.
#
# The CPU fast path (the ops a batch-1 predict calls, where the named checks
# would cost as much as the kernel): a call whose first tensor is on the CPU
# goes straight to the kernel, which checks every argument itself and raises
# the ValueError / TypeError the named checks would (one validation
# contract: csrc/include/lss/arg_checks.h). Only where the call fails do the
# named checks run: they name the problem in the wrapper's terms (an
# argument that is no tensor, tensors on different devices) or accept what
# the wrapper takes beyond the op's schema (int64 ids, int64 probes), and _dispatch then calls the backend, whose own error
# stands if the named checks found nothing wrong.
# --------------------------------------------------------------------------
def _fast_cpu(backend: Optional[str], first) -> bool:
    return _C is not None and backend in (None, "cpu") and isinstance(first, Tensor) and first.is_cpu


def hash_codes(x: Tensor, proj: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Hash codes int32 [B, L]: bit j of codes[b, l] is [<x[b], proj[l, j]> > 0].

    x: [B, d] float16/bfloat16/float32/float64; proj: [L, K, d], same dtype, K <= 30.
    """
    args = checks.hash_codes_args(x, proj)
    return _dispatch("hash_codes", backend, x.device, *args)


def build_tables(codes: Tensor, bits: int, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """CSR hash tables from label codes [N, L]: offsets int32 [L, 2^bits + 1]
    and items int32 [L, N], labels ascending within each bucket."""
    args = checks.build_tables_args(codes, bits)
    return _dispatch("build_tables", backend, codes.device, *args)


def bucket_lookup(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int, max_candidates: int,
                  min_hits: int = 1, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Candidates of each query: ids int32 [B, max_candidates] (-1 padded,
    more hits first, then ascending id) and counts int32 [B]."""
    args = checks.bucket_lookup_args(codes, offsets, items, num_labels, max_candidates, min_hits)
    return _dispatch("bucket_lookup", backend, codes.device, *args)


def bucket_lookup_bitmap(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                         min_hits: int = 1, *, backend: Optional[str] = None) -> Tensor:
    """Candidates of each query as a bitmap int32 [B, ceil(num_labels / 32)]."""
    args = checks.bucket_lookup_bitmap_args(codes, offsets, items, num_labels, min_hits)
    return _dispatch("bucket_lookup_bitmap", backend, codes.device, *args)


def gathered_logits(x: Tensor, weight: Tensor, bias: Optional[Tensor], ids: Tensor, *,
                    backend: Optional[str] = None) -> Tensor:
    """Exact logits of per-query candidates: [B, M] in x's dtype, -inf where
    ids == -1. Differentiable in x, weight and bias."""
    if _fast_cpu(backend, x):
        try:
            return torch.ops.lsskernels.gathered_logits.default(x, weight, bias, ids)
        except Exception:
            pass  # the named checks say why (or take int64 ids); see _fast_cpu
    args = checks.gathered_logits_args(x, weight, bias, ids)
    return _dispatch("gathered_logits", backend, x.device, *args)


def bitmap_sparse_matmul(x: Tensor, weight: Tensor, bias: Optional[Tensor], bitmap: Tensor, *,
                         backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Exact logits of every (b, label) set in the bitmap: (values [nnz] in
    x's dtype, packed row by row in ascending label order, row_ptr int64
    [B + 1]). Differentiable in x, weight and bias."""
    args = checks.bitmap_sparse_matmul_args(x, weight, bias, bitmap)
    return _dispatch("bitmap_sparse_matmul", backend, x.device, *args)


def topk_gathered(logits: Tensor, ids: Tensor, k: int, *, backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Top-k of gathered logits: (scores [B, k], labels int64 [B, k]), larger
    score first, ties by smaller label; -inf / -1 where fewer than k."""
    if _fast_cpu(backend, logits):
        try:
            return torch.ops.lsskernels.topk_gathered.default(logits, ids, k)
        except Exception:
            pass  # the named checks say why (or take int64 ids); see _fast_cpu
    args = checks.topk_gathered_args(logits, ids, k)
    return _dispatch("topk_gathered", backend, logits.device, *args)


def topk_packed(values: Tensor, row_ptr: Tensor, bitmap: Tensor, k: int, *,
                backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """Top-k per row of bitmap_sparse_matmul's packed output."""
    args = checks.topk_packed_args(values, row_ptr, bitmap, k)
    return _dispatch("topk_packed", backend, values.device, *args)


def quantized_candidates(x: Tensor, probes: Tensor, list_offsets: Tensor, codes: Tensor, code_scales: Tensor,
                         code_bias: Tensor, list_ids: Tensor, num_labels: int, max_candidates: int, *,
                         backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """The max_candidates best labels of each query by int8 quantized score
    over the partitions it probes: ids int32 [B, M] (-1 padded; score desc,
    then id asc; a label listed in several probed partitions counts once) and
    counts int32 [B]. Exact contract: lsskernels.reference.quantized_candidates."""
    if _fast_cpu(backend, x):
        try:
            return torch.ops.lsskernels.quantized_candidates.default(x, probes, list_offsets, codes, code_scales,
                                                                     code_bias, list_ids, num_labels, max_candidates)
        except Exception:
            pass  # the named checks say why (or take int64 probes); see _fast_cpu
    args = checks.quantized_candidates_args(x, probes, list_offsets, codes, code_scales, code_bias, list_ids,
                                            num_labels, max_candidates)
    return _dispatch("quantized_candidates", backend, x.device, *args)


def quantized_probe(x: Tensor, centroid_codes: Tensor, centroid_scales: Tensor, centroid_bias: Tensor, nprobe: int,
                    probe_list: Optional[Tuple[Tensor, Tensor]] = None, *, backend: Optional[str] = None) -> Tensor:
    """The nprobe best partitions by int8 score, int32 [B, nprobe]:
    quantized_candidates over one list of the centroid codes (exact
    contract: reference.quantized_probe). probe_list: that list's (offsets,
    ids), reference.probe_list, if the caller keeps them."""
    offsets, ids = probe_list if probe_list is not None else reference.probe_list(centroid_codes.shape[0], x.device)
    one_list = torch.zeros(x.shape[0], 1, dtype=torch.int32, device=x.device)
    return quantized_candidates(x, one_list, offsets, centroid_codes, centroid_scales, centroid_bias, ids,
                                centroid_codes.shape[0], nprobe, backend=backend)[0]


def partition_predict_topk(x: Tensor, centroid_codes: Tensor, centroid_scales: Tensor, centroid_bias: Tensor,
                           list_offsets: Tensor, codes: Tensor, code_scales: Tensor, code_bias: Tensor,
                           list_ids: Tensor, weight: Tensor, bias: Optional[Tensor], num_labels: int, nprobe: int,
                           max_candidates: int, k: int, code_proj: Optional[Tensor] = None, *,
                           backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """The partition family's predict in one call: the probe
    (quantized_probe: the int8 centroid codes, e.g. from
    lsskernels.partition.probe.probe_codes) -> quantized_candidates of the probed
    lists -> exact logits of the max_candidates best
    (gathered_logits) -> top-k. Returns (scores [B, k] in x's dtype, labels
    int64 [B, k]), -inf / -1 where a query has fewer than k candidates. With
    code_proj (float32 [d, r]) the codes are of projected label vectors and
    are scored with x @ code_proj. No gradient flows through it. Exact
    contract: reference.partition_predict_topk."""
    args = (x, centroid_codes, centroid_scales, centroid_bias, list_offsets, codes, code_scales, code_bias, list_ids,
            weight, bias, num_labels, nprobe, max_candidates, k, code_proj)
    if _fast_cpu(backend, x):
        try:
            return torch.ops.lsskernels.partition_predict_topk.default(*args)
        except Exception:
            pass  # the named checks say why; see _fast_cpu
    args = checks.partition_predict_topk_args(*args)
    return _dispatch("partition_predict_topk", backend, x.device, *args)
