"""SegNeXt-T/-S inference latency on CPU at 512x512, per execution mode, in one run.

Prints, per model: the median over >= 10 timed runs (after warm-up) for fp32
eager, channels_last, bf16 autocast and torch.compile, each as a ratio to fp32
eager, with each mode's largest output difference from fp32 eager (absolute, and
relative to the largest fp32 logit).

    python benchmarks/bench_segnext.py                 # T and S, 512x512, all modes
    python benchmarks/bench_segnext.py --models segnext_t --runs 20 --threads 2
"""

from __future__ import annotations

import argparse
import json

import torch

import msfusion as mf
from msfusion.analysis.benchmark import MODES, benchmark_modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["segnext_t", "segnext_s"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{args.size}x{args.size}")
    all_results = {}
    for name in args.models:
        torch.manual_seed(0)
        model = mf.create_model(name).eval()
        results = benchmark_modes(model, (1, 3, args.size, args.size), args.modes, args.runs, args.warmup)
        all_results[name] = results
        print(f"\n{name}")
        print(f"  {'mode':<22}{'median ms':>10}{'min ms':>9}{'vs fp32':>9}{'max |diff|':>12}{'rel':>10}")
        for r in results:
            print(
                f"  {r['mode']:<22}{r['median_ms']:>10.1f}{r['min_ms']:>9.1f}"
                f"{r['speedup']:>8.2f}x{r['max_abs_diff']:>12.2e}{r['max_rel_diff']:>10.1e}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=2)


if __name__ == "__main__":
    main()
