"""The best row of a table for each of many rows: argmax_j rows[i] . table[j],
ties to the smaller j, without torch's row reductions over the [n, P]
scores, the slow half of the k-means assignment and of the calibration's
dense top-1 on a CPU (docs/performance.md, "0.9.6").

Two paths, one answer up to near-ties:
- exact: one fp32 GEMM, then the first maximum in two stages (each block of
  _COLS columns' maximum, then the first block holding the row's maximum
  and its first position there), the index torch.max(1) gives;
- bf16 screen, where the CPU multiplies bf16 natively (AVX-512 BF16 or AMX;
  4x the fp32 GEMM rate with AMX, about 2x without) and the table has at
  least SCREEN_MIN_ROWS rows: the GEMM in bf16 against the table less its
  column mean (a per-row constant shift of every score, so the same order;
  bf16 keeps 8 bits of each term, and the centring makes the terms small),
  each row's SCREEN_KEEP best (the extension's bf16_row_topk, one pass
  over the scores) rescored in fp32 and the best of those. It differs from
  the exact path only where the best is not among the screen's
  SCREEN_KEEP, i.e. on near-ties within bf16's rounding.

The rows' last column must be 1 (the bias column of [v, 1] or [x, 1]): the
padding rows of the table score -inf through it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import _ops

Tensor = torch.Tensor

# Columns of the score block reduced together (one block's maximum first).
_COLS = 128
# Tables from this many rows on take the two-stage argmax: below it torch's
# row max was as fast (docs/performance.md, "0.9.6").
TWO_STAGE_MIN_ROWS = 4096
# The bf16 screen: rows it keeps for the fp32 rescoring, and the table size
# from which it is used (1.75x the exact path at 4,096 rows, even at 1,024:
# docs/performance.md, "0.9.6").
SCREEN_KEEP = 4
SCREEN_MIN_ROWS = 4096
# Table rows centred and rounded together when the screen's copy is made.
_CENTRE_BLOCK = 4096


def screens_in_bf16(device: torch.device, num_rows: int) -> bool:
    """Whether a table of num_rows rows on device is screened in bf16: on a
    CPU with native bf16 dot products (AVX-512 BF16; not under
    LSS_CPU_ISA=avx2), from SCREEN_MIN_ROWS rows up."""
    return torch.device(device).type == "cpu" and num_rows >= SCREEN_MIN_ROWS and _ops.cpu_has_bf16_dot()


def first_argmax(scores: Tensor, out: Tensor) -> None:
    """out = the first index of each row's maximum, as torch.max(1) gives,
    in two stages. scores has a multiple of _COLS columns."""
    n, p = scores.shape
    blocks = scores.view(n, p // _COLS, _COLS)
    block = blocks.amax(2).argmax(1)
    within = blocks[torch.arange(n, device=scores.device), block].argmax(1)
    torch.add(within, block, alpha=_COLS, out=out)


def _padded(table: Tensor, bias: Optional[Tensor], rows: int, transposed: bool = False) -> Tensor:
    """float32 [rows, D] (or its transpose [D, rows], made as such): the
    table ([table, bias] where bias is given) in one allocation, then
    padding rows that never win (-inf in the last column, which the rows
    being scored hold as 1)."""
    p, d = table.shape[0], table.shape[1] + (bias is not None)
    out = torch.zeros((d, rows) if transposed else (rows, d), dtype=torch.float32, device=table.device)
    view = out.T if transposed else out  # [rows, D]
    view[:p, : table.shape[1]] = table
    if bias is not None:
        view[:p, -1] = bias
    view[p:, -1] = float("-inf")
    return out


class RowArgmax:
    """A table [P, D] (float32) ready for best(rows): padded to a multiple of
    _COLS with rows that never win, and where screens_in_bf16 a centred
    bf16 copy. Keeps one score buffer for all calls (a block allocated per
    call is mapped and page-faulted afresh where the allocator returns
    large blocks to the system: docs/performance.md, "0.9.5")."""

    def __init__(self, table: Tensor, screen: Optional[bool] = None, *, bias: Optional[Tensor] = None) -> None:
        """table [P, D]; or [P, D - 1] and bias [P], the table's last column
        (label vectors [w, b] without a copy of them first)."""
        p = table.shape[0]
        self.num_rows = p
        self.screen = screens_in_bf16(table.device, p) if screen is None else screen
        cols = _COLS if (self.screen or p >= TWO_STAGE_MIN_ROWS) else 1
        d = table.shape[1] + (bias is not None)
        self.padded_rows = p + (-p % cols)
        self.device = table.device
        self.two_stage = cols > 1
        if self.screen:
            t = _padded(table, bias, self.padded_rows)  # [P', D] fp32: the rescoring's rows
            # Centred (see the module docstring) and rounded to bf16 a block
            # of rows at a time: no second fp32 copy of the table.
            mean = t[:p].mean(0)
            self.low_t = torch.empty(d, t.shape[0], dtype=torch.bfloat16, device=t.device)  # [D, P']
            for s in range(0, p, _CENTRE_BLOCK):
                e = min(p, s + _CENTRE_BLOCK)
                self.low_t[:, s:e] = (t[s:e] - mean).T
            self.low_t[:, p:] = t[p:].T
            self.table = t
        else:
            self.table_t = _padded(table, bias, self.padded_rows, transposed=True)  # [D, P']
        self._scores: Optional[Tensor] = None

    def _buffer(self, n: int) -> Tensor:
        dtype = torch.bfloat16 if self.screen else torch.float32
        if self._scores is None or self._scores.shape[0] < n:
            self._scores = torch.empty(n, self.padded_rows, dtype=dtype, device=self.device)
        return self._scores[:n]

    def best(self, rows: Tensor, out: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """(score, index) of each row's best table row: float32 [n], int64 [n]
        (written into out where given). rows float32 [n, D], last column 1."""
        n = rows.shape[0]
        ids = out if out is not None else torch.empty(n, dtype=torch.int64, device=rows.device)
        scores = self._buffer(n)
        if self.screen:
            torch.mm(rows.to(torch.bfloat16), self.low_t, out=scores)
            cand = _ops.bf16_row_topk(scores, min(SCREEN_KEEP, self.num_rows))  # [n, keep]
            exact = torch.bmm(self.table[cand], rows.unsqueeze(2)).squeeze(2)
            best = exact.amax(1)
            top = exact == best.unsqueeze(1)
            torch.amin(torch.where(top, cand, self.padded_rows), 1, out=ids)
            # A row whose rescored scores are all NaN (a NaN in it or the
            # table) keeps a valid id: its first candidate.
            torch.where(top.any(1), ids, cand[:, 0], out=ids)
            return best, ids
        torch.mm(rows, self.table_t, out=scores)
        if self.two_stage:
            first_argmax(scores, ids)
            return scores.gather(1, ids.unsqueeze(1)).squeeze(1), ids
        best = torch.empty(n, dtype=torch.float32, device=rows.device)
        torch.max(scores, 1, out=(best, ids))  # max rather than argmax: same first index, faster on CPU
        return best, ids
