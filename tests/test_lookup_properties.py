"""Property-based tests (hypothesis) of bucket_lookup: for arbitrary small
tables and queries the C++ kernel equals the reference, and the output obeys
the contract on its own (ordering, padding, counts, bitmap agreement)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lsskernels as lss
from lsskernels import reference
from helpers import tables_from_buckets

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")


@st.composite
def lookup_problem(draw):
    num_labels = draw(st.integers(1, 80))
    num_tables = draw(st.integers(1, 5))
    bits = draw(st.integers(1, 4))
    label = st.integers(0, num_labels - 1)
    tables = [[torch.tensor(draw(st.lists(label, max_size=10)), dtype=torch.int64) for _ in range(1 << bits)]
              for _ in range(num_tables)]
    batch = draw(st.integers(1, 4))
    codes = torch.tensor(draw(st.lists(st.lists(st.integers(0, (1 << bits) - 1), min_size=num_tables,
                                                max_size=num_tables), min_size=batch, max_size=batch)),
                         dtype=torch.int32)
    max_candidates = draw(st.integers(1, 90))
    min_hits = draw(st.integers(1, num_tables))
    return num_labels, bits, tables, codes, max_candidates, min_hits


@settings(max_examples=150, deadline=None)
@given(lookup_problem())
def test_lookup_equals_reference_and_obeys_contract(problem):
    num_labels, bits, tables, codes, max_candidates, min_hits = problem
    offsets, items = tables_from_buckets(tables, bits)
    ids, counts = lss.bucket_lookup(codes, offsets, items, num_labels, max_candidates, min_hits, backend="cpu")
    ref_ids, ref_counts = reference.bucket_lookup(codes, offsets, items, num_labels, max_candidates, min_hits)
    assert torch.equal(ids, ref_ids) and torch.equal(counts, ref_counts)

    bitmap = lss.bucket_lookup_bitmap(codes, offsets, items, num_labels, min_hits, backend="cpu")
    dense = reference.unpack_bitmap(bitmap, num_labels)
    for b in range(codes.shape[0]):
        n = int(counts[b])
        row = ids[b]
        assert bool((row[n:] == -1).all()) and bool((row[:n] >= 0).all())
        assert len(set(row[:n].tolist())) == n  # no duplicates
        # Hits per candidate, recomputed from the buckets.
        hits = torch.zeros(num_labels, dtype=torch.int64)
        for l in range(len(tables)):
            c = int(codes[b, l])
            bucket = items[l, int(offsets[l, c]):int(offsets[l, c + 1])].long()
            hits[bucket] += 1
        eligible = int((hits >= min_hits).sum())
        assert n == min(eligible, max_candidates)
        keys = [(-int(hits[i]), int(i)) for i in row[:n]]
        assert keys == sorted(keys)  # more hits first, then ascending id
        assert torch.equal(dense[b], hits >= min_hits)  # bitmap: every eligible label, no truncation
        if n:  # nothing left out beats the last kept candidate
            last = keys[-1]
            kept = set(row[:n].tolist())
            for i in torch.nonzero(hits >= min_hits).flatten().tolist():
                if i not in kept:
                    assert (-int(hits[i]), i) > last
