"""FINE's Table 3 (arXiv 2606.14005, Sec. 5.3.1) measured on a whole detector, per attention strategy.

Table 3 puts FINE with each attention strategy (vanilla, window M = 7, area
A = 4, linear, AATS) into RT-DETR R18 at 640x640 and reports, against the
model without FINE: +params, +FLOPs, "Mem (MB)" (how much the whole model's
peak memory grows: +1223.48 MB for vanilla, +1.17 MB for AATS), FPS and
latency. This script measures the same on ``--model`` (default
``rt_detr_r18``, the ``msfusion[detr]`` extra; ``faster_rcnn_r50_fpn`` needs
torchvision only) at ``--size``, batch 1, on the network alone (the
``complexity_module`` forward: an already resized, normalised batch, no
post-processing), for each option of ``--options``:

- **+params, +GFLOPs** of the whole model (``count_params``, 2 x
  ``count_macs`` on the meta device).
- **Peak memory of one forward**, without and with FINE, and its increase
  (the paper's Mem column): the largest total of live tensors created during
  the forward, tracked per ATen operator (on CUDA also the allocator's
  ``max_memory_allocated`` above what was allocated before the call). Beside
  it, **FINE's own tensors**: the peak, above what was live when FINE was
  called, of the tensors created inside a FINE module (the larger of its two
  fusion steps), from the same forward.
- **Latency as a ratio of alternating runs**: the baseline and the +FINE
  model (the same weights apart from FINE's) run turn by turn, the order
  flipping every pair, and each pair gives one ratio +FINE / baseline. The
  median ratio and its spread (quartiles, min-max) are printed, with the
  median milliseconds and FPS of each; load from other processes on a shared
  machine hits both models of a pair alike.

Softmax attention runs unfused by default (the attention matrix is
materialised, as the paper's memory column implies); ``--fused`` uses
``scaled_dot_product_attention``, whose CPU kernel never holds the whole
matrix.

    python benchmarks/bench_fine.py                                   # Table 3's setting: RT-DETR R18, 640x640
    python benchmarks/bench_fine.py --size 320 --runs 7 --threads 1   # a quick CPU check
    python benchmarks/bench_fine.py --model faster_rcnn_r50_fpn --size 800 --options aats
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import msfusion as mf
from msfusion.models.align.fine import FINE
from msfusion.models.meta_arch.detector import DetectorComplexity

OPTIONS = ("aats", "vanilla", "window", "area", "linear")
# Table 3 (RT-DETR R18, 640x640, baseline 12.81 ms): +GFLOPs, +Mem MB, latency in ms.
PAPER = {
    "vanilla": (18.0, 1223.48, 17.74),
    "window": (8.9, 65.11, 15.05),
    "area": (10.0, 65.67, 14.71),
    "linear": (7.0, 18.42, 16.05),
    "aats": (1.2, 1.17, 13.24),
}
PAPER_BASE_MS = 12.81


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of live tensors created inside the mode (views share their base's storage).

    ``mark()`` opens a window: ``window_peak()`` is then the peak since the mark, above what was live at it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._mark = self._mark_peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors on it]

    def mark(self) -> None:
        self._mark = self._mark_peak = self.live

    def window_peak(self) -> int:
        return self._mark_peak - self._mark

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
                self._mark_peak = max(self._mark_peak, self.live)
            weakref.finalize(t, self._release, ptr)
        return out


def _network(model: nn.Module) -> nn.Module:
    """The detector's network alone on a resized, normalised batch (the papers' counting forward)."""
    return getattr(model, "complexity_module", DetectorComplexity)(model)


def _create(name: str, attention: str | None) -> nn.Module:
    torch.manual_seed(0)
    return mf.create_model(name, fine={"attention": attention} if attention else False)


def counts(name: str, attention: str | None, size: tuple[int, int]) -> tuple[int, int]:
    """(parameters, multiply-adds) of the whole model, on the meta device."""
    with torch.device("meta"):
        model = _create(name, attention)
    return mf.count_params(model), mf.count_macs(_network(model), (1, 3, *size))


def build_pair(name: str, attention: str, fused: bool, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(baseline, +FINE) networks in eval mode with the same weights apart from FINE's."""
    base = _create(name, None).eval()
    fine = _create(name, attention).eval()
    missing = fine.load_state_dict(base.state_dict(), strict=False).missing_keys
    fines = [m for m in fine.modules() if isinstance(m, FINE)]
    if not fines or not all(".fine." in k or ".aligns." in k for k in missing):
        raise RuntimeError(f"{name} with FINE differs from {name} in more than FINE: {missing[:5]}")
    for m in fines:
        m.fused_attention = fused
    return _network(base).to(device), _network(fine).to(device)


def peak_memory(network: nn.Module, x: Tensor) -> dict[str, float]:
    """Peak MB of one forward (tensors created in it), FINE's own peak MB, and on CUDA the allocator's peak MB."""
    tracker = PeakTensorMemory()
    fine_peak = [0]

    def enter(module, args) -> None:
        tracker.mark()

    def leave(module, args, out) -> None:
        fine_peak[0] = max(fine_peak[0], tracker.window_peak())

    hooks = []
    for m in network.modules():
        if isinstance(m, FINE):
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.no_grad(), tracker:
            out = network(x)
        del out
    finally:
        for h in hooks:
            h.remove()
    result = {"model_mb": tracker.peak / 2**20, "fine_mb": fine_peak[0] / 2**20}
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
        with torch.no_grad():
            out = network(x)
        torch.cuda.synchronize(x.device)
        result["cuda_mb"] = (torch.cuda.max_memory_allocated(x.device) - before) / 2**20
        del out
    return result


