"""benchmarks.peers and benchmarks.peers_side_by_side (benchmark protocol 3: peers side by side).

Geometry: every peer runner must return a displacement field on the fixed grid, LPS mm, fixed point ↦ moving point.
Each is checked on a real image (the sample brain slice, and a small brain volume) given an oblique, anisotropic grid,
against a moving image that is the same image with its origin shifted by a known vector ``s``: content at fixed point
``x`` sits at moving point ``x + s``, so the field must be ``s`` inside the image. ANTs' composition of its forward
transforms is also checked against the point map ``x ↦ A(W(x))`` built by hand from its warp ``W`` and affine ``A``,
and the VoxelMorph network's displacement convention against ours.

Smoke test: ``python -m benchmarks.peers_side_by_side --quick`` (2 fundus pairs, 1 brain pair shrunk ×2, tiny
budgets) into a temporary folder; checks the files, the rows and that the numbers are sane (finite, NCC in [-1, 1],
folding in [0, 100] %, every classical peer and our iterative method lowering the TRE). Needs the peers (``bash
benchmarks/setup.sh``) and the tasks built by ``metareg data fetch``. No timing is asserted.
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks import peers
from conftest import require_tasks, run_benchmark
from metareg.core.geometry import Grid, map_points

pytestmark = pytest.mark.bench

SHIFT_2D = np.array([3.0, -2.0])
SHIFT_3D = np.array([2.5, -3.0, 2.0])


def _oblique(image: sitk.Image, degrees: float, spacing) -> sitk.Image:
    """``image`` as float32 on a rotated (about the last axis), anisotropic grid: same voxels, new geometry."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    dim = image.GetDimension()
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation = np.eye(dim)
    rotation[:2, :2] = [[c, -s], [s, c]]
    image.SetDirection(tuple((rotation @ np.asarray(image.GetDirection()).reshape(dim, dim)).ravel()))
    image.SetSpacing(tuple(float(v) for v in spacing))
    return image


def _shifted(image: sitk.Image, shift: np.ndarray) -> sitk.Image:
    moving = sitk.Image(image)
    moving.SetOrigin(tuple(np.asarray(image.GetOrigin()) + shift))
    return moving


def _interior_points(image: sitk.Image, fraction: float = 0.25, per_axis: int = 3) -> np.ndarray:
    """LPS points on a regular lattice over the middle of the image (away from the border the shift empties)."""
    size = np.asarray(image.GetSize(), dtype=float)
    axes = [np.linspace((0.5 - fraction) * (n - 1), (0.5 + fraction) * (n - 1), per_axis) for n in size]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(size))
    return Grid.from_image(image).index_to_physical(index)


