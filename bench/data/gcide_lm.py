"""A word-level language-model head on GCIDE (Debian's ``dict-gcide``, the
Collaborative International Dictionary of English, mostly Webster 1913):
next-word prediction over a vocabulary of ``vocab_size`` words, trained
from scratch briefly.  The regime: the argmax concentrates on frequent
words ("the", "of", ",") and most labels are rarely or never a top-1.

* Text: every stored entry of ``gcide`` (``clean_entry``): source tags and
  bracketed etymologies / usage notes ``[..]``, pronunciations ``\\..\\``,
  cross-reference braces ``{..}`` (their words kept), and "--Author."
  attributions removed.  Tokens (``lm_tokens``): lowercase words
  (``[a-z]+``, apostrophes inside kept) and the punctuation marks
  ``. , ; : ? !``; an entry ends with ``<eos>``.
* Split by entry, by a hash of the seed and the entry's offset:
  ``test_fraction`` (5%) of the entries are test text.
* Vocabulary: ``<eos>``, ``<unk>``, then the most frequent training tokens
  (ties by first occurrence), ``vocab_size`` in all.  Labels are the
  vocabulary ids.
* Model (a Bengio-style fixed-window MLP, ``train_lm``): the previous
  ``context`` tokens (``<eos>`` before an entry's start) -> Embedding(V,
  64) each, concatenated -> Linear -> tanh -> Linear(256, d = 128) -> tanh
  = the hidden vector -> the output layer Linear(d, V) (weight [V, d],
  bias [V]); full softmax cross-entropy, Adam, ``steps`` batches of
  ``batch_size`` positions drawn with replacement from the training text.
* Pairs: ``max_train`` training positions and ``max_test`` test positions,
  drawn by the seed, never with an ``<unk>`` target, in a seeded random
  order (a prefix is a fair sample): (hidden vector, next token id).

Cached as ``<cache_dir>/gcide_lm-<key>.pt`` (key: the files' sizes and
mtimes, the configuration and torch's version).

Measured (dict-gcide 0.48.5+nmu2, defaults, seed 0, torch 2.13, 1 CPU
thread on a shared 2-core machine, load average ~4):

* 126,240 entries: 120,016 / 6,224 train / test entries, 5.1M / 256K
  tokens; N = 50,000 (vocabulary), d = 128; 100,000 train / 10,000 test
  pairs.
* Build 230 s (370 s at load average ~7): reading and tokenising 12 s,
  model 217 s (300 steps of 256 positions, 77K tokens: brief on purpose;
  loss 7.8 -> 5.9).  Two builds gave bit-identical layers and pairs.
* Full inference (dense top-1 over the 50,000 words, with the bias) on
  the test pairs: P@1 = 0.212 (SE 0.004); the argmax takes only 24
  distinct values ("." 27%, "the" 18%, "," 11%, "of", "a", ";",
  "<eos>", ...) while the test targets span 2,779 distinct words; 7.6% of
  the test targets never occur among the training pairs' targets.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from lsskernels.data import LabelTask

from .cache import save_atomically
from .dictd import DICTD_ROOT, DictdDatabase, dictd_files

__all__ = [
    "PACKAGE",
    "DATABASE",
    "GcideLMConfig",
    "LMTask",
    "clean_entry",
    "lm_tokens",
    "read_gcide_texts",
    "gcide_available",
    "build_vocabulary",
    "build_gcide_lm_task",
]

PACKAGE = "dict-gcide"
DATABASE = "gcide"
CACHE_FORMAT = 2
EOS, UNK = "<eos>", "<unk>"

_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_PRON = re.compile(r"\\[^\\\n]*\\")
_ATTRIBUTION = re.compile(r"--\s*[A-Z][\w'.]*(?:\s+[A-Z][\w'.]*)*\.?")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[.,;:?!]")


def clean_entry(text: str) -> str:
    """An entry's prose (module docstring)."""
    text = _PRON.sub(" ", text)
    for _ in range(3):  # nested brackets, innermost first
        text = _BRACKETS.sub(" ", text)
    text = _ATTRIBUTION.sub(" ", text.replace("{", "").replace("}", ""))
    return re.sub(r"\s+", " ", text).strip()


def lm_tokens(text: str) -> list[str]:
    """Lowercase words and ``. , ; : ? !`` of ``text``."""
    return _TOKEN.findall(text.lower())


def read_gcide_texts(root: str | os.PathLike = DICTD_ROOT, limit: Optional[int] = None) -> list[tuple[int, str]]:
    """``(offset, cleaned text)`` of every stored GCIDE entry (the first
    ``limit`` when given), in index order."""
    db = DictdDatabase.open(root, DATABASE, PACKAGE, "read_gcide_texts")
    return [(e.offset, clean_entry(t)) for e, t in itertools.islice(db.entries(), limit)]


