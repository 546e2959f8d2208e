"""CPU latency of each Table 7 backbone with and without MSCSA, in one run.

MSCSA, arXiv 2308.05872, reports about +15% runtime for the add-on (App. A,
Table 6). For CoaT, MSCSA replaces the parallel blocks, and the paper reports a
much faster model. For each backbone this script prints:

- the median latency of the timm classifier (the baseline);
- the median latency of the ``<backbone>_mscsa`` classifier;
- the ratio of the two;
- the multiply-adds of both, counted with ``msfusion.count_macs``.

Both models of a row are timed in alternation (fp32 eager, after warm-up), so
that load from other processes affects both alike. The script prints the median
and the best of ``--runs`` calls. On a busy machine the best is the steadier
figure.

    python benchmarks/bench_mscsa.py                         # all rows, 224x224, batch 1
    python benchmarks/bench_mscsa.py --models resnet50 pvt_v2_b0 --runs 10 --threads 2
"""

from __future__ import annotations

import argparse
import statistics

import timm
import torch

import msfusion as mf
from msfusion.analysis.benchmark import time_call

# Table 7 row -> the timm model that is the baseline (CoaT: with its parallel blocks).
BASELINES = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "pvt_v2_b0": "pvt_v2_b0",
    "pvt_v2_b1": "pvt_v2_b1",
    "pvt_v2_b2": "pvt_v2_b2",
    "swin_t": "swin_tiny_patch4_window7_224",
    "convnext_t": "convnext_tiny",
    "coat_tiny": "coat_tiny",
    "coat_small": "coat_small",
}


def _alternating_ms(
    models: tuple[torch.nn.Module, torch.nn.Module], x: torch.Tensor, runs: int, warmup: int
) -> list[list[float]]:
    """Per model, ``runs`` latencies in ms, the two models timed turn by turn."""
    times: list[list[float]] = [[], []]
    with torch.inference_mode():
        for model in models:
            time_call(lambda m=model: m(x), 0, warmup, x.device)
        for _ in range(runs):
            for i, model in enumerate(models):
                times[i] += [1e3 * t for t in time_call(lambda m=model: m(x), 1, 0, x.device)]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(BASELINES), choices=list(BASELINES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = (args.batch, 3, args.size, args.size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {'x'.join(map(str, size))}, fp32 eager")
    print(
        f"{'backbone':<12}{'median ms: base':>16}{'+MSCSA':>8}{'ratio':>7}{'best ms: base':>15}{'+MSCSA':>8}"
        f"{'ratio':>7}{'GMACs: base':>13}{'+MSCSA':>8}{'ratio':>7}"
    )
    x = torch.randn(size)
    for row in args.models:
        torch.manual_seed(0)
        base = timm.create_model(BASELINES[row]).eval()
        ours = mf.create_model(f"{row}_mscsa").eval()
        t_base, t_ours = _alternating_ms((base, ours), x, args.runs, args.warmup)
        med_base, med_ours = statistics.median(t_base), statistics.median(t_ours)
        best_base, best_ours = min(t_base), min(t_ours)
        m_base = mf.count_macs(base, size) / 1e9
        m_ours = mf.count_macs(ours, size) / 1e9
        print(
            f"{row:<12}{med_base:>16.1f}{med_ours:>8.1f}{med_ours / med_base:>6.2f}x"
            f"{best_base:>15.1f}{best_ours:>8.1f}{best_ours / best_base:>6.2f}x"
            f"{m_base:>13.3f}{m_ours:>8.3f}{m_ours / m_base:>6.2f}x"
        )
        del base, ours


if __name__ == "__main__":
    main()
