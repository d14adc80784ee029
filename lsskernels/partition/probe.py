"""The probe of a PartitionIndex: its centroids and how a query ranks them.

A query x scores partition p by <x, centroids[p]> + centroid_bias[p]
(label space: k-means of [w, b], the bias column as centroid_bias; query
space: k-means of the queries, centroid_bias = -|c|^2 / 2, so the ranking
is by L2 distance). predict() ranks by the int8 score of the centroids'
codes (probe_codes; one quantized_candidates call over a single list of
the centroid rows: _ops.quantized_probe), derived from the centroids on
first use after they change and not saved.

The centroids are buffers of the index (state-dict keys ``centroids``,
``centroid_bias``); PartitionProbe reads and writes them there, and is
their only writer.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from .. import _checks as checks
from .. import _ops
from .. import reference
from .codec import code_width, quantize_rows_into

Tensor = torch.Tensor

BUFFERS = ("centroids", "centroid_bias")


def probe_codes(centroids: Tensor) -> Tuple[Tensor, Tensor]:
    """The centroids as the probe scores them: int8 codes [P, Dp] (Dp = d
    rounded up to 32) and scales float32 [P] of centroids - their mean. The
    mean shifts every partition's score by the same <x, mean>, so the ranking
    is that of <x, c> + centroid_bias up to int8 rounding, and centering makes
    the codes' rounding small against the differences between partitions."""
    c = centroids.detach().to(torch.float32)
    width = code_width(c.shape[1])
    codes = torch.zeros(c.shape[0], width, dtype=torch.int8, device=c.device)
    scales = torch.empty(c.shape[0], dtype=torch.float32, device=c.device)
    quantize_rows_into(c - c.mean(0), codes, scales)
    return codes, scales


def empty_buffers(num_partitions: int, dim: int, device=None) -> Dict[str, Tensor]:
    """The probe's buffers of an unbuilt index (zeros)."""
    f32 = {"dtype": torch.float32, "device": device}
    return {"centroids": torch.zeros(num_partitions, dim, **f32), "centroid_bias": torch.zeros(num_partitions, **f32)}


def validate_probe(tensors: Dict[str, Tensor], dim: int, num_partitions: int) -> None:
    """Raise ValueError unless centroids / centroid_bias are float32 [P, d] / [P]."""
    c, cb = tensors["centroids"], tensors["centroid_bias"]
    checks.tensor("centroids", c, 2, (torch.float32,), f"float32 [P, d] = [{num_partitions}, {dim}]")
    if tuple(c.shape) != (num_partitions, dim):
        raise ValueError(f"centroids must be float32 [{num_partitions}, {dim}], got {tuple(c.shape)}")
    checks.tensor("centroid_bias", cb, 1, (torch.float32,), f"float32 [{num_partitions}]")
    if cb.shape[0] != num_partitions:
        raise ValueError(f"centroid_bias must be float32 [{num_partitions}], got {tuple(cb.shape)}")


def check_probe_values(tensors: Dict[str, Tensor]) -> None:
    """Raise ValueError unless the probe scores are finite."""
    if not bool(torch.isfinite(tensors["centroids"]).all() and torch.isfinite(tensors["centroid_bias"]).all()):
        raise ValueError("centroids and centroid_bias must be finite")


class PartitionProbe:
    """The probe over the index's centroid buffers (buffers: the index
    module's own buffer dict, so .to(), state_dict() and load_state_dict()
    are the module's)."""

    def __init__(self, buffers: Dict[str, Tensor], num_partitions: int, dim: int) -> None:
        self._buf = buffers
        self.num_partitions = num_partitions
        self.dim = dim
        # (centroids, its _version, codes, scales, probe list): probe_codes of
        # the centroids, derived on first use after they change; not saved.
        self._cache: Optional[tuple] = None

    @torch.no_grad()
    def set(self, centroids: Tensor, centroid_bias: Tensor) -> None:
        """New centroids (float32 [P, d]) and biases ([P]), checked."""
        if tuple(centroids.shape) != (self.num_partitions, self.dim) or \
                tuple(centroid_bias.shape) != (self.num_partitions,):
            raise ValueError(f"centroids must be [{self.num_partitions}, {self.dim}] and centroid_bias "
                             f"[{self.num_partitions}], got {tuple(centroids.shape)}, {tuple(centroid_bias.shape)}")
        if not bool(torch.isfinite(centroids).all() and torch.isfinite(centroid_bias).all()):
            raise ValueError("centroids and centroid_bias must be finite")
        self._buf["centroids"] = centroids.to(torch.float32).contiguous()
        self._buf["centroid_bias"] = centroid_bias.to(torch.float32).contiguous()

    def codes(self) -> Tuple[Tensor, Tensor, Tuple[Tensor, Tensor]]:
        """The centroids as the probe scores them: (codes int8 [P, Dp], scales
        float32 [P], the probe list (offsets, ids)); see probe_codes. Derived
        on first use after the centroids change (fit, rebuild,
        load_state_dict, .to())."""
        c = self._buf["centroids"]
        cached = self._cache
        if torch.compiler.is_compiling() and cached is not None:
            # Dynamo cannot guard on _version; a compiled predict reads the
            # cache as an eager call last left it (see LSSLinear.sync_index).
            return cached[2], cached[3], cached[4]
        if cached is None or cached[0] is not c or cached[1] != c._version:
            codes, scales = probe_codes(c)
            cached = (c, c._version, codes, scales, reference.probe_list(c.shape[0], c.device))
            self._cache = cached
        return cached[2], cached[3], cached[4]

    def probe(self, x: Tensor, nprobe: int, backend: Optional[str] = None) -> Tensor:
        """The nprobe partitions x [B, d] probes first, int32 [B, nprobe]: by
        int8 score of the centroid codes (quantized_probe), as predict() does."""
        codes, scales, probe_list = self.codes()
        return _ops.quantized_probe(x, codes, scales, self._buf["centroid_bias"], nprobe, probe_list,
                                    backend=backend)
