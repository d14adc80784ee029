"""Search parameters per call (lsskernels.SearchParams): predict / candidates /
sparse_logits take max_candidates, nprobe, rerank and backend for one call,
leave the layer's own settings as they were, and the named rerank step
(index.rerank_topk) is what the fused native predict computes."""
import pytest
import torch

import lsskernels as lss
from lsskernels.index import rerank_topk
from lsskernels.data import make_synthetic_task

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")


@pytest.fixture(scope="module")
def fitted():
    t = make_synthetic_task(num_labels=3000, dim=32, num_train=3000, num_test=200, seed=4)
    lin = torch.nn.Linear(32, 3000)
    with torch.no_grad():
        lin.weight.copy_(t.weight)
        lin.bias.copy_(t.bias)
    layer = lss.LSSLinear.from_linear(lin, max_candidates=64).eval()
    layer.fit(t.train_x, t.train_y, progress=False)
    return t, layer


def test_every_partition_and_every_candidate_gives_dense_top_k(fitted):
    t, layer = fitted
    x = t.test_x[:50]
    all_of_it = lss.SearchParams(max_candidates=3000, nprobe=layer.index.num_partitions, rerank=3000)
    scores, ids = layer.predict(x, 5, params=all_of_it)
    dense = torch.nn.functional.linear(x, layer.weight, layer.bias).detach()
    want = torch.topk(dense, 5)
    assert torch.equal(ids, want.indices)
    torch.testing.assert_close(scores, want.values, rtol=1e-5, atol=1e-5)
    # The layer's own settings are untouched.
    assert layer.max_candidates == 64 and layer.index.nprobe < layer.index.num_partitions


def test_params_left_none_are_the_layers_own(fitted):
    t, layer = fitted
    x = t.test_x[:20]
    assert all(torch.equal(a, b) for a, b in zip(layer.predict(x, 3), layer.predict(x, 3, params=lss.SearchParams())))
    assert all(torch.equal(a, b) for a, b in zip(layer.candidates(x), layer.candidates(x, params=lss.SearchParams())))
    own = lss.SearchParams(nprobe=layer.index.nprobe, rerank=layer.index.rerank)
    assert all(torch.equal(a, b) for a, b in zip(layer.predict(x, 3), layer.predict(x, 3, params=own)))


def test_more_probes_find_more_and_fewer_candidates_are_a_prefix(fitted):
    t, layer = fitted
    x = t.test_x
    few, _ = layer.candidates(x, params=lss.SearchParams(nprobe=1))
    many, _ = layer.candidates(x, params=lss.SearchParams(nprobe=layer.index.num_partitions))
    hit = lambda ids: ((ids.long() == t.test_y.unsqueeze(1)).any(1)).double().mean().item()  # noqa: E731
    assert hit(many) > hit(few)
    short, _ = layer.candidates(x, params=lss.SearchParams(max_candidates=8))
    full, _ = layer.candidates(x)
    assert torch.equal(short, full[:, :8])
    logits, ids = layer.sparse_logits(x[:4], params=lss.SearchParams(max_candidates=8))
    assert logits.shape == (4, 8) and torch.equal(ids, full[:4, :8])


def test_the_rerank_step_is_what_predict_computes(fitted):
    t, layer = fitted
    x = t.test_x[:30]
    for rerank in (1, 5, 16, 64):
        params = lss.SearchParams(rerank=rerank)
        ids, _ = layer.candidates(x)
        want = rerank_topk(x, layer.weight, layer.bias, ids, 3, layer.index.shortlist(64, 3, rerank))
        got = layer.predict(x, 3, params=params)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="nprobe"):
        lss.SearchParams(nprobe=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        lss.SearchParams(backend="gpu")
    layer = lss.LSSLinear(8, 100, max_candidates=10)
    with pytest.raises(TypeError, match="params must be a lsskernels.SearchParams"):
        layer.predict(torch.randn(2, 8), 1, params={"nprobe": 2})
    simhash = lss.LSSLinear(8, 100, max_candidates=10, index=lss.simhash.SimHashConfig(num_tables=4, bits=4))
    with pytest.raises(ValueError, match="apply to the partitions family"):
        simhash.predict(torch.randn(2, 8), 1, params=lss.SearchParams(nprobe=2))
