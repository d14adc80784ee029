"""Data sets for developing and evaluating Label Superior Sampling.

Three sources of (input, label) pairs for a wide output layer:

* ``make_synthetic_task`` -- a ready-made output layer ``(weight, bias)`` with
  hidden vectors drawn so that dense inference is good but imperfect, the
  labels are clustered and Zipf-distributed, and the true label's logit is
  often only moderate.  It stands in for a trained network, so the hashing
  code can be exercised without training anything.
* ``read_xc_file`` -- the sparse text format of the Extreme Classification
  Repository (Amazon-670K, Wiki-500K, ...), read into a ``SparseBag``.
* ``make_wordnet_task`` -- a real, small, license-free text task built from
  Debian's ``wordnet-base``: guess the word from a text about it.

Sparse inputs are ``SparseBag`` objects, laid out to feed
``torch.nn.EmbeddingBag`` directly.  Labels are int64, ``[n]`` for one label
per row or ``[n, m]`` padded with -1 for several.

This module imports only torch, numpy and the standard library, so it can be
used (and tested) without the compiled extension.

Measured (2 CPU cores, WordNet 3.0 from Debian's wordnet-base 1:3.0-37):

* Synthetic, default size: dense P@1 0.61 (seed 0), generation 0.6-3 s.
* WordNet, defaults (seed 0): N = 34,226 labels (lemmas of the 32,923
  synsets with usage examples, out of 147,306 lemmas), 85,104 training
  rows (48,850 definitions + 36,254 usage examples; ``train_y`` is
  ``[n, 28]``), 12,085 test rows (25% of the 48,339 usage examples),
  vocabulary 20,094.  Building takes ~5 s (up to ~15 s on a busy
  machine).  ``label_set="all"``: N = 147,306, 153,913 training rows,
  12,085 test rows, vocabulary 30,309.
* A small model -- ``EmbeddingBag(V, 128, mode="sum")`` -> ``Linear(128,
  N)``, softmax cross-entropy against the uniform distribution over a
  row's labels, Adam lr 3e-3, batch 256, seed 0 -- reaches test P@1 (full
  inference, hit = any of the synset's lemmas) 0.231 / 0.452 / 0.617 /
  0.645 after 1 / 2 / 3 / 4 epochs (~1 min per epoch on idle cores, ~5 min
  on a busy machine).  Without definitions (``with_definition=False``) the
  same model stays below 0.6% P@1: a masked usage example alone carries
  almost no bag-of-words signal about the missing word.  With
  ``label_set="all"`` (N = 147,306) it reaches 0.250 / 0.529 after 1 / 2
  epochs (~17 min per epoch on a busy machine).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, InitVar
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "SparseBag",
    "LabelTask",
    "SyntheticTask",
    "make_synthetic_task",
    "dense_precision_at_1",
    "dense_top1",
    "hits_at_1",
    "read_xc_file",
    "make_wordnet_task",
    "pad_label_lists",
]


# ---------------------------------------------------------------------------
# Sparse bag-of-words input
# ---------------------------------------------------------------------------


@dataclass(eq=False)  # field-wise == on tensors is ambiguous; compare by identity
class SparseBag:
    """A batch of sparse feature vectors in CSR form (row ``i`` holds
    ``indices[offsets[i]:offsets[i+1]]`` with the matching ``weights``).

    The layout is exactly what ``torch.nn.EmbeddingBag`` consumes, so a
    sparse input layer is one call::

        bag = torch.nn.EmbeddingBag(x.num_features, d, mode="sum")
        hidden = bag(x.indices, x.offsets[:-1], per_sample_weights=x.weights)

    ``offsets`` carries the end of the last row too (length ``n + 1``) so that
    ``len``, slicing and empty trailing rows need no special cases.
    Construction validates shapes, dtypes and ranges (pass ``check=False`` to
    skip this when the tensors are known to be valid, e.g. after ``to``).
    """

    indices: torch.Tensor  # int64 [nnz], feature ids in [0, num_features)
    offsets: torch.Tensor  # int64 [n + 1], offsets[0] == 0, offsets[-1] == nnz
    weights: torch.Tensor  # float32 [nnz]
    num_features: int
    check: InitVar[bool] = True

    def __post_init__(self, check: bool) -> None:
        if not check:
            return
        for name, t, dtype in (
            ("indices", self.indices, torch.int64),
            ("offsets", self.offsets, torch.int64),
            ("weights", self.weights, torch.float32),
        ):
            if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype != dtype:
                got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"SparseBag.{name} must be a 1-D {dtype} tensor, got {got}")
        if self.weights.numel() != self.indices.numel():
            raise ValueError(
                f"SparseBag.weights has {self.weights.numel()} entries but indices has "
                f"{self.indices.numel()}; they must match"
            )
        if self.offsets.numel() < 1:
            raise ValueError("SparseBag.offsets must have n + 1 >= 1 entries")
        if int(self.offsets[0]) != 0 or int(self.offsets[-1]) != self.indices.numel():
            raise ValueError(
                f"SparseBag.offsets must start at 0 and end at nnz={self.indices.numel()}, "
                f"got {int(self.offsets[0])} and {int(self.offsets[-1])}"
            )
        if self.offsets.numel() > 1 and bool((self.offsets[1:] < self.offsets[:-1]).any()):
            raise ValueError("SparseBag.offsets must be non-decreasing")
        if int(self.num_features) < 0:
            raise ValueError(f"SparseBag.num_features must be >= 0, got {self.num_features}")
        self.num_features = int(self.num_features)
        if self.indices.numel() and (
            int(self.indices.min()) < 0 or int(self.indices.max()) >= self.num_features
        ):
            raise ValueError(
                f"SparseBag.indices must lie in [0, num_features={self.num_features}), got "
                f"range [{int(self.indices.min())}, {int(self.indices.max())}]"
            )

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __repr__(self) -> str:  # the field-wise repr would print every tensor
        return f"SparseBag(n={len(self)}, nnz={self.nnz}, num_features={self.num_features}, device={self.device})"

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def row_lengths(self) -> torch.Tensor:
        """Number of stored features per row, int64 ``[n]``."""
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, rows) -> "SparseBag":
        """The rows ``rows`` (int indices in any order, repeats allowed, or a
        bool mask of length ``n``) as a new, compact ``SparseBag``."""
        n = len(self)
        rows = torch.as_tensor(rows, device=self.offsets.device)
        if rows.numel() == 0 and rows.dim() == 1:
            rows = rows.to(torch.int64)  # [] arrives as float32
        if rows.dtype == torch.bool:
            if rows.shape != (n,):
                raise ValueError(f"SparseBag.subset: bool mask must have shape ({n},), got {tuple(rows.shape)}")
            rows = rows.nonzero().squeeze(1)
        if rows.dim() != 1 or rows.dtype.is_floating_point or rows.dtype.is_complex:
            raise ValueError(
                f"SparseBag.subset: rows must be a 1-D integer index, got {rows.dtype} {tuple(rows.shape)}"
            )
        rows = rows.to(torch.int64)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n):
            raise ValueError(
                f"SparseBag.subset: row ids must lie in [0, {n}), got [{int(rows.min())}, {int(rows.max())}]"
            )
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        new_offsets = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(lengths, 0, out=new_offsets[1:])
        total = int(new_offsets[-1])
        row_of = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), lengths)
        positions = starts[row_of] + torch.arange(total, device=rows.device) - new_offsets[:-1][row_of]
        return SparseBag(self.indices[positions], new_offsets, self.weights[positions], self.num_features, check=False)

    def to(self, device) -> "SparseBag":
        return SparseBag(
            self.indices.to(device), self.offsets.to(device), self.weights.to(device), self.num_features, check=False
        )

    def to_dense(self) -> torch.Tensor:
        """Dense float32 ``[n, num_features]`` (duplicates summed).  For small
        inputs and tests only."""
        n = len(self)
        out = torch.zeros(n, self.num_features, dtype=torch.float32, device=self.device)
        rows = torch.repeat_interleave(torch.arange(n, device=self.device), self.row_lengths())
        out.index_put_((rows, self.indices), self.weights, accumulate=True)
        return out

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[Sequence[int], Sequence[float]]],
        num_features: int,
    ) -> "SparseBag":
        """Build from ``(feature_ids, weights)`` pairs, one per row."""
        indices: list[int] = []
        weights: list[float] = []
        offsets = [0]
        for ids, ws in rows:
            if len(ids) != len(ws):
                raise ValueError(
                    f"SparseBag.from_rows: row {len(offsets) - 1} has {len(ids)} ids but {len(ws)} weights"
                )
            indices.extend(ids)
            weights.extend(ws)
            offsets.append(len(indices))
        return cls(
            torch.tensor(indices, dtype=torch.int64),
            torch.tensor(offsets, dtype=torch.int64),
            torch.tensor(weights, dtype=torch.float32),
            num_features,
        )


def pad_label_lists(label_lists: Sequence[Sequence[int]], width: int | None = None) -> torch.Tensor:
    """Pack ragged label lists into int64 ``[n, m]`` padded with -1.

    ``m`` is the longest list (at least 1, so a row with no label is a row of
    -1 rather than a zero-width tensor)."""
    n = len(label_lists)
    lengths = np.fromiter((len(ls) for ls in label_lists), dtype=np.int64, count=n)
    m = max(1, int(lengths.max()) if n else 1) if width is None else width
    out = np.full((n, m), -1, dtype=np.int64)
    if n and lengths.sum():
        flat = np.fromiter((lab for ls in label_lists for lab in ls), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = flat
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------
# Task container
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class LabelTask:
    """A train/test split of (input, label) pairs for a wide output layer.

    ``train_x`` / ``test_x`` are float32 ``[n, d]`` tensors for dense inputs
    (hidden vectors, as in the synthetic task) or ``SparseBag`` for
    bag-of-words inputs (WordNet, XC files).  ``train_y`` / ``test_y`` are
    int64, ``[n]`` for one label per row or ``[n, m]`` padded with -1 for
    several; a prediction counts as correct if it is any of the row's labels.
    ``meta`` carries source-specific extras (label names, vocabulary, ...).
    """

    name: str
    train_x: torch.Tensor | SparseBag
    train_y: torch.Tensor
    test_x: torch.Tensor | SparseBag
    test_y: torch.Tensor
    num_labels: int
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not isinstance(x, (torch.Tensor, SparseBag)):
                raise ValueError(f"LabelTask.{split}_x must be a tensor or SparseBag, got {type(x).__name__}")
            if isinstance(x, torch.Tensor) and x.dim() != 2:
                raise ValueError(f"LabelTask.{split}_x must be [n, d], got {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.dim() not in (1, 2):
                raise ValueError(f"LabelTask.{split}_y must be int64 [n] or [n, m], got {y.dtype} {tuple(y.shape)}")
            if len(x) != y.shape[0]:
                raise ValueError(f"LabelTask: {split}_x has {len(x)} rows but {split}_y has {y.shape[0]}")
            if y.numel() and (int(y.min()) < -1 or int(y.max()) >= self.num_labels):
                raise ValueError(
                    f"LabelTask.{split}_y must lie in [0, num_labels={self.num_labels}) (or -1 as padding), "
                    f"got range [{int(y.min())}, {int(y.max())}]"
                )

    def __repr__(self) -> str:  # meta can hold 100K-entry lists; keep it short
        def shape(v):
            return repr(v) if isinstance(v, SparseBag) else f"{v.dtype} {tuple(v.shape)}"

        return (
            f"{type(self).__name__}(name={self.name!r}, num_labels={self.num_labels}, "
            f"train_x={shape(self.train_x)}, train_y={shape(self.train_y)}, "
            f"test_x={shape(self.test_x)}, test_y={shape(self.test_y)}, meta keys={sorted(self.meta)})"
        )

    @property
    def input_dim(self) -> int:
        """Width of the input: ``d`` for dense inputs, the vocabulary size for sparse ones."""
        x = self.train_x
        return x.num_features if isinstance(x, SparseBag) else x.shape[1]


# ---------------------------------------------------------------------------
# Synthetic wide-output task
# ---------------------------------------------------------------------------


@dataclass(eq=False, repr=False, kw_only=True)  # keeps LabelTask's short repr
class SyntheticTask(LabelTask):
    """A ``LabelTask`` plus the output layer it was generated with.

    ``weight [N, d]`` and ``bias [N]`` play the trained last layer;
    ``train_x`` / ``test_x`` play its hidden vectors.  ``meta`` holds the
    generator's ground truth: ``cluster`` (cluster id per label), ``prior``
    (label probability) and the generation parameters.
    """

    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight.dim() != 2 or self.weight.shape[0] != self.num_labels:
            raise ValueError(
                f"SyntheticTask.weight must be [num_labels={self.num_labels}, d], got {tuple(self.weight.shape)}"
            )
        if self.bias.shape != (self.num_labels,):
            raise ValueError(f"SyntheticTask.bias must be [{self.num_labels}], got {tuple(self.bias.shape)}")


def _in_cluster_offsets(basis_rows: torch.Tensor, cluster: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``out[i] = sum_j coeffs[i, j] * basis_rows[cluster[i] * r + j]``.

    ``basis_rows`` is ``[C * r, d]``: the ``r`` basis vectors of each cluster
    as consecutive rows.  ``embedding_bag`` does the gather-and-sum without
    materialising a ``[n, r, d]`` gather (10x faster than ``bmm`` on it)."""
    n, r = coeffs.shape
    ids = (cluster.unsqueeze(1) * r + torch.arange(r)).reshape(-1)
    offsets = torch.arange(0, n * r, r)
    return torch.nn.functional.embedding_bag(
        ids, basis_rows, offsets, mode="sum", per_sample_weights=coeffs.reshape(-1)
    )


