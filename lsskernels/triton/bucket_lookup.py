"""bucket_lookup and bucket_lookup_bitmap: the candidates of each query from
its L hash buckets.

Tables are CSR per table: bucket c of table l is
items[l, offsets[l, c] : offsets[l, c + 1]].

Sorted-block kernel (bucket_lookup, and bucket_lookup_bitmap with min_hits > 1)
-----------------------------------------------------------------------------
One program per query (grid (B,)). It walks its L buckets and lays the
retrieved ids out in one power-of-two register block of RB slots (table l's
bucket occupies [cursor_l, cursor_l + size_l); slots past the total hold a
sentinel, INT32_MAX), loads them with one gather, sorts the block
(tl.sort, bitonic), and counts each label's hits with two segmented scans
(tl.associative_scan forward and reverse over (id, 1) pairs: the reverse scan
at a run's first slot is the run length). Each distinct label with
hits >= min_hits gets the key (0xFFFF - hits) << 32 | id, whose ascending
order is the contract's order (more hits first, then ascending id); tl.topk
keeps the smallest MP = min(next_pow2(M), RB) keys, and the first M become
ids (-1 after the last candidate). The bitmap variant atomic_or's every kept
label into its row's word instead.

Limits: a query may retrieve at most RB <= MAX_RETRIEVED (2048) ids. The
wrapper computes every query's retrieval total from the offsets first
(torch gathers, one device sync), picks RB = next_pow2(max total) clamped to
[16, 2048], and queries beyond 2048 are flagged by the kernel and recomputed
by the fallback below.

Fallback for oversized queries (documented multi-pass path)
----------------------------------------------------------
A composition of torch ops on the device, vectorised over the oversized
queries: expand their buckets into (query, id) pairs, torch.unique with
counts, two stable sorts (hits desc, then query) and a scatter of the first M
per query. Exact, no size limit, O(total log total).

bucket_lookup_bitmap with min_hits == 1 needs no counting at all: one
program per (query, table) streams its bucket in chunks and atomic_or's each
id's bit into the query's row. No size limit.

Malformed tables (a code outside [0, 2^K), offsets decreasing or past
items.shape[1], an item outside [0, num_labels)) are never read out of
bounds: the kernels mask those reads and set a per-query status, and the
wrapper raises ValueError.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..reference import pack_bitmap_pairs
from ._common import INTERPRET, cdiv, clamp_block, define_op, launch, next_pow2

Tensor = torch.Tensor

#: Largest number of retrieved ids one program sorts in registers; queries
#: retrieving more go to the torch fallback. Tests lower it to exercise that path.
MAX_RETRIEVED = 2048
MIN_BLOCK = 16
MAX_TABLES = 0xFFFF
STATUS_OK, STATUS_OVERSIZE, STATUS_MALFORMED = 0, 1, 2
_SENTINEL = tl.constexpr(2147483647)  # after every label id
_KEY_NONE = tl.constexpr(9223372036854775807)  # after every candidate key
_MALFORMED_MSG = ("{op}: malformed tables: a code is outside [0, 2^K), a bucket's offsets are decreasing "
                  "or past items.size(1), or an item is outside [0, num_labels)")


@triton.jit
def _run_count(id_a, count_a, id_b, count_b):
    # (id, n): n consecutive equal ids ending (or, reversed, starting) here.
    return id_b, tl.where(id_a == id_b, count_a + count_b, count_b)


@triton.jit
def _retrieve_sorted(codes_ptr, offsets_ptr, items_ptr, b, L, n_buckets, T, N, RB: tl.constexpr):
    """The query's retrieved ids, sorted ascending in a [RB] block (sentinel
    after the last), each slot's hit count at its run's first slot, and the
    query's status."""
    r = tl.arange(0, RB)
    src = tl.zeros([RB], dtype=tl.int64)
    cursor = tl.zeros([], dtype=tl.int64)
    bad = tl.zeros([], dtype=tl.int32)
    for l32 in range(0, L):
        l = l32 + tl.zeros([], dtype=tl.int64)  # (the interpreter's loop index is a Python int)
        code = tl.load(codes_ptr + b * L + l)
        code_ok = (code >= 0) & (code < n_buckets)
        obase = offsets_ptr + l * (n_buckets + 1) + tl.where(code_ok, code, 0)
        begin = tl.load(obase).to(tl.int64)
        end = tl.load(obase + 1).to(tl.int64)
        ok = code_ok & (begin >= 0) & (begin <= end) & (end <= T)
        size = tl.where(ok, end - begin, 0)
        bad = tl.where(ok, bad, 1)
        inside = (r >= cursor) & (r < cursor + size)
        src = tl.where(inside, l * T + begin + (r - cursor), src)
        cursor += size
    # (scalar conditions folded into the bound: the interpreter mis-types
    # vector & scalar booleans)
    limit = tl.where((cursor <= RB) & (bad == 0), cursor, 0)
    load = r < limit
    ids = tl.load(items_ptr + src, mask=load, other=_SENTINEL)
    id_ok = (ids >= 0) & (ids < N)
    bad = tl.where(tl.sum((load & ~id_ok).to(tl.int32)) > 0, 1, bad)
    ids = tl.where(load & id_ok, ids, _SENTINEL)
    status = tl.where(bad != 0, 2, tl.where(cursor > RB, 1, 0))
    s = tl.sort(ids)
    ones = tl.full([RB], 1, dtype=tl.int32)
    _, run_fwd = tl.associative_scan((s, ones), 0, _run_count)
    _, run_len = tl.associative_scan((s, ones), 0, _run_count, reverse=True)
    first = (run_fwd == 1) & (s != _SENTINEL)
    return s, first, run_len, status


