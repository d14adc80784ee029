"""A small model for the WordNet task, trained once and cached: sparse
bag-of-words (tf-idf) -> nn.EmbeddingBag(vocab, d, mode="sum") -> [tanh ->
nn.Linear(d, d)] -> hidden vector (d = 128) -> the wide output
nn.Linear(d, N), trained with softmax cross-entropy (a multi-label row's
target is uniform over its labels) with Adam for a few epochs.

The trained weights are cached under <out>/cache/ keyed by a hash of the
configuration and a fingerprint of the data, so reruns skip training; the
cache file also keeps the training log and time.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from bench.common import config_key
from bench.data.cache import save_atomically
from lsskernels.data import LabelTask, SparseBag

CACHE_FORMAT = 1


@dataclass(frozen=True)
class WordNetModelConfig:
    parts: Tuple[str, ...] = ("noun", "verb", "adj", "adv")
    dim: int = 128
    hidden_layer: bool = True   # tanh + Linear(d, d) between the bag and the output layer
    epochs: int = 5
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0


class BagModel(nn.Module):
    def __init__(self, vocab: int, dim: int, num_labels: int, hidden_layer: bool):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="sum")
        self.mix = nn.Sequential(nn.Tanh(), nn.Linear(dim, dim)) if hidden_layer else nn.Identity()
        self.out = nn.Linear(dim, num_labels)

    def hidden(self, x: SparseBag) -> torch.Tensor:
        return self.mix(self.bag(x.indices, x.offsets[:-1], per_sample_weights=x.weights))

    def forward(self, x: SparseBag) -> torch.Tensor:
        return self.out(self.hidden(x))


def multilabel_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy against the uniform distribution over each row's
    labels (y [b] or [b, m] padded with -1)."""
    y = y.unsqueeze(1) if y.dim() == 1 else y
    logp = torch.log_softmax(logits, dim=1)
    mask = (y >= 0).to(logp.dtype)
    picked = logp.gather(1, y.clamp(min=0)) * mask
    return -(picked.sum(1) / mask.sum(1).clamp(min=1)).mean()


def data_fingerprint(task: LabelTask) -> Dict[str, int]:
    return {"num_labels": task.num_labels, "num_features": task.input_dim, "train": len(task.train_x),
            "test": len(task.test_x), "train_nnz": task.train_x.nnz, "train_y_sum": int(task.train_y.sum())}


@torch.no_grad()
def hidden_vectors(model: BagModel, x: SparseBag, chunk: int = 8192) -> torch.Tensor:
    return torch.cat([model.hidden(x.subset(torch.arange(s, min(len(x), s + chunk))))
                      for s in range(0, len(x), chunk)])


def train(task: LabelTask, cfg: WordNetModelConfig, log=print) -> Tuple[BagModel, Dict[str, object]]:
    torch.manual_seed(cfg.seed)
    model = BagModel(task.input_dim, cfg.dim, task.num_labels, cfg.hidden_layer)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = len(task.train_x)
    history = []
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen)
        total, steps = 0.0, 0
        for s in range(0, n, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = multilabel_cross_entropy(model(task.train_x.subset(idx)), task.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        history.append({"epoch": epoch, "loss": total / max(1, steps), "seconds": time.perf_counter() - start})
        log(f"  wordnet model: epoch {epoch}/{cfg.epochs}, loss {history[-1]['loss']:.3f}, "
            f"{history[-1]['seconds']:.0f} s")
    return model.eval(), {"history": history, "train_seconds": time.perf_counter() - start}


def load_or_train(task: LabelTask, cfg: WordNetModelConfig, cache_dir: Optional[Path],
                  log=print) -> Tuple[BagModel, Dict[str, object]]:
    """The trained model for (task, cfg), from the cache when present."""
    key = config_key({"format": CACHE_FORMAT, "config": asdict(cfg), "data": data_fingerprint(task),
                      "torch": torch.__version__.split("+")[0]})
    path = Path(cache_dir) / f"wordnet-model-{key}.pt" if cache_dir is not None else None
    if path is not None and path.exists():
        blob = torch.load(path, weights_only=False)
        model = BagModel(task.input_dim, cfg.dim, task.num_labels, cfg.hidden_layer)
        model.load_state_dict(blob["state_dict"])
        info = dict(blob["info"], cache=str(path), cached=True)
        log(f"  wordnet model: loaded from cache {path.name} (trained in {info['train_seconds']:.0f} s)")
        return model.eval(), info
    log(f"  wordnet model: training {cfg} (cache miss)")
    model, info = train(task, cfg, log)
    info.update(config=asdict(cfg), key=key)
    if path is not None:
        save_atomically({"state_dict": model.state_dict(), "info": info}, path)
    return model, dict(info, cache=str(path) if path else None, cached=False)
