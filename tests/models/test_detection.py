"""Detectors: torchvision parity of parameter counts, every arch x neck trains and infers, Cascade R-CNN, presets."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyBackbone
from torch import nn

import msfusion as mf
from msfusion.models.meta_arch.cascade_rcnn import STAGE_BOX_WEIGHTS, STAGE_IOUS, CascadeBoxPredictor
from msfusion.models.meta_arch.detector import DetectorBackbone, DetectorComplexity, build_detector, torchvision_archs

ARCHS = torchvision_archs()

TORCHVISION_COUNTS = {  # torchvision 0.29 builders, weights=None, weights_backbone=None, 91 classes
    "faster_rcnn": ("fasterrcnn_resnet50_fpn", 41_808_406),
    "mask_rcnn": ("maskrcnn_resnet50_fpn", 44_454_513),
    "retinanet": ("retinanet_resnet50_fpn", 34_068_119),
    "fcos": ("fcos_resnet50_fpn", 32_322_720),
}
SMALL = dict(min_size=64, max_size=96)
SMALL_RCNN = dict(
    representation=64,
    mask_chs=16,
    rpn_pre_nms_top_n_train=64,
    rpn_post_nms_top_n_train=32,
    rpn_pre_nms_top_n_test=64,
    rpn_post_nms_top_n_test=32,
    box_batch_size_per_image=16,
    box_detections_per_img=10,
)


def _tiny(arch: str, neck: str | None = "fpn", fine: bool = False, **kwargs) -> nn.Module:
    extra = dict(SMALL_RCNN) if "rcnn" in arch else dict(topk_candidates=32, detections_per_img=10)
    extra.update(kwargs)
    neck_kwargs = dict(out_chs=32)  # FINE: C / 16 = 2 heads
    return build_detector(
        arch, backbone=TinyBackbone(), neck=neck, fine=fine, num_classes=3, neck_kwargs=neck_kwargs, **SMALL, **extra
    )


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = []
    for (h, w), boxes in zip(
        ((64, 80), (72, 64)), ([[4, 6, 40, 50], [30, 10, 70, 30]], [[10, 20, 50, 60]]), strict=True
    ):
        boxes = torch.tensor(boxes, dtype=torch.float32)
        masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.long().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        targets.append({"boxes": boxes, "labels": torch.arange(1, len(boxes) + 1), "masks": masks})
    return images, targets


@pytest.mark.parametrize("arch", sorted(TORCHVISION_COUNTS))
def test_resnet50_fpn_counts_equal_torchvision(arch: str) -> None:
    builder, count = TORCHVISION_COUNTS[arch]
    with torch.device("meta"):
        ours = build_detector(arch, backbone="resnet50", neck="fpn", fine=False, num_classes=91)
    assert mf.count_params(ours) == count
    from torchvision.models import detection

    with torch.device("meta"):
        theirs = getattr(detection, builder)(weights=None, weights_backbone=None)
    assert mf.count_params(theirs) == count


def test_frozen_bn_matches_torchvision_pretrained_layout() -> None:
    with torch.device("meta"):
        model = build_detector("faster_rcnn", backbone="resnet50", num_classes=91, frozen_bn=True)
    # torchvision's pretrained Faster R-CNN: 41,755,286 parameters (BatchNorm frozen into buffers).
    assert mf.count_params(model) == 41_755_286


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("neck,fine", [("fpn", False), ("pan", False), ("fpn", True)])
def test_every_arch_and_neck_trains_and_infers(arch: str, neck: str, fine: bool) -> None:
    model = _tiny(arch, neck, fine)
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.backbone.parameters())
    if fine:
        assert any(p.grad is not None for n, p in model.named_parameters() if "aligns" in n)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, image in zip(outputs, images, strict=True):
        assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])
        if "mask" in arch:
            assert out["masks"].shape[1:] == (1, *image.shape[-2:])


def test_cednet_pyramid_is_the_neck() -> None:
    model = mf.create_model("test_retinanet_cednet")
    assert model.backbone.names == ["p3", "p4", "p5", "p6", "p7"]
    assert type(model.backbone.neck).__name__ == "CEDNetPyramid"
    images, targets = _batch()
    model.train()
    sum(model(images, targets).values()).backward()
    model.eval()
    with torch.no_grad():
        assert len(model(images)) == 2


def test_mscsa_addon_between_backbone_and_fpn() -> None:
    model = _tiny("faster_rcnn", addon="mscsa", addon_kwargs=dict(num_heads=2, head_dim=8, pool_stride=32))
    assert model.backbone.addon is not None
    images, targets = _batch()
    model.train()
    sum(model(images, targets).values()).backward()
    assert any(p.grad is not None for p in model.backbone.addon.parameters())


def test_cascade_stages_follow_the_paper() -> None:
    model = _tiny("cascade_mask_rcnn")
    stages = model.roi_heads.stages
    assert [s.proposal_matcher.high_threshold for s in stages] == list(STAGE_IOUS)
    assert [s.proposal_matcher.low_threshold for s in stages] == list(STAGE_IOUS)
    assert [tuple(s.box_coder.weights) for s in stages] == [tuple(w) for w in STAGE_BOX_WEIGHTS]
    assert all(isinstance(s.box_predictor, CascadeBoxPredictor) for s in stages)
    assert stages[0].box_predictor.bbox_pred.out_features == 4  # class-agnostic regression
    assert len(model.roi_heads.mask_heads) == 3
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert {f"loss_box_reg_s{t}" for t in range(3)} <= set(losses)
    assert {f"loss_mask_s{t}" for t in range(3)} <= set(losses)


def test_cascade_inference_averages_stage_scores() -> None:
    model = _tiny("cascade_rcnn").eval()
    images, _ = _batch()
    heads = model.roi_heads
    seen: list[torch.Tensor] = []
    hooks = [s.box_predictor.register_forward_hook(lambda m, i, o: seen.append(o[0])) for s in heads.stages]
    with torch.no_grad():
        model.transform.eval()
        outputs = model(images)
    for h in hooks:
        h.remove()
    assert len(seen) == 3
    mean = torch.stack([torch.softmax(s, -1) for s in seen]).mean(0)
    if len(outputs[0]["scores"]):
        assert outputs[0]["scores"].max() <= mean[:, 1:].max() + 1e-6


def test_bad_arguments_explain_the_fix() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        build_detector("yolox", backbone=TinyBackbone(), num_classes=3)
    with pytest.raises(ValueError, match="counts the background"):
        build_detector("fcos", backbone=TinyBackbone(), num_classes=1)
    with pytest.raises(ValueError, match="one channel count"):
        build_detector("retinanet", backbone=TinyBackbone(), neck=None, num_classes=3)
    with pytest.raises(ValueError, match="neck by name"):
        build_detector("retinanet", backbone=TinyBackbone(), neck=None, fine=True, num_classes=3)


def test_detector_rebuilds_from_its_checkpoint(tmp_path) -> None:
    model = build_detector(
        "retinanet", backbone="test_cednet_next", neck=None, num_classes=4, min_size=64, max_size=64,
        backbone_kwargs=dict(pyramid="p3p7", pyramid_chs=16),
    )  # fmt: skip
    path = tmp_path / "det.safetensors"
    mf.save_checkpoint(model, path)
    again = mf.load_model(path).eval()
    model.eval()
    image = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        assert torch.equal(model.head(list(model.backbone(image[0][None]).values()))["cls_logits"],
                           again.head(list(again.backbone(image[0][None]).values()))["cls_logits"])  # fmt: skip


def test_neck_defaults_follow_each_detector() -> None:
    two_stage, one_stage = _tiny("faster_rcnn"), _tiny("retinanet")
    assert isinstance(two_stage.backbone, DetectorBackbone)
    # Two-stage: P2-P5 + P6 by subsampling; RoIs pooled from P2-P5. One-stage: P3-P5 + P6, P7 by convs.
    assert two_stage.backbone.names == ["p2", "p3", "p4", "p5", "p6"]
    assert two_stage.roi_heads.box_roi_pool.featmap_names == ["p2", "p3", "p4", "p5"]
    assert one_stage.backbone.names == ["p3", "p4", "p5", "p6", "p7"]
    assert two_stage.backbone.neck.extra_type == "maxpool" and one_stage.backbone.neck.extra_type == "conv"


def test_presets_are_registered_detectors() -> None:
    names = mf.list_models(kind="detector")
    for name in (
        "retinanet_cednet_next_t", "mask_rcnn_cednet_next_t", "cascade_mask_rcnn_cednet_next_t",
        "faster_rcnn_r50_fpn", "faster_rcnn_r50_fpn_fine", "retinanet_r50_fpn", "retinanet_r50_fpn_fine",
        "fcos_r50_fpn", "fcos_r50_fpn_fine", "mask_rcnn_r50_fpn", "mask_rcnn_r50_fpn_fine", "mask_rcnn_r50_mscsa",
        "retinanet_r50_mscsa", "cascade_mask_rcnn_r50_mscsa", "mask_rcnn_pvt_v2_b0_mscsa",
    ):  # fmt: skip
        assert name in names


def test_complexity_forward_counts_heads_on_fixed_rois() -> None:
    model = _tiny("mask_rcnn")
    a = mf.count_macs(DetectorComplexity(model, num_rois=10, num_mask_rois=5), (1, 3, 64, 64))
    b = mf.count_macs(DetectorComplexity(model, num_rois=20, num_mask_rois=5), (1, 3, 64, 64))
    box_head_macs = 10 * (32 * 49 * 64 + 64 * 64 + 64 * 3 + 64 * 12)  # fc6, fc7, cls, box per RoI
    assert b - a == box_head_macs


@pytest.mark.parametrize(
    "name,size,published",
    [("retinanet_cednet_next_t", (800, 1280), 255.0), ("faster_rcnn_r50_fpn", (800, 800), 134.4)],
)
def test_macs_match_the_papers(name: str, size: tuple[int, int], published: float) -> None:
    with torch.device("meta"):
        model = mf.create_model(name)
    gmacs = mf.count_macs(DetectorComplexity(model), (1, 3, *size)) / 1e9
    assert abs(gmacs - published) / published < 0.01


TORCHVISION_PRESETS = [
    n
    for n in mf.list_models(kind="detector")
    if n.removeprefix("test_").startswith(tuple(f"{arch}_" for arch in ARCHS))
]


@pytest.mark.parametrize("name", TORCHVISION_PRESETS)
def test_every_preset_builds_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = mf.create_model(name)
    assert model.arch in ARCHS and model.backbone.out_channels == 256 and model.model_cfg["name"] == name
    figures = mf.registry.paper_figures(name)
    if figures is not None and figures.params_m is not None:  # CEDNet Table 2, FINE Table 1
        assert abs(mf.count_params(model) / 1e6 - figures.params_m) / figures.params_m < 0.05
