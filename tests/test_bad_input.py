"""Bad input gets a clear error naming the argument and what was expected,
raised before any kernel runs; malformed tables never crash the process."""
import pytest
import torch

import lsskernels as lss
from helpers import randn, random_query_codes, random_tables


def _layer():
    return lss.LSSLinear(8, 50, num_tables=2, bits=3, max_candidates=10)


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
