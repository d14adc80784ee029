"""The Triton backend of lsskernels.

Every function here has exactly the signature of its counterpart in
lsskernels/reference.py and expects already-validated arguments (the public
wrappers in lsskernels/_ops.py validate them and call these with
backend="triton"). Kernels run on CUDA tensors, or on CPU tensors under
TRITON_INTERPRET=1 (set before triton is first imported).

The kernels are registered as ops under torch.ops.lsskernels_triton (see
_common.py for how: torch.library.triton_op on GPUs, custom_op under the
interpreter); gathered_logits and bitmap_sparse_matmul are differentiable
through register_autograd. Design, grids and limits: docs/triton.md.

One module per op, named after it (hash_codes.py, bucket_lookup.py, with
bucket_lookup_bitmap, gathered_logits.py, bitmap_sparse_matmul.py, topk.py,
with topk_gathered and topk_packed,
quantized_candidates.py); _common.py holds what they share. The functions
exported here shadow the modules of the same name as attributes of this
package, so reach a module with module("bucket_lookup") (or
importlib.import_module("lsskernels.triton.bucket_lookup")), not with
``from lsskernels.triton import bucket_lookup``.
"""
import importlib

from ._common import INTERPRET, REGISTRATION
from .bitmap_sparse_matmul import bitmap_sparse_matmul
from .bucket_lookup import bucket_lookup, bucket_lookup_bitmap
from .gathered_logits import gathered_logits
from .hash_codes import hash_codes
from .quantized_candidates import quantize_queries, quantized_candidates
from .topk import topk_gathered, topk_packed

__all__ = [
    "INTERPRET",
    "MODULES",
    "REGISTRATION",
    "bitmap_sparse_matmul",
    "bucket_lookup",
    "bucket_lookup_bitmap",
    "gathered_logits",
    "hash_codes",
    "module",
    "quantize_queries",
    "quantized_candidates",
    "topk_gathered",
    "topk_packed",
]


#: The op modules, in pipeline order.
MODULES = ("hash_codes", "bucket_lookup", "gathered_logits", "bitmap_sparse_matmul", "topk",
           "quantized_candidates")


def module(name: str):
    """The module lsskernels.triton.<name> (one of MODULES)."""
    if name not in MODULES:
        raise ValueError(f"no Triton op module {name!r}; one of {MODULES}")
    return importlib.import_module(f"{__name__}.{name}")


def aot_specs():
    """Representative compilations of every kernel, for tools/triton_aot.py."""
    specs = []
    for name in MODULES:
        specs.extend(module(name).aot_specs())
    return specs
