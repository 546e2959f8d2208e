"""SegNeXt and MSCAN against the paper and the official code.

Params with 150 classes: official code 4.263 / 13.933 / 27.636 / 48.927 M (paper
Tables 2 and 9: 4.3 / 13.9 / 27.6 / 48.9), within 0.5%. MACs at 512x512
(torchprofile multiply-adds incl. the final upsample): paper Table 9
6.6 / 15.9 / 34.9 / 70.0 G, within 5%. MSCAN classifiers (Table 3):
4.2 / 14.0 / 26.8 / 45.2 M, within 3%. All counted on the meta device.
"""

import pytest
import torch

import msfusion as mf

SEGNEXT = {
    "segnext_t": (4.263, 6.6),
    "segnext_s": (13.933, 15.9),
    "segnext_b": (27.636, 34.9),
    "segnext_l": (48.927, 70.0),
}
MSCAN = {"mscan_t": 4.2, "mscan_s": 14.0, "mscan_b": 26.8, "mscan_l": 45.2}


def _meta(name, **kwargs):
    with torch.device("meta"):
        return mf.create_model(name, **kwargs)


@pytest.mark.parametrize("name", list(SEGNEXT))
def test_segnext_params_match_official_code(name):
    params_m = mf.count_params(_meta(name)) / 1e6
    assert params_m == pytest.approx(SEGNEXT[name][0], rel=0.005)


@pytest.mark.parametrize("name", list(SEGNEXT))
def test_segnext_macs_match_paper_table9(name):
    gmacs = mf.count_macs(_meta(name), (1, 3, 512, 512)) / 1e9
    assert gmacs == pytest.approx(SEGNEXT[name][1], rel=0.05)


@pytest.mark.parametrize("name", list(MSCAN))
def test_mscan_classifier_params_match_paper_table3(name):
    params_m = mf.count_params(_meta(name)) / 1e6
    assert params_m == pytest.approx(MSCAN[name], rel=0.03)


def test_variant_hyper_parameters_follow_table2():
    model = _meta("segnext_l")
    chs = [i["chs"] for i in model.backbone.feature_info]
    assert chs == [64, 128, 320, 512]
    assert [len(getattr(model.backbone, f"block{i}")) for i in range(1, 5)] == [3, 5, 27, 3]
    assert model.decode_head.channels == 1024
    assert model.decode_head.hamburger.ham.rank == 64
    tiny = _meta("segnext_t")
    assert tiny.decode_head.hamburger.ham.rank == 16
    assert tiny.backbone.block1[0].mlp.fc1.out_channels == 32 * 8  # e.r. 8 in stages 1-2
    assert tiny.backbone.block3[0].mlp.fc1.out_channels == 160 * 4
    assert tiny.backbone.block1[0].layer_scale_1.shape == (32,)


def test_cityscapes_macs_at_1024x2048():
    # torchprofile 0.1.0 on the official SegNeXt-T gives 50.4 G without the 19-class upsample
    # (0.17 G at 1024x2048 x 19 classes x 4 with it).
    gmacs = mf.count_macs(_meta("segnext_t", num_classes=19), (1, 3, 1024, 2048)) / 1e9
    assert gmacs == pytest.approx(50.4 + 4 * 19 * 1024 * 2048 / 1e9, rel=0.01)


def test_counting_is_fast_on_meta():
    import time

    start = time.perf_counter()
    mf.count_macs(_meta("segnext_l"), (1, 3, 512, 512))
    assert time.perf_counter() - start < 30  # generous: about a second on a laptop
