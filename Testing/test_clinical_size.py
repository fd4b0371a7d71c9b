"""Issue 17, images of clinical size: memory is estimated before the work; the work grid is coarsened where the usual
one would not fit (and the report says so); a registration that cannot fit is refused with the memory needed, the
memory available and what to do. The sizes themselves (a 512×512×400 CT, a 0.6 mm brain) are measured by
benchmarks/clinical_size.py; its quick mode runs here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from metareg.core import memory
from metareg.core.errors import InputError, RegistrationWarning
from metareg.core.registration import ITERATIVE_MAX_VOXELS, register
from test_cli_errors import blobs

GB = 2**30


def test_a_registration_that_fits_changes_nothing():
    plan = memory.plan(3, 10**6, 10**6, True, available=8 * GB, gpu_free=None)
    assert plan.work_max_voxels is None and plan.note == ""
    assert plan.needed_bytes == 10**6 * (memory.FIXED_BYTES_PER_VOXEL[3] + memory.WORK_BYTES_PER_VOXEL[3]) \
        + memory.MARGIN_BYTES


def test_the_work_grid_is_coarsened_to_fit():
    fixed_voxels, work_voxels = 105 * 10**6, ITERATIVE_MAX_VOXELS[3]
    fixed_part = memory.FIXED_BYTES_PER_VOXEL[3] * fixed_voxels + memory.MARGIN_BYTES
    available = fixed_part + 400 * 2**20  # room for 400 MB of work only
    plan = memory.plan(3, fixed_voxels, work_voxels, True, available=available, gpu_free=None)
    assert plan.work_max_voxels == 400 * 2**20 // memory.WORK_BYTES_PER_VOXEL[3] < work_voxels
    assert plan.note.startswith(f"the work grid of the iterative method was coarsened from {work_voxels} to at most "
                                f"{plan.work_max_voxels} voxels to fit the memory available")
    assert plan.needed_bytes <= available


def test_a_registration_that_cannot_fit_is_refused_with_numbers_and_what_to_do():
    with pytest.raises(InputError) as raised:
        memory.plan(3, 105 * 10**6, ITERATIVE_MAX_VOXELS[3], True, available=2 * GB, gpu_free=None)
    message = str(raised.value)
    assert message.startswith("fixed: registering this 105000000-voxel image needs about ")
    assert "GB of memory, and 2.0 GB are available (free memory (close other programs), or crop or downsample" \
        in message
    with pytest.raises(InputError, match="needs about .* GB of memory, and 0.0 GB are available"):
        memory.plan(2, 4000 * 3000, 512 * 512, False, available=0, gpu_free=None)  # a network alone: no work grid


def test_on_a_gpu_the_work_grid_fits_its_free_memory():
    plan = memory.plan(3, 10**6, 2 * 10**6, True, available=16 * GB, gpu_free=memory.MARGIN_BYTES + 300 * 2**20)
    assert plan.work_max_voxels == 300 * 2**20 // memory.WORK_BYTES_PER_VOXEL[3]
    assert "to fit the GPU's free memory" in plan.note
    with pytest.raises(InputError, match="of memory on the GPU, and .* are available .*or run it with device='cpu'"):
        memory.plan(3, 10**6, 2 * 10**6, True, available=16 * GB, gpu_free=memory.MARGIN_BYTES)


def test_available_memory_is_read_from_the_machine():
    available = memory.available_memory_bytes()
    assert available is not None and 0 < available < 2**50


def _pair(size=(64, 56, 48)):
    return blobs(size, (1.0, 1.0, 1.0)), blobs(size, (1.0, 1.0, 1.0), 2.0)


def test_register_coarsens_its_work_grid_and_says_so(monkeypatch):
    fixed, moving = _pair()
    voxels = int(np.prod(fixed.GetSize()))
    room = 20_000 * memory.WORK_BYTES_PER_VOXEL[3]  # about 20 000 work voxels instead of the image's 172 032
    monkeypatch.setattr(memory, "available_memory_bytes",
                        lambda: memory.FIXED_BYTES_PER_VOXEL[3] * voxels + memory.MARGIN_BYTES + room)
    monkeypatch.setattr(memory, "MIN_WORK_VOXELS", {2: 100, 3: 1000})
    with pytest.warns(RegistrationWarning, match="the work grid of the iterative method was coarsened"):
        result = register(fixed, moving, device="cpu")
    assert int(np.prod(result.report.model_grid["size"])) <= 20_000 * 1.1
    assert result.report.memory["work_max_voxels"] == 20_000
    assert any("coarsened" in warning for warning in result.report.warnings)
    assert result.field.GetSize() == fixed.GetSize()  # the outputs stay on the fixed grid


_REGISTER_UNDER_A_MEMORY_LIMIT = """
import resource, sys
from metareg.app.cli import main
in_use = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (in_use + 300 * 2**20, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_registration_too_large_for_the_memory_limit_is_refused_before_the_work(tmp_path):
    """A real limit (address space 300 MB above what the process uses: room to read the two 52 MB inputs) and a
    256×256×200 pair: refused before any work, with the memory needed and available; nothing written."""
    rng = np.random.default_rng(0)
    for name in ("fixed", "moving"):
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((200, 256, 256)).astype(np.float32)),
                        str(tmp_path / f"{name}.nii"))
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-c", _REGISTER_UNDER_A_MEMORY_LIMIT, "register",
                           "--fixed", str(tmp_path / "fixed.nii"), "--moving", str(tmp_path / "moving.nii"),
                           "--warped", str(out / "warped.nii.gz"), "--quiet"], capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"metareg register: error: --fixed {tmp_path / 'fixed.nii'}: registering this "
                               "13107200-voxel image needs about ")
    assert "GB are available (free memory (close other programs), or crop or downsample the images" in lines[0]
    assert list(out.iterdir()) == []


@pytest.mark.bench
def test_the_clinical_size_benchmark_quick_mode_writes_a_sane_table(tmp_path):
    """python -m benchmarks.clinical_size --quick as a user runs it (small stand-ins of both sizes): every row
    registered (the known warp's TRE falls), memory measured and estimated. No timing is asserted."""
    import csv
    import json

    from conftest import run_benchmark

    run_benchmark("clinical_size", "--quick", "--threads", "1", "--out-dir", str(tmp_path))
    rows = json.loads((tmp_path / "clinical-size-quick.json").read_text())["rows"]
    assert [(row["pair"], row["method"]) for row in rows] == [
        (pair, method) for pair in ("ct-sized-quick", "brain-2.4mm")
        for method in ("brain-mr-3d-reptile (card defaults)", "iterative (defaults)")]
    assert rows[0]["size"] == "96×96×76" and rows[2]["spacing_mm"] == "2.40×2.40×2.40"
    for row in rows:
        assert row["tre_after_mm"] < 0.5 * row["tre_before_mm"], row
        assert 100 < row["peak_mib"] < 16000 and row["estimate_mib"] > 0
        assert row["command_s"] >= row["register_s"] > 0
    with open(tmp_path / "clinical-size-quick.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert "peak_mib" in (tmp_path / "clinical-size-quick.md").read_text()
