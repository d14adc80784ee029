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
