"""One timed subject of ``bench_vs_mmseg.py``: a model, a library, a mode, in its own process.

Runs under msfusion's Python (``--library msfusion``) or under the reference
environment's (``--library mmseg``: mmsegmentation 1.2.2, mmcv 2.1.0, mmengine
0.10.7). Every subject lives in its own process so that no setting of one mode
(allocator, compiled kernels, thread pools) leaks into another, and the
orchestrator can alternate single runs between them.

Protocol: JSON lines. The worker prints ``{"ready": ..., "info": ...}`` once
built, then answers one line per command read from stdin:

- ``{"cmd": "run"}``: one timed call (inference: one forward of the 1x3xHxW
  input with the logits upsampled to HxW; training: forward, loss, backward,
  AdamW step on the fixed batch; data: the ADE20K training transforms, from
  decoded image and label arrays to a 512x512 crop, over every given image)
  -> ``{"ms": float}``;
- ``{"cmd": "output", "path": P}``: the check output (inference logits; for
  training, the logits and loss of a first step in train mode with DropPath and
  dropout off, from the initial weights) saved with ``torch.save`` -> ``{}``;
- ``{"cmd": "quit"}``.

Inputs, weights and NMF bases come from files / seeds the orchestrator gives,
so both libraries compute the same function on the same data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from typing import Any

import torch
import torch.nn.functional as F

# mmsegmentation's configs for SegNeXt (ADE20K, 512x512), by our variant name.
MMSEG_CONFIGS = {
    "segnext_t": "segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py",
    "segnext_s": "segnext/segnext_mscan-s_1xb16-adamw-160k_ade20k-512x512.py",
}


def _reply(obj: dict[str, Any]) -> None:
    sys.__stdout__.write(json.dumps(obj) + "\n")
    sys.__stdout__.flush()


# ---- mmsegmentation ---------------------------------------------------------------------------


def _stub_mmcv_ops() -> None:
    """mmcv-lite has no compiled ops; SegNeXt uses none, but mmseg imports a few at import time."""
    try:
        import mmcv.ops  # noqa: F401
    except ImportError:
        stub = types.ModuleType("mmcv.ops")

        def unavailable(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("mmcv.ops is not built in this environment (mmcv-lite)")

        def getattr_(name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return unavailable

        stub.__getattr__ = getattr_  # type: ignore[attr-defined]
        sys.modules["mmcv.ops"] = stub


class MMSegSubject:
    def __init__(self, args: argparse.Namespace) -> None:
        import os

        _stub_mmcv_ops()
        import mmseg
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        init_default_scope("mmseg")
        cfg_path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs", MMSEG_CONFIGS[args.model])
        cfg = Config.fromfile(cfg_path)
        cfg.model.backbone.init_cfg = None  # no download: the weights come from --weights or are saved there
        cfg.model.pretrained = None
        cfg.model.decode_head.num_classes = args.num_classes
        self.cfg = cfg
        torch.manual_seed(0)
        self.model = MODELS.build(cfg.model)
        self.model.init_weights()
        self.args = args
        if args.save_weights:
            # Random BatchNorm statistics, so that folding them is exercised by the output check.
            g = torch.Generator().manual_seed(1)
            for m in self.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            torch.save({"state_dict": self.model.state_dict()}, args.save_weights)
        else:
            sd = torch.load(args.weights, map_location="cpu", weights_only=True)["state_dict"]
            self.model.load_state_dict(sd, strict=True)
        self.model.to(args.device)
        self.info = {"library": f"mmseg {mmseg.__version__}", "torch": torch.__version__}

    # inference
    def prepare_infer(self, image: torch.Tensor) -> None:
        self.model.eval()
        self.image = image
        h, w = image.shape[-2:]
        self.metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))] * image.shape[0]

    def infer(self) -> torch.Tensor:
        # The official NMF draws its bases from the global RNG at every call: seed it, so that the
        # bases equal those the msfusion subjects were given.
        torch.manual_seed(self.args.nmf_seed)
        with torch.no_grad():
            return self.model.inference(self.image, self.metas)

    # data pipeline
    def prepare_data(self, images: list, masks: list) -> None:
        import cv2
        import numpy as np
        from mmcv.transforms import Compose

        # OpenCV's own thread pool gets the thread count torch gets (mmengine sets it to 1 in data workers).
        cv2.setNumThreads(self.args.threads)
        np.random.seed(0)  # mmcv's transforms draw from numpy's global generator
        # The config's train pipeline after loading (the images are given decoded, BGR as mmcv loads them).
        steps = [t for t in self.cfg.train_pipeline if t["type"] not in ("LoadImageFromFile", "LoadAnnotations")]
        self.pipeline = Compose(steps)
        self.samples = [
            dict(img=img[..., ::-1].copy(), gt_seg_map=mask, seg_fields=["gt_seg_map"], img_shape=img.shape[:2],
                 ori_shape=img.shape[:2], reduce_zero_label=False)
            for img, mask in zip(images, masks, strict=True)
        ]  # fmt: skip

    def data_pass(self) -> None:
        for sample in self.samples:
            packed = self.pipeline(dict(sample))
            if self.args.mode == "preprocess":
                # The model's SegDataPreProcessor: BGR -> RGB, normalise, pad to the crop (msfusion's transforms
                # end with these steps; mmseg runs them in the main process, one batch at a time).
                self.model.data_preprocessor(
                    {"inputs": [packed["inputs"]], "data_samples": [packed["data_samples"]]}, True
                )

    # training
    def prepare_train(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from mmengine.optim import build_optim_wrapper
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        self.images = images
        self.samples = []
        for label in labels:
            sample = SegDataSample(
                metainfo=dict(img_shape=tuple(images.shape[-2:]), pad_shape=tuple(images.shape[-2:]))
            )
            sample.gt_sem_seg = PixelData(data=label[None].long())
            self.samples.append(sample)
        self.optim_wrapper = build_optim_wrapper(self.model, self.cfg.optim_wrapper)
        self.model.train()

    def check_train(self) -> dict[str, torch.Tensor]:
        from mmcv.cnn.bricks.drop import DropPath

        saved = []
        for m in self.model.modules():
            if isinstance(m, DropPath):
                saved.append((m, "drop_prob", m.drop_prob))
                m.drop_prob = 0.0
            elif isinstance(m, torch.nn.Dropout2d):
                saved.append((m, "p", m.p))
                m.p = 0.0
        torch.manual_seed(self.args.nmf_seed)
        with torch.no_grad():
            logits = self.model.decode_head(self.model.extract_feat(self.images))
            logits = F.interpolate(logits, size=self.images.shape[-2:], mode="bilinear", align_corners=False)
            torch.manual_seed(self.args.nmf_seed)
            losses = self.model.loss(self.images, self.samples)
        for m, attr, value in saved:
            setattr(m, attr, value)
        return {"logits": logits, "loss": losses["decode.loss_ce"].detach()}

    def train_step(self) -> None:
        # EncoderDecoder.train_step without the data preprocessor (the inputs are already normalised).
        with self.optim_wrapper.optim_context(self.model):
            losses = self.model.loss(self.images, self.samples)
        loss, _ = self.model.parse_losses(losses)
        self.optim_wrapper.update_params(loss)


# ---- msfusion ---------------------------------------------------------------------------------


class MsfusionSubject:
    def __init__(self, args: argparse.Namespace) -> None:
        import msfusion as mf

        self.args = args
        self.mode = args.mode
        self.mf = mf
        self.base = mf.create_model(args.model, num_classes=args.num_classes)
        mf.load_checkpoint(self.base, args.weights, strict=True)
        self.base.to(args.device)
        # The NMF bases the official code would draw with the same seed: torch.rand((B*S, D, R)).
        for m in self.base.modules():
            if hasattr(m, "eval_bases"):
                torch.manual_seed(args.nmf_seed)
                m.eval_bases.copy_(F.normalize(torch.rand(m.eval_bases.shape), dim=1).to(m.eval_bases.device))
        self.info = {"library": f"msfusion {mf.__version__}", "torch": torch.__version__}

    # inference
    def prepare_infer(self, image: torch.Tensor) -> None:
        mode = self.mode
        model = self.base.eval()
        if mode in ("fp32", "bf16", "fp16"):
            self.model = model
        elif mode == "channels_last":
            self.model = model.to(memory_format=torch.channels_last)
            image = image.contiguous(memory_format=torch.channels_last)
        elif mode.startswith("fast"):
            self.model = self.mf.optimize_for_inference(
                model, compile="compile" in mode, keep_memory="nokeep" not in mode
            )
        else:
            raise ValueError(f"unknown msfusion inference mode {mode!r}")
        self.image = image

    def infer(self) -> torch.Tensor:
        with torch.no_grad():
            if self.mode in ("bf16", "fp16"):
                dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
                with torch.autocast(self.image.device.type, dtype=dtype):
                    return self.model(self.image).float()
            return self.model(self.image)

    # data pipeline
    def prepare_data(self, images: list, masks: list) -> None:
        import numpy as np

        from msfusion.data.segmentation_transforms import build_train_transforms

        self.pipeline = build_train_transforms(512)
        self.samples = [dict(image=img, mask=mask) for img, mask in zip(images, masks, strict=True)]
        self.rng = np.random.default_rng(0)

    def data_pass(self) -> None:
        for sample in self.samples:
            self.pipeline(dict(sample), self.rng)

    # training
    def prepare_train(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from msfusion.engine import SegmentationTask, Trainer, load_config

        overrides = ["data.batch_size=2", "train.progress=false", "train.tensorboard=false"]
        if self.mode.startswith("fast"):
            overrides += ["train.channels_last=true", "optim.fused=true", "train.keep_freed_memory=true"]
            if "compile" in self.mode:
                overrides.append("train.compile=true")
        elif self.mode != "fp32":
            raise ValueError(f"unknown msfusion training mode {self.mode!r}")
        cfg = load_config(None, overrides)
        self.task = SegmentationTask()
        self.task.avg_non_ignore = False  # mmseg's loss rule (recipes: train.avg_non_ignore=false), so losses compare
        self.batch = {"image": images, "mask": labels.long()}
        from msfusion.engine.distributed import DistInfo

        dist_info = DistInfo(device=images.device)
        self.trainer = Trainer(cfg, self.task, self.base, train_set=[None] * 2, dist_info=dist_info)
        self.trainer.model.train()

    def check_train(self) -> dict[str, torch.Tensor]:
        from timm.layers import DropPath

        model = self.trainer.model
        saved = []
        for m in model.modules():
            if isinstance(m, DropPath):
                saved.append((m, "drop_prob", m.drop_prob))
                m.drop_prob = 0.0
            elif isinstance(m, torch.nn.Dropout2d):
                saved.append((m, "p", m.p))
                m.p = 0.0
        with torch.no_grad():
            torch.manual_seed(self.args.nmf_seed)
            logits = self.trainer.forward(self.batch["image"])["logits"]
            torch.manual_seed(self.args.nmf_seed)
            loss, _ = self.task.loss(self.trainer.forward, self.batch)
        for m, attr, value in saved:
            setattr(m, attr, value)
        return {"logits": logits, "loss": loss.detach()}

    def train_step(self) -> None:
        self.trainer.train_step(iter([self.batch]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", choices=("mmseg", "msfusion"), required=True)
    parser.add_argument("--model", default="segnext_t", choices=sorted(MMSEG_CONFIGS))
    parser.add_argument("--mode", default="fp32")
    parser.add_argument("--task", choices=("infer", "train", "data"), default="infer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--weights", help="mmseg-format checkpoint to load")
    parser.add_argument("--save-weights", help="(mmseg) save the initialised weights here and load nothing")
    parser.add_argument("--data", required=True, help="torch.save'd dict: image (1,3,H,W), images (2,3,H,W), labels")
    parser.add_argument("--nmf-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    # Library chatter goes to stderr; stdout carries the protocol only.
    sys.stdout = sys.stderr
    torch.set_num_threads(args.threads)
    subject = MMSegSubject(args) if args.library == "mmseg" else MsfusionSubject(args)
    device = torch.device(args.device)
    data = torch.load(args.data, weights_only=True)
    if args.task == "infer":
        subject.prepare_infer(data["image"].to(device))
        run = subject.infer
    elif args.task == "data":
        subject.prepare_data([t.numpy() for t in data["raw_images"]], [t.numpy() for t in data["raw_masks"]])
        run = subject.data_pass
    else:
        subject.prepare_train(data["images"].to(device), data["labels"].to(device))
        run = subject.train_step
    _reply({"ready": True, "info": subject.info})

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "run":
                sync()
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                sync()
                # CPU time too: on a loaded machine it shows the work done, without the time spent pre-empted.
                _reply({"ms": 1e3 * (time.perf_counter() - start), "cpu_ms": 1e3 * (time.process_time() - cpu_start)})
            elif msg["cmd"] == "output" and args.task == "data":
                torch.save({}, msg["path"])
                _reply({})
            elif msg["cmd"] == "output":
                out = subject.infer() if args.task == "infer" else subject.check_train()
                if isinstance(out, torch.Tensor):
                    out = {"logits": out}
                torch.save({k: v.detach().float().cpu().contiguous() for k, v in out.items()}, msg["path"])
                _reply({})
            elif msg["cmd"] == "quit":
                break
        except Exception as err:  # reported to the orchestrator, which prints it and carries on
            _reply({"error": f"{type(err).__name__}: {err}"})


if __name__ == "__main__":
    main()
