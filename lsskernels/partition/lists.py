"""The inverted lists of a PartitionIndex: every listed label's code row,
stored contiguously by partition, and the one writer of them.

Buffers (of the index module: state-dict keys ``list_offsets``, ``codes``,
``code_scales``, ``code_bias``, ``list_ids``, ``code_proj``):

list_offsets int32 [P + 1]: partition p holds rows list_offsets[p] ..
    list_offsets[p + 1] - 1 of
codes [T, Dp] (the codec's dtype), code_scales float32 [T], code_bias
    float32 [T], list_ids int32 [T]: row t approximates label list_ids[t]'s
    logit as scale_q * code_scales[t] * <q8, codes[t]> + code_bias[t];
code_proj float32 [d, r] (r < d, a multiple of 32), or [0, 0]: the codes
    hold U^T (w - mean w) and queries are scored as U^T x.

Within a partition the labels are ascending and distinct; T >= N once spill
lists a label in several partitions. Builders (lsskernels/partition/fit.py,
lsskernels/label_updates.py) compute (partition, label) entries and hand
them to PartitionIndex, which writes through PartitionLists; every write
checks its entries (layout), and a loaded state is checked by
validate_partition_lists before it replaces the current buffers.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .. import _checks as checks
from .codec import Int8Codec
from .probe import check_probe_values, validate_probe

Tensor = torch.Tensor

BUFFERS = ("list_offsets", "codes", "code_scales", "code_bias", "list_ids", "code_proj")
# codes_of(ids int64 [T], proj) -> (codes [T, Dp], scales [T], biases [T]): a builder's encoder.
CodesOf = Callable[[Tensor, Tensor], Tuple[Tensor, Tensor, Tensor]]


def empty_buffers(num_partitions: int, dim: int, codec: Int8Codec, device=None) -> Dict[str, Tensor]:
    """The lists of an unbuilt index: P empty lists, no code projection."""
    f32 = {"dtype": torch.float32, "device": device}
    return {"list_offsets": torch.zeros(num_partitions + 1, dtype=torch.int32, device=device),
            "codes": torch.zeros(0, codec.bytes_per_row(dim), dtype=codec.dtype, device=device),
            "code_scales": torch.zeros(0, **f32),
            "code_bias": torch.zeros(0, **f32),
            "list_ids": torch.zeros(0, dtype=torch.int32, device=device),
            "code_proj": torch.zeros(0, 0, **f32)}


class PartitionLists:
    """The lists over the index's buffers (buffers: the index module's own
    buffer dict, so .to(), state_dict() and load_state_dict() are the
    module's); the only writer of BUFFERS."""

    def __init__(self, buffers: Dict[str, Tensor], num_partitions: int, codec: Int8Codec) -> None:
        self._buf = buffers
        self.num_partitions = num_partitions
        self.codec = codec
        # sync_rows' caches: where each label sits in the lists, and the label
        # mean under a code projection (derived, not saved).
        self._rows_cache: Optional[tuple] = None
        self._rows_mean: Optional[tuple] = None

    # ------------------------------------------------------------- reading
    def tensors(self) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(list_offsets, codes, code_scales, code_bias, list_ids): the scan's arguments."""
        b = self._buf
        return (b["list_offsets"], b["codes"], b["code_scales"], b["code_bias"], b["list_ids"])

    def sizes(self) -> Tensor:
        """Rows per partition, int32 [P]."""
        off = self._buf["list_offsets"]
        return off[1:] - off[:-1]

    def row_partitions(self) -> Tensor:
        """The partition of every list row, int64 [T]."""
        off = self._buf["list_offsets"].to(torch.int64)
        return torch.repeat_interleave(torch.arange(self.num_partitions, device=off.device), off[1:] - off[:-1])

    def layout(self, part: Tensor, label: Tensor, num_labels: int) -> Tuple[Tensor, Tensor]:
        """(order, list_offsets int32 [P + 1]): the entries (partition, label)
        sorted by partition, labels ascending within one; checked in range
        and distinct."""
        part, label = part.to(torch.int64), label.to(torch.int64)
        if part.numel() and (int(part.min()) < 0 or int(part.max()) >= self.num_partitions):
            raise ValueError(f"partitions must be in [0, {self.num_partitions})")
        if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_labels):
            raise ValueError(f"labels must be in [0, {num_labels})")
        key, order = torch.sort(part * num_labels + label, stable=True)
        if bool((key[1:] == key[:-1]).any()):
            raise ValueError("(partition, label) entries must be distinct (an entry is listed already)")
        offsets = torch.zeros(self.num_partitions + 1, dtype=torch.int64, device=part.device)
        offsets[1:] = torch.cumsum(torch.bincount(part, minlength=self.num_partitions), 0)
        if int(offsets[-1]) >= 2**31:
            raise ValueError(f"the partition lists would hold {int(offsets[-1])} rows; at most 2^31 - 1")
        return order, offsets.to(torch.int32)

    # ------------------------------------------------------------- writing
    def _set_rows(self, codes: Tensor, scales: Tensor, code_bias: Tensor) -> None:
        b = self._buf
        b["codes"], b["code_scales"], b["code_bias"] = codes, scales, code_bias

    @torch.no_grad()
    def install(self, part: Tensor, label: Tensor, num_labels: int, codes_of: CodesOf) -> None:
        """Lists from (partition, label) pairs (int64, distinct): sorted by
        partition, labels ascending within one; codes_of(ids, proj) gives
        the rows' (codes, scales, biases) under the code projection."""
        order, offsets = self.layout(part, label, num_labels)
        label = label[order]
        self._buf["list_offsets"] = offsets
        self._buf["list_ids"] = label.to(torch.int32)
        self._set_rows(*codes_of(label, self._buf["code_proj"]))

    @torch.no_grad()
    def set_code_projection(self, proj: Optional[Tensor], codes_of: CodesOf, device) -> None:
        """Re-encode the listed rows with proj ([d, r]) or without a projection (None)."""
        self._buf["code_proj"] = (proj.to(torch.float32).contiguous() if proj is not None
                                  else torch.zeros(0, 0, dtype=torch.float32, device=device))
        self._set_rows(*codes_of(self._buf["list_ids"].to(torch.int64), self._buf["code_proj"]))

    @torch.no_grad()
    def encode_all(self, weight: Tensor, bias: Optional[Tensor]) -> None:
        """Re-encode every listed row from the weights (the lists kept)."""
        self._set_rows(*self.codec.encode(weight, bias, self._buf["list_ids"].to(torch.int64),
                                          proj=self._buf["code_proj"]))

    @torch.no_grad()
    def add_rows(self, part: Tensor, label: Tensor, codes: Tensor, scales: Tensor, code_bias: Tensor,
                 num_labels: int) -> None:
        """Merge the entries (partition, label, code row) into the lists of
        num_labels labels, existing rows kept as they are: O(T) memory moves
        and no encoding. The entries must be distinct and not listed already."""
        b = self._buf
        all_part = torch.cat([self.row_partitions(), part.to(torch.int64)])
        all_label = torch.cat([b["list_ids"].to(torch.int64), label.to(torch.int64)])
        order, offsets = self.layout(all_part, all_label, num_labels)
        b["list_offsets"] = offsets
        b["list_ids"] = all_label[order].to(torch.int32)
        self._set_rows(torch.cat([b["codes"], codes.to(b["codes"].dtype)])[order],
                       torch.cat([b["code_scales"], scales.to(torch.float32)])[order],
                       torch.cat([b["code_bias"], code_bias.to(torch.float32)])[order])
        self._rows_cache = None

    @torch.no_grad()
    def drop_labels(self, labels: Tensor, num_labels: int) -> int:
        """Remove every list entry of the labels (int64 ids): O(T). Returns the entries removed."""
        b = self._buf
        gone = torch.zeros(num_labels, dtype=torch.bool, device=b["list_ids"].device)
        gone[labels.to(torch.int64)] = True
        keep = ~gone[b["list_ids"].to(torch.int64)]
        removed = int((~keep).sum())
        if removed == 0:
            return 0
        offsets = torch.zeros(self.num_partitions + 1, dtype=torch.int64, device=keep.device)
        offsets[1:] = torch.cumsum(torch.bincount(self.row_partitions()[keep], minlength=self.num_partitions), 0)
        b["list_offsets"] = offsets.to(torch.int32)
        b["list_ids"] = b["list_ids"][keep]
        self._set_rows(b["codes"][keep], b["code_scales"][keep], b["code_bias"][keep])
        self._rows_cache = None
        return removed

    @torch.no_grad()
    def renumber(self, new_ids: Tensor, num_labels: int) -> None:
        """Relabel the lists by new_ids (int64 [N]: each label's new id, -1
        for labels that must not be listed any more) to num_labels labels.
        new_ids must be increasing over the kept labels (lists stay sorted)."""
        b = self._buf
        ids = new_ids.to(b["list_ids"].device)[b["list_ids"].to(torch.int64)]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_labels):
            raise ValueError("renumber: a listed label has no new id in range; drop it first")
        b["list_ids"] = ids.to(torch.int32)
        self._rows_cache = None

    @torch.no_grad()
    def sync_rows(self, weight: Tensor, bias: Optional[Tensor], rows: Tensor, num_labels: int) -> None:
        """Re-encode, in place, the codes of every list entry of the labels in
        rows (see PartitionIndex.sync_rows)."""
        buf = self._buf
        list_ids = buf["list_ids"]
        rows = rows.reshape(-1).to(device=list_ids.device, dtype=torch.int64)
        if rows.numel() == 0:
            return
        if int(rows.min()) < 0 or int(rows.max()) >= num_labels:
            raise ValueError(f"rows must be label ids in [0, {num_labels})")
        # Where each label sits in the lists (derived once per list layout).
        cache = self._rows_cache
        if cache is None or cache[0] is not list_ids or cache[1] != list_ids._version:
            ids64 = list_ids.to(torch.int64)
            starts = torch.zeros(num_labels + 1, dtype=torch.int64, device=ids64.device)
            starts[1:] = torch.cumsum(torch.bincount(ids64, minlength=num_labels), 0)
            cache = (list_ids, list_ids._version, torch.argsort(ids64, stable=True), starts)
            self._rows_cache = cache
        order, starts = cache[2], cache[3]
        rows = torch.unique(rows)
        lo, n = starts[rows], starts[rows + 1] - starts[rows]
        seg = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), n)
        first = torch.cumsum(n, 0) - n
        pos = order[lo[seg] + torch.arange(seg.numel(), device=rows.device) - first[seg]]
        labels = list_ids[pos].to(torch.int64)
        proj = buf["code_proj"]
        codes = buf["codes"]
        if proj.numel() == 0:
            new_codes, scales, code_bias = self.codec.encode(weight, bias, labels)
        else:
            mean = self._rows_mean
            if mean is None or mean[0] is not codes:
                mean = (codes, weight.detach().to(torch.float32).mean(0))
                self._rows_mean = mean
            w = (weight.detach()[labels].to(torch.float32) - mean[1]) @ proj
            new_codes = torch.zeros(labels.numel(), codes.shape[1], dtype=codes.dtype, device=codes.device)
            scales = torch.empty(labels.numel(), dtype=torch.float32, device=codes.device)
            self.codec.quantize_into(w, new_codes, scales)
            code_bias = (bias.detach()[labels].to(torch.float32) if bias is not None
                         else torch.zeros(labels.numel(), dtype=torch.float32, device=codes.device))
        codes[pos] = new_codes
        buf["code_scales"][pos] = scales
        buf["code_bias"][pos] = code_bias

    # ---------------------------------------------------------- checking
    @torch.no_grad()
    def mismatch(self, weight: Tensor, bias: Optional[Tensor]) -> Optional[str]:
        """Why the listed rows are not codes of these weights (None: they are)."""
        b = self._buf
        codes, scales, code_bias = self.codec.encode(weight, bias, b["list_ids"].to(torch.int64),
                                                     proj=b["code_proj"])
        # Codes may differ by one step where a projection's rounding differs
        # between machines or thread counts; a code of other weights differs by more.
        if codes.shape != b["codes"].shape or \
                bool(((codes.to(torch.int16) - b["codes"].to(torch.int16)).abs() > 1).any()):
            return "the int8 codes differ from those of the weights"
        if not torch.allclose(scales, b["code_scales"], rtol=1e-3, atol=1e-12):
            return "code_scales differ from those of the weights"
        if not torch.allclose(code_bias, b["code_bias"], rtol=1e-5, atol=1e-6):
            return "code_bias differs from the bias"
        return None


