"""Every op is registered once, with a CPU kernel, and opcheck passes: schema,
fake kernel, autograd registration and torch.compile tracing agree with the
real kernel."""
import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from lsskernels.partition.probe import probe_codes
from helpers import randn, random_ids, random_partition_lists, random_probes, random_query_codes, random_tables

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")

from lsskernels import _ops

OPS = list(_ops.kernel_op_names())          # from the op table in lsskernels/_ops.py
COMPOSITES = list(_ops.composite_op_names())


def test_op_table_covers_the_registered_ops():
    names = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("lsskernels::")}
    assert names == set(OPS) | set(COMPOSITES)


@pytest.mark.parametrize("op", OPS)
def test_cpu_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lsskernels::{op}", "CPU")


@pytest.mark.parametrize("op", COMPOSITES)
def test_predict_ops_are_composites(op):
    # No kernel of its own per device: it calls the ops above, so it runs
    # wherever they do and torch.compile traces through it.
    name = f"lsskernels::{op}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")


def _samples():
    ops = torch.ops.lsskernels
    x, proj = randn(3, 9, seed=1), randn(4, 5, 9, seed=2)
    _, offsets, items = random_tables(70, 4, 5, seed=3)
    codes = random_query_codes(3, 4, 5, seed=4)
    w, b = randn(70, 9, seed=5), randn(70, seed=6)
    ids = random_ids(3, 8, 70, seed=7)
    bitmap = reference.bitmap_from_ids(ids, 70)
    logits = reference.gathered_logits(x, w, b, ids)
    values, row_ptr = reference.bitmap_sparse_matmul(x, w, b, bitmap)
    grad = randn(3, 8, seed=8)
    lists = random_partition_lists(70, 6, 9, seed=20)
    projected_lists, code_proj = random_partition_lists(70, 6, 4, seed=21), randn(9, 4, seed=22)
    probe = probe_codes(randn(6, 9, seed=17))
    return [
        (ops.hash_codes.default, (x, proj)),
        (ops.build_tables.default, (random_query_codes(70, 4, 5, seed=9), 5)),
        (ops.bucket_lookup.default, (codes, offsets, items, 70, 16, 1)),
        (ops.bucket_lookup_bitmap.default, (codes, offsets, items, 70, 2)),
        (ops.gathered_logits.default, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), ids)),
        (ops.gathered_logits.default, (randn(3, 9, seed=10), randn(70, 9, seed=11), None, ids)),
        (ops.gathered_logits_backward.default, (grad, x.detach(), w.detach(), ids, True, True, True)),
        (ops.gathered_logits_backward.default, (grad, x.detach(), w.detach(), ids, False, True, False)),
        (ops.bitmap_sparse_matmul.default, (randn(3, 9, seed=12).requires_grad_(), randn(70, 9, seed=13).requires_grad_(),
                                            randn(70, seed=14).requires_grad_(), bitmap)),
        (ops.bitmap_sparse_matmul_backward.default, (randn(values.numel(), seed=15), x.detach(), w.detach(), bitmap,
                                                     row_ptr, True, True, True)),
        (ops.topk_gathered.default, (logits.detach(), ids, 4)),
        (ops.topk_packed.default, (values.detach(), row_ptr, bitmap, 4)),
        (ops.predict_topk.default, (x.detach(), randn(4, 5, 11, seed=16), offsets, items, w.detach(), b.detach(),
                                    70, 16, 1, 3)),
        (ops.quantized_candidates.default, (x.detach(), random_probes(3, 3, 6, seed=19), *lists, 70, 16)),
        (ops.partition_predict_topk.default, (x.detach(), *probe, randn(6, seed=18), *lists, w.detach(),
                                              b.detach(), 70, 3, 16, 4)),
        (ops.partition_predict_topk.default, (x.detach(), *probe, randn(6, seed=18), *projected_lists,
                                              w.detach(), b.detach(), 70, 3, 16, 4, code_proj)),
    ]


@pytest.mark.parametrize("case", range(16))
def test_opcheck(case):
    op, args = _samples()[case]
    # bitmap_sparse_matmul's output size is data-dependent; aot_dispatch_dynamic
    # covers it through the fake kernel's dynamic size.
    torch.library.opcheck(op, args)


def test_gradcheck_gathered_logits_float64():
    ids = random_ids(2, 6, 20, seed=1)
    x = randn(2, 5, seed=2, dtype=torch.float64).requires_grad_()
    w = randn(20, 5, seed=3, dtype=torch.float64).requires_grad_()
    b = randn(20, seed=4, dtype=torch.float64).requires_grad_()
    # -inf padding is not differentiable; gradcheck the finite entries.
    valid = ids >= 0
    fn = lambda x, w, b: lss.gathered_logits(x, w, b, ids, backend="cpu")[valid]
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_gradcheck_bitmap_sparse_matmul_float64():
    ids = random_ids(3, 5, 40, seed=5)
    bitmap = reference.bitmap_from_ids(ids, 40)
    x = randn(3, 4, seed=6, dtype=torch.float64).requires_grad_()
    w = randn(40, 4, seed=7, dtype=torch.float64).requires_grad_()
    b = randn(40, seed=8, dtype=torch.float64).requires_grad_()
    fn = lambda x, w, b: lss.bitmap_sparse_matmul(x, w, b, bitmap, backend="cpu")[0]
    assert torch.autograd.gradcheck(fn, (x, w, b))
