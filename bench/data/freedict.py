"""FreeDict German-English (Debian's ``dict-freedict-deu-eng``): a two-tower
"English translation -> German headword" task whose test labels are mostly
never seen in training: they can only be found through the output layer's
geometry (the label rows are encodings of the labels' own spelling).

* Entries: every stored entry of ``freedict-deu-eng`` (``parse_entry``):
  the head line ``Headword /IPA/ <pos>`` and its translation line(s)
  (``" [transp.] time of departure <n>, departure time <n>"``), without
  domain/region tags ``[..]``, part-of-speech tags ``<..>`` and IPA
  ``/../``.  Usage examples, notes, synonyms and "see:" lines are dropped.
* Labels: the distinct single-word headwords (no space) with a non-empty
  translation, case kept ("Stand" and "stand" differ), sorted; a label
  subset (``label_fraction < 1``, quick mode) keeps the labels whose
  crc32 falls below the fraction.  N = 283K at full size.
* Split, by hashes of the seed and the text: a label is *held out* with
  probability ``heldout_fraction`` (0.2): all its entries are test queries
  and it has no training query; an entry of any other label is a test
  query with probability ``entry_test_fraction`` (0.05).  Test queries are
  deduplicated by their (token) text, shuffled, and capped at
  ``max_test``; a test query's labels (``test_y [n, m]``, -1 padded) are
  every label whose entry has exactly that translation (synonyms such as
  Abfall / Müll / Kehricht share "refuse, rubbish, garbage, trash").
* Model (two towers, trained here, ``train_two_tower``): a hashed n-gram
  table shared by both towers (``2**hash_bits`` buckets, d = 128): a word
  is its hashed form plus its character 3-5-grams with boundary markers
  (fastText style).  Query = mean of its English words' features -> tanh
  -> Linear(d, d); label = mean of the lowercased German headword's
  features (plus a shared ``<CAP>`` feature when capitalised and its
  exact spelling when it has upper case, so "Stand" and "stand" differ)
  -> tanh -> Linear(d, d).  Sampled softmax: the batch's labels plus
  ``negatives`` uniform random labels (deduplicated); row-wise Adagrad on
  the table rows a batch touches, Adam for the rest; ``epochs`` passes
  over all training pairs.  Test queries whose text is also a training
  query's text are dropped (no test query is a seen input).
* Output layer: ``weight [N, d]`` = the label tower on every label, bias 0;
  queries = the query tower.  ``train_x`` / ``train_y`` is a seeded
  ``max_train`` subset of the training pairs (what LSS's fit() sees;
  ``train_y [n]``).

Cached as ``<cache_dir>/freedict-<key>.pt`` (key: the files' sizes and
mtimes and the configuration).

Measured (dict-freedict-deu-eng 2022.04.21-1, defaults, seed 0, torch
2.13, 1 CPU thread on a shared 2-core machine, load average ~4):

* 517,468 parsed entries, 403,029 of single-word headwords: N = 282,227
  labels (56,485 held out), d = 128; the model trains on 305,973 pairs;
  ``train_x`` keeps 100,000 of them, ``test_x`` 10,000 queries
  (``test_y [10000, 4]``).
* Build 181-210 s (load average 4-5): reading 7-18 s, features 17-38 s,
  model 153 s (2 epochs of 598 steps; sampled-softmax loss 4.26, 1.66).
  The cache file (210 MB) loads in a second.
* Full inference (dense top-1 over all 282,227 labels, bias 0) on the
  test queries: P@1 = 0.068 (SE 0.0025); 94.5% of the test queries have
  no label with a training pair of the model (97.1% none in
  ``train_y``), and their P@1 is 0.064; the other 5.5% reach 0.126.
  0.9% of the labels differ from another only in case ("Stand" /
  "stand"); the case features keep their rows apart.
* Quick mode (``label_fraction=0.15``, FREEDICT["quick"] in bench/tasks.py):
  N = 42,236 (8,550 held out), 45,732 model training pairs, built in
  26 s (model 13 s); dense P@1 0.018 (SE 0.002) on its 5,000 test
  queries: less training data, and too few hits to rank methods by P@1.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Optional

import torch
from torch import nn

from lsskernels.data import LabelTask, pad_label_lists

from .cache import save_atomically
from .dictd import DICTD_ROOT, DictdDatabase, dictd_files
from .text import tokens

__all__ = [
    "PACKAGE",
    "DATABASE",
    "FreeDictEntry",
    "FreeDictConfig",
    "FreeDictTask",
    "parse_entry",
    "read_freedict",
    "word_features",
    "freedict_available",
    "build_freedict_task",
]

PACKAGE = "dict-freedict-deu-eng"
DATABASE = "freedict-deu-eng"
CACHE_FORMAT = 2

_TAG = re.compile(r"\[[^\]]*\]|<[^>]*>|/[^/\n]*/")
_SPACE = re.compile(r"\s+")


class FreeDictEntry(NamedTuple):
    headword: str      # as printed on the head line ("Hausschlüssel", "mit jdm. ins Bett gehen")
    pos: str           # the head line's <...> tag ("masc, n, sg"), "" if none
    translation: str   # cleaned translation text ("front door key")


def parse_entry(text: str) -> Optional[FreeDictEntry]:
    """One FreeDict deu-eng entry (module docstring), ``None`` for an entry
    without a head line or a translation."""
    lines = text.split("\n")
    head = lines[0].strip()
    if not head:
        return None
    m = re.match(r"^(.*?)(?: /[^/]*/)?(?: <([^>]*)>)?\s*$", head)
    headword, pos = (m.group(1).strip(), m.group(2) or "") if m else (head, "")
    body = []
    for line in lines[1:]:
        stripped = line.strip()
        if not stripped:
            if body:
                break
            continue
        if len(line) - len(line.lstrip(" ")) > 1 or stripped.startswith(("see:", "Synonym", "Note:", '"')):
            break
        body.append(stripped)
    translation = _SPACE.sub(" ", _TAG.sub(" ", " ".join(body))).strip(" ,;")
    translation = re.sub(r"\s+,", ",", translation)
    if not headword or not translation:
        return None
    return FreeDictEntry(headword, pos, translation)


def read_freedict(root: str | os.PathLike = DICTD_ROOT) -> list[FreeDictEntry]:
    """Every parseable entry of the database, in index order (each stored
    entry once)."""
    db = DictdDatabase.open(root, DATABASE, PACKAGE, "read_freedict")
    return [e for e in (parse_entry(t) for _, t in db.entries()) if e is not None]


def freedict_available(root: str | os.PathLike = DICTD_ROOT) -> bool:
    try:
        dictd_files(root, DATABASE, "freedict_available", PACKAGE)
    except FileNotFoundError:
        return False
    return True


def _unit(*parts: object) -> float:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def word_features(word: str, bits: int, ngrams: tuple[int, int] = (3, 5)) -> list[int]:
    """Hashed features of one word: the word itself (``"<word>"``) and its
    character n-grams (``ngrams`` inclusive) with the boundary markers,
    each ``crc32 % 2**bits``.  The same function serves both towers (a
    German and an English word with the same spelling share features)."""
    w = f"<{word}>"
    grams = [w]
    lo, hi = ngrams
    for n in range(lo, hi + 1):
        grams.extend(w[i : i + n] for i in range(len(w) - n + 1) if w[i : i + n] != w)
    mask = (1 << bits) - 1
    return [zlib.crc32(g.encode()) & mask for g in dict.fromkeys(grams)]


def _case_features(headword: str, mask: int) -> list[int]:
    """A capitalised headword (a German noun) gets a shared ``<CAP>``
    feature; one with any upper case also its exact spelling, so "Stand"
    and "stand" get different rows."""
    out = []
    if headword[:1].isupper():
        out.append(zlib.crc32(b"<CAP>") & mask)
    if headword != headword.lower():
        out.append(zlib.crc32(f"={headword}".encode()) & mask)
    return out


@dataclass(frozen=True)
class FreeDictConfig:
    label_fraction: float = 1.0      # keep labels whose hash < this (quick mode: a subset)
    heldout_fraction: float = 0.2    # labels with no training query (all their entries are test)
    entry_test_fraction: float = 0.05
    max_train: int = 100_000         # training pairs kept for fit() (the model trains on all)
    max_test: int = 10_000
    dim: int = 128
    hash_bits: int = 18
    epochs: int = 2
    batch_size: int = 512
    negatives: int = 1024
    lr: float = 1e-2
    seed: int = 0


@dataclass(eq=False, repr=False, kw_only=True)
class FreeDictTask(LabelTask):
    weight: torch.Tensor
    bias: torch.Tensor


class _Bags(NamedTuple):
    indices: torch.Tensor   # int64 flat features
    offsets: torch.Tensor   # int64 [n + 1]

    def take(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        if int(offsets[-1]) == 0:
            return torch.zeros(0, dtype=torch.int64), offsets
        flat = torch.repeat_interleave(starts - offsets[:-1], lengths) + torch.arange(int(offsets[-1]))
        return self.indices[flat], offsets


def _bags(feature_lists: list[list[int]]) -> _Bags:
    offsets = torch.zeros(len(feature_lists) + 1, dtype=torch.int64)
    torch.cumsum(torch.tensor([len(f) for f in feature_lists], dtype=torch.int64), 0, out=offsets[1:])
    flat = [i for f in feature_lists for i in f]
    return _Bags(torch.tensor(flat, dtype=torch.int64), offsets)


class TwoTower(nn.Module):
    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(buckets, dim) * 0.1, requires_grad=False)  # updated by hand
        self.query_mix = nn.Sequential(nn.Tanh(), nn.Linear(dim, dim))
        self.label_mix = nn.Sequential(nn.Tanh(), nn.Linear(dim, dim))

    def encode(self, bags: _Bags, rows: torch.Tensor, mix: nn.Module) -> torch.Tensor:
        idx, off = bags.take(rows)
        return mix(nn.functional.embedding_bag(idx, self.table, off[:-1], mode="mean"))

    @torch.no_grad()
    def encode_all(self, bags: _Bags, mix: nn.Module, chunk: int = 16384) -> torch.Tensor:
        n = len(bags.offsets) - 1
        return torch.cat([self.encode(bags, torch.arange(s, min(n, s + chunk)), mix) for s in range(0, n, chunk)]
                         or [torch.zeros(0, self.table.shape[1])])


def train_two_tower(query_bags: _Bags, label_bags: _Bags, pair_query: torch.Tensor, pair_label: torch.Tensor,
                    num_labels: int, cfg: FreeDictConfig, log=print) -> tuple[TwoTower, list[dict]]:
    """Sampled softmax over the batch's labels and ``cfg.negatives`` random
    ones.  Each step gathers the rows of the table its features touch (one
    ``unique``), so the table's update is dense on those rows only:
    row-wise Adagrad (one accumulator per row, lr ``10 * cfg.lr``) for the
    table, Adam for the two mixing layers."""
    torch.manual_seed(cfg.seed)
    model = TwoTower(1 << cfg.hash_bits, cfg.dim)
    table = model.table.data
    accum = torch.zeros(table.shape[0])
    dense_opt = torch.optim.Adam(list(model.query_mix.parameters()) + list(model.label_mix.parameters()), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    n = len(pair_query)
    history = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for s in range(0, n, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            y = pair_label[idx]
            cand = torch.unique(torch.cat([y, torch.randint(num_labels, (cfg.negatives,), generator=gen)]))
            target = torch.searchsorted(cand, y)
            qi, qo = query_bags.take(pair_query[idx])
            li, lo = label_bags.take(cand)
            rows, inv = torch.unique(torch.cat([qi, li]), return_inverse=True)
            sub = table[rows].requires_grad_()
            q = model.query_mix(nn.functional.embedding_bag(inv[: len(qi)], sub, qo[:-1], mode="mean"))
            lab = model.label_mix(nn.functional.embedding_bag(inv[len(qi) :], sub, lo[:-1], mode="mean"))
            loss = nn.functional.cross_entropy(q @ lab.T, target)
            dense_opt.zero_grad(set_to_none=True)
            loss.backward()
            dense_opt.step()
            with torch.no_grad():
                g = sub.grad
                acc = accum[rows] + (g * g).mean(1)
                accum[rows] = acc
                table[rows] = sub.detach() - g * (10 * cfg.lr / (acc.sqrt() + 1e-10)).unsqueeze(1)
            total += float(loss.detach())
            steps += 1
        history.append({"epoch": epoch, "loss": total / max(1, steps), "seconds": time.perf_counter() - start})
        log(f"  freedict model: epoch {epoch}/{cfg.epochs}, loss {history[-1]['loss']:.3f}, "
            f"{history[-1]['seconds']:.0f} s")
    return model.eval(), history


def cache_key(root: str | os.PathLike, cfg: FreeDictConfig) -> str:
    files = []
    for path in dictd_files(root, DATABASE, "build_freedict_task", PACKAGE):
        st = os.stat(path)
        files.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
    text = repr((CACHE_FORMAT, files, sorted(asdict(cfg).items()), torch.__version__.split("+")[0]))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def build_freedict_task(root: str | os.PathLike = DICTD_ROOT, cfg: FreeDictConfig = FreeDictConfig(), *,
                        cache_dir: str | os.PathLike | None = None, entries: Optional[list[FreeDictEntry]] = None,
                        log=print) -> FreeDictTask:
    """The task of the module docstring, from the cache when there.
    ``entries`` replaces the database's (tests pass a slice; no caching
    then).  ``meta``: ``labels`` (headwords), ``test_text``,
    ``test_unseen`` (bool per test query: none of its labels has a training
    pair of the model), ``test_unseen_fit`` (none in ``train_y``),
    ``heldout_labels``, ``history``, timings, ``config``, ``cache``."""
    if not 0.0 < cfg.label_fraction <= 1.0:
        raise ValueError(f"build_freedict_task: label_fraction must be in (0, 1], got {cfg.label_fraction}")
    if not 0.0 <= cfg.heldout_fraction < 1.0 or not 0.0 <= cfg.entry_test_fraction < 1.0:
        raise ValueError("build_freedict_task: heldout_fraction and entry_test_fraction must be in [0, 1)")
    path = None
    if entries is None and cache_dir is not None:
        path = Path(cache_dir) / f"freedict-{cache_key(root, cfg)}.pt"
        if path.exists():
            blob = torch.load(path, weights_only=False)
            log(f"  freedict: loaded from cache {path.name} (built in {blob['meta']['build_seconds']:.0f} s)")
            return _task(blob, True, path)
    start = time.perf_counter()
    if entries is None:
        entries = read_freedict(root)
    read_seconds = time.perf_counter() - start
    if cfg.label_fraction < 1.0:
        cut = cfg.label_fraction * 2.0**32  # crc32: a fast, fixed hash for the subset (the split is seeded)
        kept = {h for h in {e.headword for e in entries if " " not in e.headword} if zlib.crc32(h.encode()) < cut}
        entries = [e for e in entries if e.headword in kept]
    entries = [e for e in entries if " " not in e.headword and tokens(e.translation)]
    names = sorted({e.headword for e in entries})
    label_id = {h: i for i, h in enumerate(names)}
    heldout = [_unit(cfg.seed, "heldout", h) < cfg.heldout_fraction for h in names]

    # Queries: token texts; identical texts are one query (the same features).
    text_id: dict[str, int] = {}
    texts: list[str] = []
    text_labels: list[list[int]] = []
    pair_text, pair_label, pair_test = [], [], []
    for k, e in enumerate(entries):
        text = " ".join(tokens(e.translation))
        t = text_id.setdefault(text, len(texts))
        if t == len(texts):
            texts.append(text)
            text_labels.append([])
        lab = label_id[e.headword]
        if lab not in text_labels[t]:
            text_labels[t].append(lab)
        pair_text.append(t)
        pair_label.append(lab)
        pair_test.append(heldout[lab] or _unit(cfg.seed, "entry", k, e.headword) < cfg.entry_test_fraction)

    word_memo: dict[str, list[int]] = {}

    def features(words: list[str]) -> list[int]:
        out: list[int] = []
        for w in words:
            f = word_memo.get(w)
            if f is None:
                f = word_memo[w] = word_features(w, cfg.hash_bits)
            out.extend(f)
        return out

    query_bags = _bags([features(t.split()) for t in texts])
    mask = (1 << cfg.hash_bits) - 1
    label_bags = _bags([features([h.lower()]) + _case_features(h, mask) for h in names])
    train_pairs = [(t, lab) for t, lab, test in zip(pair_text, pair_label, pair_test) if not test]
    seen = torch.zeros(len(names), dtype=torch.bool)
    train_q = torch.tensor([t for t, _ in train_pairs], dtype=torch.int64)
    train_l = torch.tensor([lab for _, lab in train_pairs], dtype=torch.int64)
    seen[train_l] = True
    train_texts = set(train_q.tolist())
    test_texts = sorted({t for t, test in zip(pair_text, pair_test) if test} - train_texts)
    gen = torch.Generator().manual_seed(cfg.seed)
    test_texts = [test_texts[i] for i in torch.randperm(len(test_texts), generator=gen)[: cfg.max_test].tolist()]
    prep_seconds = time.perf_counter() - start
    log(f"  freedict: N={len(names):,} labels ({sum(heldout):,} held out), {len(entries):,} entries, "
        f"{len(train_pairs):,} training pairs, {len(test_texts):,} test queries; prepared in {prep_seconds:.1f} s")

    t0 = time.perf_counter()
    model, history = train_two_tower(query_bags, label_bags, train_q, train_l, len(names), cfg, log)
    train_seconds = time.perf_counter() - t0
    weight = model.encode_all(label_bags, model.label_mix).contiguous()
    keep = torch.randperm(len(train_q), generator=gen)[: cfg.max_train]
    fit_q, fit_y = train_q[keep], train_l[keep]
    with torch.no_grad():
        train_x = model.encode(query_bags, fit_q, model.query_mix)
        test_x = model.encode(query_bags, torch.tensor(test_texts, dtype=torch.int64), model.query_mix)
    test_lists = [text_labels[t] for t in test_texts]
    fit_seen = torch.zeros(len(names), dtype=torch.bool)
    fit_seen[fit_y] = True
    seen_list, fit_seen_list = seen.tolist(), fit_seen.tolist()
    blob = {
        "weight": weight,
        "train_x": train_x.contiguous(),
        "train_y": fit_y.clone(),
        "test_x": test_x.contiguous(),
        "test_y": pad_label_lists(test_lists),
        "meta": {
            "labels": names,
            "test_text": [texts[t] for t in test_texts],
            "test_unseen": [not any(seen_list[lab] for lab in ls) for ls in test_lists],
            "test_unseen_fit": [not any(fit_seen_list[lab] for lab in ls) for ls in test_lists],
            "heldout_labels": sum(heldout),
            "model_train_pairs": len(train_pairs),
            "history": history,
            "read_seconds": read_seconds,
            "prep_seconds": prep_seconds,
            "train_seconds": train_seconds,
            "build_seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads(),
            "config": asdict(cfg),
        },
    }
    log(f"  freedict: built in {blob['meta']['build_seconds']:.0f} s (model {train_seconds:.0f} s)")
    if path is not None:
        save_atomically(blob, path)
    return _task(blob, False, path)


def _task(blob: dict, cached: bool, path: Optional[Path]) -> FreeDictTask:
    weight = blob["weight"]
    return FreeDictTask(
        name="freedict", train_x=blob["train_x"], train_y=blob["train_y"], test_x=blob["test_x"],
        test_y=blob["test_y"], num_labels=weight.shape[0],
        meta=dict(blob["meta"], cached=cached, cache=str(path) if path is not None else None),
        weight=weight, bias=torch.zeros(weight.shape[0], dtype=weight.dtype))
