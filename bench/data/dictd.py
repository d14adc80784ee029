"""A reader of dictd databases (``<name>.index`` + ``<name>.dict.dz``), the
format of Debian's ``dict-*`` packages (``dict-gcide``, ``dict-foldoc``,
``dict-freedict-*``), installed under ``/usr/share/dictd``.

* ``<name>.index``: one line per headword, ``headword TAB offset TAB
  length``, offset and length in dictd's base-64 digits
  (``A-Za-z0-9+/``, most significant first), pointing into the
  uncompressed data file.  Headwords starting with ``00-database`` (or
  ``00database``) are the database's own metadata.
* ``<name>.dict.dz``: a dictzip file, i.e. gzip with a random-access
  table in the header; plain ``gzip`` reads it whole (40 MB for GCIDE,
  100 MB for FreeDict German-English: about a second).
"""

from __future__ import annotations

import gzip
import os
from typing import Iterator, NamedTuple

__all__ = ["DICTD_ROOT", "IndexEntry", "decode_b64", "read_index", "DictdDatabase", "dictd_files"]

DICTD_ROOT = "/usr/share/dictd"
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


class IndexEntry(NamedTuple):
    headword: str   # as in the index (dictd folds case and some punctuation there)
    offset: int     # byte offset into the uncompressed data
    length: int     # byte length of the entry


def decode_b64(digits: str) -> int:
    """dictd's base-64 number (``"B0"`` = 1 * 64 + 52 = 116)."""
    value = 0
    for c in digits:
        try:
            value = value * 64 + _B64[c]
        except KeyError:
            raise ValueError(f"not a dictd base-64 number: {digits!r}") from None
    return value


def read_index(path: str | os.PathLike, *, metadata: bool = False) -> list[IndexEntry]:
    """The entries of a ``.index`` file in file order; the ``00-database*``
    metadata entries only when ``metadata=True``."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise ValueError(f"{path}:{lineno}: not a dictd index line (expected 'headword TAB offset TAB length')")
            head = parts[0]
            if not metadata and (head.startswith("00-database") or head.startswith("00database")):
                continue
            out.append(IndexEntry(head, decode_b64(parts[1]), decode_b64(parts[2])))
    return out


def dictd_files(root: str | os.PathLike, name: str, caller: str, package: str) -> tuple[str, str]:
    """``(<root>/<name>.index, <root>/<name>.dict[.dz])``; a clear error
    naming the Debian package when missing."""
    root = os.fspath(root)
    index = os.path.join(root, f"{name}.index")
    data = next((p for p in (os.path.join(root, f"{name}.dict.dz"), os.path.join(root, f"{name}.dict"))
                 if os.path.exists(p)), None)
    if not os.path.exists(index) or data is None:
        raise FileNotFoundError(
            f"{caller}: {index} and {name}.dict.dz not found; install Debian's {package} package "
            f"(apt-get install {package}) or pass root= a directory with them")
    return index, data


class DictdDatabase:
    """One dictd database, its data decompressed in memory."""

    def __init__(self, index_path: str | os.PathLike, data_path: str | os.PathLike):
        self.index_path, self.data_path = os.fspath(index_path), os.fspath(data_path)
        self.index = read_index(self.index_path)
        opener = gzip.open if self.data_path.endswith(".dz") or self.data_path.endswith(".gz") else open
        with opener(self.data_path, "rb") as f:
            self.data = f.read()

    @classmethod
    def open(cls, root: str | os.PathLike, name: str, package: str, caller: str = "DictdDatabase") -> "DictdDatabase":
        return cls(*dictd_files(root, name, caller, package))

    def text(self, entry: IndexEntry) -> str:
        return self.data[entry.offset : entry.offset + entry.length].decode("utf-8", errors="replace")

    def entries(self, *, unique: bool = True) -> Iterator[tuple[IndexEntry, str]]:
        """``(index entry, text)`` in index order; with ``unique`` (default)
        each stored entry once (dictd indexes an entry under every spelling
        of its headword: several index lines can share an offset)."""
        seen: set[tuple[int, int]] = set()
        for e in self.index:
            if unique:
                if (e.offset, e.length) in seen:
                    continue
                seen.add((e.offset, e.length))
            yield e, self.text(e)
