"""Argument validation for the public op wrappers.

Every check raises before any kernel runs, with a message that names the
argument and says what was expected (shape, dtype or device): TypeError for
a wrong type or dtype, ValueError for a wrong shape, device or value. The
C++/CUDA kernels check the same preconditions and raise the same types
(TORCH_CHECK_TYPE / TORCH_CHECK_VALUE, csrc/include/lss/arg_checks.h), so the
CPU fast path of lsskernels._ops calls a kernel directly and runs these only
where the kernel refuses the call. Checks on *values* (codes in range, ids in
range) cost a pass over the data and, on CUDA, a device sync; the kernels
make them as they read the data, so the wrappers only run them where a kernel
would not (the reference backend) or where they are cheap (small integer
inputs on the CPU).
"""
from __future__ import annotations

from typing import Optional

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INT_DTYPES = (torch.int32, torch.int64)

# The limits the kernels enforce are defined once, in csrc/include/lss/common.h,
# and read from the extension here; the constants below are used only where
# the extension is missing (the package then runs on the reference).
_FALLBACK_LIMITS = {"max_bits": 30, "max_tables": 0xFFFE, "code_align": 32, "quant_levels": 127}
try:
    from . import _C as _ext

    LIMITS = dict(_ext.limits())
except ImportError:
    LIMITS = dict(_FALLBACK_LIMITS)
MAX_BITS: int = LIMITS["max_bits"]          # bits per hash table (codes are non-negative int32)
MAX_TABLES: int = LIMITS["max_tables"]      # hash tables per index
CODE_ALIGN: int = LIMITS["code_align"]      # rows of int8 codes are padded to a multiple of this


def code_width(dim: int) -> int:
    """Dp: dim rounded up to a multiple of CODE_ALIGN (bytes of an int8 code row)."""
    return -(-dim // CODE_ALIGN) * CODE_ALIGN
QUANT_LEVELS: int = LIMITS["quant_levels"]  # int8 codes and quantized queries use [-127, 127]
MAX_INT32 = 2**31 - 1


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def tensor(name: str, t, ndim: Optional[int] = None, dtypes=None, what: str = "") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor{(' ' + what) if what else ''}, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {what or f'a {ndim}-d tensor'}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    return t


def same_device(*named: tuple) -> None:
    """named: (name, tensor) pairs; every tensor must sit on the first one's device."""
    first_name, first = named[0]
    for name, t in named[1:]:
        if t is not None and t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "all inputs must be on the same device")


def same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; they must match")


