"""bucket_lookup and bucket_lookup_bitmap on every backend against
lsskernels.reference, bit for bit: ids in the deterministic order (more hits
first, then ascending id), counts, bitmaps. The Triton cases (and the Triton
wrapper's fallback and table checks) run under the interpreter
(tests/test_triton.py's child)."""
import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from backends import on, on_backends_but_triton, on_triton, require_backend
from helpers import csr_tables, poison_heap, random_query_codes, random_tables, tables_from_buckets

LOOKUP_CASES = [
    # num_labels, tables, bits, batch, max_candidates, min_hits
    (1, 1, 1, 1, 1, 1),
    (37, 3, 2, 1, 5, 1),          # M smaller than the candidates
    (100, 4, 6, 7, 500, 1),       # M larger than the candidates found
    (1000, 8, 4, 16, 64, 2),      # min_hits > 1
    (4099, 6, 10, 9, 300, 3),     # N not a multiple of 32, many empty buckets
    (513, 16, 3, 4, 1024, 16),    # min_hits == L
]


@on_backends_but_triton
@pytest.mark.parametrize("num_labels,tables,bits,batch,max_candidates,min_hits", LOOKUP_CASES)
def test_bucket_lookup_matches_reference(backend, num_labels, tables, bits, batch, max_candidates, min_hits):
    device = require_backend(backend, "bucket_lookup")
    seed = num_labels + 7 * batch
    _, offsets, items = random_tables(num_labels, tables, bits, seed)
    codes = random_query_codes(batch, tables, bits, seed + 1)
    poison_heap(batch * max_candidates * 4)
    ids, counts = (t.cpu() for t in lss.bucket_lookup(*on(device, codes, offsets, items), num_labels, max_candidates,
                                                      min_hits, backend=backend))
    ref_ids, ref_counts = reference.bucket_lookup(codes, offsets, items, num_labels, max_candidates, min_hits)
    assert torch.equal(ids, ref_ids)
    assert torch.equal(counts, ref_counts)