@triton.jit
def bucket_lookup_kernel(codes_ptr, offsets_ptr, items_ptr, ids_ptr, counts_ptr, status_ptr,
                         L, n_buckets, T, N, M, min_hits,
                         RB: tl.constexpr, MP: tl.constexpr, PAD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    s, first, hits, status = _retrieve_sorted(codes_ptr, offsets_ptr, items_ptr, b, L, n_buckets, T, N, RB)
    keep = first & (hits >= min_hits)
    key = tl.where(keep, ((0xFFFF - hits).to(tl.int64) << 32) | s.to(tl.int64), _KEY_NONE)
    top = tl.topk(key, MP, descending=False)  # MP smallest keys, ascending
    rm = tl.arange(0, MP)
    valid = top != _KEY_NONE
    out = tl.where(valid, (top & 0x7FFFFFFF).to(tl.int32), -1)
    row = ids_ptr + b * M
    tl.store(row + rm, out, mask=rm < M)
    for m0 in range(MP, M, PAD):  # M beyond the block: padding only
        rp = m0 + tl.arange(0, PAD)
        tl.store(row + rp, tl.full([PAD], -1, dtype=tl.int32), mask=rp < M)
    tl.store(counts_ptr + b, tl.minimum(tl.sum(valid.to(tl.int32)), M))
    tl.store(status_ptr + b, status)


@triton.jit
def bucket_bitmap_sorted_kernel(codes_ptr, offsets_ptr, items_ptr, bitmap_ptr, status_ptr,
                                L, n_buckets, T, N, W, min_hits, RB: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    s, first, hits, status = _retrieve_sorted(codes_ptr, offsets_ptr, items_ptr, b, L, n_buckets, T, N, RB)
    keep = first & (hits >= min_hits)
    word = tl.where(keep, s >> 5, 0)
    tl.atomic_or(bitmap_ptr + b * W + word, tl.full([RB], 1, dtype=tl.int32) << (s & 31), mask=keep)
    tl.store(status_ptr + b, status)


@triton.jit
def bucket_bitmap_any_kernel(codes_ptr, offsets_ptr, items_ptr, bitmap_ptr, status_ptr,
                             L, n_buckets, T, N, W, CHUNK: tl.constexpr):
    """min_hits == 1: every retrieved id is a candidate; one program per
    (query, table) streams its bucket."""
    b = tl.program_id(0).to(tl.int64)
    l = tl.program_id(1).to(tl.int64)
    code = tl.load(codes_ptr + b * L + l)
    code_ok = (code >= 0) & (code < n_buckets)
    obase = offsets_ptr + l * (n_buckets + 1) + tl.where(code_ok, code, 0)
    begin = tl.load(obase).to(tl.int64)
    end = tl.load(obase + 1).to(tl.int64)
    ok = code_ok & (begin >= 0) & (begin <= end) & (end <= T)
    end = tl.where(ok, end, begin)
    bad = tl.where(ok, 0, 2)
    row = bitmap_ptr + b * W
    for i0 in range(begin, end, CHUNK):
        idx = i0 + tl.arange(0, CHUNK)
        m = idx < end
        ids = tl.load(items_ptr + l * T + idx, mask=m, other=0)
        id_ok = (ids >= 0) & (ids < N)
        bad = tl.where(tl.sum((m & ~id_ok).to(tl.int32)) > 0, 2, bad)
        m = m & id_ok
        tl.atomic_or(row + tl.where(m, ids >> 5, 0), tl.full([CHUNK], 1, dtype=tl.int32) << (ids & 31), mask=m)
    tl.atomic_max(status_ptr + b, bad)


def _warps(block: int) -> int:
    # more warps for bigger blocks: fewer elements per thread in the bitonic
    # sort (no spills at 4096, see docs/triton.md) and faster compiles
    return 4 if block <= 256 else (8 if block <= 1024 else 16)


def _bucket_lookup_block(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                         max_candidates: int, min_hits: int, block: int) -> Tuple[Tensor, Tensor, Tensor]:
    codes, offsets, items = codes.contiguous(), offsets.contiguous(), items.contiguous()
    batch, num_tables = codes.shape
    ids = torch.empty((batch, max_candidates), dtype=torch.int32, device=codes.device)
    counts = torch.empty((batch,), dtype=torch.int32, device=codes.device)
    status = torch.empty((batch,), dtype=torch.int32, device=codes.device)
    mp = min(next_pow2(max_candidates), block)
    launch(bucket_lookup_kernel, (batch,), codes, offsets, items, ids, counts, status,
           num_tables, offsets.shape[1] - 1, items.shape[1], num_labels, max_candidates, min_hits,
           RB=block, MP=mp, PAD=128, num_warps=_warps(block))
    return ids, counts, status


def _bucket_lookup_bitmap_block(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                                min_hits: int, block: int) -> Tuple[Tensor, Tensor]:
    codes, offsets, items = codes.contiguous(), offsets.contiguous(), items.contiguous()
    batch, num_tables = codes.shape
    words = (num_labels + 31) // 32
    bitmap = torch.zeros((batch, words), dtype=torch.int32, device=codes.device)
    status = torch.zeros((batch,), dtype=torch.int32, device=codes.device)
    args = (codes, offsets, items, bitmap, status, num_tables, offsets.shape[1] - 1, items.shape[1],
            num_labels, words)
    if min_hits == 1:
        launch(bucket_bitmap_any_kernel, (batch, num_tables), *args,
               CHUNK=32 if INTERPRET else 256, num_warps=4)
    else:
        launch(bucket_bitmap_sorted_kernel, (batch,), *args, min_hits, RB=block, num_warps=_warps(block))
    return bitmap, status


bucket_lookup_op = define_op("bucket_lookup", _bucket_lookup_block)
bucket_lookup_bitmap_op = define_op("bucket_lookup_bitmap", _bucket_lookup_bitmap_block)


# ---------------------------------------------------------------------------
# Host side: block choice, status check, fallback for oversized queries.
# ---------------------------------------------------------------------------
def retrieved_totals(codes: Tensor, offsets: Tensor, items_per_table: int) -> Tensor:
    """int64 [B]: how many ids each query retrieves (clipped to the items)."""
    buckets = offsets.shape[1] - 1
    idx = codes.to(torch.int64).clamp(0, buckets - 1).t()  # [L, B]
    begin = offsets.gather(1, idx).clamp(min=0)
    end = offsets.gather(1, idx + 1).clamp(max=items_per_table)
    return (end - begin).clamp(min=0).to(torch.int64).sum(0)


def _block_for(codes: Tensor, offsets: Tensor, items: Tensor) -> Tuple[int, int]:
    """(RB, largest retrieval total) for this batch: one device sync."""
    max_total = int(retrieved_totals(codes, offsets, items.shape[1]).max()) if codes.shape[0] else 0
    return clamp_block(max_total, MIN_BLOCK, max(MIN_BLOCK, MAX_RETRIEVED)), max_total


def _raise_if_malformed(op: str, status: Tensor) -> None:
    if status.numel() and bool((status == STATUS_MALFORMED).any()):
        raise ValueError(_MALFORMED_MSG.format(op=op))


def _candidates_torch(op: str, codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                      min_hits: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Every candidate of every query in codes, as (rows, labels, hits) sorted
    by (row, hits desc, label asc). Torch ops on the tables' device."""
    batch, num_tables = codes.shape
    buckets, per_table = offsets.shape[1] - 1, items.shape[1]
    c = codes.to(torch.int64)
    if bool(((c < 0) | (c >= buckets)).any()):
        raise ValueError(_MALFORMED_MSG.format(op=op))
    off = offsets.to(torch.int64)
    begin = off.gather(1, c.t()).t()  # [B, L]
    end = off.gather(1, c.t() + 1).t()
    if bool(((begin < 0) | (begin > end) | (end > per_table)).any()):
        raise ValueError(_MALFORMED_MSG.format(op=op))
    sizes = (end - begin).reshape(-1)  # (query, table) segments, query-major
    total = int(sizes.sum())
    seg = torch.repeat_interleave(torch.arange(sizes.numel(), device=codes.device), sizes, output_size=total)
    seg_start = torch.cumsum(sizes, 0) - sizes
    pos = torch.arange(total, device=codes.device) - seg_start[seg]
    table = seg % num_tables
    flat = table * per_table + begin.reshape(-1)[seg] + pos
    ids = items.reshape(-1)[flat].to(torch.int64)
    if bool(((ids < 0) | (ids >= num_labels)).any()):
        raise ValueError(_MALFORMED_MSG.format(op=op))
    key = (seg // num_tables) * max(num_labels, 1) + ids
    uniq, hits = torch.unique(key, sorted=True, return_counts=True)
    keep = hits >= min_hits
    uniq, hits = uniq[keep], hits[keep]
    rows, labels = uniq // max(num_labels, 1), uniq % max(num_labels, 1)
    order = torch.sort(-hits, stable=True).indices  # (row, label) ascending already
    rows, labels, hits = rows[order], labels[order], hits[order]
    order = torch.sort(rows, stable=True).indices
    return rows[order], labels[order], hits[order]


def bucket_lookup_torch(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                        max_candidates: int, min_hits: int) -> Tuple[Tensor, Tensor]:
    """The fallback path for queries retrieving more than MAX_RETRIEVED ids."""
    batch = codes.shape[0]
    rows, labels, _ = _candidates_torch("bucket_lookup", codes, offsets, items, num_labels, min_hits)
    per_row = torch.bincount(rows, minlength=batch)
    rank = torch.arange(rows.numel(), device=codes.device) - (torch.cumsum(per_row, 0) - per_row)[rows]
    keep = rank < max_candidates
    ids = torch.full((batch, max_candidates), -1, dtype=torch.int32, device=codes.device)
    ids[rows[keep], rank[keep]] = labels[keep].to(torch.int32)
    return ids, per_row.clamp(max=max_candidates).to(torch.int32)


def bucket_lookup_bitmap_torch(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                               min_hits: int) -> Tensor:
    rows, labels, _ = _candidates_torch("bucket_lookup_bitmap", codes, offsets, items, num_labels, min_hits)
    return pack_bitmap_pairs(rows, labels, codes.shape[0], num_labels)


def _check_sizes(op: str, codes: Tensor) -> None:
    if codes.shape[1] >= MAX_TABLES:
        raise ValueError(f"{op}: at most {MAX_TABLES - 1} tables, got {codes.shape[1]}")


def bucket_lookup(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int, max_candidates: int,
                  min_hits: int = 1) -> Tuple[Tensor, Tensor]:
    """ids int32 [B, M] (-1 padded; more hits first, then ascending id) and counts int32 [B]."""
    _check_sizes("bucket_lookup", codes)
    codes = codes.to(torch.int32)
    batch = codes.shape[0]
    if batch == 0 or codes.shape[1] == 0:
        return (torch.full((batch, max_candidates), -1, dtype=torch.int32, device=codes.device),
                torch.zeros((batch,), dtype=torch.int32, device=codes.device))
    block, max_total = _block_for(codes, offsets, items)
    ids, counts, status = bucket_lookup_op(codes, offsets, items, num_labels, max_candidates, min_hits, block)
    _raise_if_malformed("bucket_lookup", status)
    if max_total > block:
        big = (status == STATUS_OVERSIZE).nonzero().squeeze(1)
        if big.numel():
            ids[big], counts[big] = bucket_lookup_torch(codes[big], offsets, items, num_labels,
                                                        max_candidates, min_hits)
    return ids, counts


def bucket_lookup_bitmap(codes: Tensor, offsets: Tensor, items: Tensor, num_labels: int,
                         min_hits: int = 1) -> Tensor:
    """Candidate bitmap int32 [B, ceil(N / 32)] (no truncation)."""
    _check_sizes("bucket_lookup_bitmap", codes)
    codes = codes.to(torch.int32)
    batch = codes.shape[0]
    words = (num_labels + 31) // 32
    if batch == 0 or codes.shape[1] == 0 or words == 0:
        if words == 0 and batch and codes.shape[1] and int(retrieved_totals(codes, offsets, items.shape[1]).max()) > 0:
            raise ValueError(_MALFORMED_MSG.format(op="bucket_lookup_bitmap"))
        return torch.zeros((batch, words), dtype=torch.int32, device=codes.device)
    if min_hits == 1:
        block, max_total = MIN_BLOCK, 0  # streaming kernel: no capacity limit
    else:
        block, max_total = _block_for(codes, offsets, items)
    bitmap, status = bucket_lookup_bitmap_op(codes, offsets, items, num_labels, min_hits, block)
    _raise_if_malformed("bucket_lookup_bitmap", status)
    if max_total > block:
        big = (status == STATUS_OVERSIZE).nonzero().squeeze(1)
        if big.numel():
            bitmap[big] = bucket_lookup_bitmap_torch(codes[big], offsets, items, num_labels, min_hits)
    return bitmap


def aot_specs():
    tables = {"codes_ptr": "*i32", "offsets_ptr": "*i32", "items_ptr": "*i32"}
    scalars = {"L": "i32", "n_buckets": "i32", "T": "i32", "N": "i32"}
    specs = []
    for rb, mp in ((256, 128), (MAX_RETRIEVED, 1024)):
        specs.append(dict(
            kernel=bucket_lookup_kernel, name=f"bucket_lookup[RB={rb},MP={mp}]", tensor_cores=False,
            signature={**tables, "ids_ptr": "*i32", "counts_ptr": "*i32", "status_ptr": "*i32",
                       **scalars, "M": "i32", "min_hits": "i32"},
            constexprs=dict(RB=rb, MP=mp, PAD=128), num_warps=_warps(rb)))
    specs.append(dict(
        kernel=bucket_bitmap_sorted_kernel, name="bucket_lookup_bitmap_sorted[RB=1024]", tensor_cores=False,
        signature={**tables, "bitmap_ptr": "*i32", "status_ptr": "*i32", **scalars, "W": "i32", "min_hits": "i32"},
        constexprs=dict(RB=1024), num_warps=_warps(1024)))
    specs.append(dict(
        kernel=bucket_bitmap_any_kernel, name="bucket_lookup_bitmap_any", tensor_cores=False,
        signature={**tables, "bitmap_ptr": "*i32", "status_ptr": "*i32", **scalars, "W": "i32"},
        constexprs=dict(CHUNK=256), num_warps=4))
    return specs