def make_synthetic_task(
    num_labels: int = 200_000,
    dim: int = 128,
    num_train: int = 100_000,
    num_test: int = 2_000,
    num_clusters: int | None = None,
    seed: int = 0,
    *,
    zipf_exponent: float = 1.0,
    cluster_rank: int = 16,
    label_spread: float = 0.5,
    norm_spread: float = 0.35,
    norm_jitter: float = 0.05,
    noise: float = 0.9,
    isotropic_noise: float = 0.3,
) -> SyntheticTask:
    """A synthetic output layer and its hidden vectors (see ``SyntheticTask``).

    The generative story makes the dense layer the linear discriminant of a
    Gaussian mixture, i.e. roughly what softmax training would converge to:

    * ``num_clusters`` random unit centres ``c_k`` (default
      ``num_labels // 500``, so clusters hold ~500 labels at every size).
      Label ``i`` in cluster ``k`` has mean hidden vector
      ``mu_i = rho_i * normalize(c_k + label_spread * B_k z_i / sqrt(r))``
      with ``B_k`` a random ``cluster_rank``-dimensional basis: siblings are
      near-duplicates (cosine ~0.8), which random hyperplane hashes collide.
      ``rho_i`` is log-normal per cluster (``norm_spread``) with a small
      per-label jitter (``norm_jitter``).
    * Label popularity is Zipf(``zipf_exponent``) over a random ranking;
      train and test labels are drawn from it (``meta["prior"]``).
    * A query for label ``y`` in cluster ``k`` is
      ``mu_y + noise * B_k z' / sqrt(r) + isotropic_noise * eps / sqrt(d)``:
      most noise lies in the cluster's own subspace, so mistakes are mostly
      between siblings.
    * ``weight = mu / v``, ``bias = log prior - |mu|^2 / (2 v)`` with ``v``
      the per-direction noise variance in a cluster subspace.  Among
      siblings, popular labels get larger biases; across clusters, norms and
      logits scale with ``rho^2``, so many queries win with a logit far below
      other queries' top logits and their label's bias-augmented vector is
      short -- the regime in which a MIPS index misses the true label.

    Measured at the default size (N=200K, d=128, 100K train, 2K test):
    dense P@1 = 0.610 / 0.612 / 0.628 for seeds 0 / 1 / 2 (0.61 on 5K test
    queries); ~90% of the mistakes pick a sibling of the true label.
    Generation takes 0.6 s on 2 idle CPU cores (2-3 s on a busy machine) and
    allocates O(N d + n d) memory.  At N=5000 (10 clusters) P@1 is ~0.5.
    """
    if num_labels < 1 or dim < 1 or num_train < 0 or num_test < 0:
        raise ValueError(
            f"make_synthetic_task: need num_labels >= 1, dim >= 1, num_train >= 0, num_test >= 0; got "
            f"{num_labels}, {dim}, {num_train}, {num_test}"
        )
    if num_clusters is None:
        num_clusters = max(1, num_labels // 500)
    if not 1 <= num_clusters <= num_labels:
        raise ValueError(f"make_synthetic_task: num_clusters must be in [1, num_labels], got {num_clusters}")
    rank = max(1, min(cluster_rank, dim))
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float32)

    centres = torch.nn.functional.normalize(randn(num_clusters, dim), dim=1)
    # Rows k*rank .. k*rank+rank-1 span cluster k's subspace B_k; they have
    # norm ~1 and are nearly orthogonal in high dimension.
    basis = randn(num_clusters * rank, dim) / math.sqrt(dim)
    # Every cluster gets at least one label when possible, the rest at random.
    cluster = torch.randint(num_clusters, (num_labels,), generator=gen)
    cluster[:num_clusters] = torch.arange(num_clusters)
    cluster = cluster[torch.randperm(num_labels, generator=gen)]

    directions = _in_cluster_offsets(basis, cluster, randn(num_labels, rank))
    directions.mul_(label_spread / math.sqrt(rank)).add_(centres[cluster])
    directions = torch.nn.functional.normalize(directions, dim=1)
    rho = torch.exp(norm_spread * randn(num_clusters))[cluster]
    rho.mul_(torch.exp(norm_jitter * randn(num_labels)))
    means = directions.mul_(rho.unsqueeze(1))

    ranks = torch.randperm(num_labels, generator=gen).to(torch.float64)
    prior64 = (ranks + 1.0).pow(-zipf_exponent)
    prior64 /= prior64.sum()
    cdf = torch.cumsum(prior64, 0)
    cdf[-1] = 1.0

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        y = torch.searchsorted(cdf, u, right=True).clamp_(max=num_labels - 1)
        x = _in_cluster_offsets(basis, cluster[y], randn(n, rank))
        x.mul_(noise / math.sqrt(rank))
        x.add_(randn(n, dim), alpha=isotropic_noise / math.sqrt(dim))
        x.add_(means[y])
        return x, y

    train_x, train_y = draw(num_train)
    test_x, test_y = draw(num_test)

    # Per-direction noise variance inside a cluster subspace.
    v = noise**2 / rank + isotropic_noise**2 / dim
    weight = means / v
    bias = prior64.log().to(torch.float32) - means.pow(2).sum(1) / (2 * v)
    weight = weight.contiguous()
    meta = {
        "cluster": cluster,
        "prior": prior64.to(torch.float32),
        "num_clusters": num_clusters,
        "seed": seed,
        "params": dict(
            zipf_exponent=zipf_exponent,
            cluster_rank=rank,
            label_spread=label_spread,
            norm_spread=norm_spread,
            norm_jitter=norm_jitter,
            noise=noise,
            isotropic_noise=isotropic_noise,
        ),
    }
    return SyntheticTask(
        name="synthetic",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_labels=num_labels,
        meta=meta,
        weight=weight,
        bias=bias,
    )


