"""fit()'s memory: nothing of the layer's size besides the index it builds
(docs/performance.md, "0.9.8"). Counted as torch's CPU allocations under
the profiler, so the test does not depend on the process's RSS."""
import torch
from torch.profiler import ProfilerActivity, profile

import lsskernels as lss


def test_fit_allocates_nothing_as_large_as_the_weights():
    # 0.9.7 copied [w, b] whole for the label-space k-means (an allocation
    # of 1.02x the weights here) and held working blocks of 65,536 labels;
    # each buffer is now bounded by chunk sizes, not N. The largest left at
    # this size is the k-means sample (64 rows per centroid, 0.33x).
    g = torch.Generator().manual_seed(0)
    n, d = 200_000, 64
    layer = lss.LSSLinear(d, n, max_candidates=64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, d, generator=g))
    x = torch.randn(8000, d, generator=g)
    y = torch.randint(0, n, (8000,), generator=g)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer.fit(x, y, progress=False)
    largest = max(e.cpu_memory_usage for e in prof.events())
    weight_bytes = n * d * 4
    assert 0 < largest < weight_bytes / 2, (largest, weight_bytes)