def alternating_ratios(
    run_base: Callable[[], object], run_fine: Callable[[], object], runs: int, warmup: int, device: torch.device
) -> dict[str, float]:
    """Latency of +FINE over the baseline from ``runs`` alternating pairs (order flipped every pair)."""

    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.no_grad():
        for _ in range(warmup):
            run_base(), run_fine()
        base, fine = [], []
        for i in range(runs):
            if i % 2:
                fine.append(timed(run_fine))
                base.append(timed(run_base))
            else:
                base.append(timed(run_base))
                fine.append(timed(run_fine))
    ratios = [f / b for f, b in zip(fine, base, strict=True)]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if runs > 1 else (ratios[0],) * 3
    return dict(
        base_ms=1e3 * statistics.median(base),
        fine_ms=1e3 * statistics.median(fine),
        ratio=statistics.median(ratios),
        ratio_q1=q1,
        ratio_q3=q3,
        ratio_min=min(ratios),
        ratio_max=max(ratios),
    )


def bench(
    name: str, size: tuple[int, int], options: list[str], runs: int, warmup: int, fused: bool, device: torch.device
) -> dict[str, dict[str, float]]:
    """Per option: +params, +MACs, peak memory (whole model and FINE's own), alternating latency ratios."""
    base_params, base_macs = counts(name, None, size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)
    results: dict[str, dict[str, float]] = {"baseline": dict(params=base_params, macs=base_macs)}
    for attention in options:
        params, macs = counts(name, attention, size)
        base, fine = build_pair(name, attention, fused, device)
        if "model_mb" not in results["baseline"]:
            results["baseline"].update(peak_memory(base, x))
        mem = peak_memory(fine, x)
        results[attention] = dict(
            params=params - base_params,
            macs=macs - base_macs,
            **mem,
            added_mb=mem["model_mb"] - results["baseline"]["model_mb"],
            **alternating_ratios(lambda b=base: b(x), lambda f=fine: f(x), runs, warmup, device),
        )
        if "cuda_mb" in mem:
            results[attention]["added_cuda_mb"] = mem["cuda_mb"] - results["baseline"]["cuda_mb"]
        del base, fine
    return results


def _parse_size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) not in (1, 2) or min(parts) < 32:
        raise argparse.ArgumentTypeError(f"--size takes N or HxW with sides of at least 32, got {text!r}")
    return (parts[0], parts[-1])


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="rt_detr_r18", help="a registered detector that takes fine= (default rt_detr_r18)"
    )
    parser.add_argument("--size", type=_parse_size, default=(640, 640), help="HxW or N (default 640, Table 3's)")
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=OPTIONS)
    parser.add_argument("--runs", type=int, default=20, help="alternating pairs per option (default 20)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fused", action="store_true", help="scaled_dot_product_attention in FINE")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    h, w = args.size
    print(f"msfusion {mf.__version__}, torch {torch.__version__}, {where}")
    print(
        f"{args.model} at {h}x{w}, batch 1, the network alone; FINE at the two top-down fusions, "
        f"{'fused' if args.fused else 'unfused (materialised)'} softmax attention; {args.runs} alternating pairs"
    )
    res = bench(args.model, args.size, args.options, args.runs, args.warmup, args.fused, device)
    base = res["baseline"]
    cuda = "cuda_mb" in base
    print(
        f"baseline: {base['params'] / 1e6:.3f} M params, {2 * base['macs'] / 1e9:.2f} GFLOPs, "
        f"peak {base['model_mb']:.1f} MB of tensors" + (f", {base['cuda_mb']:.1f} MB allocated" if cuda else "")
    )
    print(
        f"{'option':<9}{'+M':>7}{'+GFLOPs':>9}{'peak MB':>9}{'+MB':>9}{'FINE MB':>9}"
        + (f"{'+MB cuda':>10}" if cuda else "")
        + f"{'base ms':>9}{'FINE ms':>9}{'ratio':>7}{'quartiles':>14}{'min-max':>13}   paper: +GFLOPs +MB ratio"
    )
    for name in args.options:
        r = res[name]
        paper = PAPER[name]
        quartiles, spread = f"{r['ratio_q1']:.3f}-{r['ratio_q3']:.3f}", f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}"
        print(
            f"{name:<9}{r['params'] / 1e6:>7.3f}{2 * r['macs'] / 1e9:>9.2f}{r['model_mb']:>9.1f}{r['added_mb']:>9.2f}"
            f"{r['fine_mb']:>9.2f}"
            + (f"{r['added_cuda_mb']:>10.2f}" if cuda else "")
            + f"{r['base_ms']:>9.1f}{r['fine_ms']:>9.1f}{r['ratio']:>7.3f}"
            f"{quartiles:>14}{spread:>13}"
            f"   {paper[0]:>6.1f} {paper[1]:>8.2f} {paper[2] / PAPER_BASE_MS:.3f}"
        )
    if "aats" in res and "vanilla" in res:
        a, v = res["aats"], res["vanilla"]
        print(
            f"AATS vs vanilla: {100 * (a['macs'] / v['macs'] - 1):+.1f}% added compute, "
            f"{a['added_mb']:+.2f} MB whole-model peak memory (vanilla {v['added_mb']:+.2f} MB), "
            f"{100 * (a['fine_mb'] / v['fine_mb'] - 1):+.1f}% FINE's own memory "
            "(paper: -93.3% compute, -99.9% memory)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "size": [h, w], "device": where, "results": res}, f, indent=2)
    return res


if __name__ == "__main__":
    main()
