"""Sign-random-projection (SimHash) hashing of queries and labels.

Logits are inner products with a bias, <x, w> + b = <[x, 1], [w, b]>, so both
sides are hashed after augmentation: queries get a trailing 1, label vectors
their bias. Queries and labels may use different projections (the learned
hash is asymmetric); both are [L, K, d + 1].
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _ops

Tensor = torch.Tensor


def augment_queries(x: Tensor) -> Tensor:
    """[..., d] -> [..., d + 1] with a trailing 1 (the bias input)."""
    return torch.cat([x, x.new_ones(x.shape[:-1] + (1,))], dim=-1)


def augment_labels(weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """[N, d], [N] -> [N, d + 1] with the bias as last column (0 without bias)."""
    last = bias.unsqueeze(1) if bias is not None else weight.new_zeros(weight.shape[0], 1)
    return torch.cat([weight, last.to(weight.dtype)], dim=1)


def simhash_projections(num_tables: int, bits: int, dim: int, *, seed: int = 0,
                        dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Gaussian projections [num_tables, bits, dim], deterministic in seed."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(num_tables, bits, dim, generator=gen, dtype=torch.float32)
    return proj.to(dtype=dtype, device=device)


def query_codes(x: Tensor, query_proj: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """Codes int32 [B, L] of queries x [B, d] under projections [L, K, d + 1]."""
    return _ops.hash_codes(augment_queries(x), query_proj.to(x.dtype), backend=backend)


def label_codes(weight: Tensor, bias: Optional[Tensor], label_proj: Tensor, *,
                chunk: int = 1 << 16, backend: Optional[str] = None) -> Tensor:
    """Codes int32 [N, L] of label vectors, in chunks so that the augmented
    copy of a 10^7-row weight never exists whole."""
    n = weight.shape[0]
    out = torch.empty(n, label_proj.shape[0], dtype=torch.int32, device=weight.device)
    proj = label_proj.to(weight.dtype)
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            b = bias[start:stop] if bias is not None else None
            out[start:stop] = _ops.hash_codes(augment_labels(weight[start:stop], b), proj, backend=backend)
    return out
