"""metareg.core.registration: register() end to end. The iterative method on known warps of real images (2D, and the
brain3d sample pair, registered once for the module), label maps, the landmark report, and a network model with
test-time adaptation, refinement and the defaults its card sets; cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import save_tiny_model
from metareg.core import losses
from metareg.core.errors import Cancelled, InputError
from metareg.core.geometry import Grid, affine_to_field, map_points, warp_image
from metareg.core.iterative import IterativeConfig, register_iterative
from metareg.core.landmarks import Landmarks
from metareg.core.modelio import load_model, sha256_of
from metareg.core.preprocess import prepare_pair
from metareg.core.registration import NetworkMethod, landmark_report, refinement_config, register
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
def brain3d_result(brain3d_pair):
    """The brain3d sample pair registered once with the iterative method at its defaults (the module's slow part)."""
    fixed, moving, fl, ml = brain3d_pair
    before = (sitk.GetArrayFromImage(fixed).copy(), sitk.GetArrayFromImage(moving).copy())
    fractions = []
    result = register(fixed, moving, fixed_landmarks=fl, moving_landmarks=ml, device="cpu",
                      progress=lambda fraction, message: fractions.append(fraction))
    return fixed, moving, fl, ml, result, before, fractions


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_mapped_points_follow_the_field(brain3d_result):
    fixed, moving, fl, ml, result, _, _ = brain3d_result
    mapped = map_points(result.field, fl.points_lps)
    distances = np.linalg.norm(mapped - ml.points_lps, axis=1)
    assert [row["tre_after_mm"] for row in result.report.landmarks] == pytest.approx(list(distances))


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


def tiny_model_files(folder, **card):
    """The tiny network as a 2D model on a 64 × 64 grid (``card`` adds to its card), its weights jittered off zero
    displacement so that adaptation has a gradient to follow."""
    card = {"purpose": "test", "grid": {"size": [64, 64], "spacing": None}, "loss": {"similarity": "lncc"},
            "normalisation": {"method": "percentile", "low": 1.0, "high": 99.0}, **card}
    return save_tiny_model(folder / "tiny.safetensors", dim=2, card=card, channels=(8, 8), seed=1, jitter=0.01)


def test_test_time_adaptation_improves_the_pair_and_leaves_the_model_unchanged(tmp_path, brain2d_known_warp):
    fixed, moving, fl, ml = brain2d_known_warp
    path = tiny_model_files(tmp_path)
    model = load_model(path)
    weights_before = {k: v.clone() for k, v in model.network.state_dict().items()}
    file_before = sha256_of(path)
    zero = register(fixed, moving, method=NetworkMethod(model), device="cpu", fixed_landmarks=fl, moving_landmarks=ml)
    adapted = register(fixed, moving, method=NetworkMethod(model, adapt_steps=30, adapt_learning_rate=3e-3),
                       device="cpu", fixed_landmarks=fl, moving_landmarks=ml)
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
    path = tiny_model_files(tmp_path)
    model = load_model(path)
    adapted = register(fixed, moving, method=NetworkMethod(model, adapt_steps=30, adapt_learning_rate=3e-3),
                       device="cpu", fixed_landmarks=fl, moving_landmarks=ml)
    refined = register(fixed, moving,
                       method=NetworkMethod(model, adapt_steps=30, adapt_learning_rate=3e-3, refine_steps=15),
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
    with pytest.raises(InputError, match="^refine_steps: must be >= 0, got -1"):
        NetworkMethod(model, refine_steps=-1)


def test_the_card_sets_the_default_refinement(tmp_path, brain2d_known_warp):
    fixed, moving, _, _ = brain2d_known_warp
    path = tiny_model_files(tmp_path, refinement={"steps": 4, "regulariser_weight": 7.0})
    model = load_model(path)
    config = refinement_config(4, losses.LossConfig("lncc", regulariser_weight=1.0),
                               model.card.refinement.regulariser_weight)
    assert config.loss.regulariser_weight == 7.0 and config.loss.similarity == "lncc"
    # two thirds at half resolution on 2-voxel B-spline control points, the rest at full resolution on 4-voxel ones
    assert config.iterations == (3, 1) and config.shrink_factors == (2, 1) and config.control_spacing == (2, 4)
    assert config.supersample
    assert refinement_config(4, losses.LossConfig("mi", regulariser_weight=2.0)).loss.regulariser_weight == 2.0
    assert register(fixed, moving, method=NetworkMethod(model), device="cpu").report.refine_steps == 4
    assert register(fixed, moving, method=NetworkMethod(model, refine_steps=0), device="cpu").report.refine_steps == 0


def test_a_model_trained_on_prealigned_pairs_gets_the_affine_step_by_default(tmp_path, sample_dir):
    fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    moving = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    moving.SetOrigin((fixed.GetOrigin()[0] + 6.0, fixed.GetOrigin()[1] - 4.0))  # a known 6, -4 mm shift
    path = tiny_model_files(tmp_path, prealign="affine")
    model = load_model(path)
    result = register(fixed, moving, method=NetworkMethod(model), device="cpu")
    assert result.prealign is not None  # the card's default
    centre = np.array(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    np.testing.assert_allclose(np.array(result.prealign.TransformPoint(centre.tolist())) - centre, [6.0, -4.0],
                               atol=0.5)
    assert register(fixed, moving, method=NetworkMethod(model), affine=False, device="cpu").prealign is None  # the user's choice wins
    plain = tiny_model_files(tmp_path / "plain")
    assert register(fixed, moving, method=NetworkMethod(load_model(plain)), device="cpu").prealign is None


def test_cancel_stops_the_run(brain2d_known_warp):
    fixed, moving, _, _ = brain2d_known_warp
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(Cancelled):
        register(fixed, moving, device="cpu", should_stop=should_stop)
    assert len(calls) == 6