def gcide_available(root: str | os.PathLike = DICTD_ROOT) -> bool:
    try:
        dictd_files(root, DATABASE, "gcide_available", PACKAGE)
    except FileNotFoundError:
        return False
    return True


def build_vocabulary(token_lists: list[list[str]], size: int) -> list[str]:
    """``[<eos>, <unk>] +`` the ``size - 2`` most frequent tokens (ties: first
    occurrence first)."""
    if size < 3:
        raise ValueError(f"build_vocabulary: size must be >= 3, got {size}")
    counts = Counter(t for toks in token_lists for t in toks)
    return [EOS, UNK] + [t for t, _ in counts.most_common(size - 2)]


@dataclass(frozen=True)
class GcideLMConfig:
    vocab_size: int = 50_000
    context: int = 5
    embed_dim: int = 64
    hidden: int = 256
    dim: int = 128
    steps: int = 300
    batch_size: int = 256
    lr: float = 2e-3
    test_fraction: float = 0.05
    max_train: int = 100_000
    max_test: int = 10_000
    max_entries: Optional[int] = None   # the first K entries (quick mode / tests)
    seed: int = 0


@dataclass(eq=False, repr=False, kw_only=True)
class LMTask(LabelTask):
    weight: torch.Tensor
    bias: torch.Tensor


