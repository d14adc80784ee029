"""Layers saved by an earlier version of the code (tests/data/state_dicts,
made by tools/make_state_dict_fixtures.py; the commit is in each file)
load with this one and predict exactly what they predicted when saved."""
import os

import pytest
import torch

import lsskernels as lss

pytestmark = pytest.mark.skipif(not lss.extension_loaded(), reason="compiled extension not built")

HERE = os.path.join(os.path.dirname(__file__), "data", "state_dicts")
FIXTURES = ["unfitted.pt", "fitted.pt", "updated.pt"]


@pytest.mark.parametrize("name", FIXTURES)
def test_saved_layer_predicts_as_saved(name):
    saved = torch.load(os.path.join(HERE, name), weights_only=False)
    layer = lss.LSSLinear(saved["in_features"], saved["out_features"])
    layer.load_state_dict(saved["state_dict"])
    scores, labels = layer.predict(saved["queries"], k=saved["k"])
    assert torch.equal(labels, saved["labels"])
    assert torch.equal(scores, saved["scores"])
    # Saving again gives the same keys and tensors.
    again = layer.state_dict()
    assert again.keys() == saved["state_dict"].keys()
    for key, value in saved["state_dict"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(again[key], value), key
