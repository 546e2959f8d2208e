"""Memory saved by gradient checkpointing (``train.grad_checkpointing``), and what it costs in time.

For each model, one training step (forward, cross-entropy, backward) on a
random batch, with the backbone's ``set_grad_checkpointing`` off and on. On
CUDA the peak is ``torch.cuda.max_memory_allocated`` over the step; on the CPU
it is the growth of the process's peak resident memory (``ru_maxrss``), each
setting measured in a fresh subprocess so that one cannot hide the other. The
time is the median of ``--runs`` steps after one warm-up step.

    python benchmarks/bench_grad_checkpointing.py                      # CPU, small inputs
    python benchmarks/bench_grad_checkpointing.py --device cuda --size 512 --batch 8

Measured on one H200 (torch 2.11, fp32, 8x3x512x512, 19 classes):
SegNeXt-B peak 11199 MB -> 2295 MB (80% less) for 1.23x the step time;
UperNet-CEDNet-NeXt-T 11831 MB -> 7971 MB (33% less; the UperNet head, not
checkpointed, holds most of the rest) for 1.11x. On 2 CPU cores at 2x3x256x256:
SegNeXt-T 412 -> 206 MB resident growth, UperNet-CEDNet-NeXt-T 982 -> 864 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _step(name: str, size: int, batch: int, device: str, enable: bool, runs: int) -> dict:
    import torch

    import msfusion as mf

    torch.manual_seed(0)
    model = mf.create_model(name, num_classes=19).to(device).train()
    model.backbone.set_grad_checkpointing(enable)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 19, (batch, size, size), device=device)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def once() -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = [once() for _ in range(runs)]
    if device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024  # KiB on Linux
    return {"model": name, "checkpointing": enable, "peak_mb": peak_mb, "step_ms": 1e3 * statistics.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["segnext_t", "upernet_cednet_next_t"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "ON"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, on = args.worker
        print(json.dumps(_step(name, args.size, args.batch, args.device, on == "1", args.runs)))
        return
    common = ["--size", str(args.size), "--batch", str(args.batch), "--runs", str(args.runs), "--device", args.device]
    print(f"one training step at {args.batch}x3x{args.size}x{args.size} on {args.device}")
    print(f"  {'model':<24}{'peak MB off':>12}{'peak MB on':>12}{'saved':>8}{'time on/off':>13}")
    for name in args.models:
        rows = []
        for on in ("0", "1"):
            out = subprocess.run(
                [sys.executable, __file__, "--worker", name, on, *common], capture_output=True, text=True, check=True
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        off, on_ = rows
        saved = 1 - on_["peak_mb"] / off["peak_mb"]
        ratio = on_["step_ms"] / off["step_ms"]
        print(f"  {name:<24}{off['peak_mb']:>12.0f}{on_['peak_mb']:>12.0f}{saved:>8.0%}{ratio:>12.2f}x")


if __name__ == "__main__":
    main()
