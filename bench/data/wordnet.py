"""WordNet (Debian's ``wordnet-base``): a reader of its data files and the
bag-of-words task "guess the word from a text about it".

Measured (2 CPU cores, WordNet 3.0 from Debian's wordnet-base 1:3.0-37):

* Defaults (seed 0): N = 34,226 labels (lemmas of the 32,923 synsets with
  usage examples, out of 147,306 lemmas), 85,104 training rows (48,850
  definitions + 36,254 usage examples; ``train_y`` is ``[n, 28]``), 12,085
  test rows (25% of the 48,339 usage examples), vocabulary 20,094.
  Building takes ~5 s (up to ~15 s on a busy machine).  ``label_set="all"``:
  N = 147,306, 153,913 training rows, 12,085 test rows, vocabulary 30,309.
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
from typing import NamedTuple, Sequence

import numpy as np
import torch

from lsskernels.data import LabelTask, pad_label_lists

from .text import crude_stem, tfidf_bag, tokens

__all__ = [
    "WORDNET_PARTS",
    "Synset",
    "parse_wordnet_data",
    "read_exceptions",
    "wordnet_files",
    "make_wordnet_task",
]

WORDNET_PARTS = ("noun", "verb", "adj", "adv")
_ADJ_MARKER = re.compile(r"\([a-z]+\)$")
_QUOTED = re.compile(r'"([^"]*)"')


class Synset(NamedTuple):
    """One line of a ``data.<part>`` file."""

    part: str              # "noun", "verb", "adj" or "adv": the file it came from
    offset: int            # byte offset of the line in that file: (part, offset) names the synset
    lemmas: list[str]      # lowercased, adjective markers such as "(a)" stripped; the first is the head word
    gloss: str             # the whole gloss: definition and quoted usage examples
    definition: str        # the gloss with each quoted example replaced by a space
    examples: list[str]    # the double-quoted parts of the gloss, stripped, non-empty


def parse_wordnet_data(path: str | os.PathLike, part: str | None = None) -> list[Synset]:
    """Synsets of one ``data.<part>`` file (``part`` defaults to the file
    name's suffix).

    Line format (wndb(5)): ``offset lex_filenum ss_type w_cnt word lex_id
    [word lex_id ...] p_cnt ... | gloss``; ``w_cnt`` is hex.  Lines starting
    with two spaces are the license header.  Examples are the double-quoted
    parts of the gloss; the definition is the rest."""
    path = os.fspath(path)
    if part is None:
        part = os.path.basename(path).rpartition(".")[2]
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
                offset = int(fields[0])
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
            synsets.append(Synset(part, offset, lemmas, gloss, definition, examples))
    return synsets


def read_exceptions(root: str | os.PathLike) -> dict[str, set[str]]:
    """Irregular forms from WordNet's ``*.exc`` files (e.g. "ran" -> "run"),
    mapped base -> inflected forms.  Missing files are fine."""
    forms: dict[str, set[str]] = {}
    for part in WORDNET_PARTS:
        path = os.path.join(root, f"{part}.exc")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                for base in words[1:]:
                    forms.setdefault(base.lower(), set()).add(words[0].lower())
    return forms


def wordnet_files(root: str | os.PathLike, parts: Sequence[str], caller: str) -> list[str]:
    """The ``data.<part>`` paths under ``root``, in the order of ``parts``;
    a clear error for an unknown part or a missing file."""
    files = []
    for part in parts:
        if part not in WORDNET_PARTS:
            raise ValueError(f"{caller}: unknown part {part!r}, expected some of {WORDNET_PARTS}")
        path = os.path.join(os.fspath(root), f"data.{part}")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{caller}: {path} not found; install Debian's wordnet-base package "
                f"(apt-get install wordnet-base) or pass root= a directory with WordNet's data.* files"
            )
        files.append(path)
    return files


def make_wordnet_task(
    root: str | os.PathLike = "/usr/share/wordnet",
    seed: int = 0,
    *,
    test_fraction: float = 0.25,
    min_token_count: int = 2,
    label_set: str = "examples",
    with_definition: bool = True,
    parts: Sequence[str] = WORDNET_PARTS,
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
    files = wordnet_files(root, parts, "make_wordnet_task")
    synsets = [s for path in files for s in parse_wordnet_data(path)]

    if label_set == "examples":
        names = sorted({lemma for s in synsets if s.examples for lemma in s.lemmas})
    else:
        names = sorted({lemma for s in synsets for lemma in s.lemmas})
    label_id = {name: i for i, name in enumerate(names)}

    # Every usage example, in file order, then a seeded split.
    example_refs = [(s, e) for s, syn in enumerate(synsets) for e in range(len(syn.examples))]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(example_refs), generator=gen).tolist()
    num_test = int(round(test_fraction * len(example_refs)))
    is_test = [False] * len(example_refs)
    for i in order[:num_test]:
        is_test[i] = True

    irregular = read_exceptions(root)
    stem_memo: dict[str, str] = {}
    mask_memo: dict[int, tuple[set[str], set[str]]] = {}
    definition_memo: dict[int, list[str]] = {}

    def stem(token: str) -> str:
        found = stem_memo.get(token)
        if found is None:
            found = stem_memo[token] = crude_stem(token)
        return found

    def masked(s: int, text: str) -> list[str]:
        """Tokens of ``text`` minus every form of synset ``s``'s lemmas."""
        if s not in mask_memo:
            exact: set[str] = set()
            for lemma in synsets[s].lemmas:
                exact.update(tokens(lemma.replace("_", " ")))
                for form in irregular.get(lemma, ()):
                    exact.update(tokens(form.replace("_", " ")))
            mask_memo[s] = (exact, {stem(t) for t in exact if len(t) >= 3})
        exact, stems = mask_memo[s]
        return [t for t in tokens(text) if t not in exact and (len(t) < 3 or stem(t) not in stems)]

    def masked_definition(s: int) -> list[str]:
        if s not in definition_memo:
            definition_memo[s] = masked(s, synsets[s].definition)
        return definition_memo[s]

    train_tokens: list[list[str]] = []
    train_labels: list[list[int]] = []
    for s, syn in enumerate(synsets):
        ids = [label_id[lemma] for lemma in dict.fromkeys(syn.lemmas) if lemma in label_id]
        if ids:
            train_tokens.append(masked_definition(s))
            train_labels.append(ids)
    test_tokens: list[list[str]] = []
    test_labels: list[list[int]] = []
    test_text: list[str] = []
    for k, (s, e) in enumerate(example_refs):
        syn = synsets[s]
        ids = [label_id[lemma] for lemma in dict.fromkeys(syn.lemmas)]
        toks = masked(s, syn.examples[e])
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
    train_x = tfidf_bag(train_tokens, vocabulary, idf)
    test_x = tfidf_bag(test_tokens, vocabulary, idf)
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
