#!/usr/bin/env bash
# The reference environment for benchmarks/bench_vs_mmseg.py: mmsegmentation 1.2.2 (SegNeXt) from PyPI,
# with the torch version of the environment you run msfusion in, so both sides use the same kernels.
#
#   bash benchmarks/make_refenv.sh [VENV]      # default VENV=/tmp/refenv, about 2-6 minutes
#
# mmcv-lite is used: it has no compiled mmcv.ops, which SegNeXt does not need; the benchmark's worker
# stubs the one op mmseg imports at import time.
set -euo pipefail
VENV=${1:-/tmp/refenv}
TORCH=$(python -c "import torch; print(torch.__version__.split('+')[0])")
TORCHVISION=$(python -c "import torchvision; print(torchvision.__version__.split('+')[0])")
python3 -m venv "$VENV"
. "$VENV/bin/activate"
pip install "torch==$TORCH" "torchvision==$TORCHVISION"
# mmcv's setup imports pkg_resources, which newer setuptools no longer ships.
pip install "setuptools<81" wheel psutil
pip install mmengine==0.10.7 mmsegmentation==1.2.2 mmcv-lite==2.1.0 ftfy regex
python -c "import torch, mmengine, mmseg; print('torch', torch.__version__, 'mmseg', mmseg.__version__)"
