"""ShardedLSSLinear: an LSSLinear split by output rows over the ranks of a
torch.distributed process group (gloo on CPU, NCCL on GPU), for output
layers too wide for one device.

    layer = ShardedLSSLinear.from_linear(linear, max_candidates=256)   # on every rank
    layer.fit(queries, labels)          # every rank, the same pairs: each shard fits its rows
    scores, ids = layer.predict(x, k)   # every rank, the same x: the same global top-k everywhere
    layer.train(); loss = layer.cross_entropy(x, target)               # vocab-parallel softmax

Rows: rank r of a group of K ranks keeps the contiguous rows [start, stop)
of the N labels given by shard_range(N, K, r): q, rem = divmod(N, K); the
first rem ranks hold q + 1 rows, the others q, in rank order (rank r starts
at r * q + min(r, rem)). Each rank holds its rows' weight and bias and one
local LSSLinear of those rows (labels 0 .. stop - start - 1 there), with its
own index; global label id = local id + start.

Labels over time (partition family): add_labels appends the new rows to the
last rank, whose range grows to [start, N + n); the other ranks' ranges stay
(no row moves, no collective beyond one flag). remove_labels removes each
global id on the rank whose range holds it. The layout (every rank's range,
`bounds`) is part of the shard metadata; a grown layout loads into a layer
built for the grown N. gather_state_dict / from_single rebalance it.

Collectives (every rank must call these, in the same order, with the same
arguments): fit (one all_gather_object of the shards' reports), add_labels
(one all_reduce of a failure flag; none in a world of one), predict (one
all_gather of [B, 2k] float64: each shard's top-k scores and global ids),
the backward of a forward / cross_entropy whose input needs a gradient (one
all_reduce of x's gradient), vocab_parallel_cross_entropy (one all_reduce
MAX and one all_reduce SUM), gather_state_dict / to_single (one all_gather,
or a gather to dst). Construction, remove_labels(), candidates(),
sparse_logits() and state_dict() / load_state_dict() are local. Argument
errors are raised before any collective; given the same arguments every rank
raises alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as checks
from . import _ops
from .fit_pairs import labels_matrix
from . import families
from .families import config_from_knobs, make_index
from .label_updates import check_new_labels, require_lists
from .layer import LSSLinear
from .partition.fit import judge_shards
from .partition.index import default_partitions

Tensor = torch.Tensor

_FORMAT = 2  # the shard metadata's format (extra state); 2 adds `bounds` (format 1: the balanced layout)
_REDUCTIONS = ("mean", "sum", "none")


def _dist():
    import torch.distributed as dist

    return dist


def shard_range(num_rows: int, world_size: int, rank: int) -> Tuple[int, int]:
    """Rows [start, stop) of rank `rank` among `world_size` contiguous,
    balanced shards of `num_rows` rows: the first num_rows % world_size ranks
    hold one row more."""
    checks.integer("world_size", world_size, 1)
    checks.integer("num_rows", num_rows, world_size)
    checks.integer("rank", rank, 0, world_size - 1)
    q, rem = divmod(num_rows, world_size)
    start = rank * q + min(rank, rem)
    return start, start + q + (1 if rank < rem else 0)


def _balanced_bounds(num_rows: int, world_size: int) -> List[int]:
    """The K + 1 row boundaries of shard_range's balanced layout."""
    return [shard_range(num_rows, world_size, r)[0] for r in range(world_size)] + [num_rows]


def _layout_problem(bounds, num_rows: int, world_size: int) -> Optional[str]:
    """Why bounds is not a layout of num_rows rows over world_size ranks
    (K + 1 ints from 0 to N, every rank at least one row), or None."""
    if not isinstance(bounds, (list, tuple)) or len(bounds) != world_size + 1:
        return f"bounds must list {world_size + 1} row boundaries, got {bounds!r}"
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        return f"bounds must be ints, got {bounds!r}"
    if bounds[0] != 0 or bounds[-1] != num_rows or any(a >= b for a, b in zip(bounds, bounds[1:])):
        return f"bounds {list(bounds)} are not increasing from 0 to N = {num_rows}"
    return None


def _group_info(process_group) -> Tuple[object, int, int]:
    """(group, rank in it, world size) of process_group (None: the default group)."""
    if not torch.distributed.is_available():
        raise RuntimeError("ShardedLSSLinear needs torch.distributed, which this build of torch lacks")
    dist = _dist()
    if not dist.is_initialized():
        raise RuntimeError("ShardedLSSLinear needs an initialised process group: call "
                           "torch.distributed.init_process_group(...) (gloo on CPU, nccl on GPU) on every rank first")
    group = process_group if process_group is not None else dist.group.WORLD
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("process_group: this process is not a member of it")
    return group, rank, dist.get_world_size(group)


