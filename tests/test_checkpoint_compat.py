"""Checkpoints saved before the assembly redesign (msfusion 0.1.0, commit 1dcd8cb) load and give the same outputs.

``tests/fixtures/checkpoints_v0_1`` holds a SegNeXt, a composed segmentor (MSCSA add-on saved with the old
PVTv2-B1 default, FPN, Semantic FPN head), a CEDNet RetinaNet and a FINE FCOS, each saved by that code with
``save_checkpoint``, and their outputs on one fixed input (``make_checkpoints.py`` wrote them).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import msfusion as mf

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoints_v0_1"
EXPECTED = load_file(FIXTURES / "expected_outputs.safetensors")


@pytest.mark.parametrize("name", ["segnext", "composed_segmentor"])
def test_old_segmentor_checkpoints_load_with_the_same_logits(name: str, one_thread) -> None:
    model = mf.load_model(FIXTURES / f"{name}.safetensors").eval()
    x = EXPECTED["input"]
    with torch.no_grad():
        logits = model((x - 0.45) / 0.25)
    torch.testing.assert_close(logits, EXPECTED[f"{name}.logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["cednet_detector", "fine_detector"])
def test_old_detector_checkpoints_load_with_the_same_pyramid_and_heads(name: str, one_thread) -> None:
    model = mf.load_model(FIXTURES / f"{name}.safetensors").eval()
    x = EXPECTED["input"]
    with torch.no_grad():
        feats = model.backbone(((x[0] - 0.45) / 0.25)[None])
        head = model.head(list(feats.values()))
    for level, value in feats.items():
        torch.testing.assert_close(value, EXPECTED[f"{name}.{level}"], rtol=1e-5, atol=1e-5)
    for key, value in head.items():
        torch.testing.assert_close(value, EXPECTED[f"{name}.head.{key}"], rtol=1e-5, atol=1e-5)
