"""The task builders' on-disk cache: one way to write it."""
from __future__ import annotations

from pathlib import Path

import torch


def save_atomically(obj, path: Path) -> None:
    """torch.save(obj) to path through a temporary file and a rename, so an
    interrupted build never leaves a truncated cache behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
