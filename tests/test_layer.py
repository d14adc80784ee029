"""LSSLinear: train mode is nn.Linear, eval mode is dense with -inf outside the
candidates, predict is the top-k among candidates, state_dict round-trips
exactly, malformed state is rejected, and predict compiles with fullgraph."""
import io

import pytest
import torch

import lsskernels as lss
from lsskernels import reference
from helpers import randn


def make_layer(n=700, d=24, seed=0, *, num_tables=6, bits=6, min_hits=1, **kw):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(d, n)
    index = lss.simhash.SimHashConfig(num_tables=num_tables, bits=bits, min_hits=min_hits)
    return lin, lss.LSSLinear.from_linear(lin, index=index, **{"max_candidates": 64, **kw})


def test_from_linear_copies_and_train_forward_is_exactly_linear():
    lin, layer = make_layer()
    assert torch.equal(layer.weight, lin.weight) and torch.equal(layer.bias, lin.bias)
    assert layer.weight.data_ptr() != lin.weight.data_ptr()
    x = randn(5, 3, 24, seed=1)
    layer.train()
    assert torch.equal(layer(x), lin(x))


def test_eval_forward_is_dense_with_minus_inf_outside_candidates():
    lin, layer = make_layer()
    layer.eval()
    x = randn(9, 24, seed=2)
    out = layer(x)
    assert out.shape == (9, 700)
    ids, counts = layer.candidates(x)
    for b in range(9):
        cand = ids[b, : counts[b]].long()
        mask = torch.zeros(700, dtype=torch.bool)
        mask[cand] = True
        assert bool(torch.isneginf(out[b, ~mask]).all())
        torch.testing.assert_close(out[b, cand], lin(x[b : b + 1])[0, cand], rtol=1e-5, atol=1e-5)


def test_eval_forward_keeps_leading_dims_and_gradients_flow():
    _, layer = make_layer()
    layer.eval()
    x = randn(2, 3, 24, seed=3).requires_grad_()
    out = layer(x)
    assert out.shape == (2, 3, 700)
    out[torch.isfinite(out)].sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_predict_is_topk_among_candidates():
    lin, layer = make_layer(max_candidates=40)
    x = randn(7, 24, seed=4)
    scores, ids = layer.predict(x, k=5)
    assert ids.dtype == torch.int64 and ids.shape == (7, 5)
    cand, counts = layer.candidates(x)
    full = lin(x).detach()
    for b in range(7):
        c = cand[b, : counts[b]].long()
        sub = full[b, c]
        n = min(5, c.numel())
        top = torch.topk(sub, n)
        assert set(c[top.indices].tolist()) == set(ids[b, :n].tolist())
        torch.testing.assert_close(scores[b, :n], top.values, rtol=1e-5, atol=1e-5)
        assert bool((ids[b, n:] == -1).all())


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fused_predict_equals_the_op_by_op_pipeline(dtype):
    # predict's native path is one predict_topk call; it must give the same
    # bits as hash -> lookup -> gathered logits -> top-k called one by one.
    _, layer = make_layer(n=333, d=37, max_candidates=50)
    layer = layer.to(dtype).eval()
    x = randn(6, 37, seed=11).to(dtype)
    scores, labels = layer.predict(x, k=7)
    ids, _ = layer.candidates(x)
    logits = lss.gathered_logits(x, layer.weight, layer.bias, ids, backend="cpu")
    want_scores, want_labels = lss.topk_gathered(logits, ids, 7, backend="cpu")
    assert torch.equal(labels, want_labels) and torch.equal(scores, want_scores)


def test_predict_pads_when_fewer_candidates_than_k():
    _, layer = make_layer(n=100, num_tables=1, bits=8, max_candidates=3)
    scores, ids = layer.predict(randn(4, 24, seed=5), k=6)
    assert bool((ids[:, 3:] == -1).all()) and bool(torch.isneginf(scores[:, 3:]).all())