def validate_partition_lists(tensors: Dict[str, Tensor], num_labels: int, dim: int, num_partitions: int,
                             codec: Int8Codec = Int8Codec()) -> None:
    """Raise ValueError unless the buffers (probe and lists) form a
    well-formed PartitionIndex."""
    validate_probe(tensors, dim, num_partitions)
    c = tensors["centroids"]
    proj = tensors.get("code_proj")
    code_dim = dim
    if proj is not None and proj.numel():
        checks.tensor("code_proj", proj, 2, (torch.float32,), f"float32 [d = {dim}, r] or [0, 0]")
        if proj.shape[0] != dim or not 1 <= proj.shape[1] <= dim or not bool(torch.isfinite(proj).all()):
            raise ValueError(f"code_proj must be finite float32 [d = {dim}, r] with 1 <= r <= d, or [0, 0]; "
                             f"got {tuple(proj.shape)}")
        code_dim = proj.shape[1]
    x = torch.empty(1, code_dim, dtype=torch.float32, device=c.device)
    checks.partition_lists_args(x, tensors["list_offsets"], tensors["codes"], tensors["code_scales"],
                                tensors["code_bias"], tensors["list_ids"], num_labels)
    off = tensors["list_offsets"].to(torch.int64)
    if off.shape[0] != num_partitions + 1:
        raise ValueError(f"list_offsets must be int32 [P + 1] = [{num_partitions + 1}], got {tuple(off.shape)}")
    rows = tensors["codes"].shape[0]
    if int(off[0]) != 0 or int(off[-1]) != rows or bool((off[1:] < off[:-1]).any()):
        raise ValueError(f"list_offsets must start at 0, be non-decreasing and end at T = {rows}")
    ids = tensors["list_ids"]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_labels):
        raise ValueError(f"list_ids must be label ids in [0, {num_labels})")
    if not bool(torch.isfinite(tensors["code_scales"]).all() and torch.isfinite(tensors["code_bias"]).all()):
        raise ValueError("code_scales and code_bias must be finite")
    # Values the kernels rely on: finite probe scores, non-negative scales
    # (a negative one inverts a label's score), codes in the range the
    # codec's dots assume, and each label at most once per list, ascending
    # (as the lists are built).
    check_probe_values(tensors)
    if tensors["code_scales"].numel() and float(tensors["code_scales"].min()) < 0:
        raise ValueError("code_scales must be >= 0")
    codec.check_codes(tensors["codes"])
    if ids.numel() > 1:
        part = torch.repeat_interleave(torch.arange(num_partitions, device=off.device), off[1:] - off[:-1])
        key = part * num_labels + ids.to(torch.int64)
        if bool((key[1:] <= key[:-1]).any()):
            raise ValueError("list_ids must be ascending and distinct within each partition")
