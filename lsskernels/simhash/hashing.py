"""Sign-random-projection (SimHash) hashing of queries and labels for
maximum inner product search.

A logit is an inner product with a bias, <x, w> + b = <[x, 1], [w, b]>. SimHash
collides vectors by *angle*, not inner product, so labels are first given a
common norm (the asymmetric "simple LSH" transform of Neyshabur & Srebro,
2015): with U the largest label norm,

    query  [x, 1, 0]
    label  [w, b, sqrt(U^2 - |w|^2 - b^2)]

keeps every inner product unchanged while all labels have norm U, so the
collision probability grows with the logit. (The query needs no scaling: the
sign of a projection does not change with it.) Queries and labels may use
different projections (the learned hash is asymmetric); both are
[L, K, d + 2].
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _ops, reference

Tensor = torch.Tensor

EXTRA_DIMS = 2  # the bias input and the norm-completing coordinate


def augment_queries(x: Tensor) -> Tensor:
    """[..., d] -> [..., d + 2]: append 1 (bias input) and 0."""
    tail = x.new_zeros(x.shape[:-1] + (2,))
    tail[..., 0] = 1
    return torch.cat([x, tail], dim=-1)


def label_norms(weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """Norms of the bias-augmented label vectors [w, b], in fp32 (fp64 for fp64)."""
    acc = reference.acc_dtype(weight.dtype)
    sq = weight.to(acc).pow(2).sum(1)
    if bias is not None:
        sq = sq + bias.to(acc).pow(2)
    return sq.sqrt()


def augment_labels(weight: Tensor, bias: Optional[Tensor], norm_bound: float) -> Tensor:
    """[N, d], [N] -> [N, d + 2]: [w, b, sqrt(U^2 - |w|^2 - b^2)] with U = norm_bound."""
    norms = label_norms(weight, bias)
    completion = (norm_bound**2 - norms.pow(2)).clamp(min=0).sqrt()
    return torch.cat([reference.augmented_labels(weight, bias, weight.dtype), completion.unsqueeze(1).to(weight.dtype)], dim=1)


def simhash_projections(num_tables: int, bits: int, dim: int, *, seed: int = 0, angular: bool = True,
                        dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Gaussian projections [num_tables, bits, dim + 2], deterministic in seed.

    angular=True (the default) zeroes the two augmentation coordinates, so
    the initial hash compares directions of x and w only: the norm-completing
    coordinate is large for every label of below-maximal norm and would push
    all such labels into the same few buckets (simple LSH collapses when label
    norms vary, as they do in trained output layers). fit() learns weights for
    those coordinates from data. angular=False gives the plain simple-LSH hash.
    """
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(num_tables, bits, dim + EXTRA_DIMS, generator=gen, dtype=torch.float32)
    if angular:
        proj[..., dim:] = 0
    return proj.to(dtype=dtype, device=device)


def query_codes(x: Tensor, query_proj: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Codes int32 [B, L] of queries x [B, d] under projections [L, K, d + 2]."""
    return _ops.hash_codes(augment_queries(x), query_proj.to(x.dtype), backend=backend)


def label_codes(weight: Tensor, bias: Optional[Tensor], label_proj: Tensor, *,
                chunk: int = 1 << 16, backend: Optional[str] = None) -> Tensor:
    """Codes int32 [N, L] of label vectors, in chunks so that the augmented
    copy of a 10^7-row weight never exists whole."""
    n = weight.shape[0]
    out = torch.empty(n, label_proj.shape[0], dtype=torch.int32, device=weight.device)
    proj = label_proj.to(weight.dtype)
    with torch.no_grad():
        bound = float(label_norms(weight, bias).max()) if n else 0.0
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            b = bias[start:stop] if bias is not None else None
            out[start:stop] = _ops.hash_codes(augment_labels(weight[start:stop], b, bound), proj, backend=backend)
    return out
