"""ShardedLSSLinear over gloo: 2 and 4 processes on this machine.

Each world size is spawned once (torch.multiprocessing, a FileStore in
tmp_path, gloo over loopback, one thread per process) and runs every
scenario below in turn; a scenario's failure is recorded with its traceback
and reported by its own test. The spawn is bounded by a timeout (a hang
fails, the processes are killed) and every worker destroys its process
group. Cross-rank checks (predict bitwise the same on every rank) compare
what the workers saved.
"""
from __future__ import annotations

import datetime
import io
import os
import random
import time
import traceback

import pytest
import torch
import torch.nn.functional as F

import lsskernels as lss
from lsskernels.partition import default_partitions
from lsskernels.sharded import shard_range

dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import torch.multiprocessing as mp  # noqa: E402

N, D = 2003, 24          # N: not a multiple of 2 or 4
SPAWN_TIMEOUT = 120.0    # seconds for a whole world (spawn, imports, every scenario)
COLLECTIVE_TIMEOUT = 30  # seconds: a stuck collective raises instead of hanging


# ------------------------------------------------------------------ harness
def _entry(rank, world, tmpdir, scenarios):
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmpdir}/store", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
    results = {}
    try:
        for name in scenarios:
            t = time.perf_counter()
            try:
                out = SCENARIOS[name](rank, world)
                results[name] = {"error": None, "out": out}
            except Exception:
                results[name] = {"error": traceback.format_exc(), "out": None}
            results[name]["seconds"] = time.perf_counter() - t
            dist.barrier()
    finally:
        torch.save(results, os.path.join(tmpdir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def run_world(world, tmpdir, scenarios, timeout=SPAWN_TIMEOUT):
    """Every scenario on `world` gloo processes: [per rank {name: {error, out, seconds}}]."""
    ctx = mp.start_processes(_entry, args=(world, str(tmpdir), list(scenarios)), nprocs=world,
                             start_method="spawn", join=False)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                pytest.fail(f"{world} gloo processes did not finish within {timeout:.0f} s (a hang?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return [torch.load(os.path.join(tmpdir, f"rank{r}.pt"), weights_only=False) for r in range(world)]


# ----------------------------------------------------------------- scenarios
def _linear(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(D, N, dtype=dtype)


def _queries(b, seed=1, dtype=torch.float32):
    return torch.randn(b, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _merge_reference(linear, world, x, k, **knobs):
    """The single-process reference: one LSSLinear per shard's rows, each
    predict's top-k made global, concatenated, lsskernels.topk_gathered."""
    scores, ids = [], []
    for r in range(world):
        start, stop = shard_range(N, world, r)
        part = torch.nn.Linear(D, stop - start)
        with torch.no_grad():
            part.weight.copy_(linear.weight[start:stop])
            part.bias.copy_(linear.bias[start:stop])
        # A shard's partition count is the whole layer's (ShardedLSSLinear._local_config).
        parts = min(default_partitions(N), (stop - start) // 8)
        layer = lss.LSSLinear.from_linear(part, index=lss.PartitionConfig(num_partitions=parts), **knobs)
        s, i = layer.predict(x, k)
        scores.append(s)
        ids.append(torch.where(i >= 0, i + start, i))
    return lss.topk_gathered(torch.cat(scores, 1), torch.cat(ids, 1), k)


def scenario_predict_exact(rank, world):
    """Every label a candidate on every shard: the merge is dense top-k."""
    linear = _linear()
    layer = lss.ShardedLSSLinear.from_linear(linear, max_candidates=N // world + 1, num_partitions=8, nprobe=8)
    start, stop = layer.shard_range
    assert (start, stop) == shard_range(N, world, rank) and layer.weight.shape == (stop - start, D)
    torch.testing.assert_close(layer.weight, linear.weight[start:stop], rtol=0, atol=0)
    x = _queries(7)
    scores, ids = layer.predict(x, 10)
    dense = linear(x).detach()
    ref_s, ref_i = lss.topk_gathered(dense, torch.arange(N).expand(7, N).contiguous(), 10)
    assert torch.equal(ids, ref_i), (ids, ref_i)
    torch.testing.assert_close(scores, ref_s)
    layer.eval()
    out = layer(x)  # the local slice, exact where every label is a candidate
    assert out.shape == (7, stop - start)
    torch.testing.assert_close(out, dense[:, start:stop])
    cand, counts = layer.candidates(x)
    valid = cand[cand >= 0]
    assert valid.min() >= start and valid.max() < stop and cand.dtype == torch.int32
    assert bool((counts == stop - start).all())
    return {"scores": scores, "ids": ids}


def scenario_predict_merge(rank, world):
    """Default (approximate) indexes: equal, bitwise, to the single-process reference merge."""
    linear = _linear(seed=3)
    knobs = dict(max_candidates=32, seed=5)
    layer = lss.ShardedLSSLinear.from_linear(linear, **knobs)
    x = _queries(2 * 3, seed=4).reshape(2, 3, D)
    scores, ids = layer.predict(x, 5)
    assert scores.shape == (2, 3, 5) and ids.dtype == torch.int64
    ref_s, ref_i = _merge_reference(linear, world, x.reshape(6, D), 5, **knobs)
    assert torch.equal(ids.reshape(6, 5), ref_i) and torch.equal(scores.reshape(6, 5), ref_s)
    one_s, one_i = layer.predict(x[0, 0], 3)  # one query, [d]
    assert one_s.shape == (3,) and torch.equal(one_i, ref_i[0, :3])
    # More than a shard's candidates: -1 / -inf padding survives the merge.
    small = lss.ShardedLSSLinear.from_linear(linear, max_candidates=2, seed=5)
    s, i = small.predict(x[0], 3 * world)
    counts = small.candidates(x[0])[1].to(torch.int64)
    dist.all_reduce(counts)  # every shard's candidates: fewer than k in all
    valid = i >= 0
    assert torch.equal(valid.sum(1), counts) and bool((valid[:, :-1] >= valid[:, 1:]).all())  # a prefix
    assert bool(torch.isneginf(s[~valid]).all()) and bool(torch.isfinite(s[valid]).all())
    return {"scores": scores, "ids": ids, "pad_ids": i}


def scenario_cross_entropy(rank, world):
    """Vocab-parallel CE = F.cross_entropy of the full layer: value and grads."""
    for dtype, tol in ((torch.float64, dict(rtol=1e-10, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-6))):
        linear = _linear(dtype, seed=7)
        layer = lss.ShardedLSSLinear.from_linear(linear, max_candidates=16).train()
        start, stop = layer.shard_range
        target = torch.randint(0, N, (9,), generator=torch.Generator().manual_seed(8))
        target[2] = -100
        target[5] = shard_range(N, world, world - 1)[0]  # the first row of the last shard
        for reduction in ("mean", "sum", "none"):
            x = _queries(9, seed=9, dtype=dtype).requires_grad_()
            loss = layer.cross_entropy(x, target, reduction=reduction)
            (loss.sum() if reduction == "none" else loss).backward()
            xr = x.detach().clone().requires_grad_()
            linear.zero_grad()
            ref = F.cross_entropy(linear(xr), target, reduction=reduction)
            (ref.sum() if reduction == "none" else ref).backward()
            torch.testing.assert_close(loss, ref, **tol)
            torch.testing.assert_close(x.grad, xr.grad, **tol)
            torch.testing.assert_close(layer.weight.grad, linear.weight.grad[start:stop], **tol)
            torch.testing.assert_close(layer.bias.grad, linear.bias.grad[start:stop], **tol)
            layer.zero_grad()
        # forward() (train mode) + the function on the local logits; grad of the local logits.
        x = _queries(9, seed=10, dtype=dtype).requires_grad_()
        local = layer(x)
        local.retain_grad()
        loss = lss.vocab_parallel_cross_entropy(local, target, start, stop, None, ignore_index=-100)
        loss.backward()
        xr = x.detach().clone().requires_grad_()
        full = linear(xr)
        full.retain_grad()
        F.cross_entropy(full, target).backward()
        torch.testing.assert_close(local.grad, full.grad[:, start:stop], **tol)
        torch.testing.assert_close(x.grad, xr.grad, **tol)
        layer.zero_grad()
        linear.zero_grad()
    # A target no shard owns is refused on every rank.
    try:
        layer.cross_entropy(_queries(2), torch.tensor([0, N]))
    except ValueError as e:
        assert "target" in str(e)
    else:
        raise AssertionError("target N was accepted")
    return {"loss": loss.detach()}


def scenario_state_dict(rank, world):
    """Per-shard round trip (bytes included); the refused mismatches name the rank."""
    import io

    linear = _linear(seed=11)
    layer = lss.ShardedLSSLinear.from_linear(linear, max_candidates=32)
    layer.rebuild_index()
    x = _queries(5, seed=12)
    before = layer.predict(x, 4)
    state = layer.state_dict()
    meta = state["_extra_state"]
    assert meta["rank"] == rank and meta["world_size"] == world and (meta["start"], meta["stop"]) == layer.shard_range
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh = lss.ShardedLSSLinear(D, N, max_candidates=32)
    fresh.load_state_dict(torch.load(buf, weights_only=False))
    assert torch.equal(fresh.weight, layer.weight) and torch.equal(fresh.bias, layer.bias)
    after = fresh.predict(x, 4)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])

    def refused(sd, *words):
        w = fresh.weight.detach().clone()
        try:
            fresh.load_state_dict(sd)
        except ValueError as e:
            msg = str(e)
            assert f"rank {rank} of {world}" in msg, msg
            for word in words:
                assert word in msg, (word, msg)
            assert torch.equal(fresh.weight, w), "a refused state_dict changed the weights"
            return msg
        raise AssertionError(f"the state_dict was accepted; expected an error naming {words}")

    # Another rank's shard.
    others = [None] * world
    dist.all_gather_object(others, state)
    msgs = {"other_rank": refused(others[(rank + 1) % world], "rank", "rows")}
    # Another world size, another N, another d.
    msgs["world"] = refused({**state, "_extra_state": {**meta, "world_size": world + 1}}, "world size")
    msgs["N"] = refused({**state, "_extra_state": {**meta, "out_features": N + 1}}, "N (out_features)")
    msgs["d"] = refused({**state, "_extra_state": {**meta, "in_features": D + 1}}, "d (in_features)")
    # A single LSSLinear's state_dict is not a shard's.
    single = lss.LSSLinear.from_linear(linear).state_dict()
    msgs["single"] = refused(dict(single), "from_single")
    return {"messages": msgs}


def scenario_single_roundtrip(rank, world):
    """A single-process checkpoint -> K shards -> gathered back: the same weights."""
    linear = _linear(seed=13)
    single = lss.LSSLinear.from_linear(linear, max_candidates=48, seed=2)
    single.rebuild_index()
    state = single.state_dict()
    layer = lss.ShardedLSSLinear.from_single(state)
    start, stop = layer.shard_range
    assert layer.max_candidates == 48 and layer.local.seed == 2 and layer.family == single.family
    assert torch.equal(layer.weight, linear.weight[start:stop]) and torch.equal(layer.bias, linear.bias[start:stop])
    gathered = layer.gather_state_dict()
    assert torch.equal(gathered["weight"], linear.weight) and torch.equal(gathered["bias"], linear.bias)
    back = lss.LSSLinear(D, N, max_candidates=1)
    back.load_state_dict(gathered)  # strict
    assert back.max_candidates == 48 and torch.equal(back.weight, linear.weight)
    back.predict(_queries(2), 3)
    at_zero = layer.gather_state_dict(dst=0)
    assert (at_zero is None) == (rank != 0)
    if rank == 0:
        assert torch.equal(at_zero["weight"], linear.weight)
    whole = layer.to_single()
    assert isinstance(whole, lss.LSSLinear) and torch.equal(whole.bias, linear.bias)
    # No bias.
    torch.manual_seed(14)
    nb = torch.nn.Linear(D, N, bias=False)
    sh = lss.ShardedLSSLinear.from_linear(nb, max_candidates=8)
    g = sh.gather_state_dict()
    assert "bias" not in g and torch.equal(g["weight"], nb.weight)
    return {}


def _p1(layer, x, y):
    return float((layer.predict(x, 1)[1][:, 0] == y).float().mean())


def scenario_fit(rank, world):
    """fit() on a small synthetic task: it improves P@1 over the unfitted
    index; multi-label pairs; the fitted shard's state round-trips."""
    from lsskernels.data import make_synthetic_task

    task = make_synthetic_task(2000, 16, 4000, 500, seed=0)
    linear = torch.nn.Linear(16, 2000)
    with torch.no_grad():
        linear.weight.copy_(task.weight)
        linear.bias.copy_(task.bias)
    layer = lss.ShardedLSSLinear.from_linear(linear, max_candidates=16)
    unfitted = _p1(layer, task.test_x, task.test_y)
    report = layer.fit(task.train_x, task.train_y, progress=False)
    fitted = _p1(layer, task.test_x, task.test_y)
    assert fitted > unfitted + 0.02, (unfitted, fitted)
    assert [s["rank"] for s in report.shards] == list(range(world)) and sum(report.pairs) == 4000
    assert all(s["fitted"] for s in report.shards) and report.local.index is layer.local.index
    # Multi-label [n, 2], -1 padded: a second label on a far shard for half the pairs.
    y2 = torch.stack([task.train_y, torch.where(torch.arange(4000) % 2 == 0, (task.train_y + 1000) % 2000,
                                                torch.full_like(task.train_y, -1))], 1)
    multi = lss.ShardedLSSLinear.from_linear(linear, max_candidates=16)
    rep2 = multi.fit(task.train_x, y2, progress=False)
    assert sum(rep2.pairs) >= 4000
    # A fitted shard's state loads into a fresh layer: the same predictions.
    fresh = lss.ShardedLSSLinear(16, 2000, max_candidates=16)
    fresh.load_state_dict(layer.state_dict())
    s0, i0 = layer.predict(task.test_x[:50], 3)
    s1, i1 = fresh.predict(task.test_x[:50], 3)
    assert torch.equal(i0, i1) and torch.equal(s0, s1) and fresh.fitted
    # Every label on the first shard: the others have no pair and keep the unfitted index of their rows.
    first = shard_range(2000, world, 0)[1]
    only0 = lss.ShardedLSSLinear.from_linear(linear, max_candidates=16)
    rep3 = only0.fit(task.train_x, task.train_y % first, progress=False)
    assert rep3.pairs == [4000] + [0] * (world - 1) and [s["fitted"] for s in rep3.shards] == [True] + [False] * (world - 1)
    assert (rep3.local is None) == (rank != 0) and only0.local.index.built
    # A shard's own failure is raised on every rank: its exception there, a RuntimeError naming it elsewhere.
    y4 = torch.where(torch.arange(4000) < 3980, task.train_y % first, task.train_y % 2000)  # 20 pairs elsewhere
    few = lss.ShardedLSSLinear.from_linear(linear, max_candidates=16, num_partitions=64)
    try:
        few.fit(task.train_x, y4, progress=False, spaces=("queries",))
    except ValueError as e:
        assert rank != 0 and "query space" in str(e), (rank, e)
    except RuntimeError as e:
        assert rank == 0 and "rank 1:" in str(e) and "query space" in str(e), str(e)
    else:
        raise AssertionError("a shard's failed fit was not raised")
    return {"unfitted": unfitted, "fitted": fitted, "pairs": report.pairs, "ids": i0}


# ------------------------------------------------- labels added and removed
EXHAUSTIVE = dict(max_candidates=4096, num_partitions=8, nprobe=8)  # every label a candidate, grown or not


def _grown(weight, bias, *rows):
    """(weight, bias) with the added (w, b or None) rows appended, as add_labels does."""
    ws = [weight.detach()] + [w for w, _ in rows]
    bs = [bias.detach()] + [b if b is not None else torch.zeros(w.shape[0]) for w, b in rows]
    return torch.cat(ws), torch.cat(bs)


def _dense_topk(weight, bias, x, k, removed=()):
    dense = F.linear(x, weight, bias)
    if removed:
        dense[:, sorted(removed)] = float("-inf")
    return lss.topk_gathered(dense, torch.arange(weight.shape[0]).expand(x.shape[0], -1).contiguous(), k)


def _refused(layer, sd, rank, world, *words):
    """layer.load_state_dict(sd) raises ValueError naming this rank and words; layer unchanged."""
    w, ranges = layer.weight.detach().clone(), layer.shard_ranges
    try:
        layer.load_state_dict(sd)
    except ValueError as e:
        msg = str(e)
        assert f"rank {rank} of {world}" in msg, msg
        for word in words:
            assert word in msg, (word, msg)
        assert torch.equal(layer.weight, w) and layer.shard_ranges == ranges, "a refused state_dict changed the layer"
        return msg
    raise AssertionError(f"the state_dict was accepted; expected an error naming {words}")


def scenario_add_predict(rank, world):
    """add_labels: the last rank's range grows; predict equals a single
    LSSLinear that made the same adds, and both equal dense top-k."""
    linear = _linear(seed=21)
    layer = lss.ShardedLSSLinear.from_linear(linear, **EXHAUSTIVE)
    single = lss.LSSLinear.from_linear(linear, **EXHAUSTIVE)
    gen = torch.Generator().manual_seed(22)
    w1, b1 = torch.randn(40, D, generator=gen) * 0.3, torch.randn(40, generator=gen) * 0.3
    q, ql = torch.randn(30, D, generator=gen), torch.randint(0, 40, (30,), generator=gen)
    before = layer.shard_ranges
    ids = layer.add_labels(w1, b1, queries=q, query_labels=ql)
    assert torch.equal(ids, single.add_labels(w1, b1, queries=q, query_labels=ql))
    assert torch.equal(ids, torch.arange(N, N + 40)) and layer.out_features == N + 40
    w2 = torch.randn(3, D, generator=gen) * 0.3
    ids2 = layer.add_labels(w2)  # no bias given: zeros; no pairs
    assert torch.equal(ids2, single.add_labels(w2)) and torch.equal(ids2, torch.arange(N + 40, N + 43))
    ranges = layer.shard_ranges
    assert ranges[:-1] == before[:-1] and ranges[-1] == (before[-1][0], N + 43), ranges
    start, stop = layer.shard_range
    assert (start, stop) == ranges[rank] and layer.weight.shape == (stop - start, D)
    weight, bias = _grown(linear.weight, linear.bias, (w1, b1), (w2, None))
    x = torch.cat([_queries(6, seed=23), w1[:3] * 3])  # the last three favour new labels
    scores, got = layer.predict(x, 10)
    ref_s, ref_i = _dense_topk(weight, bias, x, 10)
    one_s, one_i = single.predict(x, 10)
    assert torch.equal(got, ref_i) and torch.equal(got, one_i), (got, ref_i, one_i)
    assert bool((got >= N).any()), "no added label in the top-k: the check would not see them"
    torch.testing.assert_close(scores, ref_s)
    torch.testing.assert_close(scores, one_s)
    layer.eval()
    torch.testing.assert_close(layer(x), F.linear(x, weight, bias)[:, start:stop])
    # Training over the grown layer: the full softmax, a new label as a target.
    target = torch.tensor([N + 1, 5, N + 42, 17, 3, N + 39, 0, 1, 2])
    loss = layer.cross_entropy(x, target)
    torch.testing.assert_close(loss, F.cross_entropy(F.linear(x, weight, bias), target))
    g = layer.gather_state_dict()
    assert torch.equal(g["weight"], weight) and torch.equal(g["bias"], bias) and not bool(g["removed"].any())
    return {"scores": scores, "ids": got, "ranges": ranges}


def _shown(layer, x):
    """Every global id predict / candidates / sparse_logits / eval forward
    returns on this rank, and the finite columns (global) of train forward."""
    start = layer.shard_range[0]
    layer.eval()
    _, ids = layer.predict(x, 8)
    cand, _ = layer.candidates(x)
    _, sparse = layer.sparse_logits(x)
    shown = set(ids[ids >= 0].tolist()) | set(cand[cand >= 0].tolist()) | set(sparse[sparse >= 0].tolist())
    shown |= {start + c for c in torch.nonzero(torch.isfinite(layer(x)))[:, 1].tolist()}
    layer.train()
    finite_train = {start + c for c in torch.nonzero(torch.isfinite(layer(x)))[:, 1].tolist()}
    layer.eval()
    return ids, shown, finite_train


def scenario_add_remove_random(rank, world):
    """A random sequence of add / remove / rebuild (the same seed on every
    rank): removed ids never come back on any rank or path; predict equals
    a single LSSLinear that made the same calls (both dense top-k)."""
    rng, gen = random.Random(31), torch.Generator().manual_seed(31)
    linear = _linear(seed=31)
    layer = lss.ShardedLSSLinear.from_linear(linear, **EXHAUSTIVE)
    single = lss.LSSLinear.from_linear(linear, **EXHAUSTIVE)
    removed, actions, log = set(), [], []
    x = _queries(6, seed=32)
    for step in range(8):
        action = ["add", "remove"][step] if step < 2 else rng.choice(["add", "remove", "remove", "rebuild"])
        actions.append(action)
        if action == "add":
            k = rng.randint(1, 30)
            w, b = torch.randn(k, D, generator=gen) * 0.5, torch.randn(k, generator=gen) * 0.5
            q, ql = torch.randn(5, D, generator=gen), torch.randint(0, k, (5,), generator=gen)
            ids = layer.add_labels(w, b, queries=q, query_labels=ql)
            assert torch.equal(ids, single.add_labels(w, b, queries=q, query_labels=ql))
        elif action == "remove":
            n = layer.out_features
            ids = torch.cat([torch.randint(0, n, (rng.randint(1, 200),), generator=gen),
                             torch.arange(n - 3, n)])  # the newest rows too
            layer.remove_labels(ids)
            single.remove_labels(ids)
            removed |= set(ids.tolist())
        else:
            layer.rebuild_index()
            single.rebuild_index()
        ids, shown, finite_train = _shown(layer, x)
        start, stop = layer.shard_range
        assert not (shown & removed), (step, action, sorted(shown & removed)[:5])
        assert finite_train == set(range(start, stop)) - removed, (step, action)
        assert torch.equal(ids, single.predict(x, 8)[1]), (step, action)
        log.append(ids)
    assert "add" in actions and "remove" in actions
    # Training: removed labels are out of the softmax; a removed target is refused by
    # cross_entropy (every rank) and gives inf through forward + vocab_parallel_cross_entropy.
    gone = min(removed)
    kept = [i for i in range(layer.out_features) if i not in removed][:2]
    layer.train()
    single.train()
    target = torch.tensor(kept)
    torch.testing.assert_close(layer.cross_entropy(x[:2], target), F.cross_entropy(single(x[:2]), target))
    try:
        layer.cross_entropy(x[:2], torch.tensor([kept[0], gone]))
    except ValueError as e:
        assert "removed" in str(e) and f"e.g. {gone}" in str(e), str(e)
    else:
        raise AssertionError("a removed target was accepted")
    start, stop = layer.shard_range
    loss = lss.vocab_parallel_cross_entropy(layer(x[:2]), torch.tensor([kept[0], gone]), start, stop,
                                            reduction="none")
    assert bool(torch.isfinite(loss[0])) and bool(torch.isposinf(loss[1])), loss
    return {"ids": torch.stack(log), "removed": torch.tensor(sorted(removed))}


def scenario_add_state(rank, world):
    """State after add / remove: a grown shard loads into a layer built for
    the grown N (taking the layout); real mismatches are refused; gathered
    and rebalanced (from_single) the removed labels stay removed."""
    linear = _linear(seed=41)
    layer = lss.ShardedLSSLinear.from_linear(linear, **EXHAUSTIVE)
    gen = torch.Generator().manual_seed(42)
    w, b = torch.randn(25, D, generator=gen) * 0.3, torch.randn(25, generator=gen) * 0.3
    layer.add_labels(w, b, queries=torch.randn(8, D, generator=gen), query_labels=torch.randint(0, 25, (8,)))
    n2 = N + 25
    gone = [3, N // 2, N - 1, N + 2, N + 24]
    layer.remove_labels(torch.tensor(gone))
    x = torch.cat([_queries(5, seed=43), w[:3] * 3])
    want = layer.predict(x, 6)
    ref = _dense_topk(*_grown(linear.weight, linear.bias, (w, b)), x, 6, removed=set(gone))
    assert torch.equal(want[1], ref[1])
    state = layer.state_dict()
    meta = state["_extra_state"]
    assert meta["bounds"] == [r[0] for r in layer.shard_ranges] + [n2] and meta["out_features"] == n2
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    fresh = lss.ShardedLSSLinear(D, n2, **EXHAUSTIVE)  # the balanced layout of n2
    assert world == 1 or fresh.shard_ranges != layer.shard_ranges
    fresh.load_state_dict(loaded)
    assert fresh.shard_ranges == layer.shard_ranges and fresh.shard_range == layer.shard_range
    assert torch.equal(fresh.weight, layer.weight) and torch.equal(fresh.local.removed, layer.local.removed)
    got = fresh.predict(x, 6)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert fresh.state_dict()["_extra_state"] == meta
    # Real mismatches are still refused, naming what differs.
    msgs = {"N": _refused(lss.ShardedLSSLinear(D, N, **EXHAUSTIVE), loaded, rank, world, "N (out_features)")}
    other = lss.ShardedLSSLinear(D, n2, **EXHAUSTIVE)
    bounds = meta["bounds"]
    msgs["bounds"] = _refused(other, {**loaded, "_extra_state": {**meta, "bounds": bounds[:-1] + [n2 + 1]}},
                              rank, world, "layout")
    msgs["rows"] = _refused(other, {**loaded, "_extra_state": {**meta, "stop": meta["stop"] - 1}}, rank, world,
                            "layout", "not rank")
    msgs["weight"] = _refused(other, {**loaded, "local.weight": loaded["local.weight"][:-1]}, rank, world,
                              "local.weight")
    others = [None] * world
    dist.all_gather_object(others, loaded)
    if world > 1:
        msgs["other_rank"] = _refused(other, others[(rank + 1) % world], rank, world, "rank")
    # A format-1 shard (before add_labels: no bounds, the balanced layout) still loads.
    plain = lss.ShardedLSSLinear.from_linear(linear, **EXHAUSTIVE)
    old = plain.state_dict()
    old["_extra_state"] = {k: v for k, v in old["_extra_state"].items() if k != "bounds"}
    old["_extra_state"]["format"] = 1
    lss.ShardedLSSLinear(D, N, **EXHAUSTIVE).load_state_dict(old)
    # Gathered: one LSSLinear with the removed labels; from_single rebalances.
    g = layer.gather_state_dict()
    assert g["weight"].shape == (n2, D) and sorted(torch.nonzero(g["removed"]).squeeze(1).tolist()) == gone
    single = lss.LSSLinear(D, n2, **EXHAUSTIVE)
    single.load_state_dict(g)  # with an unbuilt index of its own configuration (not exhaustive)
    assert sorted(torch.nonzero(single.removed).squeeze(1).tolist()) == gone
    assert not set(single.eval().predict(x, 6)[1].flatten().tolist()) & set(gone)
    assert torch.equal(single.train()(x).topk(6).indices, want[1])  # masked train logits: dense top-k
    rebalanced = lss.ShardedLSSLinear.from_single(g, num_partitions=8, nprobe=8)
    assert rebalanced.shard_ranges == [shard_range(n2, world, r) for r in range(world)]
    r0, r1 = rebalanced.shard_range
    assert set((torch.nonzero(rebalanced.local.removed).squeeze(1) + r0).tolist()) == {i for i in gone if r0 <= i < r1}
    assert torch.equal(rebalanced.predict(x, 6)[1], want[1])
    return {"ids": want[1], "messages": msgs}


def scenario_add_bad_input(rank, world):
    """Bad arguments of add_labels / remove_labels are refused on every rank
    alike, naming the argument, and change nothing; the layer stays in step."""
    linear = _linear(seed=51)
    layer = lss.ShardedLSSLinear.from_linear(linear, max_candidates=64)
    ranges, rows = layer.shard_ranges, layer.weight.detach().clone()
    no_bias = lss.ShardedLSSLinear(D, N, bias=False, max_candidates=64)
    simhash = lss.ShardedLSSLinear(D, N, max_candidates=64, num_tables=4, bits=6)
    w = torch.randn(3, D)
    cases = {
        "weight_shape": (lambda: layer.add_labels(torch.randn(3, D + 1)), ValueError, "weight must be"),
        "weight_type": (lambda: layer.add_labels(w.tolist()), TypeError, "weight must be"),
        "weight_nan": (lambda: layer.add_labels(torch.full((1, D), float("nan"))), ValueError, "weight"),
        "bias_shape": (lambda: layer.add_labels(w, torch.randn(4)), ValueError, "bias must be"),
        "bias_none": (lambda: no_bias.add_labels(w, torch.randn(3)), ValueError, "bias given"),
        "pairs": (lambda: layer.add_labels(w, queries=torch.randn(2, D)), ValueError, "query_labels"),
        "query_labels": (lambda: layer.add_labels(w, queries=torch.randn(2, D), query_labels=torch.tensor([0, 3])),
                         ValueError, "query_labels must be in [0, 3)"),
        "queries": (lambda: layer.add_labels(w, queries=torch.randn(2, D + 1), query_labels=torch.tensor([0, 1])),
                    ValueError, "queries must be"),
        "ids_range": (lambda: layer.remove_labels(torch.tensor([N])), ValueError, f"ids must be label ids in [0, {N})"),
        "ids_type": (lambda: layer.remove_labels(torch.tensor([1.0])), TypeError, "ids must be int64"),
        "family": (lambda: simhash.add_labels(w), TypeError, "needs the partitions family"),
        "family_remove": (lambda: simhash.remove_labels([0]), TypeError, "needs the partitions family"),
    }
    msgs = {}
    for name, (call, exc, words) in cases.items():
        try:
            call()
        except exc as e:
            assert words in str(e), (name, str(e))
            msgs[name] = str(e)
        else:
            raise AssertionError(f"{name}: accepted")
    assert layer.shard_ranges == ranges and layer.out_features == N and torch.equal(layer.weight, rows)
    assert not bool(layer.local.removed.any())
    # Still in step: an add and a predict (a collective) go through on every rank.
    ids = layer.add_labels(w)
    assert torch.equal(ids, torch.arange(N, N + 3))
    layer.predict(_queries(2), 3)
    return {"messages": msgs}


SCENARIOS = {
    "predict_exact": scenario_predict_exact,
    "predict_merge": scenario_predict_merge,
    "cross_entropy": scenario_cross_entropy,
    "state_dict": scenario_state_dict,
    "single_roundtrip": scenario_single_roundtrip,
    "fit": scenario_fit,
    "add_predict": scenario_add_predict,
    "add_remove_random": scenario_add_remove_random,
    "add_state": scenario_add_state,
    "add_bad_input": scenario_add_bad_input,
}


# -------------------------------------------------------------------- tests
@pytest.fixture(scope="module", params=[2, 4], ids=lambda k: f"world{k}")
def world(request, tmp_path_factory):
    k = request.param
    return k, run_world(k, tmp_path_factory.mktemp(f"gloo{k}"), SCENARIOS)


def _outs(world, name):
    k, results = world
    errors = [f"rank {r}:\n{res[name]['error']}" for r, res in enumerate(results) if res[name]["error"]]
    assert not errors, "\n".join(errors)
    return [res[name]["out"] for res in results]


def _same_on_every_rank(outs, *keys):
    for key in keys:
        for r, out in enumerate(outs[1:], 1):
            assert torch.equal(out[key], outs[0][key]), f"{key}: rank {r} differs from rank 0"


def test_predict_equals_dense_topk_when_exhaustive(world):
    _same_on_every_rank(_outs(world, "predict_exact"), "scores", "ids")


def test_predict_equals_single_process_merge(world):
    _same_on_every_rank(_outs(world, "predict_merge"), "scores", "ids", "pad_ids")


def test_vocab_parallel_cross_entropy(world):
    _same_on_every_rank(_outs(world, "cross_entropy"), "loss")


def test_state_dict_round_trip_and_mismatch(world):
    outs = _outs(world, "state_dict")
    k, _ = world
    for r, out in enumerate(outs):
        assert f"rank {r} of {k}" in out["messages"]["other_rank"]


def test_single_checkpoint_to_shards_and_back(world):
    _outs(world, "single_roundtrip")


def test_fit_improves_p1(world):
    outs = _outs(world, "fit")
    assert len({o["fitted"] for o in outs}) == 1  # the same global P@1 on every rank
    _same_on_every_rank(outs, "ids")


def test_add_labels_predict_equals_single_layer(world):
    outs = _outs(world, "add_predict")
    _same_on_every_rank(outs, "scores", "ids")
    assert len({tuple(o["ranges"]) for o in outs}) == 1


def test_removed_labels_never_returned(world):
    _same_on_every_rank(_outs(world, "add_remove_random"), "ids", "removed")


def test_state_round_trip_after_add_remove(world):
    outs = _outs(world, "add_state")
    _same_on_every_rank(outs, "ids")
    k, _ = world
    for r, out in enumerate(outs):
        assert all(f"rank {r} of {k}" in m for m in out["messages"].values())


def test_add_remove_bad_input_named(world):
    outs = _outs(world, "add_bad_input")
    assert all(o["messages"] == outs[0]["messages"] for o in outs)  # every rank refuses alike


def test_shard_range_rule():
    for n, k in ((10, 3), (2003, 4), (4, 4), (7, 1)):
        ranges = [shard_range(n, k, r) for r in range(k)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError):
        shard_range(3, 4, 0)


def test_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        lss.ShardedLSSLinear(8, 16, max_candidates=4)


def test_cross_entropy_world_of_one(tmp_path):
    """The function in one process (a world of one, in this process): F.cross_entropy."""
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
    try:
        logits = torch.randn(4, 3, 11, dtype=torch.float64, requires_grad=True)
        target = torch.randint(0, 11, (4, 3))
        target[0, 0] = -1
        loss = lss.vocab_parallel_cross_entropy(logits, target, 0, 11, ignore_index=-1)
        loss.backward()
        ref_in = logits.detach().clone().requires_grad_()
        ref = F.cross_entropy(ref_in.reshape(-1, 11), target.reshape(-1), ignore_index=-1)
        ref.backward()
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(logits.grad, ref_in.grad)
        # All ignored: nan, as F.cross_entropy.
        assert torch.isnan(lss.vocab_parallel_cross_entropy(logits, torch.full((4, 3), -100), 0, 11))
        with pytest.raises(ValueError, match="local_logits"):
            lss.vocab_parallel_cross_entropy(logits, target, 0, 10)
        layer = lss.ShardedLSSLinear(8, 16, max_candidates=4)
        assert layer.shard_range == (0, 16)
        x = torch.randn(2, 8)
        s, i = layer.predict(x, 3)
        ref_s, ref_i = layer.local.predict(x, 3)
        assert torch.equal(s, ref_s) and torch.equal(i, ref_i)
    finally:
        dist.destroy_process_group()
