"""msfusion against mmsegmentation 1.2.2, side by side: SegNeXt inference and training step.

In one run, per model (SegNeXt-T and -S by default): mmsegmentation's own
SegNeXt (built from its ADE20K config, in its own virtual environment) and
msfusion's, with the same weights (mmseg's initialisation with random
BatchNorm statistics, loaded into ours through the official-checkpoint
converter), the same input, the same NMF bases (mmseg draws them from the
global RNG at every call; both sides use the draw of one seed), and the same
thread count. Every subject (library x mode) is its own process
(``bench_worker.py``); single runs alternate between them, so load from other
processes hits all subjects alike. Reported: min and median of ``--runs``
timed runs after ``--warmup`` runs, the ratio of mmseg's time to each mode's,
and the largest absolute output difference from mmseg's output and from
msfusion's fp32 eager output.

- inference: 1x3xHxW (default 512x512), logits upsampled to HxW (mmseg's
  ``EncoderDecoder.inference``, whole mode);
- training step: batch 2 of 512x512 crops, forward, cross-entropy loss,
  backward, AdamW step with the official parameter groups (mmseg:
  ``EncoderDecoder.train_step`` without its data preprocessor; msfusion:
  ``Trainer.train_step``). The output check compares the first step's logits
  and loss in train mode (DropPath and dropout off, same NMF bases);
- data pipeline (``--tasks data``, model-independent): the ADE20K training
  transforms over the same 8 decoded images (512x683 and 683x512) to 512x512
  crops: mmseg's pipeline (ending in uint8 tensors), mmseg's pipeline plus its
  model's data preprocessor (BGR to RGB, normalise, pad: the steps msfusion's
  transforms end with), and msfusion's; also as images per CPU second, which
  load from other processes disturbs less. ``--threads 1`` is the setting of
  DataLoader workers (one torch thread each; mmengine's default environment
  runs OpenCV without threads).

The reference environment is built by ``benchmarks/make_refenv.sh`` (about
2-6 minutes; mmcv-lite suffices, SegNeXt uses no compiled mmcv op)::

    bash benchmarks/make_refenv.sh /work/refenv/venv   # torch as in msfusion's environment

Usage::

    python benchmarks/bench_vs_mmseg.py --refenv /work/refenv/venv
    MSFUSION_REFENV=/work/refenv/venv python benchmarks/bench_vs_mmseg.py --models segnext_t --runs 20
    python benchmarks/bench_vs_mmseg.py --tasks infer --device cuda --size 768x1536 --num-classes 19

Without a reference environment the script says how to build one and still
times msfusion's own modes (ratios then relative to msfusion fp32 eager).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "bench_worker.py"
REFENV_VAR = "MSFUSION_REFENV"
BUILD_HINT = (
    "no mmsegmentation reference environment: give --refenv VENV or set {var}=VENV, a virtual environment "
    "with mmsegmentation 1.2.2, mmcv(-lite) 2.1.0 and mmengine 0.10.7. Build one in about 2 minutes:\n"
    "    python3 -m venv VENV && . VENV/bin/activate\n"
    "    pip install torch=={torch} torchvision setuptools==80.9.0 wheel\n"
    "    pip install mmengine==0.10.7 mmsegmentation==1.2.2 mmcv-lite==2.1.0 ftfy regex\n"
    "Timing msfusion's own modes only (ratios are to msfusion fp32 eager)."
)
CPU_INFER_MODES = ("fp32", "channels_last", "bf16", "fast_nokeep", "fast", "fast_compile")
CUDA_INFER_MODES = ("fp32", "channels_last", "fp16", "bf16", "fast", "fast_compile")
TRAIN_MODES = ("fp32", "fast", "fast_compile")
DEFAULT_TRAIN_MODES = ("fp32", "fast")  # fast_compile: inductor on forward and backward, minutes to compile
DATA_IMAGES = 8  # images per timed data-pipeline run
# Not float32-exact: reported, never counted as the "best exact mode".
REDUCED_PRECISION = ("bf16", "fp16")
# SegNeXt paper, Sec. 4 "Comparison with real-time methods" and Table 11: SegNeXt-T runs at 25 FPS on one
# RTX 3090 at 768x1536 (Cityscapes), without any specific acceleration.
PAPER_FPS = {"segnext_t": 25.0}


def parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"size must be N or HxW, e.g. 512 or 768x1536, got {text!r}") from None
    if h < 32 or w < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return h, w


def find_refenv(given: str | None) -> tuple[Path | None, str]:
    """The reference environment's python, or None with the reason."""
    root = given or os.environ.get(REFENV_VAR)
    if not root:
        return None, BUILD_HINT.format(var=REFENV_VAR, torch=torch.__version__.split("+")[0])
    python = Path(root) / "bin" / "python"
    if not python.exists():
        return None, f"{python} does not exist; " + BUILD_HINT.format(
            var=REFENV_VAR, torch=torch.__version__.split("+")[0]
        )
    probe = subprocess.run(
        [str(python), "-c", "import mmseg, mmengine, torch; print(mmseg.__version__, torch.__version__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return None, f"{python} cannot import mmseg ({probe.stderr.strip().splitlines()[-1:]}); " + BUILD_HINT.format(
            var=REFENV_VAR, torch=torch.__version__.split("+")[0]
        )
    return python, probe.stdout.strip()


def mode_unsupported(mode: str, device: str) -> str | None:
    """Why a mode cannot run here, or None."""
    if mode == "fp16" and device == "cpu":
        return "fp16 autocast is a CUDA mode"
    if mode == "bf16":
        if device == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return "this CPU has no bf16 support (AVX512-BF16 / AMX)"
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16 support"
    return None


class Subject:
    """A worker process: one library, one mode, one task."""

    def __init__(self, name: str, python: str, args: list[str], log: Path) -> None:
        self.name = name
        # The worker's chatter goes to a file: a full stderr pipe would block it.
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [python, str(WORKER), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=str(HERE.parent),
            )
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.error: str | None = None
        self.info: dict[str, Any] = {}

    def read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            err = self.log.read_text().strip()[-2000:]
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}: {err}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"{self.name}: {msg['error']}")
        return msg

    def ready(self) -> None:
        self.info = self.read()["info"]

    def ask(self, **cmd: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def make_data(path: Path, size: tuple[int, int], num_classes: int) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = size
    labels = torch.randint(0, num_classes, (2, h, w), generator=g)
    labels[:, : h // 16] = 255  # an ignored band, as padding gives in real crops
    # Data-pipeline inputs: ADE20K-sized images (512 px short side) with blocky label maps.
    raw_images, raw_masks = [], []
    for i in range(DATA_IMAGES):
        rh, rw = (512, 683) if i % 2 == 0 else (683, 512)
        raw_images.append(torch.randint(0, 256, (rh, rw, 3), generator=g, dtype=torch.uint8))
        blocks = torch.randint(0, num_classes, (rh // 32 + 1, rw // 32 + 1), generator=g, dtype=torch.uint8)
        raw_masks.append(blocks.repeat_interleave(32, 0).repeat_interleave(32, 1)[:rh, :rw].contiguous())
    torch.save(
        {
            "image": torch.randn(1, 3, h, w, generator=g),
            "images": torch.randn(2, 3, h, w, generator=g),
            "labels": labels.to(torch.uint8),
            "raw_images": raw_images,
            "raw_masks": raw_masks,
        },
        path,
    )


def make_own_weights(path: Path, model_name: str, num_classes: int) -> None:
    """Without mmseg: msfusion's initialisation with random BatchNorm statistics, saved in our format."""
    import msfusion as mf

    torch.manual_seed(0)
    model = mf.create_model(model_name, num_classes=num_classes)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    mf.save_checkpoint(model, path)


def run_task(
    task: str, model: str, modes: list[str], refenv: Path | None, args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    size = args.size if task == "infer" else args.train_size
    if task == "data":
        modes = ["fp32"]  # one pipeline per library
    data = tmp / f"data_{task}_{size[0]}x{size[1]}.pt"
    make_data(data, size, args.num_classes)
    common = ["--model", model, "--task", task, "--threads", str(args.threads), "--data", str(data)]
    common += ["--num-classes", str(args.num_classes), "--device", args.device]
    subjects: list[Subject] = []
    skipped: list[dict[str, Any]] = []
    try:
        if refenv is not None:
            weights = tmp / f"{model}_mmseg.pth"
            ref = Subject(
                "mmseg fp32",
                str(refenv),
                ["--library", "mmseg", "--save-weights", str(weights), *common],
                tmp / f"{model}_{task}_mmseg.log",
            )
            ref.ready()
            subjects.append(ref)
            if task == "data":
                # mmseg's pipeline stops at uint8 tensors; msfusion's also normalises and pads, which mmseg
                # does in its model's data preprocessor. This subject adds it, for the same output.
                full = Subject(
                    "mmseg +preprocessor",
                    str(refenv),
                    ["--library", "mmseg", "--mode", "preprocess", "--weights", str(weights), *common],
                    tmp / f"{model}_{task}_mmseg_preprocess.log",
                )
                full.ready()
                subjects.append(full)
        else:
            weights = tmp / f"{model}_own.safetensors"
            make_own_weights(weights, model, args.num_classes)
        for mode in modes:
            why = mode_unsupported(mode, args.device)
            if why:
                skipped.append({"subject": f"msfusion {mode}", "skipped": why})
                continue
            s = Subject(
                f"msfusion {mode}",
                sys.executable,
                ["--library", "msfusion", "--mode", mode, "--weights", str(weights), *common],
                tmp / f"{model}_{task}_{mode}.log",
            )
            try:
                s.ready()
            except RuntimeError as err:
                skipped.append({"subject": s.name, "skipped": str(err)})
                s.close()
                continue
            subjects.append(s)
        # Output check (first: training checks need the initial weights); then warm-up (compiles).
        outputs = {}
        for s in list(subjects):
            path = tmp / f"out_{task}_{s.name.replace(' ', '_')}.pt"
            try:
                s.ask(cmd="output", path=str(path))
                for _ in range(args.warmup):
                    s.ask(cmd="run")
            except RuntimeError as err:
                if s is subjects[0]:
                    raise
                skipped.append({"subject": s.name, "skipped": str(err)})
                s.close()
                subjects.remove(s)
                continue
            outputs[s.name] = torch.load(path, weights_only=True)
        print(f"  timing {len(subjects)} subjects, {args.runs} alternating runs ...", flush=True)
        for r in range(args.runs):
            # Rotate the order so that no subject always runs right after the same neighbour.
            for s in subjects[r % len(subjects) :] + subjects[: r % len(subjects)]:
                reply = s.ask(cmd="run")
                s.times.append(reply["ms"])
                s.cpu_times.append(reply.get("cpu_ms", float("nan")))
    finally:
        for s in subjects:
            s.close()
    baseline = subjects[0]
    own_fp32 = next((s for s in subjects if s.name == "msfusion fp32"), None)
    rows = []
    for s in subjects:
        med, low = statistics.median(s.times), min(s.times)
        row: dict[str, Any] = {
            "subject": s.name,
            "min_ms": low,
            "median_ms": med,
            "speedup_median": statistics.median(baseline.times) / med,
            "speedup_min": min(baseline.times) / low,
            "cpu_median_ms": statistics.median(s.cpu_times),
            "torch": s.info.get("torch"),
        }
        for key in outputs[s.name]:
            if refenv is not None:
                row[f"max_diff_vs_mmseg_{key}"] = _max_diff(outputs[s.name][key], outputs[baseline.name][key])
            if own_fp32 is not None:
                row[f"max_diff_vs_fp32_{key}"] = _max_diff(outputs[s.name][key], outputs[own_fp32.name][key])
        rows.append(row)
    return rows + skipped


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def print_rows(
    title: str, rows: list[dict[str, Any]], reference: str, size: tuple[int, int], model: str, task: str
) -> None:
    print(f"\n{title}")
    key = "logits"
    diff_ref = "vs mmseg" if reference == "mmseg" else "vs fp32"
    print(
        f"  {'subject':<24}{'min ms':>9}{'median ms':>11}{'x (median)':>12}{'x (min)':>9}"
        f"{'max|d| ' + diff_ref:>18}{'max|d| vs own fp32':>20}"
    )
    for r in rows:
        if "skipped" in r:
            print(f"  {r['subject']:<24}not run: {r['skipped']}")
            continue
        d_ref = r.get(f"max_diff_vs_mmseg_{key}", r.get(f"max_diff_vs_fp32_{key}", float("nan")))
        d_own = r.get(f"max_diff_vs_fp32_{key}", float("nan"))
        print(
            f"  {r['subject']:<24}{r['min_ms']:>9.1f}{r['median_ms']:>11.1f}{r['speedup_median']:>11.2f}x"
            f"{r['speedup_min']:>8.2f}x{d_ref:>18.2e}{d_own:>20.2e}"
        )
        if task == "data":
            print(
                f"  {'':<24}{DATA_IMAGES * 1e3 / r['median_ms']:.1f} images/s (median), "
                f"{DATA_IMAGES * 1e3 / r['min_ms']:.1f} (min), {DATA_IMAGES * 1e3 / r['cpu_median_ms']:.1f} "
                "per CPU second (median)"
            )
        if "max_diff_vs_mmseg_loss" in r:
            print(f"  {'':<24}loss |d| vs mmseg: {r['max_diff_vs_mmseg_loss']:.2e}")
    timed = [r for r in rows[1:] if "skipped" not in r and r["subject"].startswith("msfusion")]  # rows[0]: baseline
    exact = [r for r in timed if r["subject"].split()[-1] not in REDUCED_PRECISION]
    if exact:
        best = max(exact, key=lambda r: r["speedup_median"])
        print(
            f"  best float32 mode: {best['subject']}, {best['speedup_median']:.2f}x (median) / "
            f"{best['speedup_min']:.2f}x (min) against {'mmseg fp32' if reference == 'mmseg' else 'msfusion fp32'}"
        )
        if model in PAPER_FPS and size == (768, 1536):
            print(
                f"  {1e3 / best['median_ms']:.1f} FPS at 768x1536 vs the paper's {PAPER_FPS[model]:.0f} FPS "
                "(one RTX 3090, SegNeXt Table 11)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--refenv", default=None, help=f"mmseg virtual environment (default: ${REFENV_VAR})")
    parser.add_argument("--models", nargs="+", default=["segnext_t", "segnext_s"], choices=["segnext_t", "segnext_s"])
    parser.add_argument("--tasks", nargs="+", default=["infer", "train", "data"], choices=["infer", "train", "data"])
    parser.add_argument("--infer-modes", nargs="+", default=None, help="msfusion inference modes")
    parser.add_argument("--train-modes", nargs="+", default=list(DEFAULT_TRAIN_MODES), choices=TRAIN_MODES)
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="inference input, N or HxW")
    parser.add_argument("--train-size", type=parse_size, default=(512, 512), help="training crop, N or HxW")
    parser.add_argument("--num-classes", type=int, default=150)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch here")
    all_modes = CUDA_INFER_MODES if args.device == "cuda" else CPU_INFER_MODES
    infer_modes = args.infer_modes or list(all_modes)
    unknown = sorted(set(infer_modes) - set(CPU_INFER_MODES + CUDA_INFER_MODES))
    if unknown:
        parser.error(
            f"unknown inference modes {unknown}; choose from {sorted(set(CPU_INFER_MODES + CUDA_INFER_MODES))}"
        )

    refenv, note = find_refenv(args.refenv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
        f"load average {load:.2f} on {os.cpu_count()} CPUs"
    )
    print(f"reference: mmseg {note}" if refenv else note)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": args.threads, "reference": note}
    with tempfile.TemporaryDirectory(prefix="bench_vs_mmseg_") as tmpdir:
        for model in args.models:
            for task in args.tasks:
                if task == "data" and model != args.models[0]:
                    continue  # the pipeline does not depend on the model
                modes = infer_modes if task == "infer" else args.train_modes
                size = args.size if task == "infer" else args.train_size
                what = {
                    "infer": f"inference 1x3x{size[0]}x{size[1]}",
                    "train": f"training step, batch 2 x 3x{size[0]}x{size[1]}",
                    "data": f"ADE20K training transforms, {DATA_IMAGES} images of 512x683 -> 512x512 crops",
                }[task]
                print(f"\n{model}, {what}", flush=True)
                start = time.time()
                rows = run_task(task, model, list(modes), refenv, args, Path(tmpdir))
                title = f"{model} {what} ({time.time() - start:.0f} s)"
                print_rows(title, rows, "mmseg" if refenv else "msfusion fp32", size, model, task)
                results[f"{model}/{task}"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
