"""Bad input gets a clear error that says what was received and what is expected."""

import pytest
import torch

import msfusion as mf


@pytest.fixture(scope="module")
def model():
    return mf.create_model("test_segnext").eval()


def test_three_dimensional_input(model):
    with pytest.raises(ValueError, match=r"4-D.*\(3, 32, 32\).*unsqueeze"):
        model(torch.randn(3, 32, 32))


def test_integer_input(model):
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_channels_last_numpy_style_input(model):
    with pytest.raises(ValueError, match="expected 3 input channels, got 32"):
        model(torch.randn(1, 32, 32, 3))


def test_backbone_checks_too():
    with pytest.raises(ValueError, match="channels"):
        mf.create_model("test_mscan", features_only=True)(torch.randn(1, 1, 32, 32))


def test_invalid_ablation_arguments():
    with pytest.raises(ValueError, match="subset"):
        mf.create_model("test_segnext", branch_kernels=(7, 9))
    with pytest.raises(ValueError, match="lka"):
        mf.create_model("test_segnext", attention_type="swin")
    with pytest.raises(ValueError, match="head"):
        mf.create_model("test_segnext", decoder="aspp")


def test_tiny_and_odd_inputs_work(model):
    with torch.no_grad():
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 5, 1, 1)
        assert model(torch.randn(2, 3, 33, 17)).shape == (2, 5, 33, 17)