class _CopyToGroup(torch.autograd.Function):
    """Identity forward; backward all-reduces (sums) the gradient over the
    group: x is replicated on every rank and each rank's logits depend on it,
    so x's gradient is the sum of every shard's part (Megatron's
    copy_to_tensor_model_parallel_region)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        _dist().all_reduce(grad, group=ctx.group)
        return grad, None


def _copy_to_group(x: Tensor, group, world_size: int) -> Tensor:
    if world_size == 1 or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _CopyToGroup.apply(x, group)


class _VocabParallelCE(torch.autograd.Function):
    """Per-row cross-entropy of logits sharded by class: (logits [R, n],
    target [R]) -> loss [R] (0 where ignored). Two collectives: all_reduce MAX
    of the row maxima, one all_reduce SUM of (sum of exp, target logit, number
    of shards owning the target)."""

    @staticmethod
    def forward(ctx, logits, target, start, stop, group, ignore_index, removed=None):
        dist = _dist()
        work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        valid = target != ignore_index
        own = valid & (target >= start) & (target < stop)
        local_t = torch.where(own, target - start, torch.zeros_like(target))
        with torch.no_grad():
            mx = work.max(dim=1).values if work.shape[1] else work.new_full((work.shape[0],), float("-inf"))
            dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
            # A row whose every logit is -inf has no finite shift; 0 keeps it NaN-free until the log.
            mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
            shifted = work - mx.unsqueeze(1)
            exp = shifted.exp()
            picked = torch.where(own, shifted.gather(1, local_t.unsqueeze(1)).squeeze(1), torch.zeros_like(mx))
            cols = [exp.sum(1), picked, own.to(work.dtype)]
            if removed is not None:  # the owner says whether the target is a removed label
                cols.append((own & removed[local_t]).to(work.dtype))
            buf = torch.stack(cols, 1)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
            sum_exp, picked, owners = buf[:, 0], buf[:, 1], buf[:, 2]
            bad = valid & (owners != 1)
            if bool(bad.any()):
                raise ValueError(f"target must hold class ids in [0, N) of the sharded classes or ignore_index = "
                                 f"{ignore_index}; {int(bad.sum())} entries are neither "
                                 f"(e.g. {int(target[bad][0])})")
            if removed is not None:
                gone = valid & (buf[:, 3] > 0)
                if bool(gone.any()):
                    raise ValueError(f"target holds labels removed by remove_labels ({int(gone.sum())} entries, "
                                     f"e.g. {int(target[gone][0])}): their logits are -inf, the loss would be "
                                     f"inf; map them to ignore_index = {ignore_index} or drop those entries")
            loss = torch.where(valid, sum_exp.log() - picked, torch.zeros_like(picked))
        ctx.save_for_backward(exp, sum_exp, local_t, own, valid)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        exp, sum_exp, local_t, own, valid = ctx.saved_tensors
        grad = exp / sum_exp.unsqueeze(1)  # this shard's columns of the softmax
        rows = own.nonzero().squeeze(1)
        grad[rows, local_t[rows]] -= 1
        scale = torch.where(valid, grad_loss.to(grad.dtype), torch.zeros_like(sum_exp))
        return (grad * scale.unsqueeze(1)).to(ctx.dtype), None, None, None, None, None, None


def vocab_parallel_cross_entropy(local_logits: Tensor, target: Tensor, start: int, stop: int, process_group=None,
                                 reduction: str = "mean", ignore_index: int = -100) -> Tensor:
    """F.cross_entropy over classes sharded by rank (Megatron's vocab-parallel
    cross-entropy): this rank holds the logits of classes [start, stop),
    local_logits [..., stop - start] (classes last), and every rank passes
    the same target [...] (int64 global class ids, or ignore_index). The row
    maximum is all-reduced (MAX), then the sum of exponentials and the target's
    logit (SUM, in one call); the loss and its reduction ("mean" over the
    non-ignored entries, "sum", or "none": per entry, 0 where ignored) are the
    same on every rank and equal F.cross_entropy of the full logits.
    Backward: the gradient of this rank's logits only (softmax - one-hot of
    its columns), no communication. Half-precision logits are computed in
    float32 and the loss is float32. Raises ValueError (on every rank) where
    a target is neither a class of some shard nor ignore_index. A target
    whose logit is -inf (a label removed by ShardedLSSLinear.remove_labels,
    masked by train-mode forward) gets an infinite loss, as F.cross_entropy
    gives; ShardedLSSLinear.cross_entropy refuses such targets instead."""
    _check_ce(local_logits, target, start, stop, reduction, ignore_index)
    return _vocab_parallel_ce(local_logits, target, start, stop, process_group, reduction, ignore_index, None)


def _check_ce(local_logits: Tensor, target: Tensor, start: int, stop: int, reduction: str, ignore_index: int) -> None:
    checks.tensor("local_logits", local_logits, None, checks.FLOAT_DTYPES, "[..., stop - start] floating point")
    checks.integer("start", start, 0)
    checks.integer("stop", stop, start + 1)
    if local_logits.dim() < 1 or local_logits.shape[-1] != stop - start:
        raise ValueError(f"local_logits must be [..., stop - start = {stop - start}], got {tuple(local_logits.shape)}")
    checks.tensor("target", target, None, (torch.int64, torch.int32), "int64 class ids")
    if tuple(target.shape) != tuple(local_logits.shape[:-1]):
        raise ValueError(f"target must be local_logits.shape[:-1] = {tuple(local_logits.shape[:-1])}, "
                         f"got {tuple(target.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    checks.integer("ignore_index", ignore_index)


def _vocab_parallel_ce(local_logits: Tensor, target: Tensor, start: int, stop: int, process_group, reduction: str,
                       ignore_index: int, removed: Optional[Tensor]) -> Tensor:
    group, _, _ = _group_info(process_group)
    t = target.reshape(-1).to(torch.int64)
    loss = _VocabParallelCE.apply(local_logits.reshape(-1, stop - start), t, start, stop, group, ignore_index,
                                  removed)
    if reduction == "none":
        return loss.reshape(target.shape)
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (t != ignore_index).sum().to(loss.dtype)  # all ignored: 0 / 0 = nan, as F.cross_entropy


@dataclass
class ShardedFitReport:
    """What fit() did on every shard. shards[r] (rank order, the same on every
    rank): rank, rows (start, stop), pairs (fit pairs with a label in the
    shard's rows), fitted, and the local fit report's fields (for the
    partition family: space, num_partitions, nprobe, rerank, code_dim,
    dense_p1 and target on the shard's held-out pairs, spilled, seconds).
    local: this rank's own report (report.index is its new index), or None
    where the shard had no pairs. merged: the nprobe and R every fitted
    shard took when the calibration judged the merged layer (fit) found a
    cheaper setting within tolerance than the shards chose alone (with its
    merged loss, its summed cost and the shards' own summed cost), else None."""
    shards: List[Dict[str, Any]] = field(default_factory=list)
    local: Any = None
    merged: Optional[Dict[str, Any]] = None

    @property
    def pairs(self) -> List[int]:
        return [s["pairs"] for s in self.shards]


def _report_summary(report) -> Dict[str, Any]:
    if report is None:
        return {}
    if dataclasses.is_dataclass(report):
        out = {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if f.name != "index"}
    else:
        out = {}
    total = getattr(report, "total_seconds", None)
    if isinstance(total, float):
        out["total_seconds"] = total
    return out


class _Prefixed(io.TextIOBase):
    """A text stream that writes each line to `stream` with a prefix."""

    def __init__(self, stream, prefix: str) -> None:
        self.stream, self.prefix, self.pending = stream, prefix, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.pending += s
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.stream.write(f"{self.prefix}{line}\n")
        return len(s)

    def flush(self) -> None:
        if self.pending:
            self.stream.write(self.prefix + self.pending)
            self.pending = ""
        self.stream.flush()


class ShardedLSSLinear(nn.Module):
    """An LSSLinear whose N output rows are split into contiguous shards over
    the ranks of a process group (module docstring: rows, collectives).

    Args (as LSSLinear, per shard): in_features, out_features (N, all shards
        together), bias, max_candidates (exact logits per query on each
        shard: predict scores up to K * max_candidates candidates in all,
        max_candidates per rank, in parallel), family, num_partitions and
        nprobe (the local index's: None chooses them from the shard's
        stop - start rows), num_tables, bits, min_hits, seed, backend, device,
        dtype; process_group: the group the rows are split over (None: the
        default group, which must be initialised).

    The constructor allocates only this rank's rows (initialised as
    nn.Linear's, from this rank's RNG) of the balanced layout
    (shard_range); from_linear copies a whole nn.Linear's rows, from_shard
    takes rows the caller already has. add_labels grows the last rank's
    range; load_state_dict takes a saved shard's layout (shard_ranges).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, max_candidates: int = 256,
                 process_group=None, family: Optional[str] = None, num_partitions: Optional[int] = None,
                 nprobe: Optional[int] = None, num_tables: Optional[int] = None, bits: Optional[int] = None,
                 min_hits: Optional[int] = None, seed: int = 0, backend: Optional[str] = None, device=None,
                 dtype=None) -> None:
        super().__init__()
        checks.integer("in_features", in_features, 1)
        checks.integer("out_features", out_features, 1, 2**31 - 1)
        group, rank, world = _group_info(process_group)
        if out_features < world:
            raise ValueError(f"out_features = {out_features} is fewer than the group's {world} ranks: every shard "
                             "needs at least one row")
        self.process_group = process_group
        self._group = group
        self.in_features = in_features
        self.out_features = out_features
        self.rank, self.world_size = rank, world
        self._set_bounds(_balanced_bounds(out_features, world))
        # The index knobs, for a local layer of another size (a loaded layout).
        self._knobs = dict(num_partitions=num_partitions, nprobe=nprobe, num_tables=num_tables, bits=bits,
                           min_hits=min_hits)
        self.local = LSSLinear(in_features, self.stop - self.start, bias, max_candidates=max_candidates,
                               index=self._local_config(family, self.stop - self.start), seed=seed, backend=backend,
                               device=device, dtype=dtype)

    def _local_config(self, family: Optional[str], rows: int):
        """The local index's configuration: the user's knobs and, for the
        partition family where the user set no count, the partition count of
        the whole layer (default_partitions(out_features), at most one per 8
        of the shard's rows). A shard's rows are a slice of the whole label
        set: where ids are unrelated to the labels' geometry, every group of
        similar labels has rows in every shard, and partitions coarser than
        the groups merge them (on the synthetic task a 335K-label layer of
        1,024 partitions needed 128 probes where 2,048 needed 8:
        docs/scaling.md). Finer than needed costs a longer centroid scan;
        coarser costs recall. Only the lists shorten by K."""
        knobs = dict(self._knobs)
        config = config_from_knobs(family, **knobs)
        if config.family == "partitions" and knobs["num_partitions"] is None:
            knobs["num_partitions"] = max(1, min(default_partitions(self.out_features), rows // 8))
            config = config_from_knobs(config.family, **knobs)
        return config

    # ----------------------------------------------------------- builders
    @classmethod
    def from_shard(cls, weight_rows: Tensor, bias_rows: Optional[Tensor], out_features: int, *,
                   max_candidates: int = 256, process_group=None, **knobs) -> "ShardedLSSLinear":
        """This rank's shard from rows the caller holds: weight_rows
        [stop - start, d] and bias_rows [stop - start] (or None) of the rows
        shard_range assigns to this rank (copied). knobs: as the constructor's."""
        checks.tensor("weight_rows", weight_rows, 2, checks.FLOAT_DTYPES, "[stop - start, in_features] floating point")
        checks.integer("out_features", out_features, 1, 2**31 - 1)
        _, rank, world = _group_info(process_group)
        if out_features < world:
            raise ValueError(f"out_features = {out_features} is fewer than the group's {world} ranks")
        start, stop = shard_range(out_features, world, rank)
        if weight_rows.shape[0] != stop - start:
            raise ValueError(f"rank {rank} of {world} holds rows [{start}, {stop}) of {out_features}: weight_rows "
                             f"must be [{stop - start}, d], got {tuple(weight_rows.shape)}")
        if bias_rows is not None:
            checks.tensor("bias_rows", bias_rows, 1, (weight_rows.dtype,), f"[{stop - start}] of weight_rows' dtype")
            if bias_rows.shape[0] != stop - start:
                raise ValueError(f"rank {rank} of {world} holds rows [{start}, {stop}): bias_rows must be "
                                 f"[{stop - start}], got {tuple(bias_rows.shape)}")
        layer = cls(weight_rows.shape[1], out_features, bias_rows is not None, max_candidates=max_candidates,
                    process_group=process_group, device=weight_rows.device, dtype=weight_rows.dtype, **knobs)
        with torch.no_grad():
            layer.local.weight.copy_(weight_rows)
            if bias_rows is not None:
                layer.local.bias.copy_(bias_rows)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, max_candidates: int = 256, process_group=None,
                    **knobs) -> "ShardedLSSLinear":
        """This rank's shard of an nn.Linear (rows [start, stop) of its
        weight and bias copied; the same linear on every rank). Its index is
        built on first use, or by fit()."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        _, rank, world = _group_info(process_group)
        if linear.out_features < world:
            raise ValueError(f"linear.out_features = {linear.out_features} is fewer than the group's {world} ranks")
        start, stop = shard_range(linear.out_features, world, rank)
        bias = linear.bias.detach()[start:stop] if linear.bias is not None else None
        return cls.from_shard(linear.weight.detach()[start:stop], bias, linear.out_features,
                              max_candidates=max_candidates, process_group=process_group, **knobs)

    @classmethod
    def from_single(cls, state_dict: Dict[str, Any], *, max_candidates: Optional[int] = None, process_group=None,
                    **knobs) -> "ShardedLSSLinear":
        """This rank's shard of a single-process LSSLinear checkpoint (the
        same state_dict on every rank; torch.load(..., mmap=True) keeps that
        cheap): rows [start, stop) of its weight and bias. max_candidates and
        seed default to the checkpoint's, family to its index's family.

        The index is rebuilt, not sliced: the checkpoint's index was built
        (and fitted) for all N labels, so each shard starts from the unfitted
        index of its own rows (built on first use); call fit() on the shards
        to learn theirs. The checkpoint's removed labels stay removed. The
        layout is the balanced one: from_single(gather_state_dict())
        rebalances shards that add_labels grew."""
        if not isinstance(state_dict, dict) or "weight" not in state_dict:
            raise ValueError("state_dict must be an LSSLinear's state_dict (a dict with 'weight')")
        weight = state_dict["weight"]
        checks.tensor("state_dict['weight']", weight, 2, checks.FLOAT_DTYPES, "[N, d] floating point")
        bias = state_dict.get("bias")
        extra = state_dict.get("_extra_state")
        extra = extra if isinstance(extra, dict) else {}
        if max_candidates is None:
            max_candidates = int(extra.get("max_candidates", 256))
        knobs.setdefault("seed", int(extra.get("seed", 0)))
        if "family" not in knobs:
            saved = state_dict.get("index._extra_state")
            if isinstance(saved, dict) and saved.get("family") in families.names():
                knobs["family"] = saved["family"]
            elif extra.get("format") == 1:  # 0.1: SimHash buffers on the layer
                knobs["family"] = "simhash"
        n = weight.shape[0]
        _, rank, world = _group_info(process_group)
        if n < world:
            raise ValueError(f"the checkpoint has {n} rows, fewer than the group's {world} ranks")
        removed = state_dict.get("removed")
        if removed is not None:
            checks.tensor("state_dict['removed']", removed, 1, (torch.bool,), f"bool [N = {n}]")
            if removed.shape[0] != n:
                raise ValueError(f"state_dict['removed'] must be bool [N = {n}], got {tuple(removed.shape)}")
        start, stop = shard_range(n, world, rank)
        layer = cls.from_shard(weight[start:stop], bias[start:stop] if bias is not None else None, n,
                               max_candidates=max_candidates, process_group=process_group, **knobs)
        if removed is not None and bool(removed[start:stop].any()):
            layer.local.remove_labels(torch.nonzero(removed[start:stop]).squeeze(1))
        return layer

    # --------------------------------------------------------- properties
    @property
    def shard_range(self) -> Tuple[int, int]:
        """(start, stop): this rank's rows, global label ids start .. stop - 1."""
        return self.start, self.stop

    @property
    def shard_ranges(self) -> List[Tuple[int, int]]:
        """Every rank's (start, stop), rank order: the balanced layout of
        shard_range at construction; after add_labels the last range ends
        at the grown N."""
        return list(zip(self._bounds[:-1], self._bounds[1:]))

    def _set_bounds(self, bounds: List[int]) -> None:
        self._bounds = [int(b) for b in bounds]
        self.start, self.stop = self._bounds[self.rank], self._bounds[self.rank + 1]

    @property
    def weight(self) -> nn.Parameter:
        """This shard's rows of the weight, [stop - start, in_features] (the local LSSLinear's)."""
        return self.local.weight

    @property
    def bias(self) -> Optional[nn.Parameter]:
        return self.local.bias

    @property
    def max_candidates(self) -> int:
        return self.local.max_candidates

    @max_candidates.setter
    def max_candidates(self, value: int) -> None:
        self.local.max_candidates = checks.integer("max_candidates", value, 1)

    @property
    def family(self) -> str:
        return self.local.family

    @property
    def fitted(self) -> bool:
        return self.local.fitted

    @property
    def backend(self) -> Optional[str]:
        return self.local.backend

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self.local.backend = value

    def _global_ids(self, ids: Tensor) -> Tensor:
        return torch.where(ids >= 0, ids + self.start, ids)

    # ----------------------------------------------------------------- fit
    def fit(self, queries: Tensor, labels: Tensor, *, seed: Optional[int] = None, **options) -> ShardedFitReport:
        """Fit every shard's index; called on every rank with the same pairs
        (queries [n, d] float, labels int64 [n] or [n, m] padded with -1, global
        ids). Each shard fits its local LSSLinear (LSSLinear.fit; options as
        there) on the pairs with a label in its rows, the labels outside its
        rows dropped (-1) and the others made local (label - start).

        A pair with no label in the shard's rows takes no part in the shard's
        fit, in spill and in calibration alike. The calibration measures the
        shard's held-out P@1 on its own labels, which is what decides the
        global P@1: where the dense layer's top-1 is the correct label, the
        merged top-1 is correct exactly when the owning shard's predict puts
        that label first (the other shards return exact logits of other
        labels, all below it); a query whose labels live elsewhere cannot
        make this shard more or less right. The shard's target is its own
        dense P@1 on those pairs and its cost budget a fraction of its own
        rows' bytes. A shard with no pair keeps the unfitted index of its rows.
        Then (partition family) nprobe and R are judged once more on the
        merged layer (lsskernels/partition/fit.py, judge_shards): the
        shards' losses weighted by their shares of the pairs, their standard
        errors combined, so K shards need not each reach the tolerance on a
        K-th of the held-out pairs; where that finds a cheaper setting every
        shard evaluated, every shard takes it (report.merged).

        Progress lines (progress=True, the default) are printed by every rank,
        prefixed "[shard r/K]". Collective: one all_gather_object of the
        shards' reports; an error on any shard is raised on every rank
        (this rank's own exception where it failed, else a RuntimeError
        naming the shards that did). Returns a ShardedFitReport."""
        checks.tensor("queries", queries, 2, checks.FLOAT_DTYPES, f"[n, {self.in_features}] floating point")
        y = labels_matrix(labels, queries.shape[0], self.out_features)
        mine = (y >= self.start) & (y < self.stop)
        local_y = torch.where(mine, y - self.start, torch.full_like(y, -1))
        keep = mine.any(1)
        pairs = int(keep.sum())
        report, error = None, None
        try:
            if pairs == 0:
                self.local.rebuild_index()
            else:
                q = queries[keep.to(queries.device)]
                ly = local_y[keep]
                if ly.shape[1] == 1 and labels.dim() == 1:
                    ly = ly.squeeze(1)
                out = sys.stdout if options.get("progress", True) else None
                ctx = (contextlib.redirect_stdout(_Prefixed(out, f"[shard {self.rank}/{self.world_size}] "))
                       if out is not None else contextlib.nullcontext())
                with ctx:
                    report = self.local.fit(q, ly.to(labels.dtype), seed=seed, **options)
                    sys.stdout.flush()
        except Exception as exc:  # raised below, after every rank has reported
            error = exc
        summary = {"rank": self.rank, "rows": (self.start, self.stop), "pairs": pairs,
                   "fitted": self.local.fitted, "error": None if error is None else f"{type(error).__name__}: {error}"}
        summary.update(_report_summary(report))
        shards: List[Dict[str, Any]] = [None] * self.world_size  # type: ignore[list-item]
        if self.world_size == 1:
            shards[0] = summary
        else:
            _dist().all_gather_object(shards, summary, group=self._group)
        if error is not None:
            raise error
        failed = [s for s in shards if s["error"] is not None]
        if failed:
            raise RuntimeError("ShardedLSSLinear.fit failed on " + "; ".join(
                f"rank {s['rank']}: {s['error']}" for s in failed))
        return ShardedFitReport(shards=shards, local=report, merged=self._judge_merged(shards, options))

    def _judge_merged(self, shards: List[Dict[str, Any]], options: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Re-choose nprobe and R on the merged layer (judge_shards): every
        rank computes the same choice from the same gathered reports, so no
        collective. None where the shards' own settings stand."""
        fitted = [s for s in shards if s["pairs"] and s.get("calibration")]
        total = sum(s["pairs"] for s in fitted)
        if len(fitted) < 2 or self.local.index.family != "partitions":
            return None
        verdict = judge_shards([(s["pairs"] / total, s) for s in fitted], max_candidates=self.local.max_candidates,
                               dim=self.in_features, weight_bytes=self.local.weight.element_size(), **options)
        if verdict is None:
            return None
        best, own_cost = verdict
        if self.local.fitted and any(s["rank"] == self.rank for s in fitted):
            self.local.index.set_search(best.nprobe, None if best.rerank >= self.local.max_candidates else best.rerank)
        return {"nprobe": best.nprobe, "rerank": best.rerank, "loss": best.loss, "cost": best.cost,
                "own_cost": own_cost}

    def rebuild_index(self) -> None:
        """The local index rebuilt unfitted from this shard's rows (local)."""
        self.local.rebuild_index()

    def sync_index(self) -> None:
        self.local.sync_index()

    def table_stats(self) -> dict:
        """This shard's index statistics, with its rows."""
        return {**self.local.table_stats(), "rank": self.rank, "rows": (self.start, self.stop)}

    # --------------------------------------------------- labels over time
    def _check_added(self, weight: Tensor, bias: Optional[Tensor], queries: Optional[Tensor],
                     query_labels: Optional[Tensor]) -> int:
        """LSSLinear.add_labels' argument checks, run on every rank (the
        owner's local call repeats them): every rank refuses alike, before
        the collective. Returns n."""
        require_lists(self.local.index, "add_labels")
        device = queries.device if isinstance(queries, Tensor) else None
        with warnings.catch_warnings():  # the owner's own call warns about dropped pairs
            warnings.simplefilter("ignore")
            n, _, _ = check_new_labels(weight, bias, queries, query_labels, dim=self.in_features,
                                       has_bias=self.local.bias is not None, num_labels=self.out_features,
                                       device=device)
        return n

    @torch.no_grad()
    def add_labels(self, weight: Tensor, bias: Optional[Tensor] = None, *, queries: Optional[Tensor] = None,
                   query_labels: Optional[Tensor] = None) -> Tensor:
        """Append n labels (weight [n, d], bias [n] or None: zeros) as
        global ids N .. N + n - 1 and return them, int64 [n], on every rank.
        Called on every rank with the same arguments. The new rows go to the
        last rank, whose range grows to [start, N + n) (the others keep
        theirs): it calls its local LSSLinear.add_labels with the pairs
        (queries [q, d], query_labels int64 [q] or [q, m] padded with -1,
        indexing the new rows: 0 = label N), the other ranks update only
        N and the layout (shard_ranges). Partition family only.

        Cost: the last shard's add (new rows' codes, a merge of its lists);
        its rows, index bytes and predict time grow with every add while the
        others' stay, so many adds unbalance the shards. Rebalance with
        from_single(gather_state_dict()) (balanced ranges; the indexes are
        rebuilt, then fit() learns them). On the last rank the weight and
        bias become new Parameters (rebuild the optimizer there).

        Argument errors are raised on every rank before any change;
        collective: one all_reduce of a failure flag (an error inside the
        last rank's add is raised there, and a RuntimeError on the others,
        whose N is then left unchanged)."""
        n = self._check_added(weight, bias, queries, query_labels)
        first, owner = self.out_features, self.world_size - 1
        error: Optional[BaseException] = None
        if self.rank == owner:
            try:
                self.local.add_labels(weight, bias, queries=queries, query_labels=query_labels)
            except Exception as exc:  # raised below, after every rank knows
                error = exc
        failed = error is not None
        if self.world_size > 1:
            flag = torch.tensor([int(failed)], dtype=torch.int32, device=self.local.weight.device)
            _dist().all_reduce(flag, op=_dist().ReduceOp.MAX, group=self._group)
            failed = bool(flag.item())
        if error is not None:
            raise error
        if failed:
            raise RuntimeError(f"ShardedLSSLinear.add_labels failed on rank {owner}, which takes the new rows (its "
                               f"error is raised there); rank {self.rank} is unchanged")
        self.out_features = first + n
        self._set_bounds(self._bounds[:-1] + [first + n])
        return torch.arange(first, first + n, dtype=torch.int64, device=self.local.weight.device)

    @torch.no_grad()
    def remove_labels(self, ids) -> None:
        """Never return the global labels ids (int64 [n], in [0, N)) again,
        on any rank: each rank removes the ids in its range through its
        local LSSLinear.remove_labels (local id = id - start: out of its
        index lists, -inf in its train-mode logits). Called on every rank
        with the same ids; local (no collective); the ids stay allocated.
        predict / candidates / sparse_logits / eval forward never return
        them; cross_entropy refuses them as targets. Partition family only."""
        require_lists(self.local.index, "remove_labels")
        ids = torch.as_tensor(ids, device=self.local.removed.device)
        if ids.dtype not in (torch.int64, torch.int32) or ids.dim() > 1:
            raise TypeError(f"ids must be int64 label ids [n], got {ids.dtype} {tuple(ids.shape)}")
        ids = ids.reshape(-1).to(torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.out_features):
            raise ValueError(f"ids must be label ids in [0, {self.out_features})")
        mine = ids[(ids >= self.start) & (ids < self.stop)]
        if mine.numel():
            self.local.remove_labels(mine - self.start)

    # ----------------------------------------------------------- inference
    def candidates(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """This shard's candidates of flat queries x [B, d], as global ids:
        (ids int32 [B, M], -1 padded, best first; counts int32 [B]). Local."""
        ids, counts = self.local.candidates(x)
        return self._global_ids(ids), counts

    def sparse_logits(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """This shard's exact candidate logits [..., M] (-inf padded) and
        their global ids int32 [..., M] (-1 padded). Differentiable (x's
        gradient is all-reduced in backward: a collective)."""
        logits, ids = self.local.sparse_logits(_copy_to_group(x, self._group, self.world_size))
        return logits, self._global_ids(ids)

    @torch.no_grad()
    def predict(self, x: Tensor, k: int = 1) -> Tuple[Tensor, Tensor]:
        """Global top-k among every shard's candidates: (scores [..., k] in
        x's dtype, global ids int64 [..., k]; -inf / -1 where fewer than k
        candidates in all), bitwise the same on every rank. Every rank calls
        it with the same x. Each shard's local predict top-k, its ids made
        global, one all_gather (scores and ids packed in one float64 tensor:
        both exact there), then lsskernels.topk_gathered over the K * k
        gathered: larger score first, equal scores by smaller global id."""
        checks.topk_k(k)
        scores, ids = self.local.predict(x, k)
        if self.world_size == 1:
            return scores, self._global_ids(ids)
        lead = scores.shape[:-1]
        scores, ids = scores.reshape(-1, k), self._global_ids(ids.reshape(-1, k))
        b = scores.shape[0]
        packed = torch.cat([scores.to(torch.float64), ids.to(torch.float64)], 1)
        out = packed.new_empty(self.world_size * b, 2 * k)
        _all_gather_single(out, packed, self._group)
        out = out.view(self.world_size, b, 2 * k).transpose(0, 1)  # [B, K, 2k], rank order
        all_scores = out[:, :, :k].reshape(b, self.world_size * k).to(scores.dtype)
        all_ids = out[:, :, k:].reshape(b, self.world_size * k).to(torch.int64)
        top_scores, top_ids = _ops.topk_gathered(all_scores.contiguous(), all_ids.contiguous(), k,
                                                 backend=self.local.backend)
        return top_scores.reshape(lead + (k,)), top_ids.reshape(lead + (k,))

    def forward(self, x: Tensor) -> Tensor:
        """This shard's slice of the logits, [..., stop - start] (columns
        start .. stop - 1 of the full [..., N], as a vocab-parallel
        Megatron layer returns them): train mode, exact (F.linear of this
        shard's rows); eval mode, -inf outside this shard's candidates
        (LSSLinear's eval forward). Local in forward; x's gradient is
        all-reduced over the group in backward (every rank must call
        backward), so it is the full layer's."""
        return self.local(_copy_to_group(x, self._group, self.world_size))

    def cross_entropy(self, x: Tensor, target: Tensor, reduction: str = "mean",
                      ignore_index: int = -100) -> Tensor:
        """F.cross_entropy(full_linear(x), target) with the full softmax over
        all N labels, the logits never gathered: exact logits of this shard
        (in either mode; removed labels -inf, as train-mode forward), then
        vocab_parallel_cross_entropy. The same loss on every rank; gradients
        to x (all-reduced) and to this shard's weight and bias (its rows of
        the full layer's gradients). A target that remove_labels removed is
        refused (ValueError on every rank, no extra collective: the owner's
        flag rides in the SUM all_reduce). Collective."""
        logits = F.linear(_copy_to_group(x, self._group, self.world_size), self.local.weight, self.local.bias)
        removed = self.local.removed
        if self.local.has_removed_labels:
            logits = logits.masked_fill(removed, float("-inf"))
        _check_ce(logits, target, self.start, self.stop, reduction, ignore_index)
        # Every rank sends the removed column (its own all False or not): the reduced shapes must agree.
        return _vocab_parallel_ce(logits, target, self.start, self.stop, self.process_group, reduction,
                                  ignore_index, removed)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"world_size={self.world_size}, rows=[{self.start}, {self.stop})")

    # ---------------------------------------------------------- state dict
    def _metadata(self) -> Dict[str, Any]:
        return {"world_size": self.world_size, "rank": self.rank, "start": self.start, "stop": self.stop,
                "out_features": self.out_features, "in_features": self.in_features, "bounds": list(self._bounds)}

    def get_extra_state(self) -> dict:
        return {"format": _FORMAT, **self._metadata()}

    def set_extra_state(self, state: dict) -> None:
        self._check_metadata(state)

    def _check_metadata(self, state) -> List[int]:
        """The saved layout (bounds), after refusing a state of another
        shard: another world size, rank, N or d, or rows that are not this
        rank's range of the saved layout. A layout other than this layer's
        (a grown one) is no mismatch: the load takes it."""
        who = f"ShardedLSSLinear rank {self.rank} of {self.world_size}"
        if isinstance(state, dict) and "max_candidates" in state and "world_size" not in state:
            raise ValueError(f"{who}: the state_dict is a single LSSLinear's, not a shard's: load it with "
                             "ShardedLSSLinear.from_single")
        if not isinstance(state, dict) or state.get("format") not in (1, _FORMAT):
            raise ValueError(f"{who}: unrecognised shard metadata {state!r}")
        mine = self._metadata()
        names = {"world_size": "world size", "rank": "rank", "out_features": "N (out_features)",
                 "in_features": "d (in_features)"}
        diffs = [f"{names[k]} {state.get(k)} != {mine[k]}" for k in names if state.get(k) != mine[k]]
        bounds: Any = None
        if not diffs:
            bounds = state.get("bounds") if state["format"] >= 2 else _balanced_bounds(self.out_features,
                                                                                        self.world_size)
            problem = _layout_problem(bounds, self.out_features, self.world_size)
            if problem is None and (state.get("start"), state.get("stop")) != (bounds[self.rank],
                                                                               bounds[self.rank + 1]):
                problem = (f"rows [{state.get('start')}, {state.get('stop')}) are not rank {self.rank}'s "
                           f"[{bounds[self.rank]}, {bounds[self.rank + 1]}) of the saved bounds {list(bounds)}")
            if problem is not None:
                diffs.append(f"layout: {problem}")
        if diffs:
            raise ValueError(f"{who}: the state_dict is of another shard (saved: rank {state.get('rank')} of "
                             f"{state.get('world_size')}, rows [{state.get('start')}, {state.get('stop')}) of "
                             f"{state.get('out_features')} x {state.get('in_features')}); differs in: "
                             + ", ".join(diffs))
        return [int(b) for b in bounds]

    def _adopt_layout(self, bounds: List[int], state_dict, prefix: str) -> None:
        """Take a saved layout (a grown shard's): a fresh local LSSLinear
        of this rank's saved rows, with this layer's knobs and mode, for the
        load to fill (new Parameters: an optimizer must be built after the
        load). Checked against the saved weight first."""
        start, stop = bounds[self.rank], bounds[self.rank + 1]
        w = state_dict.get(prefix + "local.weight")
        if not isinstance(w, Tensor) or tuple(w.shape) != (stop - start, self.in_features):
            got = tuple(w.shape) if isinstance(w, Tensor) else None
            raise ValueError(f"ShardedLSSLinear rank {self.rank} of {self.world_size}: the saved layout gives this "
                             f"rank rows [{start}, {stop}), but '{prefix}local.weight' is {got}, not "
                             f"[{stop - start}, {self.in_features}]")
        old = self.local
        self.local = LSSLinear(self.in_features, stop - start, old.bias is not None,
                               max_candidates=old.max_candidates, index=self._local_config(old.family, stop - start),
                               seed=old.seed, backend=old.backend, device=old.weight.device, dtype=old.weight.dtype)
        self.local.train(old.training)
        self._set_bounds(bounds)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # This module loads before its local LSSLinear: the metadata is
        # checked before any of the shard's tensors is touched, and a saved
        # layout (a grown last shard) is taken before the local layer loads.
        key = prefix + "_extra_state"
        if key in state_dict:
            bounds = self._check_metadata(state_dict[key])
            if bounds != self._bounds:
                self._adopt_layout(bounds, state_dict, prefix)
        elif strict:
            raise ValueError(f"ShardedLSSLinear rank {self.rank} of {self.world_size}: the state_dict has no shard "
                             f"metadata ('{key}'); a single LSSLinear's state_dict loads with "
                             "ShardedLSSLinear.from_single")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _gathered_rows(self, dst: Optional[int]) -> Optional[Tuple[Tensor, Optional[Tensor], Tensor]]:
        """(weight [N, d], bias [N] or None, removed bool [N]) of all
        shards, on every rank (dst None) or on group rank dst only (others:
        None). One [K * max rows, d + 2] gather: the bias and the removed
        flag (0 / 1, exact) ride as the last columns."""
        w, b = self.local.weight.detach(), self.local.bias
        rows = w.shape[0]
        sizes = [stop - start for start, stop in self.shard_ranges]
        width = max(sizes)
        cols = self.in_features + (1 if b is not None else 0) + 1
        mine = w.new_zeros(width, cols)
        mine[:rows, : self.in_features] = w
        if b is not None:
            mine[:rows, self.in_features] = b.detach()
        mine[:rows, -1] = self.local.removed.to(w.dtype)
        if self.world_size == 1:
            parts = [mine]
        elif dst is None:
            out = mine.new_empty(self.world_size * width, cols)
            _all_gather_single(out, mine, self._group)
            parts = list(out.view(self.world_size, width, cols).unbind(0))
        else:
            parts = [torch.empty_like(mine) for _ in range(self.world_size)] if self.rank == dst else None
            try:
                _dist().gather(mine, parts, group=self._group, group_dst=dst)
            except TypeError:  # a torch without group_dst: dst is a global rank there
                _dist().gather(mine, parts, dst=_dist().get_global_rank(self._group, dst), group=self._group)
            if self.rank != dst:
                return None
        full = torch.cat([p[: sizes[r]] for r, p in enumerate(parts)], 0)
        weight = full[:, : self.in_features].contiguous()
        bias = full[:, self.in_features].contiguous() if b is not None else None
        return weight, bias, full[:, -1] != 0

    def gather_state_dict(self, dst: Optional[int] = None) -> Optional[Dict[str, Any]]:
        """A single LSSLinear's state_dict of all shards' rows (weight [N, d],
        bias [N], the removed labels, max_candidates, seed, and an unbuilt index of this layer's
        family: the loading layer builds it from the weights on first use, or
        fit() learns one; the shards' indexes cover N / K rows each and are
        not carried over). On every rank (dst None: an all_gather) or on group
        rank dst only (a gather; the others get None). Collective.
        LSSLinear.load_state_dict accepts it (strict)."""
        if dst is not None:
            checks.integer("dst", dst, 0, self.world_size - 1)
        rows = self._gathered_rows(dst)
        if rows is None:
            return None
        weight, bias, removed = rows
        state: Dict[str, Any] = {"weight": weight}
        if bias is not None:
            state["bias"] = bias
        state["removed"] = removed
        state["_extra_state"] = {"max_candidates": self.local.max_candidates, "seed": self.local.seed, "format": 2}
        index = make_index(self.out_features, self.in_features, family=self.local.family, seed=self.local.seed,
                           device=weight.device)
        state.update({"index." + k: v for k, v in index.state_dict().items()})
        return state

    def to_single(self, dst: Optional[int] = None) -> Optional[LSSLinear]:
        """The whole layer as one LSSLinear (gather_state_dict loaded into
        it; its index unbuilt, built on first use), on every rank or on group
        rank dst only. Collective."""
        state = self.gather_state_dict(dst)
        if state is None:
            return None
        w = state["weight"]
        layer = LSSLinear(self.in_features, self.out_features, "bias" in state,
                          max_candidates=self.local.max_candidates, index=self.local.family, seed=self.local.seed,
                          backend=self.local.backend, device=w.device, dtype=w.dtype)
        layer.load_state_dict(state)
        return layer


def _all_gather_single(out: Tensor, inp: Tensor, group) -> None:
    dist = _dist()
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp.contiguous(), group=group)
