"""Shared test helpers: random inputs, poisoned outputs, tolerance table."""
from __future__ import annotations

import torch

import lsskernels
from lsskernels import reference

# Per-dtype tolerances for float outputs (logits, grads) against the
# reference. Both sides accumulate in fp32 (fp64 for fp64); what differs is
# the summation order and, for 16-bit types, the rounding of the result.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}
# Grads sum many products, and for 16-bit types are rounded once more.
GRAD_TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=3e-2, atol=6e-2),
    torch.float16: dict(rtol=5e-3, atol=1e-2),
}
FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# The Triton interpreter cases' dtypes (fp32 first: the kernels' main type).
TRITON_FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed)).to(dtype)


def random_ids(batch: int, width: int, num_labels: int, seed: int, pad_fraction: float = 0.2,
               duplicates: bool = True) -> torch.Tensor:
    """int32 [B, M] ids in [-1, N): some padding, some duplicates."""
    g = gen(seed)
    ids = torch.randint(0, num_labels, (batch, width), generator=g, dtype=torch.int64)
    if duplicates and width > 1:
        ids[:, -1] = ids[:, 0]
    pad = torch.rand(batch, width, generator=g) < pad_fraction
    return ids.masked_fill(pad, -1).to(torch.int32)


def random_tables(num_labels: int, num_tables: int, bits: int, seed: int):
    """Tables from random codes, skewed so some buckets are empty and some big."""
    g = gen(seed)
    buckets = 1 << bits
    # Squaring a uniform skews codes towards low buckets: empty high buckets.
    u = torch.rand(num_labels, num_tables, generator=g)
    codes = (u * u * buckets).to(torch.int64).clamp_(max=buckets - 1).to(torch.int32)
    offsets, items = reference.build_tables(codes, bits)
    return codes, offsets, items


def random_query_codes(batch: int, num_tables: int, bits: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 1 << bits, (batch, num_tables), generator=gen(seed), dtype=torch.int32)


def poison_like(t: torch.Tensor) -> torch.Tensor:
    """Garbage of t's shape and dtype: a kernel that forgets to write an
    element cannot pass by luck."""
    if t.is_floating_point():
        return torch.full_like(t, float("nan"))
    return torch.full_like(t, -12345)


def poison_heap(num_bytes: int) -> None:
    """Fill and free a block of num_bytes so that the next allocation of that
    size (a kernel's output) likely starts as 0xFF garbage rather than zeros."""
    if num_bytes > 0:
        torch.full((num_bytes,), 0xFF, dtype=torch.uint8)


