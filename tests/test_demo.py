"""The demo (`make demo`) runs end to end on a tiny task and prints its table."""
import pytest

from lsskernels import demo


def test_demo_runs_on_a_tiny_task(capsys):
    pytest.importorskip("scann")
    demo.main(["--labels", "3000", "--dim", "16", "--train", "3000", "--test", "300", "--candidates", "100"])
    out = capsys.readouterr().out
    assert "| dense nn.Linear + topk |" in out
    assert "| LSSLinear after fit() |" in out
    assert "| LSSLinear, unfitted (partitions) |" in out
    assert "| ScaNN, 4 of " in out
    assert "300 test queries; +- is one standard error" in out
    assert "fit() against the unfitted index on the same queries:" in out


def test_paired_difference_standard_error():
    import math

    import torch

    a = torch.tensor([1.0, 1, 0, 0, 1, 0])
    b = torch.tensor([1.0, 0, 0, 0, 1, 1])
    diff, se = demo.paired_difference(a, b)
    d = torch.tensor([0.0, 1, 0, 0, 0, -1])
    assert diff == 0.0 and math.isclose(se, d.std().item() / math.sqrt(6))
