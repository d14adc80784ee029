"""The demo (`make demo`) runs end to end on a tiny task and prints its table."""
from lsskernels import demo


def test_demo_runs_on_a_tiny_task(capsys):
    demo.main(["--labels", "3000", "--dim", "16", "--train", "3000", "--test", "300", "--tables", "4",
               "--bits", "6", "--candidates", "100", "--epochs", "1"])
    out = capsys.readouterr().out
    assert "| dense nn.Linear + topk |" in out
    assert "| LSSLinear after fit() |" in out
    assert "| LSSLinear, random SimHash tables |" in out