def test_predict_leading_dims():
    _, layer = make_layer()
    scores, ids = layer.predict(randn(2, 3, 24, seed=6), k=4)
    assert scores.shape == (2, 3, 4) and ids.shape == (2, 3, 4)


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
def test_cpu_and_reference_backends_agree():
    lin, layer = make_layer()
    ref_layer = lss.LSSLinear.from_linear(lin, max_candidates=64, backend="reference",
                                          index=lss.simhash.SimHashConfig(num_tables=6, bits=6))
    x = randn(6, 24, seed=7)
    assert torch.equal(layer.candidates(x)[0], ref_layer.candidates(x)[0])
    s1, i1 = layer.predict(x, 3)
    s2, i2 = ref_layer.predict(x, 3)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2)


def test_tables_follow_weight_updates():
    _, layer = make_layer()
    x = randn(4, 24, seed=8)
    with torch.no_grad():
        layer.weight.mul_(-1.0)
    # Random SimHash tables are rebuilt from the new weights on next use.
    from lsskernels.simhash.hashing import label_codes
    codes = label_codes(layer.weight, layer.bias, layer.index.label_proj)
    offsets, items = reference.build_tables(codes, layer.index.bits)
    layer.candidates(x)
    assert torch.equal(layer.index.offsets, offsets) and torch.equal(layer.index.items, items)


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_state_dict_roundtrip_reproduces_predictions_exactly():
    _, layer = make_layer(seed=3, min_hits=2)
    x = randn(11, 24, seed=9)
    want = layer.predict(x, 5)
    fresh = lss.LSSLinear(24, 700, max_candidates=7, seed=99, index=lss.simhash.SimHashConfig(num_tables=2, bits=3))
    fresh.load_state_dict(_roundtrip(layer.state_dict()))
    assert (fresh.index.num_tables, fresh.index.bits, fresh.max_candidates, fresh.index.min_hits) == (6, 6, 64, 2)
    got = fresh.predict(x, 5)
    assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0])
    for name in ("query_proj", "label_proj", "offsets", "items"):
        assert torch.equal(getattr(fresh.index, name), getattr(layer.index, name))
    for name in ("weight", "bias"):
        assert torch.equal(getattr(fresh, name), getattr(layer, name))


@pytest.mark.parametrize("corrupt,match", [
    (lambda sd: sd["index.items"].fill_(10_000), r"items must be label ids in \[0, num_labels = 700\)"),
    (lambda sd: sd["index.offsets"][0].__setitem__(3, -1), r"non-decreasing"),
    (lambda sd: sd.__setitem__("index.offsets", sd["index.offsets"].long()), r"offsets must have dtype"),
    (lambda sd: sd.__setitem__("index.offsets", sd["index.offsets"][:, :-1]), r"offsets must be \[L, 2\^K \+ 1\]"),
    (lambda sd: sd["index.offsets"][:, -1].fill_(10**6), r"<= items.shape\[1\]"),
    (lambda sd: sd.__setitem__("index.query_proj", sd["index.query_proj"][:, :, :-1]), r"query_proj must be a float tensor"),
    (lambda sd: sd["index.label_proj"].view(-1)[5].fill_(float("nan")), r"label_proj must be finite"),
])
def test_loading_malformed_tables_raises_clear_error(corrupt, match):
    _, layer = make_layer()
    layer.rebuild_index()  # from_linear builds on first use
    sd = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in layer.state_dict().items()}
    corrupt(sd)
    fresh = lss.LSSLinear(24, 700, max_candidates=64, index=lss.simhash.SimHashConfig(num_tables=6, bits=6))
    with pytest.raises(ValueError, match=match):
        fresh.load_state_dict(sd)


@pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")
def test_predict_compiles_with_fullgraph():
    torch._dynamo.reset()
    _, layer = make_layer()
    x = randn(5, 24, seed=10)
    want = layer.predict(x, 4)
    compiled = torch.compile(layer.predict, fullgraph=True)
    got = compiled(x, 4)
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[0], want[0])