def integer(name: str, v, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, torch.SymInt):
            return v
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if (low is not None and v < low) or (high is not None and v > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def as_int32(name: str, t: torch.Tensor, low: int, high: Optional[int], check_values: bool) -> torch.Tensor:
    """int32/int64 tensor -> int32, checking low <= t < high first where asked,
    and always for int64 input (a blind cast would wrap 2^32 + 1 to 1)."""
    if (check_values or t.dtype == torch.int64) and not _compiling() and t.numel() > 0:
        lo, hi = int(t.min()), int(t.max())
        if lo < low or (high is not None and hi >= high):
            raise ValueError(f"{name} values must be in [{low}, {high if high is not None else 'inf'}), "
                             f"got min {lo}, max {hi}")
    return t if t.dtype == torch.int32 else t.to(torch.int32)


# --------------------------------------------------------------------------
# Small predicates: shape rules used by several named checks below.
# --------------------------------------------------------------------------
def matches_width(t_shape, x_shape) -> bool:
    """t is [N, d] with x's d (x: [B, d])."""
    return t_shape[1] == x_shape[1]


def bias_fits(b_shape, rows: int) -> bool:
    return b_shape[0] == rows


def code_width_ok(d: int, width: int) -> bool:
    """Dp = d rounded up to a multiple of CODE_ALIGN."""
    return width == code_width(d)


def hash_codes_args(x, proj):
    tensor("x", x, 2, FLOAT_DTYPES, "[B, d] floating point")
    tensor("proj", proj, 3, FLOAT_DTYPES, "[L, K, d] floating point")
    same_device(("x", x), ("proj", proj))
    same_dtype("proj", proj, "x", x)
    if proj.shape[2] != x.shape[1]:
        raise ValueError(f"proj must be [L, K, d] with d = x.shape[1] = {x.shape[1]}, got {tuple(proj.shape)}")
    if not 1 <= proj.shape[1] <= MAX_BITS:
        raise ValueError(f"proj.shape[1] (bits per table K) must be in [1, {MAX_BITS}], got {proj.shape[1]}")
    return x, proj


def build_tables_args(codes, bits):
    tensor("codes", codes, 2, INT_DTYPES, "[N, L] int32 label codes")
    integer("bits", bits, 1, MAX_BITS)
    codes = as_int32("codes", codes, 0, 1 << bits, check_values=True)
    if codes.shape[0] > MAX_INT32:
        raise ValueError(f"codes: at most 2^31 - 1 labels, got {codes.shape[0]}")
    return codes, bits


def tables_args(codes, offsets, items, num_labels, min_hits, check_values=False):
    tensor("codes", codes, 2, INT_DTYPES, "[B, L] int32")
    tensor("offsets", offsets, 2, (torch.int32,), "[L, 2^K + 1] int32")
    tensor("items", items, 2, (torch.int32,), "[L, T] int32")
    same_device(("codes", codes), ("offsets", offsets), ("items", items))
    num_tables = offsets.shape[0]
    if codes.shape[1] != num_tables or items.shape[0] != num_tables:
        raise ValueError(f"codes [B, L], offsets [L, 2^K + 1] and items [L, T] disagree on L: "
                         f"{tuple(codes.shape)}, {tuple(offsets.shape)}, {tuple(items.shape)}")
    buckets = offsets.shape[1] - 1
    if buckets < 2 or buckets & (buckets - 1) or buckets > 1 << MAX_BITS:
        raise ValueError(f"offsets must be [L, 2^K + 1] with 1 <= K <= {MAX_BITS}, got {tuple(offsets.shape)}")
    integer("num_labels", num_labels, 0, MAX_INT32)
    integer("min_hits", min_hits, 1)
    return as_int32("codes", codes, 0, buckets, check_values)


def tables_values(codes, offsets, *_):
    """The value check of tables_args (codes in [0, 2^K)), for the backends
    that do not make it themselves."""
    as_int32("codes", codes, 0, offsets.shape[1] - 1, check_values=True)


def bucket_lookup_args(codes, offsets, items, num_labels, max_candidates, min_hits):
    codes = tables_args(codes, offsets, items, num_labels, min_hits)
    integer("max_candidates", max_candidates, 1)
    return codes, offsets, items, num_labels, max_candidates, min_hits


def bucket_lookup_bitmap_args(codes, offsets, items, num_labels, min_hits):
    return tables_args(codes, offsets, items, num_labels, min_hits), offsets, items, num_labels, min_hits


def dense_layer_args(x, weight, bias):
    tensor("x", x, 2, FLOAT_DTYPES, "[B, d] floating point")
    tensor("weight", weight, 2, FLOAT_DTYPES, "[N, d] floating point")
    same_dtype("weight", weight, "x", x)
    if not matches_width(weight.shape, x.shape):
        raise ValueError(f"weight must be [N, d] with d = x.shape[1] = {x.shape[1]}, got {tuple(weight.shape)}")
    if bias is not None:
        tensor("bias", bias, 1, FLOAT_DTYPES, "[N] floating point")
        same_dtype("bias", bias, "x", x)
        if not bias_fits(bias.shape, weight.shape[0]):
            raise ValueError(f"bias must be [N] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    same_device(("x", x), ("weight", weight), ("bias", bias))


def gathered_args(x, weight, bias, ids, check_values=False):
    dense_layer_args(x, weight, bias)
    tensor("ids", ids, 2, INT_DTYPES, "[B, M] int32 label ids (-1 = padding)")
    same_device(("x", x), ("ids", ids))
    if ids.shape[0] != x.shape[0]:
        raise ValueError(f"ids must be [B, M] with B = x.shape[0] = {x.shape[0]}, got {tuple(ids.shape)}")
    return as_int32("ids", ids, -1, weight.shape[0], check_values)


def gathered_logits_args(x, weight, bias, ids):
    return x, weight, bias, gathered_args(x, weight, bias, ids)


def gathered_logits_values(x, weight, bias, ids):
    as_int32("ids", ids, -1, weight.shape[0], check_values=True)


def bitmap_args(x, weight, bias, bitmap):
    dense_layer_args(x, weight, bias)
    words = (weight.shape[0] + 31) // 32
    tensor("bitmap", bitmap, 2, (torch.int32,), f"int32 [B, ceil(N / 32)] = [{x.shape[0]}, {words}]")
    same_device(("x", x), ("bitmap", bitmap))
    if tuple(bitmap.shape) != (x.shape[0], words):
        raise ValueError(f"bitmap must be int32 [B, ceil(N / 32)] = [{x.shape[0]}, {words}], got {tuple(bitmap.shape)}")
    return x, weight, bias, bitmap


bitmap_sparse_matmul_args = bitmap_args


def topk_k(k) -> int:
    return integer("k", k, 1)


def topk_gathered_args(logits, ids, k):
    tensor("logits", logits, 2, FLOAT_DTYPES, "[B, M] floating point")
    tensor("ids", ids, 2, INT_DTYPES, "[B, M] label ids (-1 = padding)")
    if ids.shape != logits.shape:
        raise ValueError(f"ids must have logits' shape {tuple(logits.shape)}, got {tuple(ids.shape)}")
    same_device(("logits", logits), ("ids", ids))
    k = topk_k(k)
    return logits, as_int32("ids", ids, -1, None, check_values=False), k


def topk_gathered_values(logits, ids, k):
    as_int32("ids", ids, -1, None, check_values=True)


def topk_packed_args(values, row_ptr, bitmap, k):
    tensor("values", values, 1, FLOAT_DTYPES, "[nnz] floating point")
    tensor("row_ptr", row_ptr, 1, (torch.int64,), "int64 [B + 1]")
    tensor("bitmap", bitmap, 2, (torch.int32,), "int32 [B, W]")
    same_device(("values", values), ("row_ptr", row_ptr), ("bitmap", bitmap))
    if row_ptr.shape[0] != bitmap.shape[0] + 1:
        raise ValueError(f"row_ptr must be [B + 1] = [{bitmap.shape[0] + 1}], got {tuple(row_ptr.shape)}")
    return values, row_ptr, bitmap, topk_k(k)


def probe_codes_args(x, centroid_codes, centroid_scales, centroid_bias, nprobe):
    """The probe's centroid codes (reference.quantized_probe): int8 [P, Dp]
    (Dp = d rounded up to a multiple of 32), scales and bias float32 [P], P >= 1;
    nprobe in [1, P]."""
    tensor("x", x, 2, FLOAT_DTYPES, "[B, d] floating point")
    tensor("centroid_codes", centroid_codes, 2, (torch.int8,), "int8 [P, Dp]")
    tensor("centroid_scales", centroid_scales, 1, (torch.float32,), "float32 [P]")
    tensor("centroid_bias", centroid_bias, 1, (torch.float32,), "float32 [P]")
    same_device(("x", x), ("centroid_codes", centroid_codes), ("centroid_scales", centroid_scales),
                ("centroid_bias", centroid_bias))
    d, (partitions, width) = x.shape[1], centroid_codes.shape
    if partitions == 0 or not code_width_ok(d, width):
        raise ValueError(f"centroid_codes must be int8 [P, Dp] with P >= 1 and Dp = d rounded up to a multiple of "
                         f"{CODE_ALIGN} (d = {d}: Dp = {code_width(d)}), "
                         f"got {tuple(centroid_codes.shape)}")
    for name, t in (("centroid_scales", centroid_scales), ("centroid_bias", centroid_bias)):
        if t.shape[0] != partitions:
            raise ValueError(f"{name} must be [P] = [{partitions}] (one entry per centroid code), "
                             f"got {tuple(t.shape)}")
    integer("nprobe", nprobe, 1, partitions)


def code_proj_args(x, code_proj) -> Optional[int]:
    """A code projection: None or empty (the codes are of x's d dimensions:
    returns None), or float32 [d, r] with 1 <= r <= d on x's device (returns r)."""
    d = x.shape[1]
    if code_proj is None or (isinstance(code_proj, torch.Tensor) and code_proj.numel() == 0):
        return None
    tensor("code_proj", code_proj, 2, (torch.float32,), f"float32 [d = {d}, r] or None")
    same_device(("x", x), ("code_proj", code_proj))
    if code_proj.shape[0] != d or not 1 <= code_proj.shape[1] <= d:
        raise ValueError(f"code_proj must be float32 [d = {d}, r] with 1 <= r <= d, or None; "
                         f"got {tuple(code_proj.shape)}")
    return code_proj.shape[1]


def partition_lists_args(x, list_offsets, codes, code_scales, code_bias, list_ids, num_labels, code_dim=None):
    """The partition lists: offsets int32 [P + 1], codes int8 [T, Dp] (Dp a
    multiple of 32 with r <= Dp < r + 32, r the code width: d, or code_dim
    under a code projection), scales / bias float32 [T], ids int32 [T]."""
    tensor("x", x, 2, FLOAT_DTYPES, "[B, d] floating point")
    tensor("list_offsets", list_offsets, 1, (torch.int32,), "int32 [P + 1]")
    tensor("codes", codes, 2, (torch.int8,), "int8 [T, Dp]")
    tensor("code_scales", code_scales, 1, (torch.float32,), "float32 [T]")
    tensor("code_bias", code_bias, 1, (torch.float32,), "float32 [T]")
    tensor("list_ids", list_ids, 1, (torch.int32,), "int32 [T]")
    same_device(("x", x), ("list_offsets", list_offsets), ("codes", codes), ("code_scales", code_scales),
                ("code_bias", code_bias), ("list_ids", list_ids))
    d, (rows, width) = x.shape[1] if code_dim is None else code_dim, codes.shape
    if not code_width_ok(d, width):
        what = "d" if code_dim is None else "the code width r"
        raise ValueError(f"codes must be int8 [T, Dp] with Dp = {what} rounded up to a multiple of {CODE_ALIGN} "
                         f"({what} = {d}: Dp = {code_width(d)}), got {tuple(codes.shape)}")
    for name, t in (("code_scales", code_scales), ("code_bias", code_bias), ("list_ids", list_ids)):
        if t.shape[0] != rows:
            raise ValueError(f"{name} must be [T] = [{rows}] (one entry per row of codes), got {tuple(t.shape)}")
    if list_offsets.shape[0] < 2:
        raise ValueError(f"list_offsets must be int32 [P + 1] with P >= 1, got {tuple(list_offsets.shape)}")
    integer("num_labels", num_labels, 1, MAX_INT32)


def quantized_candidates_args(x, probes, list_offsets, codes, code_scales, code_bias, list_ids, num_labels,
                              max_candidates, check_values=False):
    partition_lists_args(x, list_offsets, codes, code_scales, code_bias, list_ids, num_labels)
    tensor("probes", probes, 2, INT_DTYPES, "[B, nprobe] int32 partition ids (-1 = skip)")
    same_device(("x", x), ("probes", probes))
    if probes.shape[0] != x.shape[0]:
        raise ValueError(f"probes must be [B, nprobe] with B = x.shape[0] = {x.shape[0]}, got {tuple(probes.shape)}")
    integer("max_candidates", max_candidates, 1)
    probes = as_int32("probes", probes, -1, list_offsets.shape[0] - 1, check_values)
    return x, probes, list_offsets, codes, code_scales, code_bias, list_ids, num_labels, max_candidates


def quantized_candidates_values(x, probes, list_offsets, *_):
    as_int32("probes", probes, -1, list_offsets.shape[0] - 1, check_values=True)


def partition_predict_topk_args(x, centroid_codes, centroid_scales, centroid_bias, list_offsets, codes, code_scales,
                                code_bias, list_ids, weight, bias, num_labels, nprobe, max_candidates, k,
                                code_proj=None):
    probe_codes_args(x, centroid_codes, centroid_scales, centroid_bias, nprobe)
    code_dim = code_proj_args(x, code_proj)
    partition_lists_args(x, list_offsets, codes, code_scales, code_bias, list_ids, num_labels, code_dim)
    partitions = centroid_codes.shape[0]
    if list_offsets.shape[0] != partitions + 1:
        raise ValueError(f"list_offsets must be int32 [P + 1] = [{partitions + 1}] (P = centroid_codes.shape[0]), "
                         f"got {tuple(list_offsets.shape)}")
    dense_layer_args(x, weight, bias)
    same_device(("x", x), ("list_offsets", list_offsets))
    if num_labels > weight.shape[0]:
        raise ValueError(f"num_labels must be <= weight.shape[0] = {weight.shape[0]} (list ids index the weight "
                         f"rows), got {num_labels}")
    integer("max_candidates", max_candidates, 1)
    topk_k(k)
    return (x, centroid_codes, centroid_scales, centroid_bias, list_offsets, codes, code_scales, code_bias, list_ids,
            weight, bias, num_labels, nprobe, max_candidates, k, code_proj)
