"""build_tables on every backend that has it against lsskernels.reference,
bit for bit (Triton has no build_tables: it runs once per index build)."""
import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from backends import on, on_backends_but_triton, require_backend


@on_backends_but_triton
@pytest.mark.parametrize("num_labels,tables,bits", [(1, 1, 1), (33, 2, 3), (1000, 4, 8), (4099, 3, 12)])
def test_build_tables_matches_reference(backend, num_labels, tables, bits):
    device = require_backend(backend, "build_tables")
    g = torch.Generator().manual_seed(num_labels)
    codes = torch.randint(0, 1 << bits, (num_labels, tables), generator=g, dtype=torch.int32)
    offsets, items = (t.cpu() for t in lss.build_tables(*on(device, codes), bits, backend=backend))
    ref_offsets, ref_items = reference.build_tables(codes, bits)
    assert torch.equal(offsets, ref_offsets) and torch.equal(items, ref_items)