@pytest.fixture(scope="module")
def pair_2d(sample_dir):
    fixed = _oblique(sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz")), 25.0, (0.9, 1.1))
    return fixed, _shifted(fixed, SHIFT_2D)


@pytest.fixture(scope="module")
def pair_3d(sample_dir):
    brain = sitk.ReadImage(str(sample_dir / "brain3d_fixed_T1.nii.gz"))  # 2 mm, direction diag(-1, -1, 1)
    small = sitk.BinShrink(sitk.Cast(brain, sitk.sitkFloat32), [2, 2, 2])  # 48×57×48 at 4 mm
    fixed = _oblique(small, 20.0, (3.6, 4.0, 4.4))
    return fixed, _shifted(fixed, SHIFT_3D)


def _check_shift(field: sitk.Image, fixed: sitk.Image, shift: np.ndarray, seconds: float, tolerance_mm: float) -> None:
    assert field.GetPixelID() == sitk.sitkVectorFloat64 and field.GetNumberOfComponentsPerPixel() == fixed.GetDimension()
    assert Grid.from_image(field).same_as(Grid.from_image(fixed))
    assert math.isfinite(seconds) and seconds > 0
    points = _interior_points(fixed)
    error = np.linalg.norm(map_points(field, points) - points - shift, axis=1)
    # a sign, axis-order or direction mistake would be off by several mm; the optimisers themselves by far less
    assert error.max() < tolerance_mm, (error.max(), error.mean())
    assert error.mean() < tolerance_mm / 2, (error.max(), error.mean())


# ---------------------------------------------------------------------------------------------------------------------
# Known-shift geometry of every runner
# ---------------------------------------------------------------------------------------------------------------------


def test_elastix_recovers_a_known_shift_2d(pair_2d):
    field, seconds = peers.run_elastix(*pair_2d, threads=1, iterations=(100, 100))
    _check_shift(field, pair_2d[0], SHIFT_2D, seconds, 0.5)


@pytest.mark.parametrize("runner", ["run_ants_syn", "run_sitk_bspline", "run_sitk_demons"])
def test_peer_recovers_a_known_shift_2d(pair_2d, runner):
    field, seconds = getattr(peers, runner)(*pair_2d, threads=1)
    _check_shift(field, pair_2d[0], SHIFT_2D, seconds, 0.5)


# The SimpleITK B-spline takes about a minute on this volume; its 3D geometry is covered by the quick mode's 3D pair
# (TRE halved at least) and its field conversion by the 2D check, which shares every line of it.
@pytest.mark.parametrize("runner", ["run_ants_syn", "run_sitk_demons"])
def test_peer_recovers_a_known_shift_3d(pair_3d, runner):
    field, seconds = getattr(peers, runner)(*pair_3d, threads=1)
    _check_shift(field, pair_3d[0], SHIFT_3D, seconds, 1.0)  # 1 mm = a quarter of a 4 mm voxel


def test_ants_field_is_the_warp_then_the_affine(sample_dir):
    """On a real deformable pair, ANTs' composed field equals x ↦ A(W(x)) built from its own files, not W(A(x)),
    and warping with it reproduces ANTs' own warped image."""
    import ants

    fixed = sitk.Cast(sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz")), sitk.sitkFloat32)
    moving = sitk.Cast(sitk.ReadImage(str(sample_dir / "brain2d_moving.nii.gz")), sitk.sitkFloat32)
    # a rotation and shift on top of the pair's own deformation, so that the affine is far from the identity
    rigid = sitk.Euler2DTransform(Grid.from_image(moving).center.tolist(), math.radians(6.0), (4.0, -3.0))
    moving = sitk.Resample(moving, moving, rigid, sitk.sitkLinear, 0.0)
    fixed_a, moving_a = ants.from_sitk(fixed), ants.from_sitk(moving)
    with tempfile.TemporaryDirectory() as scratch:
        result = ants.registration(fixed=fixed_a, moving=moving_a, type_of_transform="SyN",
                                   outprefix=str(Path(scratch) / "syn_"))
        warp_file, affine_file = result["fwdtransforms"]
        assert warp_file.endswith("Warp.nii.gz") and affine_file.endswith(".mat")
        field = peers.ants_forward_field(fixed_a, moving_a, result["fwdtransforms"], Path(scratch))
        warp = sitk.Cast(sitk.ReadImage(warp_file), sitk.sitkVectorFloat64)
        affine = sitk.ReadTransform(affine_file)
        ants_warped = ants.apply_transforms(fixed=fixed_a, moving=moving_a, transformlist=result["fwdtransforms"])
        ants_warped = ants.to_sitk(ants_warped)
    points = _interior_points(fixed, 0.35, 7)
    warp_t = sitk.DisplacementFieldTransform(sitk.Image(warp))
    warp_then_affine = np.array([affine.TransformPoint(warp_t.TransformPoint(tuple(p))) for p in points])
    affine_then_warp = np.array([warp_t.TransformPoint(affine.TransformPoint(tuple(p))) for p in points])
    ours = map_points(field, points)
    assert np.abs(ours - warp_then_affine).max() < 0.05
    assert np.abs(affine_then_warp - warp_then_affine).max() > 0.5  # the two orders do differ on this pair
    # and pulling the moving image through our field is ANTs' own warped image
    mine = sitk.GetArrayFromImage(sitk.Resample(moving, field, sitk.DisplacementFieldTransform(sitk.Image(field)),
                                                sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    theirs = sitk.GetArrayFromImage(ants_warped)
    inner = (slice(20, -20), slice(20, -20))
    assert np.corrcoef(mine[inner].ravel(), theirs[inner].ravel())[0, 1] > 0.999


def test_voxelmorph_displacement_convention_is_ours():
    """VoxelMorph's spatial transformer samples moving(p + d(p)) with channel c along tensor axis c, as ours does."""
    import torch
    import voxelmorph as vxm

    from metareg.core.geometry import warp_tensor

    generator = torch.Generator().manual_seed(0)
    for shape in ((1, 1, 23, 31), (1, 1, 11, 13, 17)):
        image = torch.rand(shape, generator=generator)
        disp = 2.0 * torch.randn((1, len(shape) - 2, *shape[2:]), generator=generator)
        theirs = vxm.nn.modules.SpatialTransformer()(image, disp)
        assert torch.allclose(theirs, warp_tensor(image, disp, padding_mode="zeros"), atol=1e-5)


def test_voxelmorph_runner_places_a_known_displacement(tmp_path, pair_2d):
    """A VoxelMorph network that outputs a constant velocity c (voxels of the model grid) gives the field
    M·reverse(c) mm (M = direction × spacing of the model grid) inside the image, on the oblique fixed grid."""
    import torch
    from safetensors.torch import save_file

    from metareg.core.geometry import model_grid_on_fixed

    network = peers.voxelmorph_network(2)
    velocity = torch.tensor([1.5, -2.0])  # channel 0 along tensor axis 0 (y), channel 1 along x
    with torch.no_grad():
        network.flow_layer.conv0.weight.zero_()
        network.flow_layer.conv0.bias.copy_(velocity)
    weights = tmp_path / "vxm.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    grid_spec = {"size": [64, 64], "spacing": None}
    weights.with_suffix(".json").write_text(json.dumps({"dim": 2, "grid": grid_spec, "prealign": "none",
                                                        "normalisation": {"method": "percentile", "low": 1.0,
                                                                          "high": 99.0}}))
    fixed, moving = pair_2d
    field, seconds = peers.run_voxelmorph(fixed, moving, weights, threads=1)
    grid = model_grid_on_fixed(fixed, size=grid_spec["size"])
    expected = grid.index_to_physical_matrix @ velocity.numpy()[::-1].astype(np.float64)
    points = _interior_points(fixed, 0.2)
    assert Grid.from_image(field).same_as(Grid.from_image(fixed)) and seconds > 0
    # a constant velocity integrates to the same constant displacement away from the model grid's border
    assert np.abs(map_points(field, points) - points - expected).max() < 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# The quick mode of the benchmark
# ---------------------------------------------------------------------------------------------------------------------

CLASSICAL = ["elastix affine+B-spline", "ANTs SyN (antspyx defaults)", "SimpleITK B-spline", "SimpleITK demons"]
ROWS_2D = CLASSICAL + ["VoxelMorph (voxelmorph package)", "ours: multidomain-2d-reptile, 0 adaptation steps",
                       "ours: multidomain-2d-reptile, 2 adaptation steps", "ours: iterative (no network)"]
ROWS_3D = CLASSICAL + ["ours: iterative (no network)"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    require_tasks("fundus-2d-test", "brain-mr-3d-test", "brain-t1-2d", "brain-t2-2d", "head-ct-2d", "chest-ct-2d",
                  "ultrasound-2d")
    out = tmp_path_factory.mktemp("peers")
    done = run_benchmark("peers_side_by_side", "--quick", "--threads", "1", "--adapt-steps", "2", "--out-dir", str(out),
                         "--cache-dir", str(out / "cache"), "--model-3d", str(out / "no-such-3d-model.safetensors"))
    return out, done.stdout


def _mean(cell: str) -> float:
    return float(cell.split("±")[0])


def test_quick_mode_writes_both_tables(quick_run):
    out, stdout = quick_run
    for dim, rows in ((2, ROWS_2D), (3, ROWS_3D)):
        for suffix in ("csv", "md", "json", "png"):
            assert (out / f"peers-{dim}d.{suffix}").stat().st_size > 200, (dim, suffix)
        assert (out / f"peers-{dim}d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with open(out / f"peers-{dim}d.csv", newline="") as handle:
            assert [r["method"] for r in csv.DictReader(handle)] == rows
        md = (out / f"peers-{dim}d.md").read_text()
        assert all(f"| {name} |" in md for name in rows)
        assert "KNOWN SYNTHETIC" in md and "Threads: every method ran on 1 CPU thread" in md
    # the missing 3D model is reported, and only its rows are left out
    assert "ours-3D network rows SKIPPED" in stdout
    assert "ours-3D network rows SKIPPED" in (out / "peers-3d.md").read_text()
    assert "VoxelMorph is not in the 3D table" in (out / "peers-3d.md").read_text()
    # VoxelMorph was trained (3 steps) into the cache folder given, never into the repository
    record = json.loads((out / "cache" / "voxelmorph-2d-3steps.json").read_text())
    assert record["steps"] == 3 and len(record["loss_curve"]) == 3
    assert all(math.isfinite(v) for v in record["loss_curve"])
    assert record["tasks"] == ["brain-t1-2d", "brain-t2-2d", "head-ct-2d", "chest-ct-2d", "ultrasound-2d"]


def test_quick_mode_numbers_are_sane(quick_run):
    out, _ = quick_run
    for dim, rows, pairs in ((2, ROWS_2D, 2), (3, ROWS_3D, 1)):
        result = json.loads((out / f"peers-{dim}d.json").read_text())
        table = {r["method"]: r for r in result["rows"]}
        assert result["environment"]["threads"] == 1
        elastix = table["elastix affine+B-spline"]
        assert elastix["time ÷ elastix"] == 1.0 and elastix["memory ÷ elastix"] == 1.0
        for name in rows:
            row = table[name]
            assert row["pairs"] == pairs
            assert 100 < row["peak MiB"] < 16000, name  # a fresh process with SimpleITK (and torch), not the machine
            assert row["s/pair"] > 0 and row["time ÷ elastix"] > 0 and row["memory ÷ elastix"] > 0, name
            for per_pair in result["per_pair"][name]:
                assert all(math.isfinite(per_pair[k]) for k in ("tre_before_mm", "tre_after_mm", "ncc_before",
                                                                "ncc_after", "seconds", "folding_fraction")), name
                assert -1.0 <= per_pair["ncc_after"] <= 1.0 and 0.0 <= per_pair["folding_fraction"] <= 1.0, name
                assert per_pair["tre_before_mm"] > 1.0  # the known warps move the landmarks
            assert _mean(row["TRE before mm"]) == pytest.approx(_mean(elastix["TRE before mm"]), abs=0.01)
        # every classical peer and our iterative method register these pairs: TRE down, NCC up, pair by pair
        for name in CLASSICAL + ["ours: iterative (no network)"]:
            for per_pair in result["per_pair"][name]:
                assert per_pair["tre_after_mm"] < 0.5 * per_pair["tre_before_mm"], (dim, name)
                assert per_pair["ncc_after"] > per_pair["ncc_before"], (dim, name)
