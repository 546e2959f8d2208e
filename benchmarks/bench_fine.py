"""FINE's efficiency claim (arXiv 2606.14005, Table 3 and Sec. 5.3.1), measured on CPU in one run.

Part 1, attention strategies on the same neck and input: an FPN (256 channels)
on ResNet-50 feature shapes at ``--size`` (default 640x640, Table 3's RT-DETR
input) with FINE at the l = 2 and l = 3 fusion steps (F_low at strides 8 and
16), once per attention option: aats, vanilla, window (M = 7), area (A = 4),
linear. For each it prints the multiply-adds FINE adds to the FPN (meta
device), FINE's own latency over both fusion steps (median and min of
``--runs``) and its peak memory (the largest total of live tensors created
during its call, tracked per ATen operator, the larger of the two steps), each
also as a ratio to vanilla. The paper: AATS costs 93.3% less compute and 99.9%
less memory than vanilla (+1.2 G vs +18.0 G, +1.17
MB vs +1223.48 MB on RT-DETR R18). Softmax attention runs unfused here (the
attention matrix is materialised, as the paper's memory column implies);
``--fused`` uses ``scaled_dot_product_attention`` instead, whose CPU kernel
never holds the whole matrix.

Part 2, the latency FINE adds to a whole detector: torchvision Faster R-CNN
with our ResNet-50 + FPN (``msfusion.models.detector.build_detector``) at
``--detector-size`` (default 800x1333), with and without FINE at the two
fusion steps, timed interleaved (``--detector-runs`` each) in eval mode. The
target: at most +5% on CPU; the paper: 80 -> 78 FPS (+3.4% latency) on a Jetson
with TensorRT. When the detector module is not available the FPN neck alone is
timed instead, and the output says so.

    python benchmarks/bench_fine.py
    python benchmarks/bench_fine.py --size 512 --runs 5 --detector-runs 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import msfusion as mf
from msfusion.analysis.benchmark import time_call
from msfusion.analysis.complexity import MacCounter
from msfusion.models.necks.fine import FINE
from msfusion.models.necks.fpn import FPN

R50 = [(256, 4), (512, 8), (1024, 16), (2048, 32)]
FINE_AT = (8, 16)  # F_low strides of the l = 2 and l = 3 fusion steps
OPTIONS = ("aats", "vanilla", "window", "area", "linear")


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensors created inside the mode (views share their base's storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors on it]

    def _release(self, ptr: int) -> None:
        entry = self._refs.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._refs[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in self._refs:
                self._refs[ptr][1] += 1
            elif ptr in inputs or ptr == 0:
                continue  # a view or in-place result of a tensor made outside the forward pass
            else:
                nbytes = t.untyped_storage().nbytes()
                self._refs[ptr] = [nbytes, 1]
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, ptr)
        return out


def _info() -> list[dict]:
    return [dict(chs=c, reduction=s, module=f"layer{i + 1}") for i, (c, s) in enumerate(R50)]


def _shapes(size: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """ResNet-50 map sizes by stride: conv1 and the max-pool round up, then each stage halves rounding up."""
    h, w = (size[0] + 1) // 2, (size[1] + 1) // 2
    out = {}
    for _, stride in R50:
        h, w = (h + 1) // 2, (w + 1) // 2
        out[stride] = (h, w)
    return out


def _features(size: tuple[int, int], device: str = "cpu") -> list[torch.Tensor]:
    shapes = _shapes(size)
    if device == "meta":
        return [torch.zeros(1, chs, *shapes[s], device="meta") for chs, s in R50]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, chs, *shapes[s], generator=g).to(device) for chs, s in R50]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _neck(attention: str | None, fused: bool) -> FPN:
    torch.manual_seed(0)
    align = {s: {"type": "fine", "attention": attention} for s in FINE_AT} if attention else None
    neck = FPN(_info(), extra_levels=1, extra_type="maxpool", align=align).eval()
    for m in neck.modules():
        if isinstance(m, FINE):
            m.fused_attention = fused
    return neck


def _macs(attention: str | None, size: tuple[int, int]) -> int:
    with torch.device("meta"):
        neck = _neck(attention, True)
        feats = _features(size, "meta")
    counter = MacCounter()
    with torch.no_grad(), counter:
        neck(feats)
    return counter.total


def _fine_modules(attention: str, size: tuple[int, int], fused: bool, device: torch.device):
    """FINE at the two fusion steps with inputs of the lateral shapes: [(module, low, high), ...]."""
    shapes = _shapes(size)
    out = []
    for low_stride in FINE_AT:
        torch.manual_seed(0)
        fine = FINE(256, low_stride, 2 * low_stride, attention=attention).to(device).eval()
        fine.fused_attention = fused
        low = torch.randn(1, 256, *shapes[low_stride], device=device)
        high = torch.randn(1, 256, *shapes[2 * low_stride], device=device)
        out.append((fine, low, high))
    return out


def _fine_peak(modules) -> int:
    """Peak bytes of the tensors FINE creates during one call, the larger of its two fusion steps."""
    peak = 0
    for fine, low, high in modules:
        tracker = PeakTensorMemory()
        with torch.no_grad(), tracker:
            out = fine(low, high)
        del out
        peak = max(peak, tracker.peak)
    return peak


def bench_attention(
    size: tuple[int, int], runs: int, warmup: int, fused: bool, device: torch.device
) -> dict[str, dict[str, float]]:
    """Per option: FINE's own latency (both fusion steps), the MACs it adds to the FPN, FINE's peak memory."""
    feats = _features(size, device)
    neck = _neck(None, fused).to(device)
    with torch.no_grad():
        times = time_call(lambda: neck(feats), runs, warmup, device)
    results = {"fpn": dict(ms=1e3 * statistics.median(times), min_ms=1e3 * min(times), gmacs=_macs(None, size) / 1e9)}
    for attention in OPTIONS:
        modules = _fine_modules(attention, size, fused, device)

        def call(modules=modules) -> None:
            for fine, low, high in modules:
                fine(low, high)

        with torch.no_grad():
            times = time_call(call, runs, warmup, device)
        results[attention] = dict(
            ms=1e3 * statistics.median(times),
            min_ms=1e3 * min(times),
            gmacs=_macs(attention, size) / 1e9 - results["fpn"]["gmacs"],
            mb=_fine_peak(modules) / 2**20,
        )
    return results


def _detector_pair(size: tuple[int, int], device: torch.device):
    """(baseline, with FINE, description) whole detectors, or FPN necks when the detector is unavailable."""
    try:
        from msfusion.models.detector import build_detector
    except ImportError:
        build_detector = None
    if build_detector is not None:
        torch.manual_seed(0)
        base = build_detector("faster_rcnn", backbone="resnet50", num_classes=91).eval()
        torch.manual_seed(0)
        align = {s: "fine" for s in FINE_AT}
        fine = build_detector("faster_rcnn", backbone="resnet50", num_classes=91, neck_kwargs={"align": align}).eval()
        missing = fine.load_state_dict(base.state_dict(), strict=False).missing_keys
        assert all(".aligns." in k for k in missing), missing  # only FINE's weights differ
        base, fine = base.to(device), fine.to(device)
        image = [torch.rand(3, *size, generator=torch.Generator().manual_seed(0)).to(device)]
        desc = f"torchvision Faster R-CNN, ResNet-50 + our FPN, 91 classes, one {size[0]}x{size[1]} image"
        return (lambda: base(image)), (lambda: fine(image)), desc, base
    feats = _features(size, device)
    base, fine = _neck(None, True).to(device), _neck("aats", True).to(device)
    desc = f"the FPN neck alone (no detector module available), ResNet-50 shapes at {size[0]}x{size[1]}"
    return (lambda: base(feats)), (lambda: fine(feats)), desc, base


def bench_detector(size: tuple[int, int], runs: int, warmup: int, device: torch.device) -> dict[str, object]:
    run_base, run_fine, desc, _ = _detector_pair(size, device)
    times: dict[str, list[float]] = {"base": [], "fine": []}
    with torch.no_grad():
        for fn in (run_base, run_fine):
            for _ in range(warmup):
                fn()
        for _ in range(runs):  # interleaved, so drift of a shared machine hits both alike
            for key, fn in (("base", run_base), ("fine", run_fine)):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[key].append(time.perf_counter() - start)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    low = {k: 1e3 * min(v) for k, v in times.items()}
    return dict(
        what=desc,
        base_ms=med["base"],
        fine_ms=med["fine"],
        added=med["fine"] / med["base"] - 1,
        base_min_ms=low["base"],
        fine_min_ms=low["fine"],
        added_min=low["fine"] / low["base"] - 1,
    )


def _parse_size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    return (parts[0], parts[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=_parse_size, default=(640, 640), help="HxW of part 1 (default 640x640)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fused", action="store_true", help="scaled_dot_product_attention in part 1")
    parser.add_argument("--detector-size", type=_parse_size, default=(800, 1333))
    parser.add_argument("--detector-runs", type=int, default=5)
    parser.add_argument("--skip-detector", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"msfusion {mf.__version__}, torch {torch.__version__}, {where}")
    h, w = args.size
    print(
        f"\n1) FINE attention strategies, FPN (256 ch) on ResNet-50 shapes at {h}x{w}, FINE at F_low strides "
        f"{FINE_AT}, {'fused' if args.fused else 'unfused (materialised)'} softmax attention"
    )
    res = bench_attention(args.size, args.runs, args.warmup, args.fused, device)
    fpn = res["fpn"]
    print(f"   plain FPN: {fpn['ms']:.1f} ms (min {fpn['min_ms']:.1f}), {fpn['gmacs']:.2f} GMACs")
    print("   FINE at both steps: its own latency (median, min), the MACs it adds to the FPN, its peak memory")
    print(
        f"   {'attention':<10}{'ms':>9}{'min ms':>9}{'+GMACs':>9}{'MB':>10}   vs vanilla:{'time':>7}{'MACs':>8}{'memory':>8}"
    )
    van = res["vanilla"]
    for name in OPTIONS:
        r = res[name]
        print(
            f"   {name:<10}{r['ms']:>9.2f}{r['min_ms']:>9.2f}{r['gmacs']:>9.3f}{r['mb']:>10.2f}   {' ' * 11}"
            f"{r['min_ms'] / van['min_ms']:>7.3f}{r['gmacs'] / van['gmacs']:>8.3f}{r['mb'] / van['mb']:>8.4f}"
        )
    a = res["aats"]
    print(
        f"   AATS vs vanilla: {100 * (a['gmacs'] / van['gmacs'] - 1):+.1f}% compute, "
        f"{100 * (a['mb'] / van['mb'] - 1):+.2f}% memory, {100 * (a['min_ms'] / van['min_ms'] - 1):+.1f}% time "
        "(paper: -93.3% compute, -99.9% memory)"
    )
    out = {"attention": res}
    if not args.skip_detector:
        dh, dw = args.detector_size
        print(f"\n2) latency FINE adds to a whole detector ({dh}x{dw}, median of {args.detector_runs}, interleaved)")
        det = bench_detector(args.detector_size, args.detector_runs, 1, device)
        print(f"   {det['what']}")
        print(
            f"   without FINE {det['base_ms']:.0f} ms, with FINE {det['fine_ms']:.0f} ms: "
            f"{100 * det['added']:+.1f}% (target <= +5%; paper 80 -> 78 FPS, +3.4%)"
        )
        out["detector"] = det
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
