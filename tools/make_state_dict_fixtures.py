"""Write the saved-layer fixtures of tests/test_saved_state.py.

    python tools/make_state_dict_fixtures.py [--out tests/data/state_dicts]

Each fixture is one torch.save'd dict: the layer's state_dict, the queries,
and what predict(queries, k=5) returned when it was saved (scores, labels),
so a later version of the code can be checked to load it and predict the
same labels and scores, exactly. The fixtures in the repository were made
at commit 46b4a5f (before the partition family became the package
lsskernels/partition/), with the compiled extension of that commit, on CPU:

* unfitted.pt: a default LSSLinear (partitions family, k-means index of the
  weights alone, built on first use);
* fitted.pt: the same layer after fit() on the task's training pairs;
* updated.pt: fitted.pt's layer after remove_labels and add_labels (with
  spill queries): removed labels and grown lists in the saved index.

Small on purpose (N = 2000, d = 16): a few hundred KB together.
"""
from __future__ import annotations

import argparse
import os
import subprocess

import torch

import lsskernels as lss
from lsskernels.data import make_synthetic_task

N, D, M, K = 2000, 16, 32, 5


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(layer, queries, note):
    scores, labels = layer.predict(queries, k=K)
    return {"state_dict": layer.state_dict(), "queries": queries, "scores": scores, "labels": labels,
            "in_features": layer.in_features, "out_features": layer.out_features, "k": K,
            "commit": commit(), "torch": torch.__version__, "note": note}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "data", "state_dicts"))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    task = make_synthetic_task(num_labels=N, dim=D, num_train=2000, num_test=200, seed=11)
    linear = torch.nn.Linear(D, N)
    with torch.no_grad():
        linear.weight.copy_(task.weight)
        linear.bias.copy_(task.bias)
    queries = task.test_x[:100].contiguous()

    layer = lss.LSSLinear.from_linear(linear, max_candidates=M)
    out = {"unfitted.pt": record(layer, queries, "default LSSLinear, unfitted partitions index")}
    layer.fit(task.train_x, task.train_y, progress=False, seed=0)
    out["fitted.pt"] = record(layer, queries, "after fit()")
    layer.remove_labels(torch.arange(0, N, 7))
    g = torch.Generator().manual_seed(3)
    new_w = torch.randn(40, D, generator=g) * task.weight.std()
    new_b = torch.randn(40, generator=g) * task.bias.std()
    spill_q = queries[:20]
    spill_y = torch.arange(20, dtype=torch.int64)
    layer.add_labels(new_w, new_b, queries=spill_q, query_labels=spill_y)
    out["updated.pt"] = record(layer, queries, "fitted, then remove_labels(every 7th) and add_labels(40, spilled)")
    for name, obj in out.items():
        torch.save(obj, os.path.join(args.out, name))
        print(name, os.path.getsize(os.path.join(args.out, name)), "bytes")


if __name__ == "__main__":
    main()