@on_backends_but_triton
@pytest.mark.parametrize("num_labels,tables,bits,batch,max_candidates,min_hits", LOOKUP_CASES)
def test_bucket_lookup_bitmap_matches_reference(backend, num_labels, tables, bits, batch, max_candidates, min_hits):
    device = require_backend(backend, "bucket_lookup_bitmap")
    seed = 3 * num_labels + batch
    _, offsets, items = random_tables(num_labels, tables, bits, seed)
    codes = random_query_codes(batch, tables, bits, seed + 1)
    bitmap = lss.bucket_lookup_bitmap(*on(device, codes, offsets, items), num_labels, min_hits, backend=backend).cpu()
    want = reference.bucket_lookup_bitmap(codes, offsets, items, num_labels, min_hits)
    assert bitmap.shape == (batch, (num_labels + 31) // 32)
    assert torch.equal(bitmap, want)


@on_backends_but_triton
def test_lookup_with_label_superior_tables(backend):
    """Tables where a label sits in several buckets of a table and some tables
    are shorter than items.shape[1] (the -1 padded tail is never read)."""
    device = require_backend(backend, "bucket_lookup")
    g = torch.Generator().manual_seed(5)
    bits, num_labels = 3, 50
    lists = [[torch.randint(0, num_labels, (int(torch.randint(0, 12, (1,), generator=g)),), generator=g)
              for _ in range(1 << bits)] for _ in range(4)]
    offsets, items = tables_from_buckets(lists, bits)
    codes = random_query_codes(6, 4, bits, 9)
    ids, counts = (t.cpu() for t in lss.bucket_lookup(*on(device, codes, offsets, items), num_labels, 40, 1,
                                                      backend=backend))
    ref_ids, ref_counts = reference.bucket_lookup(codes, offsets, items, num_labels, 40, 1)
    assert torch.equal(ids, ref_ids) and torch.equal(counts, ref_counts)


# ------------------------------------------------- the Triton interpreter cases
TRITON_LOOKUP_CASES = [
    # N, L, K, B, M, min_hits, extra
    (37, 3, 3, 1, 5, 1, 0),      # B = 1, truncation
    (45, 4, 3, 4, 100, 2, 6),    # M larger than the candidates, min_hits 2, multi-bucket labels
    (70, 5, 3, 5, 8, 1, 10),     # bigger buckets
    (20, 2, 4, 3, 300, 1, 0),    # M > RB (padding loop), empty buckets
    (0, 2, 1, 2, 3, 1, 0),       # no labels at all
    (33, 6, 4, 3, 7, 7, 4),      # min_hits above L: no candidates
]


@on_triton
@pytest.mark.parametrize("case", TRITON_LOOKUP_CASES)
def test_smoke_bucket_lookup(backend, case):
    require_backend(backend, "bucket_lookup")
    from lsskernels import triton as lt

    n, tables, bits, batch, m, min_hits, extra = case
    offsets, items = csr_tables(n, tables, bits, seed=n + tables, extra=extra)
    codes = random_query_codes(batch, tables, bits, seed=batch + n)
    ids, counts = lt.bucket_lookup(codes, offsets, items, n, m, min_hits)
    want_ids, want_counts = reference.bucket_lookup(codes, offsets, items, n, m, min_hits)
    assert ids.dtype == torch.int32 and counts.dtype == torch.int32
    assert torch.equal(ids, want_ids)
    assert torch.equal(counts, want_counts)


@on_triton
@pytest.mark.parametrize("case", TRITON_LOOKUP_CASES)
def test_bucket_lookup_bitmap(backend, case):
    require_backend(backend, "bucket_lookup_bitmap")
    from lsskernels import triton as lt

    n, tables, bits, batch, _, min_hits, extra = case
    offsets, items = csr_tables(n, tables, bits, seed=n + tables + 1, extra=extra)
    codes = random_query_codes(batch, tables, bits, seed=batch + n + 1)
    for hits in sorted({1, min_hits}):
        got = lt.bucket_lookup_bitmap(codes, offsets, items, n, hits)
        assert torch.equal(got, reference.bucket_lookup_bitmap(codes, offsets, items, n, hits)), hits


@on_triton
def test_bucket_lookup_oversized_queries_use_fallback(backend, monkeypatch):
    """Queries retrieving more than MAX_RETRIEVED ids go to the torch
    path; the others stay on the kernel; the result is the same."""
    require_backend(backend, "bucket_lookup")
    from lsskernels import triton as lt

    lookup = lt.module("bucket_lookup")  # the module (the package's attributes are the functions)
    monkeypatch.setattr(lookup, "MAX_RETRIEVED", 16)
    offsets, items = csr_tables(60, 4, 3, seed=5, extra=5)
    codes = random_query_codes(5, 4, 3, seed=6)
    codes[0] = torch.argmin(offsets[:, 1:] - offsets[:, :-1], dim=1).to(torch.int32)  # a small query
    codes[1] = 0  # the biggest buckets (codes are skewed low)
    totals = lookup.retrieved_totals(codes, offsets, items.shape[1])
    assert bool((totals > 16).any()) and bool((totals <= 16).any()), totals
    for min_hits in (1, 2):
        ids, counts = lt.bucket_lookup(codes, offsets, items, 60, 9, min_hits)
        want_ids, want_counts = reference.bucket_lookup(codes, offsets, items, 60, 9, min_hits)
        assert torch.equal(ids, want_ids) and torch.equal(counts, want_counts)
        bm = lt.bucket_lookup_bitmap(codes, offsets, items, 60, min_hits)
        assert torch.equal(bm, reference.bucket_lookup_bitmap(codes, offsets, items, 60, min_hits))


@on_triton
@pytest.mark.parametrize("op", ["list", "bitmap1", "bitmap2"])
@pytest.mark.parametrize("defect", ["code", "offsets", "item"])
def test_malformed_tables_raise(backend, op, defect):
    require_backend(backend, "bucket_lookup")
    from lsskernels import triton as lt

    offsets, items = csr_tables(40, 3, 2, seed=9)
    codes = random_query_codes(2, 3, 2, seed=10)
    if defect == "code":
        codes[1, 1] = 4
    elif defect == "offsets":
        offsets[:, 1:] = offsets[:, :1]  # every bucket but the last empty ...
        offsets[:, -1] = items.shape[1] + 5  # ... and the last one past the items
        codes[:, :] = 3
    else:
        items[:, : offsets[0, -1]] = 40  # label == num_labels
    with pytest.raises(ValueError, match="malformed tables"):
        if op == "list":
            lt.bucket_lookup(codes, offsets, items, 40, 8, 1)
        else:
            lt.bucket_lookup_bitmap(codes, offsets, items, 40, 1 if op == "bitmap1" else 2)