@torch.no_grad()
def dense_top1(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    chunk: int = 1024,
    max_tile_elements: int = 1 << 24,
) -> torch.Tensor:
    """``argmax(x @ weight.T + bias, dim=1)`` without materialising ``[n, N]``:
    queries in chunks of ``chunk``, labels in tiles so one block holds at most
    ``max_tile_elements`` logits.  Ties go to the lowest label id."""
    n, num_labels = x.shape[0], weight.shape[0]
    out = torch.empty(n, dtype=torch.int64, device=x.device)
    tile = max(1, max_tile_elements // max(1, chunk))
    for s in range(0, n, chunk):
        xs = x[s : s + chunk]
        best_val = torch.full((xs.shape[0],), -math.inf, dtype=torch.float32, device=x.device)
        best_id = torch.zeros(xs.shape[0], dtype=torch.int64, device=x.device)
        for t in range(0, num_labels, tile):
            logits = xs @ weight[t : t + tile].T
            if bias is not None:
                logits += bias[t : t + tile]
            val, idx = logits.max(dim=1)
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_id = torch.where(better, idx + t, best_id)
        out[s : s + chunk] = best_id
    return out


def hits_at_1(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bool ``[n]``: is ``pred[i]`` one of row ``i``'s labels (``y`` is
    ``[n]`` or ``[n, m]`` padded with -1)?"""
    pred = pred.to(torch.int64)
    if y.dim() == 1:
        return (pred == y) & (y >= 0)
    return ((y == pred.unsqueeze(1)) & (y >= 0)).any(dim=1)


def dense_precision_at_1(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk: int = 1024,
) -> float:
    """P@1 of full dense inference ``argmax(x @ weight.T + bias)`` against
    labels ``y`` (``[n]``, or ``[n, m]`` padded with -1: a hit is any label),
    computed in chunks so memory stays O(chunk * tile)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"dense_precision_at_1: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.shape[0] == 0:
        return float("nan")
    pred = dense_top1(weight, bias, x, chunk=chunk)
    return hits_at_1(pred, y.to(pred.device)).double().mean().item()


# ---------------------------------------------------------------------------
# Extreme Classification Repository format
# ---------------------------------------------------------------------------


def read_xc_file(path: str | os.PathLike) -> tuple[SparseBag, torch.Tensor, int]:
    """Read a file in the Extreme Classification Repository's sparse format.

    The first line is ``num_points num_features num_labels``; each following
    line is one point, ``l1,l2,... f:v f:v ...`` with 0-based ids.  The
    label list may be empty (the line starts with a space or directly with
    ``f:v``).  Returns ``(features, labels, num_labels)`` with ``labels``
    int64 ``[n, m]`` padded with -1.  Malformed input raises ``ValueError``
    naming the file and line.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if not any(line.strip() for line in lines):
        raise ValueError(f"{path}: empty file, expected a header 'num_points num_features num_labels'")
    header = lines[0].split()
    try:
        if len(header) != 3:
            raise ValueError
        num_points, num_features, num_labels = (int(h) for h in header)
        if min(num_points, num_features, num_labels) < 0:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{path}:1: bad header {lines[0]!r}, expected three non-negative integers "
            f"'num_points num_features num_labels'"
        ) from None
    body = [line.rstrip("\r") for line in lines[1:]]
    # The final newline leaves an empty string, and blank lines after the
    # data are harmless.  A point with neither labels nor features is a
    # single space (what "labels + ' ' + features" writes), never "".
    while body and not body[-1]:
        body.pop()
    if "" in body:
        raise ValueError(
            f"{path}:{body.index('') + 2}: empty line; a point with no labels and no features is written "
            f"as a single space"
        )
    if len(body) != num_points:
        raise ValueError(f"{path}: header says {num_points} points but the file has {len(body)} data lines")

    indices: list[int] = []
    weights: list[float] = []
    offsets = [0]
    label_lists: list[list[int]] = []
    for lineno, line in enumerate(body, start=2):
        parts = line.split(" ")
        first = parts[0]
        if first and ":" not in first:
            try:
                labels = [int(t) for t in first.split(",")]
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: bad label list {first!r}, expected comma-separated integers"
                ) from None
            feats = parts[1:]
        else:
            labels = []
            feats = parts
        for lab in labels:
            if not 0 <= lab < num_labels:
                raise ValueError(f"{path}:{lineno}: label id {lab} out of range [0, {num_labels})")
        for tok in feats:
            if not tok:
                continue
            fid, sep, val = tok.partition(":")
            try:
                if not sep:
                    raise ValueError
                fid_i = int(fid)
                val_f = float(val)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad feature {tok!r}, expected 'feature_id:value'") from None
            if not 0 <= fid_i < num_features:
                raise ValueError(f"{path}:{lineno}: feature id {fid_i} out of range [0, {num_features})")
            indices.append(fid_i)
            weights.append(val_f)
        offsets.append(len(indices))
        label_lists.append(labels)

    bag = SparseBag(
        torch.tensor(indices, dtype=torch.int64),
        torch.tensor(offsets, dtype=torch.int64),
        torch.tensor(weights, dtype=torch.float32),
        num_features,
        check=False,
    )
    return bag, pad_label_lists(label_lists), num_labels


# ---------------------------------------------------------------------------
# WordNet: guess the word from a text about it
# ---------------------------------------------------------------------------

_WORDNET_PARTS = ("noun", "verb", "adj", "adv")
_TOKEN = re.compile(r"[a-z0-9]+")
_ADJ_MARKER = re.compile(r"\([a-z]+\)$")
_QUOTED = re.compile(r'"([^"]*)"')


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _crude_stem(token: str) -> str:
    """A deliberately crude stemmer, used only to mask inflected forms of the
    target word ("choked", "chokes" for "choke") out of test texts."""
    for suffix in ("ings", "ing", "ed", "es", "er", "est", "ly", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            token = token[: -len(suffix)]
            break
    if len(token) > 3 and token[-1] in "eyi":
        token = token[:-1]
    if len(token) > 3 and token[-1] == token[-2] and token[-1] not in "aeiou":
        token = token[:-1]
    return token


def _parse_wordnet_data(path: str) -> list[tuple[list[str], str, list[str]]]:
    """Synsets of one ``data.<pos>`` file as ``(lemmas, definition, examples)``.

    Line format (wndb(5)): ``offset lex_filenum ss_type w_cnt word lex_id
    [word lex_id ...] p_cnt ... | gloss``; ``w_cnt`` is hex.  Lines starting
    with two spaces are the license header.  Examples are the double-quoted
    parts of the gloss; the definition is the rest."""
    synsets = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            try:
                if not sep or len(fields) < 6:
                    raise ValueError
                count = int(fields[3], 16)
                if count < 1 or len(fields) < 4 + 2 * count:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: not a WordNet data line (expected 'offset lex_filenum ss_type "
                    f"w_cnt word lex_id ... | gloss')"
                ) from None
            lemmas = [
                (_ADJ_MARKER.sub("", w) if w.endswith(")") else w).lower() for w in fields[4 : 4 + 2 * count : 2]
            ]
            gloss = gloss.strip()
            examples = [e.strip() for e in _QUOTED.findall(gloss) if e.strip()]
            definition = _QUOTED.sub(" ", gloss)
            synsets.append((lemmas, definition, examples))
    return synsets


def _read_exceptions(root: str) -> dict[str, set[str]]:
    """Irregular forms from WordNet's ``*.exc`` files (e.g. "ran" -> "run"),
    mapped base -> inflected forms.  Missing files are fine."""
    forms: dict[str, set[str]] = {}
    for part in _WORDNET_PARTS:
        path = os.path.join(root, f"{part}.exc")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                for base in words[1:]:
                    forms.setdefault(base.lower(), set()).add(words[0].lower())
    return forms


def _tfidf_bag(docs: list[list[str]], vocabulary: list[str], idf: np.ndarray) -> SparseBag:
    """tf-idf rows, L2-normalised, features ascending within a row; tokens
    outside ``vocabulary`` are ignored (a row may end up empty)."""
    token_id = {t: i for i, t in enumerate(vocabulary)}
    num_features = len(vocabulary)
    lengths = np.empty(len(docs), dtype=np.int64)
    flat: list[int] = []
    for r, toks in enumerate(docs):
        ids = [token_id[t] for t in toks if t in token_id]
        flat.extend(ids)
        lengths[r] = len(ids)
    rows = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    keys, tf = np.unique(rows * num_features + np.asarray(flat, dtype=np.int64), return_counts=True)
    rows, features = keys // max(1, num_features), keys % max(1, num_features)
    weights = tf * idf[features]
    norms = np.sqrt(np.bincount(rows, weights=weights * weights, minlength=len(docs)))
    weights /= norms[rows]
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(docs)), out=offsets[1:])
    return SparseBag(
        torch.from_numpy(features),
        torch.from_numpy(offsets),
        torch.from_numpy(weights.astype(np.float32)),
        num_features,
    )


def make_wordnet_task(
    root: str | os.PathLike = "/usr/share/wordnet",
    seed: int = 0,
    *,
    test_fraction: float = 0.25,
    min_token_count: int = 2,
    label_set: str = "examples",
    with_definition: bool = True,
    parts: Sequence[str] = _WORDNET_PARTS,
) -> LabelTask:
    """Guess the word: a bag-of-words text about a word -> the word (lemma).

    Built from WordNet's ``data.<pos>`` files (Debian package
    ``wordnet-base``).  Labels are lowercased lemmas (``"drag_on"``), merged
    across parts of speech (so polysemous words are frequent labels); with
    ``label_set="examples"`` (default) the lemmas of synsets that have a
    usage example, with ``"all"`` every lemma.

    * Training rows: each synset's definition, labelled with all its lemmas
      in the label set (multi-label), and the usage examples not held out.
    * Test rows: held-out usage examples (``test_fraction`` of them, chosen
      by ``seed``), labelled with all the synset's lemmas.
    * Every token of every lemma of the synset is masked out of its texts,
      with crude inflections and WordNet's irregular forms ("choked", "ran"
      for "choke", "run"), so the answer is never in the text.
    * ``with_definition=True`` (default) appends the synset's (masked)
      definition to each usage example, train and test alike.  A masked
      usage example alone is a fill-in-the-blank problem that a
      bag-of-words model cannot solve (P@1 ~0.5%, see the module notes);
      with the definition the test text is a seen definition plus unseen
      context words: a query near, not at, the training queries.
    * Tokens are lowercase alphanumeric runs; the vocabulary is the tokens
      in at least ``min_token_count`` training rows, most frequent first.
      Weights are tf-idf, L2-normalised per row.  Test rows left with no
      known token are dropped.

    ``meta`` holds ``labels`` (names), ``vocabulary``, ``test_text`` (the
    masked test texts, example and definition separated by " | ") and the
    parameters.  Sizes and a small model's P@1 are in the module docstring.
    """
    root = os.fspath(root)
    if label_set not in ("examples", "all"):
        raise ValueError(f"make_wordnet_task: label_set must be 'examples' or 'all', got {label_set!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"make_wordnet_task: test_fraction must be in (0, 1), got {test_fraction}")
    files = []
    for part in parts:
        if part not in _WORDNET_PARTS:
            raise ValueError(f"make_wordnet_task: unknown part {part!r}, expected some of {_WORDNET_PARTS}")
        path = os.path.join(root, f"data.{part}")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"make_wordnet_task: {path} not found; install Debian's wordnet-base package "
                f"(apt-get install wordnet-base) or pass root= a directory with WordNet's data.* files"
            )
        files.append(path)
    synsets = [s for path in files for s in _parse_wordnet_data(path)]

    if label_set == "examples":
        names = sorted({lemma for lemmas, _, examples in synsets if examples for lemma in lemmas})
    else:
        names = sorted({lemma for lemmas, _, _ in synsets for lemma in lemmas})
    label_id = {name: i for i, name in enumerate(names)}

    # Every usage example, in file order, then a seeded split.
    example_refs = [(s, e) for s, (_, _, examples) in enumerate(synsets) for e in range(len(examples))]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(example_refs), generator=gen).tolist()
    num_test = int(round(test_fraction * len(example_refs)))
    is_test = [False] * len(example_refs)
    for i in order[:num_test]:
        is_test[i] = True

    irregular = _read_exceptions(root)
    stem_memo: dict[str, str] = {}
    mask_memo: dict[int, tuple[set[str], set[str]]] = {}
    definition_memo: dict[int, list[str]] = {}

    def stem(token: str) -> str:
        found = stem_memo.get(token)
        if found is None:
            found = stem_memo[token] = _crude_stem(token)
        return found

    def masked(s: int, text: str) -> list[str]:
        """Tokens of ``text`` minus every form of synset ``s``'s lemmas."""
        if s not in mask_memo:
            exact: set[str] = set()
            for lemma in synsets[s][0]:
                exact.update(_tokens(lemma.replace("_", " ")))
                for form in irregular.get(lemma, ()):
                    exact.update(_tokens(form.replace("_", " ")))
            mask_memo[s] = (exact, {stem(t) for t in exact if len(t) >= 3})
        exact, stems = mask_memo[s]
        return [t for t in _tokens(text) if t not in exact and (len(t) < 3 or stem(t) not in stems)]

    def masked_definition(s: int) -> list[str]:
        if s not in definition_memo:
            definition_memo[s] = masked(s, synsets[s][1])
        return definition_memo[s]

    train_tokens: list[list[str]] = []
    train_labels: list[list[int]] = []
    for s, (lemmas, _, _) in enumerate(synsets):
        ids = [label_id[lemma] for lemma in dict.fromkeys(lemmas) if lemma in label_id]
        if ids:
            train_tokens.append(masked_definition(s))
            train_labels.append(ids)
    test_tokens: list[list[str]] = []
    test_labels: list[list[int]] = []
    test_text: list[str] = []
    for k, (s, e) in enumerate(example_refs):
        lemmas, _, examples = synsets[s]
        ids = [label_id[lemma] for lemma in dict.fromkeys(lemmas)]
        toks = masked(s, examples[e])
        text = " ".join(toks)
        if with_definition:
            context = masked_definition(s)
            toks = toks + context
            text = f"{text} | {' '.join(context)}"
        if is_test[k]:
            test_tokens.append(toks)
            test_labels.append(ids)
            test_text.append(text)
        else:
            train_tokens.append(toks)
            train_labels.append(ids)

    df = Counter(t for toks in train_tokens for t in set(toks))
    vocabulary = sorted((t for t, c in df.items() if c >= min_token_count), key=lambda t: (-df[t], t))
    num_docs = len(train_tokens)
    idf = np.array([math.log((1 + num_docs) / (1 + df[t])) + 1.0 for t in vocabulary], dtype=np.float64)
    train_x = _tfidf_bag(train_tokens, vocabulary, idf)
    test_x = _tfidf_bag(test_tokens, vocabulary, idf)
    keep = (test_x.row_lengths() > 0).tolist()
    test_x = test_x.subset(torch.tensor(keep, dtype=torch.bool))
    test_labels = [r for r, k in zip(test_labels, keep) if k]
    test_text = [r for r, k in zip(test_text, keep) if k]

    return LabelTask(
        name="wordnet",
        train_x=train_x,
        train_y=pad_label_lists(train_labels),
        test_x=test_x,
        test_y=pad_label_lists(test_labels),
        num_labels=len(names),
        meta={
            "labels": names,
            "vocabulary": vocabulary,
            "test_text": test_text,
            "root": root,
            "seed": seed,
            "test_fraction": test_fraction,
            "min_token_count": min_token_count,
            "label_set": label_set,
            "with_definition": with_definition,
            "parts": tuple(parts),
        },
    )
