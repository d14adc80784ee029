"""topk_gathered on every backend against lsskernels.reference, bit for bit:
labels and scores (NaN first, ties by the smaller label). The CPU cases run
on every CPU path of next_topk_candidate (LSS_CPU_ISA=avx2, generic, in a
child process); the Triton cases under the interpreter (tests/test_triton.py's
child)."""
import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from backends import ISA_CHILD, cpu_isa_child, on, on_backends_but_triton, on_triton, require_backend
from helpers import FLOAT_DTYPES, TRITON_FLOAT_DTYPES, gen, randn, random_ids
from samples import special_scores


@on_backends_but_triton
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
# k = 64 is the largest k of the streaming path; larger k collect and partial-sort.
@pytest.mark.parametrize("batch,width,k", [(1, 1, 1), (1, 5, 10), (4, 37, 3), (7, 200, 20), (3, 300, 64),
                                           (3, 300, 100)])
def test_topk_gathered(backend, dtype, batch, width, k):
    device = require_backend(backend, "topk_gathered")
    seed = batch * width + k
    ids = random_ids(batch, width, 10_000, seed, pad_fraction=0.3)
    # Rounded scores make ties; ties must break by the smaller label.
    logits = (randn(batch, width, seed=seed + 1) * 4).round().to(dtype)
    logits[0, 0] = float("nan")
    scores, labels = (t.cpu() for t in lss.topk_gathered(*on(device, logits, ids), k, backend=backend))
    ref_scores, ref_labels = reference.topk_gathered(logits, ids, k)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(scores, ref_scores, equal_nan=True, rtol=0, atol=0)


@on_backends_but_triton
@pytest.mark.parametrize("k", [1, 10, 64])
@pytest.mark.parametrize("width", [15, 16, 17, 2000])
def test_topk_gathered_fp32_skip_ahead(backend, width, k):
    """The fp32 streaming path skips 16 entries at a time to the ones that can
    enter the top-k: NaN, +-inf and ties placed late (after the buffer is
    full) and at the vector tail must still be found exactly as the reference
    finds them."""
    device = require_backend(backend, "topk_gathered")
    seed = width + 7 * k
    ids = random_ids(2, width, 1_000_000, seed, pad_fraction=0.1)
    logits = (randn(2, width, seed=seed + 1) * 3).round()
    g = torch.Generator().manual_seed(seed + 2)
    for row in range(2):
        late = torch.randint(width // 2, width, (4,), generator=g)
        logits[row, late[0]] = float("nan")
        logits[row, late[1]] = float("inf")
        logits[row, late[2]] = float("-inf")
        logits[row, late[3]] = logits[row].nan_to_num(neginf=0, posinf=0).max()  # a tie with the best
    logits[1, -1] = float("nan")  # the scalar tail
    scores, labels = (t.cpu() for t in lss.topk_gathered(*on(device, logits, ids), k, backend=backend))
    ref_scores, ref_labels = reference.topk_gathered(logits, ids, k)
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(scores, ref_scores, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_gathered_kernel_rejects_ids_below_minus_one(dtype):
    require_backend("cpu", "topk_gathered")
    ids = torch.zeros(1, 40, dtype=torch.int32)
    ids[0, 33] = -2
    with pytest.raises(ValueError, match=r"ids must be -1 \(padding\) or >= 0"):
        torch.ops.lsskernels.topk_gathered(randn(1, 40, seed=1, dtype=dtype), ids, 5)


@pytest.mark.skipif(ISA_CHILD, reason="already in a child")
@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_every_cpu_dot_path(isa):
    """The cpu tests of this file with LSS_CPU_ISA=isa (next_topk_candidate
    has an AVX-512 and a generic kernel), in a child process."""
    cpu_isa_child(__file__, isa, "on_cpu")


# ------------------------------------------------- the Triton interpreter cases


@on_triton
@pytest.mark.parametrize("dtype", TRITON_FLOAT_DTYPES)
@pytest.mark.parametrize("batch,m,k", [(1, 7, 3), (4, 20, 25), (3, 6, 1), (5, 33, 8)])
def test_topk_gathered_special_scores(backend, dtype, batch, m, k):
    require_backend(backend, "topk_gathered")
    from lsskernels import triton as lt

    seed = batch * 13 + m + k
    logits = special_scores(batch, m, dtype, seed)
    ids = random_ids(batch, m, 50, seed=seed + 1)
    ids[1 % batch] = -1 if batch > 1 else ids[0]
    s, l = lt.topk_gathered(logits, ids, k)
    rs, rl = reference.topk_gathered(logits, ids, k)
    assert l.dtype == torch.int64 and s.dtype == dtype
    assert torch.equal(l, rl)
    torch.testing.assert_close(s, rs, rtol=0, atol=0, equal_nan=True)


@on_triton
def test_topk_fallback_matches(backend, monkeypatch):
    """Past TOPK_MAX_BLOCK both Triton top-k ops (gathered and packed) take the torch path."""
    require_backend(backend, "topk_gathered", "topk_packed")
    from lsskernels import triton as lt

    monkeypatch.setattr(lt.module("topk"), "TOPK_MAX_BLOCK", 4)
    logits = special_scores(3, 9, torch.float32, 3)
    ids = random_ids(3, 9, 30, seed=4)
    s, l = lt.topk_gathered(logits, ids, 5)
    rs, rl = reference.topk_gathered(logits, ids, 5)
    assert torch.equal(l, rl)
    torch.testing.assert_close(s, rs, rtol=0, atol=0, equal_nan=True)
    dense = torch.rand(3, 50, generator=gen(5)) < 0.3
    values = randn(int(dense.sum()), seed=6)
    row_ptr = torch.zeros(4, dtype=torch.int64)
    row_ptr[1:] = dense.sum(1).cumsum(0)
    bitmap = reference.pack_bitmap(dense)
    s, l = lt.topk_packed(values, row_ptr, bitmap, 4)
    rs, rl = reference.topk_packed(values, row_ptr, bitmap, 4)
    assert torch.equal(l, rl) and torch.equal(s, rs)
