"""Registration end to end: the iterative method on known warps of real images, networks, model files, adaptation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from metareg.core import losses
from metareg.core.errors import Cancelled, InputError, ModelError
from metareg.core.geometry import (
    Grid,
    affine_to_field,
    map_points,
    warp_image,
    warp_tensor,
)
from metareg.core.iterative import IterativeConfig, register_iterative
from metareg.core.landmarks import Landmarks, read_landmarks
from metareg.core.modelio import load_model, save_model, sha256_of
from metareg.core.networks import build_network
from metareg.core.preprocess import prepare_pair
from metareg.core.registration import landmark_report, refinement_config, register
from metareg.core.report import RegistrationReport
from metareg.learning.synthetic import invert_points, random_smooth_field


@pytest.fixture(scope="module")
def brain2d_known_warp(sample_dir):
    """A real 2D brain slice and a smooth synthetic deformation of it, with 40 landmarks inside the brain."""
    fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    truth = random_smooth_field(fixed, max_displacement_mm=5.0, control_spacing_mm=40.0, seed=7)
    moving = warp_image(fixed, truth)  # moving(y) = fixed(y + e(y))
    grid = Grid.from_image(fixed)
    array = sitk.GetArrayFromImage(fixed)
    rng = np.random.default_rng(3)
    candidates = np.argwhere(array > np.percentile(array, 60))  # (row, col) = (j, i)
    chosen = candidates[rng.choice(len(candidates), 40, replace=False)]
    p = grid.index_to_physical(chosen[:, ::-1].astype(float))
    q = invert_points(truth, p)  # the moving point that shows fixed point p: q + e(q) = p
    labels = tuple(f"L{i}" for i in range(len(p)))
    return fixed, moving, Landmarks(labels, np.c_[p, np.zeros(len(p))]), Landmarks(labels, np.c_[q, np.zeros(len(q))])


def test_iterative_recovers_a_known_2d_warp_below_one_voxel(brain2d_known_warp):
    fixed, moving, fixed_landmarks, moving_landmarks = brain2d_known_warp
    result = register(fixed, moving, fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, device="cpu")
    report = result.report
    assert report.tre_before["mean"] > 2.0  # the warp is not trivial
    assert report.tre_after["mean"] < 1.0  # below one voxel (1 mm)
    assert report.ncc_after > report.ncc_before
    assert report.folding_fraction == 0.0
    first_level = IterativeConfig().iterations[0]
    assert len(result.loss_curve) == sum(IterativeConfig().iterations)
    assert result.loss_curve[first_level - 1] < result.loss_curve[0]


def test_label_maps_give_dice_and_surface_distances(sample_dir, tmp_path):
    """Tissue classes of a real slice, deformed by a known warp: Dice rises, surface distances are small."""
    fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    truth = random_smooth_field(fixed, max_displacement_mm=4.0, control_spacing_mm=40.0, seed=11)
    moving = warp_image(fixed, truth)
    fixed_labels = sitk.OtsuMultipleThresholds(sitk.SmoothingRecursiveGaussian(fixed, 1.0), numberOfThresholds=2)
    moving_labels = warp_image(fixed_labels, truth, sitk.sitkNearestNeighbor)
    result = register(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels, device="cpu")
    labels = result.report.labels
    assert set(labels["per_label"]) == {"1", "2"}
    assert labels["mean_dice_after"] > labels["mean_dice_before"] + 0.05
    assert labels["mean_dice_after"] > 0.9
    for row in labels["per_label"].values():
        assert row["hd95_after_mm"] < 3.0 and row["mean_surface_distance_after_mm"] < 1.0
    assert result.warped_labels.GetPixelID() == fixed_labels.GetPixelID()
    # through the command line: --fixed-labels/--moving-labels/--warped-labels
    from metareg.app.cli import main

    paths = {}
    for name, image in (("f", fixed), ("m", moving), ("fl", fixed_labels), ("ml", moving_labels)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        sitk.WriteImage(image, paths[name])
    report_path = tmp_path / "report.json"
    assert main(["register", "--fixed", paths["f"], "--moving", paths["m"], "--fixed-labels", paths["fl"],
                 "--moving-labels", paths["ml"], "--warped-labels", str(tmp_path / "wl.nii.gz"), "--report",
                 str(report_path), "--quiet", "--iterations", "60,30"]) == 0
    cli_labels = json.loads(report_path.read_text())["labels"]
    assert cli_labels["mean_dice_after"] > cli_labels["mean_dice_before"]
    warped_labels = sitk.ReadImage(str(tmp_path / "wl.nii.gz"))
    assert set(np.unique(sitk.GetArrayFromImage(warped_labels))) <= {0, 1, 2}


@pytest.fixture(scope="module")
def brain3d_result(sample_dir):
    fixed = sitk.ReadImage(str(sample_dir / "brain3d_fixed_T1.nii.gz"))
    moving = sitk.ReadImage(str(sample_dir / "brain3d_moving_T1.nii.gz"))
    fl = read_landmarks(sample_dir / "brain3d_fixed_landmarks.mrk.json")
    ml = read_landmarks(sample_dir / "brain3d_moving_landmarks.mrk.json")
    before = (sitk.GetArrayFromImage(fixed).copy(), sitk.GetArrayFromImage(moving).copy())
    fractions = []
    result = register(fixed, moving, fixed_landmarks=fl, moving_landmarks=ml, device="cpu",
                      progress=lambda fraction, message: fractions.append(fraction))
    return fixed, moving, fl, ml, result, before, fractions


def test_iterative_recovers_the_3d_sample_warp(brain3d_result):
    """The sample pair: the template and a known synthetic warp + rigid motion of it (2 mm voxels)."""
    fixed, moving, fl, ml, result, before, fractions = brain3d_result
    report = result.report
    assert report.tre_before["n"] == 32
    assert report.tre_before["mean"] > 5.0
    assert report.tre_after["mean"] < 1.0  # half a voxel
    assert report.folding_fraction < 1e-4
    assert report.ncc_after > 0.97
    # fractions rise to 1
    assert fractions[-1] == pytest.approx(1.0) and all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:]))


def test_registration_outputs_live_on_the_fixed_grid_and_inputs_are_untouched(brain3d_result):
    fixed, moving, fl, ml, result, before, _ = brain3d_result
    fixed_grid = Grid.from_image(fixed)
    for image in (result.field, result.warped, result.jacobian):
        assert Grid.from_image(image).same_as(fixed_grid)
    assert result.field.GetPixelID() == sitk.sitkVectorFloat64
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fixed), before[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(moving), before[1])
    # the warped image is the ORIGINAL moving image resampled through the exported field
    again = warp_image(moving, result.field)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(result.warped))
    assert json.loads(result.report.to_json()) == result.report.to_dict()  # JSON-able
    assert RegistrationReport.from_dict(json.loads(result.report.to_json())).to_dict() == result.report.to_dict()
    assert set(result.report.seconds) >= {"preprocess", "registration", "field", "warp", "metrics", "total"}


def test_tre_of_the_report_matches_hand_computed_distances():
    reference = Grid((20, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)).reference_image()
    shift = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    field = affine_to_field(shift, reference)
    p = np.array([[5.0, 5.0, 5.0], [10.0, 4.0, 7.0]])
    q = p + np.array([[2.0, 3.0, 4.0], [2.0, 0.0, 0.0]])  # after the 2 mm shift: 5 mm (3-4-5) and 0 mm off
    before, after, rows = landmark_report(field, ["a", "b"], p, q, dim=3)
    assert [row["label"] for row in rows] == ["a", "b"]
    assert [row["tre_after_mm"] for row in rows] == pytest.approx([5.0, 0.0], abs=1e-9)
    assert [row["tre_before_mm"] for row in rows] == pytest.approx([np.sqrt(29), 2.0])
    assert after["mean"] == pytest.approx(2.5) and after["max"] == pytest.approx(5.0) and after["n"] == 2
    assert before["mean"] == pytest.approx((np.sqrt(29) + 2.0) / 2)


@pytest.mark.parametrize("family", ["unet", "localnet"])
@pytest.mark.parametrize("shape", [(1, 1, 37, 29), (1, 1, 19, 22, 17)])
def test_networks_take_any_size_and_start_near_identity(family, shape):
    dim = len(shape) - 2
    network = build_network({"family": family, "dim": dim})
    moving, fixed = torch.rand(shape), torch.rand(shape)
    disp = network(moving, fixed)
    assert disp.shape == (1, dim, *shape[2:])
    assert disp.abs().max() < 0.05


def test_diffeomorphic_network_output_does_not_fold():
    torch.manual_seed(0)
    network = build_network({"family": "unet", "dim": 2, "diffeomorphic": True})
    with torch.no_grad():
        network.head.weight.normal_(0, 3.0)  # a large random velocity
        disp = network(torch.rand(1, 1, 48, 40), torch.rand(1, 1, 48, 40))
    raw = build_network({"family": "unet", "dim": 2})
    raw.load_state_dict(network.state_dict())
    assert disp.abs().max() > 1.0  # the test is not vacuous: the displacement is large
    from metareg.core.geometry import voxel_displacement_to_physical, vector_image
    from metareg.core.metrics import folding_fraction, jacobian_determinant

    grid = Grid((40, 48), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    field = vector_image(voxel_displacement_to_physical(disp, grid), grid)
    assert folding_fraction(jacobian_determinant(field)) == 0.0
    with torch.no_grad():
        raw_disp = raw(torch.rand(1, 1, 48, 40), torch.rand(1, 1, 48, 40))
    raw_field = vector_image(voxel_displacement_to_physical(raw_disp, grid), grid)
    assert folding_fraction(jacobian_determinant(raw_field)) > 0.0  # without integration the same weights fold


def tiny_model_files(tmp_path, dim=2, prealign=None, refinement=None):
    network = build_network({"family": "unet", "dim": dim, "encoder_channels": [8, 8], "decoder_channels": [8, 8, 8]})
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    card = {"purpose": "test", "grid": {"size": [64, 64], "spacing": None}, "loss": {"similarity": "lncc"},
            "normalisation": {"method": "percentile", "low": 1.0, "high": 99.0}}
    if prealign is not None:
        card["prealign"] = prealign
    if refinement is not None:
        card["refinement"] = refinement
    save_model(network, tmp_path / "tiny.safetensors", card)
    return network, tmp_path / "tiny.safetensors"


def test_model_round_trip_rebuilds_the_same_network(tmp_path):
    network, path = tiny_model_files(tmp_path)
    loaded = load_model(path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_of(path)
    assert path.stat().st_mode & 0o044  # readable by others, like any file the user writes
    assert card["architecture"]["family"] == "unet" and card["grid"]["size"] == [64, 64]
    x, y = torch.rand(1, 1, 40, 36), torch.rand(1, 1, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x, y), network.eval()(x, y), rtol=0, atol=0)
    assert load_model(path.with_suffix(".json")).card == loaded.card


def test_model_loads_by_zoo_name_and_rejects_tampering(tmp_path, monkeypatch):
    _, path = tiny_model_files(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps(
        {"models": [{"name": "tiny-2d", "file": path.name, "sha256": sha256_of(path), "dimension": 2}]}))
    monkeypatch.setenv("METAREG_MODEL_DIR", str(tmp_path))
    assert load_model("tiny-2d").card.purpose == "test"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        load_model("tiny-2d")
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_model("nope")


def test_test_time_adaptation_improves_the_pair_and_leaves_the_model_unchanged(tmp_path, brain2d_known_warp):
    fixed, moving, fl, ml = brain2d_known_warp
    _, path = tiny_model_files(tmp_path)
    model = load_model(path)
    weights_before = {k: v.clone() for k, v in model.network.state_dict().items()}
    file_before = sha256_of(path)
    zero = register(fixed, moving, model=model, device="cpu", fixed_landmarks=fl, moving_landmarks=ml)
    adapted = register(fixed, moving, model=model, adapt_steps=30, adapt_learning_rate=3e-3, device="cpu",
                       fixed_landmarks=fl, moving_landmarks=ml)
    assert len(adapted.loss_curve) == 30 and adapted.loss_curve[-1] < adapted.loss_curve[0]
    assert adapted.report.ncc_after > zero.report.ncc_after
    assert adapted.report.tre_after["mean"] < zero.report.tre_after["mean"]
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, weights_before[key]), key
    assert sha256_of(path) == file_before
    assert adapted.report.method == "network" and adapted.report.adapt_steps == 30


def test_refinement_starts_from_the_network_and_improves_it(tmp_path, brain2d_known_warp):
    """N iterative steps on the field, started from the network's displacement: better than the network alone,
    and its first step's loss is below that of the same steps started from the identity (so it really starts from
    the network)."""
    fixed, moving, fl, ml = brain2d_known_warp
    _, path = tiny_model_files(tmp_path)
    model = load_model(path)
    adapted = register(fixed, moving, model=model, adapt_steps=30, adapt_learning_rate=3e-3, device="cpu",
                       fixed_landmarks=fl, moving_landmarks=ml)
    refined = register(fixed, moving, model=model, adapt_steps=30, adapt_learning_rate=3e-3, refine_steps=15,
                       device="cpu", fixed_landmarks=fl, moving_landmarks=ml)
    assert refined.report.refine_steps == 15 and adapted.report.refine_steps == 0
    assert len(refined.loss_curve) == 30 + 15  # adaptation's steps, then refinement's
    assert refined.report.refine_grid["size"] == list(fixed.GetSize())  # small enough for its own grid
    assert refined.report.tre_after["mean"] < 0.8 * adapted.report.tre_after["mean"]
    assert refined.report.ncc_after > adapted.report.ncc_after
    grid = Grid.from_image(fixed)  # the same 15 steps from the identity instead of from the network
    _, fixed_t, moving_t = prepare_pair(fixed, moving, None, model.card.normalisation, grid=grid)
    _, identity_curve = register_iterative(fixed_t, moving_t, refinement_config(15, model.card.loss))
    assert refined.loss_curve[30] < identity_curve[0]
    with pytest.raises(InputError, match="^refine_steps: refinement starts from a network"):
        register(fixed, moving, refine_steps=5, device="cpu")
    with pytest.raises(InputError, match="^refine_steps: must be >= 0, got -1"):
        register(fixed, moving, model=model, refine_steps=-1, device="cpu")


def test_the_card_sets_the_default_refinement(tmp_path, brain2d_known_warp):
    fixed, moving, _, _ = brain2d_known_warp
    _, path = tiny_model_files(tmp_path, refinement={"steps": 4, "regulariser_weight": 7.0})
    model = load_model(path)
    config = refinement_config(4, losses.LossConfig("lncc", regulariser_weight=1.0),
                               model.card.refinement.regulariser_weight)
    assert config.loss.regulariser_weight == 7.0 and config.loss.similarity == "lncc"
    # two thirds at half resolution on 2-voxel B-spline control points, the rest at full resolution on 4-voxel ones
    assert config.iterations == (3, 1) and config.shrink_factors == (2, 1) and config.control_spacing == (2, 4)
    assert config.supersample
    assert refinement_config(4, losses.LossConfig("mi", regulariser_weight=2.0)).loss.regulariser_weight == 2.0
    assert register(fixed, moving, model=model, device="cpu").report.refine_steps == 4
    assert register(fixed, moving, model=model, refine_steps=0, device="cpu").report.refine_steps == 0


def test_iterative_refinement_checks_its_start():
    fixed = torch.rand(1, 1, 16, 18)
    start = torch.zeros(1, 2, 16, 18)
    start[0, 0] = 1.5
    kept, curve = register_iterative(fixed, fixed, IterativeConfig(shrink_factors=(1,), iterations=(0,)), initial=start)
    torch.testing.assert_close(kept, start)  # zero steps hand the start back
    assert curve == []
    with pytest.raises(ValueError, match="shape"):
        register_iterative(fixed, fixed, IterativeConfig(), initial=torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="diffeomorphic"):
        register_iterative(fixed, fixed, IterativeConfig(diffeomorphic=True), initial=start)


def test_a_model_trained_on_prealigned_pairs_gets_the_affine_step_by_default(tmp_path, sample_dir):
    fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    moving = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    moving.SetOrigin((fixed.GetOrigin()[0] + 6.0, fixed.GetOrigin()[1] - 4.0))  # a known 6, -4 mm shift
    _, path = tiny_model_files(tmp_path, prealign="affine")
    model = load_model(path)
    result = register(fixed, moving, model=model, device="cpu")
    assert result.prealign is not None  # the card's default
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    np.testing.assert_allclose(np.array(result.prealign.TransformPoint(centre.tolist())) - centre, [6.0, -4.0],
                               atol=0.5)
    assert register(fixed, moving, model=model, affine=False, device="cpu").prealign is None  # the user's choice wins
    _, plain = tiny_model_files(tmp_path / "plain" if (tmp_path / "plain").mkdir() is None else tmp_path)
    assert register(fixed, moving, model=load_model(plain), device="cpu").prealign is None


def test_cancel_stops_the_run(brain2d_known_warp):
    fixed, moving, _, _ = brain2d_known_warp
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Cancelled):
        register(fixed, moving, device="cpu", should_stop=should_stop)
    assert len(calls) == 6


def test_mutual_information_matches_full_parzen_histogram():
    """The windowed MI equals MI from the full Gaussian Parzen histogram (every voxel in every bin), value and
    gradient, on values that also fall outside [0, 1] and near the edge bins."""
    generator = torch.Generator().manual_seed(0)
    fixed = torch.rand(2, 1, 12, 10, 9, generator=generator, dtype=torch.float64) * 1.2 - 0.1
    moving = 1 - fixed + 0.1 * torch.rand(fixed.shape, generator=generator, dtype=torch.float64)

    def full_parzen_mi(a, b, bins=32, sigma_ratio=0.5):
        centres = torch.linspace(0.0, 1.0, bins, dtype=a.dtype)

        def soft(x):
            w = torch.exp(-0.5 * ((x.clamp(0, 1).flatten(1)[..., None] - centres) / (sigma_ratio / (bins - 1))) ** 2)
            return w / w.sum(-1, keepdim=True)

        joint = torch.einsum("bni,bnj->bij", soft(a), soft(b)) / a[0].numel()
        pa, pb = joint.sum(2, keepdim=True), joint.sum(1, keepdim=True)
        return -(joint * torch.log((joint + 1e-10) / (pa * pb + 1e-10))).sum((1, 2)).mean()

    for bins, sigma_ratio in ((32, 0.5), (16, 1.0)):
        reference_input = moving.clone().requires_grad_(True)
        windowed_input = moving.clone().requires_grad_(True)
        reference = full_parzen_mi(fixed, reference_input, bins, sigma_ratio)
        windowed = losses.mutual_information_loss(fixed, windowed_input, bins, sigma_ratio)
        reference.backward()
        windowed.backward()
        assert windowed.item() == pytest.approx(reference.item(), rel=1e-6)
        assert torch.allclose(windowed_input.grad, reference_input.grad, rtol=1e-4,
                              atol=1e-5 * reference_input.grad.abs().max())


def test_losses_behave():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 24, 20, 22)
    smooth = torch.nn.functional.avg_pool3d(image, 3, 1, 1)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())  # textured, full [0, 1] range
    assert losses.local_ncc_loss(smooth, smooth) < 0.05
    assert losses.local_ncc_loss(smooth, 2 * smooth + 0.3) < 0.05  # invariant to linear intensity changes
    assert losses.local_ncc_loss(smooth, torch.rand_like(smooth)) > 0.5
    assert losses.global_ncc_loss(smooth, -smooth) == pytest.approx(2.0, abs=1e-5)
    assert losses.mse_loss(image, image + 0.5) == pytest.approx(0.25)
    aligned = losses.mutual_information_loss(smooth, 1 - smooth)  # an inverted contrast: still aligned
    shifted = losses.mutual_information_loss(smooth, 1 - torch.roll(smooth, 6, dims=2))
    assert aligned < shifted
    linear = torch.zeros(1, 3, 10, 11, 12)
    linear[0, 0] = torch.arange(10.0).view(10, 1, 1) * 0.3  # an affine displacement: no bending
    assert losses.bending_energy_loss(linear) == pytest.approx(0.0, abs=1e-10)
    assert losses.gradient_l2_loss(linear) == pytest.approx(0.09 / 3, rel=1e-5)  # 0.3² in one of 3 channels
    assert losses.gradient_l2_loss(torch.ones(1, 2, 8, 8)) == 0
    one_hot = torch.zeros(1, 2, 8, 8)
    one_hot[0, 0, :4], one_hot[0, 1, 4:] = 1, 1
    assert losses.dice_loss(one_hot, one_hot) == pytest.approx(0.0, abs=1e-6)
    assert losses.dice_loss(one_hot, one_hot.flip(1)) == pytest.approx(1.0, abs=1e-6)


def test_warp_tensor_is_differentiable_and_moves_content():
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 8, 8] = 1.0
    disp = torch.zeros(1, 2, 16, 16, requires_grad=True)
    out = warp_tensor(image, disp + torch.tensor([0.0, 2.0]).view(1, 2, 1, 1))
    assert out[0, 0, 8, 6].item() == pytest.approx(1.0)  # out(p) = image(p + 2 along x)
    out.sum().backward()
    assert disp.grad is not None


def test_mapped_points_follow_the_field(brain3d_result):
    fixed, moving, fl, ml, result, _, _ = brain3d_result
    mapped = map_points(result.field, fl.points_lps)
    distances = np.linalg.norm(mapped - ml.points_lps, axis=1)
    assert [row["tre_after_mm"] for row in result.report.landmarks] == pytest.approx(list(distances))


def test_bspline_field_is_a_partition_of_unity_and_reproduces_a_ramp():
    """Control point k sits at voxel (k - 1) * s: constant coefficients give that constant, coefficients k give the
    ramp 1 + x / s, on every axis, and ceil(n / s) + 3 control points cover n voxels."""
    from metareg.core.iterative import bspline_field

    for spacing, shape in ((2, (7, 9, 5)), (4, (12, 10, 9))):
        control_shape = [-(-n // spacing) + 3 for n in shape]
        ones = bspline_field(torch.full((1, 1, *control_shape), 2.5), spacing, shape)
        assert ones.shape == (1, 1, *shape) and torch.allclose(ones, torch.full_like(ones, 2.5), atol=1e-6)
        ramp = torch.arange(control_shape[1], dtype=torch.float32).view(1, 1, 1, -1, 1).expand(1, 1, *control_shape)
        values = bspline_field(ramp.contiguous(), spacing, shape)
        expected = 1 + torch.arange(shape[1], dtype=torch.float32) / spacing
        assert torch.allclose(values[0, 0, 3, :, 2], expected, atol=1e-5)


def test_supersampled_warp_keeps_the_grid_and_shifts_exactly():
    """upsample_cubic2 keeps the voxels and their extent: warping it by a known half-voxel shift gives the shifted
    ramp (and quadratic) exactly, where linear interpolation of the original misses the quadratic."""
    from metareg.core.geometry import warp_tensor
    from metareg.core.iterative import upsample_cubic2

    x = torch.arange(10, dtype=torch.float32)
    image = (x.view(-1, 1) ** 2 + 3 * x.view(1, -1)).view(1, 1, 10, 10)
    upsampled = upsample_cubic2(image)
    assert upsampled.shape == (1, 1, 19, 19) and torch.equal(upsampled[..., ::2, ::2], image)
    shift = torch.zeros(1, 2, 10, 10)
    shift[:, 0] = 0.5  # half a voxel along axis 0 (the quadratic one)
    want = ((x.view(-1, 1) + 0.5) ** 2 + 3 * x.view(1, -1))[2:8, 2:8]  # inside, away from the repeated edges
    assert torch.allclose(warp_tensor(upsampled, shift)[0, 0, 2:8, 2:8], want, atol=1e-4)
    assert not torch.allclose(warp_tensor(image, shift)[0, 0, 2:8, 2:8], want, atol=1e-2)


def test_bspline_levels_refine_from_a_start_and_check_their_settings():
    from metareg.core.iterative import register_iterative

    with pytest.raises(ValueError, match="control_spacing"):
        IterativeConfig(shrink_factors=(2, 1), iterations=(3, 3), control_spacing=(2,))
    fixed = torch.rand(1, 1, 12, 14)
    start = torch.full((1, 2, 12, 14), 0.25)
    config = IterativeConfig(shrink_factors=(2, 1), iterations=(0, 0), control_spacing=(2, 4), supersample=True)
    kept, curve = register_iterative(fixed, fixed, config, initial=start)
    assert curve == [] and torch.allclose(kept, start)  # zero steps: the start comes back unchanged
    moved, curve = register_iterative(fixed, fixed.roll(1, dims=2), IterativeConfig(
        shrink_factors=(1,), iterations=(5,), control_spacing=(3,), supersample=True))
    assert len(curve) == 5 and moved.shape == (1, 2, 12, 14) and curve[-1] < curve[0]


def test_iterative_defaults_are_bspline_levels_on_a_supersampled_image_for_any_level_count():
    default = IterativeConfig()
    assert default.supersample and default.level_spacings() == (2, 2, 4)
    assert default.to_dict()["control_spacing"] == [2, 2, 4]  # the report says what ran
    assert IterativeConfig(shrink_factors=(2, 1), iterations=(5, 5)).level_spacings() == (2, 4)
    assert IterativeConfig(shrink_factors=(4, 2), iterations=(5, 5)).level_spacings() == (2, 2)
    assert IterativeConfig(control_spacing=(0, 0, 0)).level_spacings() == (0, 0, 0)  # dense, when asked
