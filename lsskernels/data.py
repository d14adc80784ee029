"""Data for developing and using Label Superior Sampling.

* ``make_synthetic_task`` -- a ready-made output layer ``(weight, bias)`` with
  hidden vectors drawn so that dense inference is good but imperfect, the
  labels are clustered and Zipf-distributed, and the true label's logit is
  often only moderate.  It stands in for a trained network, so the hashing
  code can be exercised without training anything (``make demo`` runs on it).
* ``read_xc_file`` -- the sparse text format of the Extreme Classification
  Repository (Amazon-670K, Wiki-500K, ...), read into a ``SparseBag``.

Sparse inputs are ``SparseBag`` objects, laid out to feed
``torch.nn.EmbeddingBag`` directly.  Labels are int64, ``[n]`` for one label
per row or ``[n, m]`` padded with -1 for several.

The benchmarks' tasks (WordNet, MiniLM word senses), their text features and
their metrics live in the repository's ``bench/data/``, not in the library.

This module imports only torch, numpy and the standard library, so it can be
used (and tested) without the compiled extension.

The synthetic task's measured dense P@1 and generation time are in
docs/performance.md ("Measurements moved out of code comments"), with the
other numbers that used to sit in docstrings.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, InitVar
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "SparseBag",
    "LabelTask",
    "SyntheticTask",
    "make_synthetic_task",
    "read_xc_file",
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
    materialising a ``[n, r, d]`` gather (faster than ``bmm`` on it:
    docs/performance.md, "Measurements moved out of code comments")."""
    n, r = coeffs.shape
    ids = (cluster.unsqueeze(1) * r + torch.arange(r)).reshape(-1)
    offsets = torch.arange(0, n * r, r)
    return torch.nn.functional.embedding_bag(
        ids, basis_rows, offsets, mode="sum", per_sample_weights=coeffs.reshape(-1)
    )


_ROWS_PER_CHUNK = 1 << 18


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

    Dense inference is good but imperfect, and most of its mistakes pick a
    sibling of the true label (measured P@1 per seed and generation times:
    docs/performance.md, "Measurements moved out of code comments";
    ``make demo`` prints the dense P@1 of its run).  Generation allocates
    the weights once plus O(n d) for the queries and chunk-sized
    temporaries (at N = 10^7, d = 128: a peak near 1.1x the weights' bytes).
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

    # The [N, d] arrays are built in row chunks, in place: the generator's
    # peak stays near one copy of the weights (the same numbers as whole-array
    # operations: every step is per row).
    coeffs = randn(num_labels, rank)
    rho = torch.exp(norm_spread * randn(num_clusters))[cluster]
    rho.mul_(torch.exp(norm_jitter * randn(num_labels)))
    means = torch.empty(num_labels, dim, dtype=torch.float32)
    for s in range(0, num_labels, _ROWS_PER_CHUNK):
        rows = slice(s, s + _ROWS_PER_CHUNK)
        d = _in_cluster_offsets(basis, cluster[rows], coeffs[rows])
        d.mul_(label_spread / math.sqrt(rank)).add_(centres[cluster[rows]])
        d.div_(d.norm(dim=1, keepdim=True).clamp_min(1e-12))  # torch.nn.functional.normalize, in place
        means[rows] = d.mul_(rho[rows].unsqueeze(1))
    del coeffs

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
    sq_norms = torch.cat([means[s : s + _ROWS_PER_CHUNK].pow(2).sum(1) for s in range(0, num_labels, _ROWS_PER_CHUNK)])
    bias = prior64.log().to(torch.float32) - sq_norms / (2 * v)
    weight = means.div_(v)  # means is not needed after this
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
