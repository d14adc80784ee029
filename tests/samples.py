"""Sample inputs for every op: one generator per op, each yielding Samples
(fresh seeded random CPU tensors, ragged shapes, the edge cases of the
op's contract, and, unless small-only, inputs large enough to take the GPU
kernels' fallback paths: global-memory scratch, tiles, chunking).

    for sample in SAMPLES["gathered_logits"](torch.float16):
        x, w, b, ids = sample.to("cuda").args

Used by tests/test_gpu_ops.py (`pytest -m gpu`, `make gpu-check`), which
compares the GPU backends against lsskernels.reference on these inputs.
LSS_GPU_TEST_SIZES=small drops the large cases (what `make gpu-check-dry`
runs on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Tuple

import torch

from helpers import gen, packed_topk_problem, random_ids, random_query_codes, randn, random_tables
from lsskernels import reference


def large_cases() -> bool:
    return os.environ.get("LSS_GPU_TEST_SIZES", "all") != "small"


@dataclass
class Sample:
    name: str
    args: Tuple

    def to(self, device) -> "Sample":
        return Sample(self.name, tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in self.args))

    def __repr__(self) -> str:
        return self.name


def _cases(small, large):
    return list(small) + (list(large) if large_cases() else [])


# ------------------------------------------------------------- hash_codes
def samples_hash_codes(dtype) -> Iterator[Sample]:
    """(x [B, d], proj [L, K, d])."""
    for B, d, L, K in _cases([(1, 7, 3, 5), (5, 33, 2, 30), (37, 128, 8, 16)], [(1000, 256, 16, 20)]):
        seed = B * 1000 + d * 10 + K
        yield Sample(f"B{B}-d{d}-L{L}-K{K}", (randn(B, d, seed=seed, dtype=dtype),
                                              randn(L, K, d, seed=seed + 1, dtype=dtype)))


# ----------------------------------------------------------- build_tables
def samples_build_tables(dtype=None) -> Iterator[Sample]:
    """(codes int32 [N, L], bits): skewed codes, so some buckets are empty."""
    for N, L, bits in _cases([(70, 3, 4), (1000, 4, 1), (3001, 8, 12)], [(200_000, 16, 16)]):
        u = torch.rand(N, L, generator=gen(N + L + bits))
        codes = (u * u * (1 << bits)).to(torch.int64).clamp_(max=(1 << bits) - 1).to(torch.int32)
        yield Sample(f"N{N}-L{L}-bits{bits}", (codes, bits))


# ---------------------------------------------------------- bucket_lookup
def _lookup_cases():
    # N, L, K, B, M, min_hits
    small = [(70, 3, 4, 5, 24, 1), (70, 3, 4, 5, 24, 2), (3000, 8, 6, 33, 100, 2),
             (45, 4, 3, 4, 300, 1),  # M larger than the candidates
             (33, 6, 4, 3, 7, 7)]    # min_hits = L: few or no candidates
    # 4 tables of 4 buckets over 200K labels: every query retrieves ~200K
    # items, past the shared-memory sort (global scratch path).
    large = [(200_000, 4, 2, 3, 1000, 2), (20_000, 16, 4, 64, 256, 1)]
    return _cases(small, large)


def samples_bucket_lookup(dtype=None) -> Iterator[Sample]:
    """(codes [B, L], offsets, items, num_labels, max_candidates, min_hits)."""
    for N, L, K, B, M, min_hits in _lookup_cases():
        _, offsets, items = random_tables(N, L, K, seed=N + L)
        codes = random_query_codes(B, L, K, seed=B + N)
        yield Sample(f"N{N}-L{L}-K{K}-B{B}-M{M}-hits{min_hits}", (codes, offsets, items, N, M, min_hits))


def samples_bucket_lookup_bitmap(dtype=None) -> Iterator[Sample]:
    """(codes [B, L], offsets, items, num_labels, min_hits)."""
    for s in samples_bucket_lookup():
        codes, offsets, items, N, _, min_hits = s.args
        yield Sample(s.name, (codes, offsets, items, N, min_hits))


# -------------------------------------------------------- gathered_logits
def samples_gathered_logits(dtype) -> Iterator[Sample]:
    """(x [B, d], weight [N, d], bias [N] or None, ids int32 [B, M]):
    padding, duplicate ids, an all-padding row."""
    cases = _cases([(1, 7, 37, 5, True), (4, 33, 50, 20, False), (3, 1, 10, 40, True),
                    (37, 200, 1000, 129, True)], [(256, 128, 50_000, 256, True)])
    for B, d, N, M, has_bias in cases:
        seed = B * 7 + d + N
        x, w = randn(B, d, seed=seed, dtype=dtype), randn(N, d, seed=seed + 1, dtype=dtype)
        b = randn(N, seed=seed + 2, dtype=dtype) if has_bias else None
        ids = random_ids(B, M, N, seed=seed + 3)
        if B > 1:
            ids[-1] = -1
        yield Sample(f"B{B}-d{d}-N{N}-M{M}-bias{int(has_bias)}", (x, w, b, ids))


# --------------------------------------------------- bitmap_sparse_matmul
def samples_bitmap_sparse_matmul(dtype) -> Iterator[Sample]:
    """(x [B, d], weight [N, d], bias or None, bitmap int32 [B, ceil(N/32)]):
    an empty row; dense enough at B >= 16 for the CUDA tile path, sparse
    for its per-entry path."""
    cases = _cases([(1, 7, 37, 0.3, True), (5, 33, 70, 0.1, False), (18, 5, 45, 0.2, True),
                    (37, 200, 1000, 0.05, True), (70, 64, 3000, 0.005, True), (4, 6, 40, 0.0, True)],
                   [(256, 128, 20_000, 0.02, True)])
    for B, d, N, density, has_bias in cases:
        seed = B * 11 + d + N
        x, w = randn(B, d, seed=seed, dtype=dtype), randn(N, d, seed=seed + 1, dtype=dtype)
        b = randn(N, seed=seed + 2, dtype=dtype) if has_bias else None
        dense = torch.rand(B, N, generator=gen(seed + 3)) < density
        if B > 2:
            dense[1] = False
        yield Sample(f"B{B}-d{d}-N{N}-density{density}", (x, w, b, reference.pack_bitmap(dense)))


# ------------------------------------------------------------------ top-k
def special_scores(B: int, M: int, dtype, seed: int) -> torch.Tensor:
    """Random scores with NaN, ties, -0.0 / +0.0 and -inf."""
    s = randn(B, M, seed=seed, dtype=dtype)
    s[0, : min(2, M)] = float("nan")
    if M > 5:
        s[-1, 1:4] = 0.5
        s[-1, 4], s[-1, 5] = -0.0, 0.0
        s[0, 3] = float("-inf")
    return s


def samples_topk_gathered(dtype) -> Iterator[Sample]:
    """(logits [B, M], ids int32 [B, M], k): k above the shared-memory
    buffer in the large case (global scratch path)."""
    for B, M, k in _cases([(1, 7, 3), (4, 20, 25), (5, 33, 8), (37, 1000, 100)], [(3, 5000, 2500)]):
        seed = B * 13 + M + k
        ids = random_ids(B, M, 50_000, seed=seed + 1, duplicates=False)
        if B > 1:
            ids[1] = -1
        yield Sample(f"B{B}-M{M}-k{k}", (special_scores(B, M, dtype, seed), ids, k))


def samples_topk_packed(dtype) -> Iterator[Sample]:
    """(values [nnz], row_ptr int64 [B + 1], bitmap, k)."""
    for B, N, density, k in _cases([(1, 37, 0.3, 3), (4, 70, 0.3, 30), (37, 3000, 0.05, 64)],
                                   [(3, 100_000, 0.05, 2500)]):
        values, row_ptr, bitmap = packed_topk_problem(B, N, density, B * 17 + N + k, dtype)
        yield Sample(f"B{B}-N{N}-density{density}-k{k}", (values, row_ptr, bitmap, k))


# --------------------------------------------------- quantized_candidates
def partition_lists(P: int, d: int, N: int, seed: int, max_size: int):
    """(list_offsets, codes, code_scales, code_bias, list_ids) in the layout
    of reference.quantized_candidates: empty partitions, labels listed
    several times (once with a copy of the same code row), garbage in the
    codes past d."""
    g = gen(seed)
    sizes = torch.randint(0, max_size + 1, (P,), generator=g)
    sizes[torch.randperm(P, generator=g)[: max(1, P // 4)]] = 0
    offsets = torch.zeros(P + 1, dtype=torch.int32)
    offsets[1:] = torch.cumsum(sizes, 0)
    T = int(offsets[-1])
    codes = torch.randint(-127, 128, (T, -(-d // 32) * 32), generator=g, dtype=torch.int8)
    scales = torch.rand(T, generator=g) * 0.02 + 1e-3
    bias = torch.randn(T, generator=g) * 0.1
    ids = torch.randint(0, N, (T,), generator=g, dtype=torch.int32)
    if T >= 4:
        codes[-1], scales[-1], bias[-1], ids[-1] = codes[0], scales[0], bias[0], ids[0]
    return offsets, codes, scales, bias, ids


def samples_quantized_candidates(dtype) -> Iterator[Sample]:
    """(x [B, d], probes int32 [B, nprobe] with -1s and a row probing
    nothing, list_offsets, codes, code_scales, code_bias, list_ids,
    num_labels, max_candidates)."""
    cases = _cases([(9, 45, 70, 12, 5, 4, 12), (12, 32, 1000, 20, 4, 3, 200), (6, 7, 33, 12, 3, 6, 8)],
                   [(40, 128, 3001, 120, 37, 8, 200), (40, 200, 3001, 120, 5, 3, 5000),
                    (64, 128, 100_000, 4000, 8, 16, 256)])
    for P, d, N, size, B, nprobe, M in cases:
        seed = P * 1000 + d + B
        lists = partition_lists(P, d, N, seed, size)
        g = gen(seed + 1)
        probes = torch.stack([torch.randperm(P, generator=g)[:nprobe] for _ in range(B)]).to(torch.int32)
        probes[torch.rand(B, nprobe, generator=g) < 0.2] = -1
        if B > 2:
            probes[1] = -1
        x = randn(B, d, seed=seed + 2, dtype=dtype)
        yield Sample(f"P{P}-d{d}-N{N}-B{B}-nprobe{nprobe}-M{M}", (x, probes, *lists, N, M))


SAMPLES: Dict[str, Callable[..., Iterator[Sample]]] = {
    "hash_codes": samples_hash_codes,
    "build_tables": samples_build_tables,
    "bucket_lookup": samples_bucket_lookup,
    "bucket_lookup_bitmap": samples_bucket_lookup_bitmap,
    "gathered_logits": samples_gathered_logits,
    "bitmap_sparse_matmul": samples_bitmap_sparse_matmul,
    "topk_gathered": samples_topk_gathered,
    "topk_packed": samples_topk_packed,
    "quantized_candidates": samples_quantized_candidates,
}
