#!/usr/bin/env bash
# Installs the peers the benchmarks compare against (benchmark-only; not runtime dependencies of metareg):
#   - elastix 5.0.1 and transformix from Debian (apt-get install elastix)
#   - antspyx (ANTs' Python package, pinned) into the project's .venv
#   - voxelmorph + neurite (PyTorch backend, pinned) into the project's .venv, with the torch already there
# Idempotent: when everything is present at the pinned versions it only checks and returns (a second or so).
# The venv is the one ./run creates (<repo>/.venv), or $METAREG_VENV when set.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${METAREG_VENV:-$repo/.venv}"
py="$venv/bin/python"

ANTSPYX_VERSION="0.6.3"
VOXELMORPH_VERSION="0.3.4"
NEURITE_VERSION="0.3.4"

if [ ! -x "$py" ]; then
    echo "[bench-setup] no Python at $py: run ./run test (or ./run demo) once to create the venv" >&2
    exit 2
fi

# ---- elastix (Debian) ----
if ! command -v elastix >/dev/null 2>&1 || ! command -v transformix >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "[bench-setup] installing elastix (Debian)"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -qq --no-install-recommends elastix >/dev/null 2>&1; then
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends elastix >/dev/null
        fi
    else
        echo "[bench-setup] elastix is missing and cannot be installed here (needs apt-get as root)" >&2
        exit 1
    fi
fi

# ---- antspyx and voxelmorph (PyPI, pinned) ----
have_pinned() {
    "$py" - "$ANTSPYX_VERSION" "$VOXELMORPH_VERSION" "$NEURITE_VERSION" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
want = dict(zip(("antspyx", "voxelmorph", "neurite"), sys.argv[1:]))
try:
    sys.exit(0 if all(version(name) == v for name, v in want.items()) else 1)
except PackageNotFoundError:
    sys.exit(1)
EOF
}
if ! have_pinned; then
    # keep the torch that is there (the project's pinned CPU build): voxelmorph and neurite only ask for "torch"
    torch_version="$("$py" -c 'from importlib.metadata import version; print(version("torch"))')"
    echo "[bench-setup] installing antspyx==$ANTSPYX_VERSION voxelmorph==$VOXELMORPH_VERSION (torch $torch_version kept)"
    "$py" -m pip install --quiet "antspyx==$ANTSPYX_VERSION" "voxelmorph==$VOXELMORPH_VERSION" \
        "neurite==$NEURITE_VERSION" "torch==$torch_version"
    have_pinned
    # voxelmorph must import on its PyTorch backend, without tensorflow
    "$py" -c 'import ants, voxelmorph.nn.models, sys; sys.exit("tensorflow" in sys.modules)'
fi
echo "[bench-setup] elastix $(elastix --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1), antspyx $ANTSPYX_VERSION, voxelmorph $VOXELMORPH_VERSION (PyTorch): ready"
