#!/usr/bin/env bash
# Builds, or checks, the venv in which Testing/test_slicer_python.py runs the engine, MetaRegistrationLib and the
# Slicer module under the Python of the oldest 3D Slicer this extension supports: Slicer 5.10, which ships Python 3.12.
#
#   interpreter  $METAREG_SLICER_PYTHON when set, else pyenv's newest 3.12.x ($(pyenv root)/versions/3.12.*),
#                else python3.12 on PATH
#   venv         $METAREG_SLICER_VENV when set, else <repo>/.venv-py312 (git-ignored)
#   packages     what pyproject.toml lists (dependencies + the test and slicer extras), torch first as ./run does.
#                The project itself is not installed: a .pth file puts <repo>/MetaRegistration on sys.path, so the
#                working tree is what runs, and nothing is written into the source tree.
#
# The first run downloads about 3 GB from PyPI and fills about 6 GB: for Python 3.12 there is no CPU build of
# torch 2.13.0 on this machine's disk (that one is for Python 3.11), so pip takes PyPI's, which brings the CUDA
# libraries (nvidia-*, triton: 2.6 GB of the download). The tests use the CPU only. Seen here: 84 s to install at
# ~100 MB/s with no pip cache.
# Later runs: a stamp (sha256 of pyproject.toml, this script and the interpreter's version) says nothing changed,
# and the script only checks (well under a second).
# The last line of stdout is the venv's python. Exit status 3: no Python 3.12 here (the message says how to get one).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${METAREG_SLICER_VENV:-$repo/.venv-py312}"
want_minor="3.12"
say() { echo "[slicer-python] $*" >&2; }

is_wanted() {  # is $1 a working Python $want_minor?
    [ -x "$1" ] && "$1" -c "import sys; sys.exit(sys.version_info[:2] != (${want_minor/./, }))" 2>/dev/null
}

pyenv_root="${PYENV_ROOT:-}"
if [ -z "$pyenv_root" ] && command -v pyenv >/dev/null 2>&1; then pyenv_root="$(pyenv root 2>/dev/null || true)"; fi
[ -n "$pyenv_root" ] || pyenv_root="$HOME/.pyenv"

find_python() {
    if [ -n "${METAREG_SLICER_PYTHON:-}" ]; then
        if is_wanted "$METAREG_SLICER_PYTHON"; then echo "$METAREG_SLICER_PYTHON"; return 0; fi
        say "METAREG_SLICER_PYTHON=$METAREG_SLICER_PYTHON is not a working Python $want_minor"
        return 1
    fi
    local candidate
    # newest patch release first (3.12.10 before 3.12.9)
    for candidate in $(ls -d "$pyenv_root"/versions/"$want_minor".* 2>/dev/null | sort -V -r); do
        if is_wanted "$candidate/bin/python$want_minor"; then echo "$candidate/bin/python$want_minor"; return 0; fi
    done
    candidate="$(command -v "python$want_minor" 2>/dev/null || true)"
    if [ -n "$candidate" ] && is_wanted "$candidate"; then echo "$candidate"; return 0; fi
    return 1
}

if ! python="$(find_python)"; then
    cat >&2 <<EOF
[slicer-python] no Python $want_minor found: 3D Slicer 5.10, the oldest Slicer MetaRegistration supports, runs Python
$want_minor, and the tests check the engine, MetaRegistrationLib and the module under it. Get one, then rerun:
  - with pyenv: pyenv install $want_minor   (looked in $pyenv_root/versions/$want_minor.*)
  - or your system's python$want_minor on PATH
  - or point METAREG_SLICER_PYTHON at a python$want_minor executable
EOF
    exit 3
fi

exec 9<"${BASH_SOURCE[0]}"
flock 9  # one setup at a time

want="$( { sha256sum "$repo/pyproject.toml" "${BASH_SOURCE[0]}" | cut -d' ' -f1; "$python" -VV; } | sha256sum | cut -d' ' -f1)"
stamp="$venv/.metareg-slicer-python-installed"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "pass" 2>/dev/null \
        || [ "$("$venv/bin/python" -VV)" != "$("$python" -VV)" ]; then
    say "creating $venv on $("$python" -V) ($python)"
    "$python" -m venv --clear "$venv"
    rm -f "$stamp"
fi

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing pyproject.toml's dependencies into $venv (first use only: ~3 GB download, ~6 GB on disk)"
    started=$SECONDS
    # pyproject.toml's lists, read with the venv's own tomllib: torch's pin alone, then everything else
    mapfile -t torch_req < <("$venv/bin/python" - "$repo/pyproject.toml" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(*[r for r in project["dependencies"] if re.match(r"torch\b", r)], sep="\n")
EOF
)
    mapfile -t other_reqs < <("$venv/bin/python" - "$repo/pyproject.toml" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
extras = project.get("optional-dependencies", {})
reqs = [r for r in project["dependencies"] if not re.match(r"torch\b", r)] + extras.get("test", []) + extras.get("slicer", [])
print(*reqs, sep="\n")
EOF
)
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    if [ "${#torch_req[@]}" -gt 0 ]; then
        "$venv/bin/python" -m pip install --quiet "${torch_req[@]}"
    fi
    # torch again, so that nothing else moves it off the pin
    "$venv/bin/python" -m pip install --quiet "${other_reqs[@]}" "${torch_req[@]}"
    "$venv/bin/python" -c "import torch, numpy, SimpleITK, safetensors, slicer, vtk, pytest" \
        || { say "the new venv at $venv cannot import what it should"; exit 1; }
    say "installed in $((SECONDS - started)) s ($(du -sh "$venv" | cut -f1) in $venv)"
    echo "$want" > "$stamp"
fi

# The working tree, not an installed copy: <repo>/MetaRegistration on sys.path (metareg, MetaRegistrationLib and
# MetaRegistration.py), and the console script that `pip install` would have written for [project.scripts].
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$repo/MetaRegistration" > "$site/metareg-worktree.pth"
cat > "$venv/bin/metareg" <<EOF
#!$venv/bin/python
import sys
from metareg.app.cli import main
if __name__ == "__main__":
    sys.exit(main())
EOF
chmod +x "$venv/bin/metareg"
say "ready: $("$venv/bin/python" -V) in $venv"
echo "$venv/bin/python"
