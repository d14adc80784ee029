"""lsskernels: Label Superior Sampling for wide output layers.

Public API (see docs/api.md):
    LSSLinear                      drop-in nn.Linear with sparse inference
    ShardedLSSLinear, vocab_parallel_cross_entropy
                                   LSSLinear split by output rows over a
                                   torch.distributed group (lsskernels/sharded.py)
    hash_codes, build_tables, bucket_lookup, bucket_lookup_bitmap,
    gathered_logits, bitmap_sparse_matmul, topk_gathered, topk_packed
                                   the ops, with a backend= switch
    quantized_candidates, quantized_probe, partition_predict_topk
                                   the partition family's ops (int8 quantized
                                   candidate scoring), same switch
    sampled_cross_entropy, SampledCrossEntropyLoss, RowSparseAdagrad
                                   training the layer: sampled softmax with
                                   index-mined negatives (docs/training.md)
    PartitionConfig, SimHashConfig the index families' knobs, for
                                   LSSLinear(..., index=...)
"""
from ._ops import (
    BACKENDS,
    bitmap_sparse_matmul,
    bucket_lookup,
    bucket_lookup_bitmap,
    build_tables,
    cuda_kernels_built,
    extension_loaded,
    gathered_logits,
    hash_codes,
    partition_predict_topk,
    quantized_probe,
    quantized_candidates,
    topk_gathered,
    topk_packed,
)
from .index import SearchParams
from .layer import LSSLinear
from .partition import PartitionConfig
from .simhash import SimHashConfig
from .sampled_loss import RowSparseAdagrad, SampledCrossEntropyLoss, sampled_cross_entropy
from .sharded import ShardedLSSLinear, vocab_parallel_cross_entropy

# The one version number: pyproject.toml reads it (dynamic), docs and bench stamps print it.
__version__ = "0.9.8"

__all__ = [
    "BACKENDS",
    "LSSLinear",
    "PartitionConfig",
    "RowSparseAdagrad",
    "SampledCrossEntropyLoss",
    "SearchParams",
    "ShardedLSSLinear",
    "SimHashConfig",
    "bitmap_sparse_matmul",
    "bucket_lookup",
    "bucket_lookup_bitmap",
    "build_tables",
    "cuda_kernels_built",
    "extension_loaded",
    "gathered_logits",
    "hash_codes",
    "partition_predict_topk",
    "quantized_probe",
    "quantized_candidates",
    "sampled_cross_entropy",
    "topk_gathered",
    "topk_packed",
    "vocab_parallel_cross_entropy",
]
