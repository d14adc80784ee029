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
"""
from ._common import INTERPRET, REGISTRATION
from .bitmap_matmul import bitmap_sparse_matmul
from .gathered import gathered_logits
from .hashing import hash_codes
from .lookup import bucket_lookup, bucket_lookup_bitmap
from .partition_probe import partition_probe
from .quantized_candidates import quantize_queries, quantized_candidates
from .topk import topk_gathered, topk_packed

__all__ = [
    "INTERPRET",
    "REGISTRATION",
    "bitmap_sparse_matmul",
    "bucket_lookup",
    "bucket_lookup_bitmap",
    "gathered_logits",
    "hash_codes",
    "partition_probe",
    "quantize_queries",
    "quantized_candidates",
    "topk_gathered",
    "topk_packed",
]


def aot_specs():
    """Representative compilations of every kernel, for tools/triton_aot.py."""
    import importlib

    from . import bitmap_matmul, gathered, hashing, lookup, topk

    # (the partition modules share their names with the functions exported
    # above, which shadow them as attributes of this package)
    probe, quantized = (importlib.import_module(f"{__name__}.{m}")
                        for m in ("partition_probe", "quantized_candidates"))
    specs = []
    for module in (hashing, lookup, gathered, bitmap_matmul, topk, probe, quantized):
        specs.extend(module.aot_specs())
    return specs