# ------------------------------------------------------------ partition lists
def random_partition_lists(num_labels: int, partitions: int, dim: int, seed: int, mean_size: int = 40,
                           empty_fraction: float = 0.2, tie_fraction: float = 0.1):
    """Random partition lists in the layout of reference.quantized_candidates:
    (list_offsets int32 [P + 1], codes int8 [T, Dp], code_scales, code_bias
    float32 [T], list_ids int32 [T]). Ragged on purpose: some partitions are
    empty, labels repeat across (and within) partitions, a fraction of rows
    are exact copies of another row under another label (tied scores, so the
    id tiebreak decides), codes take the extreme values -127 / 127 (and -128),
    and the padding columns past d hold garbage the kernels must ignore."""
    g = gen(seed)
    width = -(-dim // reference.CODE_ALIGN) * reference.CODE_ALIGN
    sizes = torch.randint(0, 2 * mean_size + 1, (partitions,), generator=g)
    sizes[torch.rand(partitions, generator=g) < empty_fraction] = 0
    offsets = torch.zeros(partitions + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(sizes, 0)
    rows = int(offsets[-1])
    codes = torch.randint(-127, 128, (rows, width), generator=g, dtype=torch.int64)
    extreme = torch.rand(rows, width, generator=g) < 0.1
    codes[extreme] = 127 * torch.randint(0, 2, (int(extreme.sum()),), generator=g) * 2 - 127
    if width > dim:
        codes[:, dim:] = torch.randint(-128, 128, (rows, width - dim), generator=g)
    codes = codes.to(torch.int8)
    scales = (torch.rand(rows, generator=g) * 0.05 + 0.001).to(torch.float32)
    bias = (torch.randn(rows, generator=g) * 0.5).to(torch.float32)
    ids = torch.randint(0, num_labels, (rows,), generator=g, dtype=torch.int32)
    if rows > 1:
        ties = torch.nonzero(torch.rand(rows, generator=g) < tie_fraction).flatten()
        src = torch.randint(0, rows, (ties.numel(),), generator=g)
        codes[ties], scales[ties], bias[ties] = codes[src], scales[src], bias[src]
    return offsets.to(torch.int32), codes, scales, bias, ids


def random_probes(batch: int, nprobe: int, partitions: int, seed: int, skip_fraction: float = 0.15) -> torch.Tensor:
    """int32 [B, nprobe] partition ids, distinct per row where possible, some -1."""
    g = gen(seed)
    probes = torch.stack([torch.randperm(partitions, generator=g)[:nprobe] for _ in range(batch)])
    if probes.shape[1] < nprobe:  # nprobe > P: repeat partitions
        probes = torch.cat([probes, probes[:, : nprobe - probes.shape[1]]], 1)
    probes[torch.rand(batch, nprobe, generator=g) < skip_fraction] = -1
    return probes.to(torch.int32)


# ------------------------------------------------------------ tables, bitmaps
def csr_tables(num_labels: int, num_tables: int, bits: int, seed: int, extra: int = 0, tail: int = 3):
    """Random CSR tables: every label in the bucket of its random code,
    plus `extra` label-superior insertions per table (a label in several
    buckets of one table), buckets sorted, items padded with -1 tails."""
    g = gen(seed)
    buckets = 1 << bits
    u = torch.rand(num_labels, num_tables, generator=g)
    codes = (u * u * buckets).to(torch.int64).clamp(max=buckets - 1)  # skewed: empty buckets
    offsets, rows = [], []
    for table in range(num_tables):
        lists = [set() for _ in range(buckets)]
        for label in range(num_labels):
            lists[int(codes[label, table])].add(label)
        if num_labels:
            for _ in range(extra):
                label = int(torch.randint(0, num_labels, (1,), generator=g))
                lists[int(torch.randint(0, buckets, (1,), generator=g))].add(label)
        sizes = [len(s) for s in lists]
        offsets.append([0] + torch.tensor(sizes).cumsum(0).tolist())
        rows.append([i for s in lists for i in sorted(s)])
    width = max(len(r) for r in rows) + tail
    items = torch.full((num_tables, width), -1, dtype=torch.int32)
    for table, r in enumerate(rows):
        items[table, : len(r)] = torch.tensor(r, dtype=torch.int32)
    return torch.tensor(offsets, dtype=torch.int32), items


def random_bitmap(batch: int, num_labels: int, density: float, seed: int) -> torch.Tensor:
    """A packed candidate bitmap [B, ceil(N / 32)] with about `density` of the bits set."""
    dense = torch.rand(batch, num_labels, generator=gen(seed)) < density
    return reference.pack_bitmap(dense)


def packed_topk_problem(batch: int, num_labels: int, density: float, seed: int, dtype=torch.float32):
    """(values, row_ptr, bitmap) of a topk_packed call: about `density` of
    the bits set, the last row empty, a NaN and a tie among the first values."""
    dense = torch.rand(batch, num_labels, generator=gen(seed)) < density
    dense[-1] = False
    nnz = int(dense.sum())
    values = randn(nnz, seed=seed + 1, dtype=dtype)
    if nnz > 3:
        values[0], values[1], values[2] = float("nan"), 0.25, 0.25
    row_ptr = torch.zeros(batch + 1, dtype=torch.int64)
    row_ptr[1:] = dense.sum(1).cumsum(0)
    return values, row_ptr, reference.pack_bitmap(dense)


def leaves(*tensors):
    """Fresh leaves that require grad (None stays None)."""
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def linear_of(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Linear:
    """An nn.Linear holding copies of weight [N, d] and bias [N]."""
    lin = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return lin


def layer_for(task, **kw):
    """LSSLinear.from_linear of a synthetic task's layer (max_candidates 40 unless given)."""
    return lsskernels.LSSLinear.from_linear(linear_of(task.weight, task.bias), **{"max_candidates": 40, **kw})


def fp32_probes(x: torch.Tensor, centroids: torch.Tensor, centroid_bias, nprobe: int) -> torch.Tensor:
    """The nprobe best partitions of each query by <x, c_p> + cb_p in fp32,
    int32 [B, nprobe], ties (and NaN, as -inf) by smaller p: the ranking the
    int8 probe approximates (the removed partition_probe op's contract)."""
    s = x.float() @ centroids.float().T
    if centroid_bias is not None:
        s = s + centroid_bias.float()
    s = torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    return torch.sort(s, dim=1, descending=True, stable=True).indices[:, :nprobe].to(torch.int32)


def tables_from_buckets(bucket_lists: list, bits: int, device=None) -> tuple:
    """Tables from explicit bucket contents: bucket_lists[l][c] is an int tensor
    of label ids for bucket c of table l (sorted and deduplicated here): tables
    where a label may sit in several buckets of a table, as label-superior
    insertion makes them (moved from lsskernels/tables.py, where only tests
    used it)."""
    buckets = 1 << bits
    offsets_rows: list = []
    items_rows: list = []
    for table in bucket_lists:
        if len(table) != buckets:
            raise ValueError(f"each table needs 2^bits = {buckets} buckets, got {len(table)}")
        cleaned = [torch.unique(b.to(torch.int64)) for b in table]
        sizes = torch.tensor([c.numel() for c in cleaned], dtype=torch.int64)
        offsets_rows.append(torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)]))
        items_rows.append(torch.cat(cleaned) if cleaned else torch.empty(0, dtype=torch.int64))
    width = max((r.numel() for r in items_rows), default=0)
    items = torch.full((len(items_rows), width), -1, dtype=torch.int32)
    for l, r in enumerate(items_rows):
        items[l, : r.numel()] = r.to(torch.int32)
    offsets = torch.stack(offsets_rows).to(torch.int32) if offsets_rows else torch.zeros(0, buckets + 1, dtype=torch.int32)
    return offsets.to(device), items.to(device)


def assert_same_entries(sa: dict, sb: dict) -> None:
    """Two state dicts hold the same keys, tensors bit for bit and equal other values."""
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], torch.Tensor):
            assert torch.equal(sa[k], sb[k]), k
        else:
            assert sa[k] == sb[k], k
