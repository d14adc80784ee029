"""Inference methods compared by the e2e and accuracy sections. Each one
turns hidden vectors x [B, d] into top-k labels of the output layer
(weight [N, d], bias [N]) and can report, per query, the candidates whose
exact logits it re-ranks and how many logits it computed.

* dense:        nn.Linear + topk (full inference, the reference)
* lss:          LSSLinear.predict, after fit() or with random SimHash tables
* naive gather: LSS's candidates, then W[ids] and bmm in plain PyTorch
* faiss-hnsw:   faiss.IndexHNSWFlat, inner product, then exact re-ranking
* faiss-ivf:    faiss.IndexIVFFlat, inner product, then exact re-ranking
* hnswlib:      hnswlib.Index(space="ip"), then exact re-ranking

The approximate-MIPS indexes store [w_i, b_i] and are queried with [x, 1]
(bias folded in as an extra coordinate), and retrieve R candidates whose
exact logits lsskernels.gathered_logits computes before top-k: HNSW returns
its whole search beam (R = efSearch), IVF its R = 64 best. Each method has one
knob swept by the sections (LSS max_candidates, efSearch, nprobe, ef).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

import lsskernels as lss

Tensor = torch.Tensor


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def hnswlib_available() -> bool:
    try:
        import hnswlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Batch:
    """What a method produced for a batch of queries (evaluation path)."""
    top: Tensor                     # int64 [B, k], -1 where fewer than k
    candidates: Optional[Tensor]    # int64 [B, C] re-ranked candidates (-1 padded); None = every label
    num_candidates: Tensor          # float [B]
    logits_computed: Optional[Tensor]  # float [B] inner products with label vectors; None = unknown


class Method:
    family = "method"
    knob: Optional[str] = None

    def __init__(self, label: str):
        self.label = label
        self.build_seconds = 0.0
        self.setting = None
        self.info: Dict[str, object] = {}

    def set(self, value) -> None:
        self.setting = value

    def search(self, x: Tensor, k: int) -> Tensor:
        """Top-k label ids int64 [B, k] (the timed path)."""
        raise NotImplementedError

    def evaluate(self, x: Tensor, k: int) -> Batch:
        raise NotImplementedError


# --------------------------------------------------------------------------
class Dense(Method):
    """Full inference: F.linear (exactly nn.Linear's forward) + topk; shares
    the given tensors, no copy."""
    family = "dense"

    def __init__(self, weight: Tensor, bias: Tensor):
        super().__init__("dense nn.Linear + topk")
        self.weight, self.bias = weight, bias

    def search(self, x, k):
        return torch.topk(F.linear(x, self.weight, self.bias), k, dim=1).indices

    def evaluate(self, x, k):
        full = torch.full((x.shape[0],), float(self.weight.shape[0]), dtype=torch.float64)
        return Batch(self.search(x, k), None, full, full)


# --------------------------------------------------------------------------
@dataclass(frozen=True)
class LSSConfig:
    """LSSLinear knobs and fit() options (see docs/lss.md)."""
    tables: int = 16
    bits: int = 9
    candidates: int = 640      # max_candidates: the candidate budget per query
    min_hits: int = 1
    epochs: int = 4            # fit() epochs
    fit_options: Tuple[Tuple[str, object], ...] = ()  # extra FitConfig fields, as (name, value) pairs
    seed: int = 0

    def fit_kwargs(self) -> Dict[str, object]:
        return dict(self.fit_options)

    def describe(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.fit_options)
        return f"L={self.tables}, K={self.bits}, M={self.candidates}, min_hits={self.min_hits}{extra}"


class LSS(Method):
    family = "lss"
    knob = "max_candidates"

    def __init__(self, label: str, weight: Tensor, bias: Tensor, cfg: LSSConfig, *,
                 fit_on: Optional[Tuple[Tensor, Tensor]] = None):
        """from_linear (weight and bias copied) and, with fit_on = (queries,
        labels), fit(); build_seconds covers both."""
        super().__init__(label)
        self.cfg = cfg
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        start = time.perf_counter()
        self.layer = lss.LSSLinear.from_linear(linear, num_tables=cfg.tables, bits=cfg.bits,
                                               max_candidates=cfg.candidates, min_hits=cfg.min_hits, seed=cfg.seed)
        del linear
        self.family = "lss-random"
        if fit_on is not None:
            report = self.layer.fit(fit_on[0], fit_on[1], seed=cfg.seed, epochs=cfg.epochs, progress=False,
                                    **cfg.fit_kwargs())
            self.info["fit"] = {"epochs": report.epochs, "seconds": report.seconds}
            self.family = "lss-fit"
        self.build_seconds = time.perf_counter() - start
        self._finish()

    @classmethod
    def wrap(cls, label: str, layer: "lss.LSSLinear", build_seconds: float = 0.0) -> "LSS":
        """An LSS method over an existing layer (no copy)."""
        self = cls.__new__(cls)
        Method.__init__(self, label)
        self.cfg = LSSConfig(tables=layer.num_tables, bits=layer.bits, candidates=layer.max_candidates,
                             min_hits=layer.min_hits, epochs=0, seed=layer.seed)
        self.layer = layer
        self.family = "lss-fit" if layer.fitted else "lss-random"
        self.build_seconds = build_seconds
        self._finish()
        return self

    def _finish(self) -> None:
        self.layer.eval().requires_grad_(False)
        self.info["table_stats"] = {k: v for k, v in self.layer.table_stats().items() if not isinstance(v, Tensor)}
        self.setting = self.layer.max_candidates

    def set(self, value):
        self.setting = int(value)
        self.layer.max_candidates = int(value)

    def search(self, x, k):
        return self.layer.predict(x, k)[1]

    def evaluate(self, x, k):
        ids, counts = self.layer.candidates(x)
        logits = lss.gathered_logits(x, self.layer.weight, self.layer.bias, ids)
        top = lss.topk_gathered(logits, ids, k)[1]
        n = counts.to(torch.float64)
        return Batch(top, ids.to(torch.int64), n, n)


class NaiveGather(Method):
    """LSS's candidates, exact logits by plain PyTorch: W[ids], bmm, + b[ids]."""
    family = "naive-gather"
    knob = "max_candidates"

    def __init__(self, lss_method: LSS):
        super().__init__(f"naive gather (W[ids] + bmm) on {lss_method.label} candidates")
        self.lss = lss_method
        self.build_seconds = lss_method.build_seconds
        self.setting = lss_method.setting

    def set(self, value):
        self.setting = int(value)
        self.lss.set(value)

    def search(self, x, k):
        layer = self.lss.layer
        ids, _ = layer.candidates(x)
        ids = ids.to(torch.int64)
        safe = ids.clamp(min=0)
        logits = torch.bmm(layer.weight[safe], x.unsqueeze(2)).squeeze(2) + layer.bias[safe]
        logits = logits.masked_fill(ids < 0, float("-inf"))
        top = torch.topk(logits, min(k, ids.shape[1]), dim=1)
        out = ids.gather(1, top.indices).masked_fill(torch.isinf(top.values) & (top.values < 0), -1)
        if out.shape[1] < k:
            out = torch.cat([out, out.new_full((out.shape[0], k - out.shape[1]), -1)], 1)
        return out

    def evaluate(self, x, k):
        b = self.lss.evaluate(x, k)
        return Batch(self.search(x, k), b.candidates, b.num_candidates, b.logits_computed)


# --------------------------------------------------------------------------
def augmented_labels(weight: Tensor, bias: Tensor):
    import numpy as np

    return np.ascontiguousarray(torch.cat([weight, bias.unsqueeze(1)], 1).to(torch.float32).numpy())


def augmented_queries(x: Tensor):
    import numpy as np

    return np.ascontiguousarray(torch.cat([x, x.new_ones(x.shape[0], 1)], 1).to(torch.float32).numpy())


class AnnRerank(Method):
    """Retrieve R candidates from an approximate MIPS index, re-rank them by
    exact logits (lsskernels.gathered_logits + topk_gathered)."""

    def __init__(self, label: str, weight: Tensor, bias: Tensor):
        super().__init__(label)
        self.weight, self.bias = weight, bias

    def retrieve(self, x: Tensor, k: int) -> Tuple[Tensor, Optional[float]]:
        """int64 ids [B, R] (-1 padded) and total distance computations (or None)."""
        raise NotImplementedError

    def _rerank(self, x, ids, k):
        ids32 = ids.to(torch.int32)
        logits = lss.gathered_logits(x, self.weight, self.bias, ids32)
        return lss.topk_gathered(logits, ids32, k)[1]

    def search(self, x, k):
        return self._rerank(x, self.retrieve(x, k)[0], k)

    def evaluate(self, x, k):
        ids, ndis = self.retrieve(x, k)
        n = (ids >= 0).sum(1).to(torch.float64)
        computed = None if ndis is None else torch.full((x.shape[0],), ndis / x.shape[0], dtype=torch.float64)
        return Batch(self._rerank(x, ids, k), ids, n, computed)


class FaissHNSW(AnnRerank):
    family = "faiss-hnsw"
    knob = "efSearch"

    def __init__(self, weight, bias, *, m: int = 32, ef_construction: int = 64, threads: int = 2):
        import faiss

        super().__init__(f"FAISS IndexHNSWFlat (M={m}, efConstruction={ef_construction})", weight, bias)
        faiss.omp_set_num_threads(threads)
        data = augmented_labels(weight, bias)
        start = time.perf_counter()
        self.index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = ef_construction
        self.index.add(data)
        self.build_seconds = time.perf_counter() - start
        self.set(64)

    def set(self, value):
        self.setting = int(value)
        self.index.hnsw.efSearch = int(value)

    def retrieve(self, x, k):
        import faiss

        faiss.cvar.hnsw_stats.reset()
        _, ids = self.index.search(augmented_queries(x), max(k, self.setting))
        return torch.from_numpy(ids), float(faiss.cvar.hnsw_stats.ndis)


class FaissIVF(AnnRerank):
    family = "faiss-ivf"
    knob = "nprobe"

    def __init__(self, weight, bias, *, nlist: Optional[int] = None, rerank: int = 64, train_per_list: int = 32,
                 niter: int = 10, threads: int = 2, seed: int = 0):
        import faiss

        n = weight.shape[0]
        nlist = nlist or 2 ** max(4, round(math.log2(2 * math.sqrt(n))))
        nlist = max(1, min(nlist, n // 8))  # k-means needs several points per list
        super().__init__(f"FAISS IndexIVFFlat (nlist={nlist}, re-rank {rerank})", weight, bias)
        faiss.omp_set_num_threads(threads)
        data = augmented_labels(weight, bias)
        start = time.perf_counter()
        quantizer = faiss.IndexFlatIP(data.shape[1])
        self.index = faiss.IndexIVFFlat(quantizer, data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.niter = niter
        self.index.cp.seed = seed
        sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: train_per_list * nlist]
        self.index.train(data[sample.sort().values.numpy()])
        self.index.add(data)
        self.quantizer = quantizer  # keep alive
        self.build_seconds = time.perf_counter() - start
        self.rerank = rerank
        self.info.update(nlist=nlist, rerank=rerank)
        self.set(8)

    def set(self, value):
        self.setting = int(value)
        self.index.nprobe = int(value)

    def retrieve(self, x, k):
        import faiss

        faiss.cvar.indexIVF_stats.reset()
        _, ids = self.index.search(augmented_queries(x), max(k, self.rerank))
        return torch.from_numpy(ids), float(faiss.cvar.indexIVF_stats.ndis)


class Hnswlib(AnnRerank):
    family = "hnswlib"
    knob = "ef"

    def __init__(self, weight, bias, *, m: int = 16, ef_construction: int = 100, threads: int = 2, seed: int = 0):
        import hnswlib
        import numpy as np

        super().__init__(f"hnswlib ip (M={m}, ef_construction={ef_construction})", weight, bias)
        data = augmented_labels(weight, bias)
        self.threads = threads
        start = time.perf_counter()
        self.index = hnswlib.Index(space="ip", dim=data.shape[1])
        self.index.init_index(max_elements=data.shape[0], ef_construction=ef_construction, M=m, random_seed=seed)
        self.index.add_items(data, np.arange(data.shape[0]), num_threads=threads)
        self.build_seconds = time.perf_counter() - start
        self.set(64)

    def set(self, value):
        self.setting = int(value)
        self.index.set_ef(int(value))

    def retrieve(self, x, k):
        r = max(k, self.setting)
        q = augmented_queries(x)
        while True:
            try:
                ids, _ = self.index.knn_query(q, k=r, num_threads=self.threads)
                break
            except RuntimeError:  # fewer than r results reachable: ask for fewer
                if r <= k:
                    raise
                r = max(k, r // 2)
        return torch.from_numpy(ids.astype("int64")), None
