"""Bad input gets a clear error naming the argument and what was expected,
raised before any kernel runs; malformed tables never crash the process."""
import pytest
import torch

import lsskernels as lss
from helpers import randn, random_query_codes, random_tables


def _layer():
    return lss.LSSLinear(8, 50, max_candidates=10, index=lss.simhash.SimHashConfig(num_tables=2, bits=3))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: lss.hash_codes(randn(3, 4, seed=0), randn(2, 3, 5, seed=1)), ValueError, r"proj must be \[L, K, d\] with d = x.shape\[1\] = 4"),
    (lambda: lss.hash_codes(randn(3, 4, seed=0)[0], randn(2, 3, 4, seed=1)), ValueError, r"x must be \[B, d\]"),
    (lambda: lss.hash_codes(torch.ones(3, 4, dtype=torch.int64), randn(2, 3, 4, seed=1)), TypeError, r"x must have dtype"),
    (lambda: lss.hash_codes(randn(3, 4, seed=0), randn(2, 31, 4, seed=1)), ValueError, r"bits per table K\) must be in \[1, 30\]"),
    (lambda: lss.hash_codes(randn(3, 4, seed=0), randn(2, 3, 4, seed=1, dtype=torch.float64)), TypeError, r"proj has dtype"),
    (lambda: lss.hash_codes([1, 2], randn(2, 3, 4, seed=1)), TypeError, r"x must be a torch.Tensor"),
    (lambda: lss.build_tables(torch.zeros(5, 2, dtype=torch.int32), 0), ValueError, r"bits must be in \[1, 30\]"),
    (lambda: lss.build_tables(torch.full((5, 2), 8, dtype=torch.int32), 3), ValueError, r"codes values must be in \[0, 8\)"),
    (lambda: lss.build_tables(torch.zeros(5, 2), 3), TypeError, r"codes must have dtype"),
    (lambda: lss.gathered_logits(randn(2, 4, seed=0), randn(9, 5, seed=1), None, torch.zeros(2, 3, dtype=torch.int32)),
     ValueError, r"weight must be \[N, d\] with d = x.shape\[1\] = 4"),
    (lambda: lss.gathered_logits(randn(2, 4, seed=0), randn(9, 4, seed=1), randn(8, seed=2), torch.zeros(2, 3, dtype=torch.int32)),
     ValueError, r"bias must be \[N\] = \[9\]"),
    (lambda: lss.gathered_logits(randn(2, 4, seed=0), randn(9, 4, seed=1), None, torch.zeros(3, 3, dtype=torch.int32)),
     ValueError, r"ids must be \[B, M\] with B = x.shape\[0\] = 2"),
    (lambda: lss.gathered_logits(randn(2, 4, seed=0), randn(9, 4, seed=1), None, torch.zeros(2, 3)),
     TypeError, r"ids must have dtype"),
    (lambda: lss.gathered_logits(randn(2, 4, seed=0), randn(9, 4, seed=1), None, torch.full((2, 3), 9, dtype=torch.int32), backend="reference"),
     ValueError, r"ids values must be in \[-1, 9\)"),
    (lambda: lss.gathered_logits(randn(2, 4, seed=0), randn(9, 4, seed=1), None, torch.zeros(2, 3, dtype=torch.int32), backend="gpu"),
     ValueError, r"backend must be one of"),
    (lambda: lss.gathered_logits(randn(2, 4, seed=0), randn(9, 4, seed=1), None, torch.zeros(2, 3, dtype=torch.int32), backend="cuda"),
     ValueError, r"backend='cuda' needs CUDA tensors"),
    (lambda: lss.bitmap_sparse_matmul(randn(2, 4, seed=0), randn(33, 4, seed=1), None, torch.zeros(2, 1, dtype=torch.int32)),
     ValueError, r"bitmap must be int32 \[B, ceil\(N / 32\)\] = \[2, 2\]"),
    (lambda: lss.topk_gathered(randn(2, 4, seed=0), torch.zeros(2, 4, dtype=torch.int32), 0), ValueError, r"k must be in \[1, inf\]"),
    (lambda: lss.topk_gathered(randn(2, 4, seed=0), torch.zeros(2, 5, dtype=torch.int32), 1), ValueError, r"ids must have logits' shape"),
    (lambda: lss.LSSLinear(8, 50, bits=31), ValueError, r"bits must be in \[1, 30\]"),
    (lambda: lss.LSSLinear(8, 50, num_tables=2, min_hits=3), ValueError, r"min_hits must be in \[1, 2\]"),
    (lambda: lss.LSSLinear.from_linear(torch.nn.Conv1d(1, 1, 1)), TypeError, r"linear must be a torch.nn.Linear"),
    (lambda: _layer().predict(randn(3, 7, seed=0), 2), ValueError, r"x must be \[\.\.\., in_features = 8\]"),
    (lambda: _layer().predict(randn(3, 8, seed=0, dtype=torch.float64), 2), TypeError, r"x has dtype torch.float64"),
    (lambda: _layer().predict(randn(3, 8, seed=0), 0), ValueError, r"k must be"),
])
def test_bad_arguments_raise_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _tables():
    _, offsets, items = random_tables(64, 3, 4, seed=1)
    return random_query_codes(2, 3, 4, seed=2), offsets, items


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_lookup_argument_errors(backend):
    if backend == "cpu" and not lss.extension_loaded():
        pytest.skip("compiled extension not built")
    codes, offsets, items = _tables()
    with pytest.raises(ValueError, match=r"codes values must be in \[0, 16\)"):
        lss.bucket_lookup(codes + 16, offsets, items, 64, 8, backend=backend)
    with pytest.raises(ValueError, match=r"disagree on L"):
        lss.bucket_lookup(codes[:, :2], offsets, items, 64, 8, backend=backend)
    with pytest.raises(ValueError, match=r"offsets must be \[L, 2\^K \+ 1\]"):
        lss.bucket_lookup(codes, offsets[:, :-1], items, 64, 8, backend=backend)
    with pytest.raises(ValueError, match=r"max_candidates must be in \[1, inf\]"):
        lss.bucket_lookup(codes, offsets, items, 64, 0, backend=backend)
    with pytest.raises(ValueError, match=r"min_hits must be in \[1, inf\]"):
        lss.bucket_lookup_bitmap(codes, offsets, items, 64, 0, backend=backend)
    with pytest.raises(TypeError, match=r"offsets must have dtype in \(int32\)"):
        lss.bucket_lookup(codes, offsets.long(), items, 64, 8, backend=backend)


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("corrupt", ["item_out_of_range", "negative_item", "offsets_past_items", "offsets_decreasing"])
def test_malformed_tables_raise_instead_of_reading_out_of_bounds(corrupt):
    codes, offsets, items = _tables()
    offsets, items = offsets.clone(), items.clone()
    # Make every query bucket hit the corruption: point all codes at bucket 0.
    codes = torch.zeros_like(codes)
    if corrupt == "item_out_of_range":
        offsets[:, 1:] = offsets[:, 1:].clamp(min=1)
        items[:, 0] = 10_000_000
    elif corrupt == "negative_item":
        offsets[:, 1:] = offsets[:, 1:].clamp(min=1)
        items[:, 0] = -5
    elif corrupt == "offsets_past_items":
        offsets[:, 1] = items.shape[1] + 1000
    else:
        offsets[:, 0] = 5
        offsets[:, 1] = 2
    for call in (lambda: lss.bucket_lookup(codes, offsets, items, 64, 8, backend="cpu"),
                 lambda: lss.bucket_lookup_bitmap(codes, offsets, items, 64, backend="cpu")):
        with pytest.raises(ValueError, match="malformed tables"):
            call()
    # The kernel's scratch state is left clean: a good call afterwards is right.
    good_codes, good_offsets, good_items = _tables()
    from lsskernels import reference
    assert torch.equal(lss.bucket_lookup(good_codes, good_offsets, good_items, 64, 8, backend="cpu")[0],
                       reference.bucket_lookup(good_codes, good_offsets, good_items, 64, 8)[0])


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
def test_out_of_range_ids_raise_in_the_kernel():
    x, w = randn(2, 4, seed=0), randn(9, 4, seed=1)
    for bad in (9, -2, 2**31 - 1):
        ids = torch.zeros(2, 3, dtype=torch.int32)
        ids[1, 2] = bad
        with pytest.raises(ValueError, match=r"ids must be -1 \(padding\) or in \[0, 9\)"):
            torch.ops.lsskernels.gathered_logits(x, w, None, ids)
        with pytest.raises(ValueError, match=r"ids must be -1"):
            torch.ops.lsskernels.gathered_logits_backward(randn(2, 3, seed=2), x, w, ids, True, True, False)


