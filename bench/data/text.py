"""Text features for the bag-of-words tasks: a tokenizer, a deliberately
crude stemmer (used to mask inflected forms of a word) and L2-normalised
tf-idf rows packed into ``lsskernels.data.SparseBag``."""

from __future__ import annotations

import re

import numpy as np
import torch

from lsskernels.data import SparseBag

__all__ = ["tokens", "crude_stem", "tfidf_bag"]

_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lowercase alphanumeric runs of ``text``."""
    return _TOKEN.findall(text.lower())


def crude_stem(token: str) -> str:
    """A deliberately crude stemmer, used only to mask inflected forms of the
    target word ("choked", "chokes" for "choke") out of test texts."""
    for suffix in ("ings", "ing", "ed", "es", "er", "est", "ly", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            token = token[: -len(suffix)]
            break
    if len(token) > 3 and token[-1] in "eyi":
        token = token[:-1]
    if len(token) > 3 and token[-1] == token[-2] and token[-1] not in "aeiou":
        token = token[:-1]
    return token


def tfidf_bag(docs: list[list[str]], vocabulary: list[str], idf: np.ndarray) -> SparseBag:
    """tf-idf rows, L2-normalised, features ascending within a row; tokens
    outside ``vocabulary`` are ignored (a row may end up empty)."""
    token_id = {t: i for i, t in enumerate(vocabulary)}
    num_features = len(vocabulary)
    lengths = np.empty(len(docs), dtype=np.int64)
    flat: list[int] = []
    for r, toks in enumerate(docs):
        ids = [token_id[t] for t in toks if t in token_id]
        flat.extend(ids)
        lengths[r] = len(ids)
    rows = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    keys, tf = np.unique(rows * num_features + np.asarray(flat, dtype=np.int64), return_counts=True)
    rows, features = keys // max(1, num_features), keys % max(1, num_features)
    weights = tf * idf[features]
    norms = np.sqrt(np.bincount(rows, weights=weights * weights, minlength=len(docs)))
    weights /= norms[rows]
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(docs)), out=offsets[1:])
    return SparseBag(
        torch.from_numpy(features),
        torch.from_numpy(offsets),
        torch.from_numpy(weights.astype(np.float32)),
        num_features,
    )