class WindowLM(nn.Module):
    def __init__(self, cfg: GcideLMConfig, vocab: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, cfg.embed_dim)
        self.body = nn.Sequential(nn.Linear(cfg.context * cfg.embed_dim, cfg.hidden), nn.Tanh(),
                                  nn.Linear(cfg.hidden, cfg.dim), nn.Tanh())
        self.out = nn.Linear(cfg.dim, vocab)

    def hidden_state(self, ctx: torch.Tensor) -> torch.Tensor:
        return self.body(self.embed(ctx).flatten(1))

    @torch.no_grad()
    def hidden_chunks(self, ctx: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        return torch.cat([self.hidden_state(ctx[s : s + chunk]) for s in range(0, len(ctx), chunk)]
                         or [torch.zeros(0, self.out.in_features)])


def _stream(token_lists: list[list[str]], token_id: dict[str, int]) -> torch.Tensor:
    unk, eos = token_id[UNK], token_id[EOS]
    flat = [eos]
    for toks in token_lists:
        flat.extend(token_id.get(t, unk) for t in toks)
        flat.append(eos)
    return torch.tensor(flat, dtype=torch.int64)


def _contexts(stream: torch.Tensor, positions: torch.Tensor, context: int, eos: int) -> torch.Tensor:
    """``[n, context]`` previous tokens of each position, cut at the last
    ``<eos>`` before it (earlier slots are ``<eos>``)."""
    offs = torch.arange(-context, 0)
    idx = positions.unsqueeze(1) + offs
    ctx = stream[idx.clamp(min=0)]
    ctx[idx < 0] = eos
    # Everything before the last <eos> inside the window belongs to the previous entry.
    is_eos = ctx == eos
    last = torch.where(is_eos, torch.arange(context).expand_as(ctx), torch.full_like(ctx, -1)).amax(1, keepdim=True)
    ctx[torch.arange(context).unsqueeze(0) < last] = eos
    return ctx


def train_lm(stream: torch.Tensor, cfg: GcideLMConfig, vocab: int, log=print) -> tuple[WindowLM, list[dict]]:
    torch.manual_seed(cfg.seed)
    model = WindowLM(cfg, vocab)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    eos = 0
    history: list[dict] = []
    start = time.perf_counter()
    total, count = 0.0, 0
    report = max(1, cfg.steps // 6)
    for step in range(1, cfg.steps + 1):
        pos = torch.randint(1, len(stream), (cfg.batch_size,), generator=gen)
        logits = model.out(model.hidden_state(_contexts(stream, pos, cfg.context, eos)))
        loss = nn.functional.cross_entropy(logits, stream[pos])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        count += 1
        if step % report == 0 or step == cfg.steps:
            history.append({"step": step, "loss": total / count, "seconds": time.perf_counter() - start})
            log(f"  gcide lm: step {step}/{cfg.steps}, loss {total / count:.3f}, {history[-1]['seconds']:.0f} s")
            total, count = 0.0, 0
    return model.eval(), history


def cache_key(root: str | os.PathLike, cfg: GcideLMConfig) -> str:
    files = []
    for path in dictd_files(root, DATABASE, "build_gcide_lm_task", PACKAGE):
        st = os.stat(path)
        files.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
    text = repr((CACHE_FORMAT, files, sorted(asdict(cfg).items()), torch.__version__.split("+")[0]))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _is_test(seed: int, offset: int, fraction: float) -> bool:
    digest = hashlib.blake2b(f"{seed}/{offset}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < fraction


def _sample_positions(stream: torch.Tensor, n: int, unk: int, gen: torch.Generator) -> torch.Tensor:
    valid = torch.nonzero(stream[1:] != unk).squeeze(1) + 1
    return valid[torch.randperm(len(valid), generator=gen)[:n]].sort().values


def build_gcide_lm_task(root: str | os.PathLike = DICTD_ROOT, cfg: GcideLMConfig = GcideLMConfig(), *,
                        cache_dir: str | os.PathLike | None = None,
                        texts: Optional[list[tuple[int, str]]] = None, log=print) -> LMTask:
    """The task of the module docstring, from the cache when there.  ``texts``
    (``(offset, cleaned text)``) replaces the database's (tests; no caching
    then).  ``meta``: ``vocabulary``, ``train_tokens`` / ``test_tokens`` (text
    sizes), ``history``, timings, ``config``, ``cache``."""
    if not 0.0 < cfg.test_fraction < 1.0:
        raise ValueError(f"build_gcide_lm_task: test_fraction must be in (0, 1), got {cfg.test_fraction}")
    path = None
    if texts is None and cache_dir is not None:
        path = Path(cache_dir) / f"gcide_lm-{cache_key(root, cfg)}.pt"
        if path.exists():
            blob = torch.load(path, weights_only=False)
            log(f"  gcide lm: loaded from cache {path.name} (built in {blob['meta']['build_seconds']:.0f} s)")
            return _task(blob, True, path)
    start = time.perf_counter()
    if texts is None:
        texts = read_gcide_texts(root, cfg.max_entries)
    if cfg.max_entries is not None:
        texts = texts[: cfg.max_entries]
    train_tok, test_tok = [], []
    for offset, text in texts:
        toks = lm_tokens(text)
        if toks:
            (test_tok if _is_test(cfg.seed, offset, cfg.test_fraction) else train_tok).append(toks)
    vocab = build_vocabulary(train_tok, cfg.vocab_size)
    token_id = {t: i for i, t in enumerate(vocab)}
    train_stream, test_stream = _stream(train_tok, token_id), _stream(test_tok, token_id)
    prep_seconds = time.perf_counter() - start
    log(f"  gcide lm: {len(train_tok):,} / {len(test_tok):,} train / test entries, {len(train_stream):,} / "
        f"{len(test_stream):,} tokens, vocabulary {len(vocab):,}; prepared in {prep_seconds:.1f} s")
    t0 = time.perf_counter()
    model, history = train_lm(train_stream, cfg, len(vocab), log)
    train_seconds = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    unk, eos = token_id[UNK], token_id[EOS]
    train_pos = _sample_positions(train_stream, cfg.max_train, unk, gen)
    test_pos = _sample_positions(test_stream, cfg.max_test, unk, gen)
    test_pos = test_pos[torch.randperm(len(test_pos), generator=gen)]  # any prefix is a fair sample
    train_pos = train_pos[torch.randperm(len(train_pos), generator=gen)]
    blob = {
        "weight": model.out.weight.detach().contiguous(),
        "bias": model.out.bias.detach().contiguous(),
        "train_x": model.hidden_chunks(_contexts(train_stream, train_pos, cfg.context, eos)).contiguous(),
        "train_y": train_stream[train_pos].clone(),
        "test_x": model.hidden_chunks(_contexts(test_stream, test_pos, cfg.context, eos)).contiguous(),
        "test_y": test_stream[test_pos].clone(),
        "meta": {
            "vocabulary": vocab,
            "train_tokens": len(train_stream),
            "test_tokens": len(test_stream),
            "tokens_seen": cfg.steps * cfg.batch_size,
            "history": history,
            "prep_seconds": prep_seconds,
            "train_seconds": train_seconds,
            "build_seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads(),
            "config": asdict(cfg),
        },
    }
    log(f"  gcide lm: built in {blob['meta']['build_seconds']:.0f} s (model {train_seconds:.0f} s)")
    if path is not None:
        save_atomically(blob, path)
    return _task(blob, False, path)


def _task(blob: dict, cached: bool, path: Optional[Path]) -> LMTask:
    return LMTask(
        name="lm", train_x=blob["train_x"], train_y=blob["train_y"], test_x=blob["test_x"],
        test_y=blob["test_y"], num_labels=blob["weight"].shape[0],
        meta=dict(blob["meta"], cached=cached, cache=str(path) if path is not None else None),
        weight=blob["weight"], bias=blob["bias"])
