#!/usr/bin/env bash
# Check that the lower bounds in pyproject.toml work: build a virtual environment with exactly the lowest
# version each dependency allows (">=X" becomes "==X") and run the test suite in it.
#
#   bash tools/check_lower_bounds.sh [VENV]     # default VENV=/tmp/msfusion-lowenv; Python >= 3.11 (tomllib)
#
# Stage 1: the library's dependencies, the [export] extra and the test tools (pytest, torchmetrics, ruff),
#          all at their lower bounds; the whole suite runs (the [detr] / [ultralytics] tests skip).
# Stage 2: adds the [detr] and [ultralytics] extras at their lower bounds. These need newer versions of
#          some stage-1 pins (transformers: huggingface_hub, safetensors; scipy: numpy); each such pin is
#          raised to the lowest version the extras accept, and the test files that name the extras run.
#
# PyPI's torch wheels for Linux x86_64 are CUDA builds (a few GB with the nvidia-* packages); they run on
# the CPU. Environment variables: PYTHON (interpreter for the venv, default python3), PYTEST_ARGS (extra
# pytest arguments, e.g. "-x"), STAGES ("1 2" by default; "1" or "2" runs one stage in an existing VENV).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-/tmp/msfusion-lowenv}
STAGES=${STAGES:-1 2}
LATE_EXTRAS="detr ultralytics"
# The tests that use the late extras: every test file that names them.
STAGE2_TESTS=$(cd "$ROOT" && grep -lE "detr|yolo|ultralytics|transformers" tests/test_*.py tests/*/test_*.py | tr "\n" " ")

[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q -U pip

# The pins: pyproject's ">=X" as "==X" for the library and the extras pulled in by [test], the extras in
# LATE_EXTRAS only in stage 2. With --raise, a pin below what another pinned package requires (read from
# that package's metadata on PyPI) is lifted to that requirement's lower bound.
pins() {
    "$PY" - "$ROOT/pyproject.toml" "$LATE_EXTRAS" "$@" <<'EOF'
import json, re, subprocess, sys, tempfile, tomllib
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # a fresh venv: the copy pip vendors
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

pyproject, late, stage, do_raise = sys.argv[1], sys.argv[2].split(), sys.argv[3], "--raise" in sys.argv
project = tomllib.load(open(pyproject, "rb"))["project"]
extras = project["optional-dependencies"]


def expand(reqs, seen):
    """Requirement strings, the project's own extras (msfusion[x]) replaced by their requirements."""
    for text in reqs:
        req = Requirement(text)
        if canonicalize_name(req.name) == canonicalize_name(project["name"]):
            for extra in sorted(req.extras - seen):
                if stage == "1" and extra in late:
                    continue
                seen.add(extra)
                yield from expand(extras[extra], seen)
        else:
            yield req


if stage == "late-names":  # the late extras' packages, which stage 1 removes from a reused VENV
    sys.exit(print(" ".join(Requirement(r).name for extra in late for r in extras[extra])))

pins = {}
for req in expand(project["dependencies"] + ["msfusion[test]"], set()):
    lower = [s.version for s in req.specifier if s.operator == ">="]
    if not lower:
        sys.exit(f"pyproject.toml: {req} has no lower bound (>=); every dependency needs one")
    pins[canonicalize_name(req.name)] = (req.name, lower[0])

changed = do_raise
while changed:  # until no pin is below another pinned package's requirement
    changed = False
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--no-deps", "--ignore-installed"]
        args += ["--report", f"{tmp}/report.json"] + [f"{n}=={v}" for n, v in pins.values()]
        subprocess.run(args, check=True)
        report = json.load(open(f"{tmp}/report.json"))
    for item in report["install"]:
        meta = item["metadata"]
        for text in meta.get("requires_dist") or []:
            req = Requirement(text)
            key = canonicalize_name(req.name)
            if key not in pins or (req.marker and not req.marker.evaluate({"extra": ""})):
                continue
            name, version = pins[key]
            if Version(version) in req.specifier:
                continue
            lower = [s.version for s in req.specifier if s.operator == ">="]
            if not lower or Version(lower[0]) not in req.specifier:
                sys.exit(f"cannot raise {name}=={version} to satisfy {meta['name']} {meta['version']}: {req}")
            print(f"raised {name} {version} -> {lower[0]} ({meta['name']} {meta['version']} needs {req})", file=sys.stderr)
            pins[key], changed = (name, lower[0]), True
print(" ".join(f"{n}=={v}" for n, v in pins.values()))
EOF
}

install() {  # $1: the stage; the rest: pins' flags
    local stage=$1
    shift
    local spec
    spec=$(pins "$stage" "$@")
    echo "== stage $stage pins: $spec"
    # shellcheck disable=SC2086  # the pins are separate words
    "$PY" -m pip install -q $spec
    "$PY" -m pip install -q --no-deps -e "$ROOT"
    "$PY" -m pip check || echo "(pip check reports the conflicts above)"
}

cd "$ROOT"
for stage in $STAGES; do
    if [ "$stage" = 1 ]; then
        # shellcheck disable=SC2046  # names as separate words
        "$PY" -m pip uninstall -q -y $(pins late-names) 2>/dev/null || true  # left by an earlier stage 2
        install 1
        # shellcheck disable=SC2086
        time "$PY" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-}
    else
        install 2 --raise
        # shellcheck disable=SC2086
        time "$PY" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} $STAGE2_TESTS
    fi
done
echo "lower bounds checked: stages $STAGES passed in $VENV"
