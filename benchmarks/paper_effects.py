"""Do the papers' effects show? The trained ablation benchmark behind ``msfusion effects``.

For each paper (FINE, MSCSA, CEDNet, SegNeXt) this trains matched pairs, with
and without the paper's module, through msfusion's own training engine on the
hard variant of the embedded shapes data, and reports per pair: both arms'
parameters, multiply-adds and per-seed scores, the paired difference with its
95 % t-interval, and a verdict in words. See ``msfusion.analysis.effects`` for
the pairs, the recipe and the statistics.

    python benchmarks/paper_effects.py --out effects_full              # 3 seeds, <= 60 min on 2 CPU cores
    python benchmarks/paper_effects.py --quick --out effects_quick     # 1 seed, a few minutes
    python benchmarks/paper_effects.py --only fine,segnext --seeds 5 --out effects_fine
    python benchmarks/paper_effects.py --device cuda --out effects_gpu  # more steps and seeds

It takes the arguments of ``msfusion effects`` (``--help``); an interrupted
run resumes from the models already trained in ``OUT/runs``.
"""

from __future__ import annotations

import sys

from msfusion.cli import main

if __name__ == "__main__":
    sys.exit(main(["effects", *sys.argv[1:]]))