def test_int64_ids_out_of_int32_range_are_rejected():
    x, w = randn(2, 4, seed=0), randn(9, 4, seed=1)
    ids = torch.zeros(2, 3, dtype=torch.int64)
    ids[0, 0] = 2**32 + 1  # would wrap to 1 if cast blindly
    with pytest.raises(ValueError, match=r"ids values must be in \[-1, 9\)"):
        lss.gathered_logits(x, w, None, ids, backend="cpu" if lss.extension_loaded() else "reference")


# ------------------------------------------------- the native ops themselves
# The C++ kernels raise the exception types of lsskernels/_checks.py (one
# validation contract: csrc/include/lss/arg_checks.h): TypeError for a dtype,
# ValueError for a shape, a scalar argument or a tensor's values. Called
# straight through torch.ops, as a C++ / torch.ops user (and the CPU fast path
# of the Python wrappers) does.
def _i32(*values):
    return torch.tensor(values, dtype=torch.int32)


def _lists(d=20, seed=23):
    from helpers import random_partition_lists
    return random_partition_lists(100, 5, d, seed=seed, empty_fraction=0.0)


def _native_cases():
    ops = torch.ops.lsskernels
    x, w, b = randn(2, 4, seed=0), randn(9, 4, seed=1), randn(9, seed=2)
    ids = torch.zeros(2, 3, dtype=torch.int32)
    codes, offsets, items = _tables()
    bitmap = torch.zeros(2, 1, dtype=torch.int32)
    offs, lcodes, scales, lbias, lids = _lists()
    xq, probes = randn(2, 20, seed=3), _i32(0, 1, 4, -1).reshape(2, 2)
    cases = [
        ("hash_codes x 1-d", lambda: ops.hash_codes(x[0], randn(2, 3, 4, seed=1)), ValueError,
         r"hash_codes: x must be \[B, d\]"),
        ("hash_codes x int", lambda: ops.hash_codes(x.long(), randn(2, 3, 4, seed=1)), TypeError,
         r"hash_codes: x must have dtype in"),
        ("hash_codes proj d", lambda: ops.hash_codes(x, randn(2, 3, 5, seed=1)), ValueError,
         r"proj must be \[L, K, d\] with d = x.shape\[1\] = 4"),
        ("hash_codes dtypes differ", lambda: ops.hash_codes(x, randn(2, 3, 4, seed=1, dtype=torch.float64)),
         TypeError, r"proj has dtype float64 but x has float32"),
        ("hash_codes K", lambda: ops.hash_codes(x, randn(2, 31, 4, seed=1)), ValueError,
         r"bits per table K\) must be in \[1, 30\]"),
        ("build_tables bits", lambda: ops.build_tables(torch.zeros(5, 2, dtype=torch.int32), 0), ValueError,
         r"bits must be in \[1, 30\]"),
        ("build_tables codes dtype", lambda: ops.build_tables(torch.zeros(5, 2), 3), TypeError,
         r"codes must have dtype in \(int32\)"),
        ("build_tables codes values", lambda: ops.build_tables(torch.full((5, 2), 8, dtype=torch.int32), 3),
         ValueError, r"codes values must be in \[0, 8\)"),
        ("bucket_lookup L", lambda: ops.bucket_lookup(codes[:, :2], offsets, items, 64, 8, 1), ValueError,
         r"disagree on L"),
        ("bucket_lookup offsets", lambda: ops.bucket_lookup(codes, offsets[:, :-1], items, 64, 8, 1), ValueError,
         r"offsets must be \[L, 2\^K \+ 1\]"),
        ("bucket_lookup offsets dtype", lambda: ops.bucket_lookup(codes, offsets.long(), items, 64, 8, 1),
         TypeError, r"offsets must have dtype in \(int32\)"),
        ("bucket_lookup max_candidates", lambda: ops.bucket_lookup(codes, offsets, items, 64, 0, 1), ValueError,
         r"max_candidates must be in \[1, inf\]"),
        ("bucket_lookup codes values", lambda: ops.bucket_lookup(codes + 16, offsets, items, 64, 8, 1), ValueError,
         r"malformed tables"),
        ("bucket_lookup_bitmap min_hits", lambda: ops.bucket_lookup_bitmap(codes, offsets, items, 64, 0), ValueError,
         r"min_hits must be in \[1, inf\]"),
        ("bucket_lookup_bitmap num_labels", lambda: ops.bucket_lookup_bitmap(codes, offsets, items, -1, 1),
         ValueError, r"num_labels must be in \[0, 2147483647\]"),
        ("gathered_logits weight d", lambda: ops.gathered_logits(x, randn(9, 5, seed=1), None, ids), ValueError,
         r"weight must be \[N, d\] with d = x.shape\[1\] = 4"),
        ("gathered_logits weight dtype", lambda: ops.gathered_logits(x, w.double(), None, ids), TypeError,
         r"weight has dtype float64 but x has float32"),
        ("gathered_logits bias", lambda: ops.gathered_logits(x, w, b[:8], ids), ValueError,
         r"bias must be \[N\] = \[9\]"),
        ("gathered_logits ids B", lambda: ops.gathered_logits(x, w, None, ids[:1]), ValueError,
         r"ids must be \[B, M\] with B = x.shape\[0\] = 2"),
        ("gathered_logits ids dtype", lambda: ops.gathered_logits(x, w, None, ids.long()), TypeError,
         r"ids must have dtype in \(int32\)"),
        ("gathered_logits ids values", lambda: ops.gathered_logits(x, w, None, ids + 9), ValueError,
         r"ids must be -1 \(padding\) or in \[0, 9\)"),
        ("gathered_logits_backward grad", lambda: ops.gathered_logits_backward(randn(2, 4, seed=2), x, w, ids,
                                                                                True, True, False),
         ValueError, r"grad must be"),
        ("bitmap_sparse_matmul bitmap", lambda: ops.bitmap_sparse_matmul(x, randn(33, 4, seed=1), None, bitmap),
         ValueError, r"bitmap must be int32 \[B, ceil\(N / 32\)\] = \[2, 2\]"),
        ("bitmap_sparse_matmul bitmap dtype", lambda: ops.bitmap_sparse_matmul(x, w, None, bitmap.long()),
         TypeError, r"bitmap must have dtype in \(int32\)"),
        ("bitmap_sparse_matmul stray bits", lambda: ops.bitmap_sparse_matmul(x, w, None, bitmap + (1 << 12)),
         ValueError, r"bits set at label ids >= num_labels = 9"),
        ("bitmap_sparse_matmul_backward row_ptr", lambda: ops.bitmap_sparse_matmul_backward(
            randn(0, seed=2), x, w, bitmap, torch.tensor([0, 0, 1]), True, True, False),
         ValueError, r"row_ptr does not match the bitmap"),
        ("bitmap_sparse_matmul_backward row_ptr dtype", lambda: ops.bitmap_sparse_matmul_backward(
            randn(0, seed=2), x, w, bitmap, _i32(0, 0, 0), True, True, False),
         TypeError, r"row_ptr must have dtype in \(int64\)"),
        ("topk_gathered k", lambda: ops.topk_gathered(randn(2, 3, seed=0), ids, 0), ValueError,
         r"k must be in \[1, inf\]"),
        ("topk_gathered ids shape", lambda: ops.topk_gathered(randn(2, 4, seed=0), ids, 1), ValueError,
         r"ids must have logits' shape"),
        ("topk_gathered logits dtype", lambda: ops.topk_gathered(ids.long(), ids, 1), TypeError,
         r"logits must have dtype in"),
        ("topk_gathered ids values", lambda: ops.topk_gathered(randn(2, 3, seed=0), ids - 2, 1), ValueError,
         r"ids must be -1 \(padding\) or >= 0"),
        ("topk_packed row_ptr shape", lambda: ops.topk_packed(randn(0, seed=0), torch.zeros(2, dtype=torch.int64),
                                                            bitmap, 1), ValueError,
         r"row_ptr must be \[B \+ 1\] = \[3\]"),
        ("topk_packed row_ptr values", lambda: ops.topk_packed(randn(1, seed=0), torch.tensor([0, 1, 1]),
                                                             bitmap, 1), ValueError,
         r"row_ptr does not match the bitmap's row popcounts"),
        ("topk_packed values dtype", lambda: ops.topk_packed(torch.zeros(0, dtype=torch.int32),
                                                           torch.zeros(3, dtype=torch.int64), bitmap, 1), TypeError,
         r"values must have dtype in"),
        ("quantized_candidates probes dtype", lambda: ops.quantized_candidates(
            xq, probes.long(), offs, lcodes, scales, lbias, lids, 100, 10), TypeError,
         r"probes must have dtype in \(int32\)"),
        ("quantized_candidates codes width", lambda: ops.quantized_candidates(
            xq, probes, offs, lcodes[:, :0], scales, lbias, lids, 100, 10), ValueError,
         r"codes must be int8 \[T, Dp\] with Dp = d rounded up"),
        ("quantized_candidates scales", lambda: ops.quantized_candidates(
            xq, probes, offs, lcodes, scales[:-1], lbias, lids, 100, 10), ValueError,
         r"code_scales must be \[T\]"),
        ("quantized_candidates probe values", lambda: ops.quantized_candidates(
            xq, probes + 5, offs, lcodes, scales, lbias, lids, 100, 10), ValueError,
         r"probes must be -1 or in \[0, P = 5\)"),
        ("quantized_candidates list_ids values", lambda: ops.quantized_candidates(
            xq, probes, offs, lcodes, scales, lbias, lids + 100, 100, 10), ValueError,
         r"list_ids of the probed partitions must be in"),
    ]
    return {name: (call, exc, match) for name, call, exc, match in cases}


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("case", sorted(_native_cases()) if lss.extension_loaded() else [])
def test_native_cpu_ops_raise_value_and_type_errors(case):
    call, exc, match = _native_cases()[case]
    with pytest.raises(exc, match=match) as info:
        call()
    assert type(info.value) is exc  # not a RuntimeError (what plain TORCH_CHECK raises)


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
def test_native_partition_predict_topk_names_its_own_arguments():
    """The composite checks its arguments as the caller passed them, not as
    the arguments of the ops it hands them to."""
    from helpers import gen, random_partition_lists
    from lsskernels.partition.probe import probe_codes
    g = gen(6)
    x = torch.randn(2, 16, generator=g)
    probe = probe_codes(torch.randn(5, 16, generator=g)) + (torch.randn(5, generator=g),)
    lists = random_partition_lists(200, 5, 16, seed=7)
    weight, bias = torch.randn(200, 16, generator=g), torch.randn(200, generator=g)
    op = torch.ops.lsskernels.partition_predict_topk
    with pytest.raises(ValueError, match=r"partition_predict_topk: nprobe must be in \[1, 5\]"):
        op(x, *probe, *lists, weight, bias, 200, 6, 20, 3)
    with pytest.raises(ValueError, match=r"partition_predict_topk: num_labels must be <= weight.shape\[0\]"):
        op(x, *probe, *lists, weight[:100], bias[:100], 200, 2, 20, 3)
    with pytest.raises(TypeError, match=r"partition_predict_topk: centroid_scales must have dtype in \(float32\)"):
        op(x, probe[0], probe[1].double(), probe[2], *lists, weight, bias, 200, 2, 20, 3)
    with pytest.raises(ValueError, match=r"partition_predict_topk: k must be in \[1, inf\]"):
        op(x, *probe, *lists, weight, bias, 200, 2, 20, 0)
