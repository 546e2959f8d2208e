"""count_params / count_macs rules on modules whose counts are known by hand."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import msfusion as mf


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.bn(self.dw(self.conv(x)))
        y = y * y  # element-wise multiply: one MAC per output element
        y = F.interpolate(y, scale_factor=2, mode="bilinear")  # 4 per output element
        return self.fc(y.mean(dim=(2, 3)))


def test_hand_counted_macs():
    h = w = 16
    conv = h * w * 8 * 3 * 9
    dw = h * w * 8 * 25
    bn = h * w * 8
    mul = h * w * 8
    up = 4 * (2 * h) * (2 * w) * 8
    mean = 8
    fc = 8 * 10
    assert mf.count_macs(_Tiny(), (1, 3, h, w)) == conv + dw + bn + mul + up + mean + fc


def test_params_and_model_untouched():
    model = _Tiny()
    assert mf.count_params(model) == (3 * 8 * 9 + 8) + (8 * 25 + 8) + 16 + (80 + 10)
    mf.count_macs(model, (1, 3, 8, 8))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.training


def test_attention_matmuls_are_counted():
    class Attn(nn.Module):
        def forward(self, x):
            q = x.flatten(2).transpose(1, 2)  # (B, N, C)
            return (q @ q.transpose(1, 2)).softmax(-1) @ q

    n, c = 4 * 4, 3
    assert mf.count_macs(Attn(), (1, c, 4, 4)) == 2 * n * n * c


def test_unknown_rules_are_rejected():
    with pytest.raises(ValueError, match="torchprofile"):
        mf.count_macs(_Tiny(), (1, 3, 8, 8), rules="fvcore")


def test_counting_real_model_on_meta_equals_meta_built():
    real = mf.create_model("test_segnext")
    with torch.device("meta"):
        meta = mf.create_model("test_segnext")
    assert mf.count_macs(real, (1, 3, 64, 64)) == mf.count_macs(meta, (1, 3, 64, 64))
