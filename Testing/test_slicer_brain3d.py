"""The module's Logic end to end on real MRML (slicer-core) with the brain3d sample pair: issue 6's acceptance checks,
and Slicer's own slice views of each visual check rendered offscreen (OSMesa) and checked for content.

One registration (fast iterative settings, a few seconds) serves all checks; cancel and failure runs are cut short.
Set ``METAREG_SCREENSHOTS=DIR`` to keep the rendered PNGs in DIR (how Resources/Screenshots/slicer-*.png are made).
"""

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import slicer  # slicer-core, installed by `./run test` through the project's `slicer` extra

from MetaRegistrationLib import convert, headless, logic, outputs, sampledata, views
from metareg.core import metrics

pytestmark = [pytest.mark.slicer, pytest.mark.slow]  # every test needs a registration in the engine process

FAST = logic.RegistrationSettings(iterations=(40, 20, 10), checkerboard_squares=6)
SEGMENTS = ("tissue", "bright")


def node_checksum(node) -> str:
    """sha256 over what a node holds: voxels and geometry, points and labels, segments, parent transform, name."""
    digest = hashlib.sha256()
    digest.update(node.GetName().encode())
    digest.update(str(node.GetParentTransformNode() and node.GetParentTransformNode().GetID()).encode())
    if node.IsA("vtkMRMLVolumeNode"):
        digest.update(np.ascontiguousarray(slicer.util.arrayFromVolume(node)).tobytes())
        digest.update(repr(convert.volume_geometry_lps(node)).encode())
    elif node.IsA("vtkMRMLMarkupsNode"):
        digest.update(slicer.util.arrayFromMarkupsControlPoints(node).tobytes())
        labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
        digest.update("|".join(labels).encode())
    elif node.IsA("vtkMRMLSegmentationNode"):
        segmentation = node.GetSegmentation()
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            digest.update(segment.GetName().encode())
            labelmap = segment.GetRepresentation("Binary labelmap")
            from vtk.util.numpy_support import vtk_to_numpy

            digest.update(vtk_to_numpy(labelmap.GetPointData().GetScalars()).tobytes())
    return digest.hexdigest()


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def threshold_segmentation(scene, volume, name):
    """A segmentation of a volume by intensity: 'tissue' (40–70 % of the maximum) and 'bright' (above 70 %)."""
    image = convert.volume_to_image(volume)
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[array > 0.4 * array.max()] = 1
    labels[array > 0.7 * array.max()] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labels")
    convert.image_to_volume(label_image, labelmap)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    for index, segment_name in enumerate(SEGMENTS):
        segmentation.GetSegmentation().GetNthSegment(index).SetName(segment_name)
    scene.RemoveNode(labelmap)
    return segmentation, label_image


@pytest.fixture(scope="module")
def brain3d_run():
    """The brain3d pair with landmarks and segmentations, registered once with fast settings."""
    app = headless.get_app()
    headless.clear_scene()
    scene = app.scene
    data = sampledata.load_brain3d(scene)
    fixed_segmentation, fixed_labels = threshold_segmentation(scene, data.fixed_volume, "fixed segmentation")
    moving_segmentation, _ = threshold_segmentation(scene, data.moving_volume, "moving segmentation")
    inputs = logic.RegistrationInputs(data.fixed_volume, data.moving_volume, data.fixed_landmarks,
                                      data.moving_landmarks, fixed_segmentation, moving_segmentation)
    input_nodes = [node for node in vars(inputs).values() if node is not None]
    before = {node.GetID(): node_checksum(node) for node in input_nodes}
    progress = []
    started = time.perf_counter()
    result = logic.MetaRegistrationLogic(scene).run(inputs, FAST, progress=lambda f, m: progress.append((f, m)))
    seconds = time.perf_counter() - started
    return dict(scene=scene, data=data, inputs=inputs, input_nodes=input_nodes, before=before, outputs=result,
                progress=progress, seconds=seconds, fixed_labels=fixed_labels)


def test_outputs_exist_on_the_fixed_grid_named_after_the_inputs(brain3d_run):
    out, data = brain3d_run["outputs"], brain3d_run["data"]
    fixed_geometry = convert.volume_geometry_lps(data.fixed_volume)
    fixed_dims = data.fixed_volume.GetImageData().GetDimensions()
    for volume in (out.warped_volume, out.checkerboard_volume, out.jacobian_volume):
        np.testing.assert_allclose(np.concatenate(convert.volume_geometry_lps(volume)),
                                   np.concatenate(fixed_geometry), atol=1e-9)
        assert volume.GetImageData().GetDimensions() == fixed_dims
        assert volume.GetNodeReference(outputs.FIXED_REFERENCE) is data.fixed_volume
        assert volume.GetNodeReference(outputs.MOVING_REFERENCE) is data.moving_volume
    assert out.warped_volume.GetName() == "brain3d moving T1 registered to brain3d fixed T1"
    assert out.transform.GetName() == "brain3d moving T1 to brain3d fixed T1 transform"
    assert out.transform.IsA("vtkMRMLGridTransformNode")
    assert "checkerboard" in out.checkerboard_volume.GetName() and "Jacobian" in out.jacobian_volume.GetName()
    assert out.tre_table.GetName() == "moving landmarks TRE"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(brain3d_run["scene"])
    assert hierarchy.GetItemName(out.folder_item) == "MetaRegistration: brain3d moving T1 → brain3d fixed T1"
    in_hierarchy = [node for node in out.nodes() if hierarchy.GetItemByDataNode(node)]
    assert {out.warped_volume, out.transform, out.checkerboard_volume, out.jacobian_volume, out.tre_table,
            out.registered_landmarks, out.segment_table, out.loss_chart} <= set(in_hierarchy)
    assert all(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == out.folder_item for node in in_hierarchy)


def test_outputs_are_found_again_from_the_transform(brain3d_run):
    out = brain3d_run["outputs"]
    again = outputs.outputs_of(out.transform)
    assert again.nodes() == out.nodes()
    assert again.report == json.loads(json.dumps(out.report)) and again.results_line == out.results_line
    assert again.jacobian_colors is out.jacobian_colors
    assert outputs.input_volumes_of(out.transform) == (brain3d_run["data"].fixed_volume,
                                                       brain3d_run["data"].moving_volume)


def test_registration_improves_the_pair_and_reports_one_line(brain3d_run):
    report = brain3d_run["outputs"].report
    assert report["tre_after"]["mean"] < 0.5 * report["tre_before"]["mean"]
    assert report["ncc_after"] > report["ncc_before"]
    line = brain3d_run["outputs"].results_line
    assert line.startswith(f"TRE {report['tre_before']['mean']:.2f} → {report['tre_after']['mean']:.2f} mm")
    assert "NCC" in line and "folding" in line and "cpu" in line and "Dice" in line
    fractions = [f for f, _ in brain3d_run["progress"]]
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions) and fractions == sorted(fractions)


def test_hardening_the_transform_on_a_clone_of_the_moving_volume_gives_the_warped_volume(brain3d_run):
    scene, data, out = brain3d_run["scene"], brain3d_run["data"], brain3d_run["outputs"]
    clone = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "moving clone")
    convert.image_to_volume(convert.volume_to_image(data.moving_volume), clone)
    clone.SetAndObserveTransformNodeID(out.transform.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(clone)
    assert clone.GetParentTransformNode() is None
    hardened = convert.volume_to_image(clone)
    warped = convert.volume_to_image(out.warped_volume)
    fixed = convert.volume_to_image(data.fixed_volume)
    on_fixed_grid = sitk.Resample(hardened, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    ncc = metrics.ncc(sitk.GetArrayFromImage(on_fixed_grid), sitk.GetArrayFromImage(warped))
    assert ncc > 0.99, ncc
    scene.RemoveNode(clone)


def test_moving_landmarks_under_the_transform_land_where_the_table_says(brain3d_run):
    scene, data, out = brain3d_run["scene"], brain3d_run["data"], brain3d_run["outputs"]
    clone = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "moving landmarks clone")
    moving = data.moving_landmarks
    labels = [moving.GetNthControlPointLabel(i) for i in range(moving.GetNumberOfControlPoints())]
    convert.set_markups_points(clone, labels, slicer.util.arrayFromMarkupsControlPoints(moving))
    clone.SetAndObserveTransformNodeID(out.transform.GetID())
    slicer.vtkSlicerTransformLogic().hardenTransform(clone)
    landed = slicer.util.arrayFromMarkupsControlPoints(clone)
    table = out.tre_table.GetTable()
    count = moving.GetNumberOfControlPoints()
    labels = [table.GetValue(row, 0).ToString() for row in range(count)]
    assert labels == [clone.GetNthControlPointLabel(i) for i in range(count)]
    columns = [table.GetColumnByName(f"registered {axis} (mm)") for axis in "RAS"]
    in_table = np.array([[column.GetValue(row) for column in columns] for row in range(count)])
    np.testing.assert_allclose(landed, in_table, atol=1e-3)
    np.testing.assert_allclose(slicer.util.arrayFromMarkupsControlPoints(out.registered_landmarks), in_table, atol=1e-9)
    # measured in the fixed image, the error is close to the engine's TRE (which is measured in the moving image)
    fixed_ras = slicer.util.arrayFromMarkupsControlPoints(data.fixed_landmarks)
    in_fixed = np.linalg.norm(landed - fixed_ras, axis=1)
    tre_after = np.array([row["tre_after_mm"] for row in out.report["landmarks"]])
    assert abs(in_fixed.mean() - tre_after.mean()) < 0.3
    scene.RemoveNode(clone)


def test_table_tre_equals_the_engine_tre(brain3d_run):
    out = brain3d_run["outputs"]
    table = out.tre_table.GetTable()
    rows = out.report["landmarks"]
    before = table.GetColumnByName("TRE before (mm)")
    after = table.GetColumnByName("TRE after (mm)")
    for index, row in enumerate(rows):
        assert table.GetValue(index, 0).ToString() == row["label"]
        assert before.GetValue(index) == pytest.approx(row["tre_before_mm"], abs=1e-12)
        assert after.GetValue(index) == pytest.approx(row["tre_after_mm"], abs=1e-12)
    summary = {table.GetValue(index, 0).ToString(): index for index in range(len(rows), table.GetNumberOfRows())}
    for name in ("mean", "median", "max"):
        assert after.GetValue(summary[name]) == pytest.approx(out.report["tre_after"][name], abs=1e-12)
        assert before.GetValue(summary[name]) == pytest.approx(out.report["tre_before"][name], abs=1e-12)


def test_segment_table_has_dice_and_hd95_per_segment_name(brain3d_run):
    out = brain3d_run["outputs"]
    table = out.segment_table.GetTable()
    assert [table.GetValue(row, 0).ToString() for row in range(table.GetNumberOfRows())] == list(SEGMENTS)
    per_label = out.report["labels"]["per_label"]
    for row, value in enumerate(("1", "2")):
        assert table.GetColumnByName("Dice after").GetValue(row) == pytest.approx(per_label[value]["dice_after"])
        assert table.GetColumnByName("Dice after").GetValue(row) > table.GetColumnByName("Dice before").GetValue(row)
        hd95 = table.GetColumnByName("HD95 after (mm)").GetValue(row)
        assert hd95 == pytest.approx(per_label[value]["hd95_after_mm"])


def test_segmentation_becomes_the_label_map_it_was_made_from(brain3d_run):
    inputs = brain3d_run["inputs"]
    labels = convert.segmentation_to_labels(inputs.fixed_segmentation, inputs.fixed_volume, list(SEGMENTS), "fixed")
    expected = brain3d_run["fixed_labels"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(expected))
    np.testing.assert_allclose(labels.GetOrigin(), expected.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(labels.GetDirection(), expected.GetDirection(), atol=1e-9)


def test_jacobian_uses_a_diverging_colour_table_centred_at_one(brain3d_run):
    out = brain3d_run["outputs"]
    display = out.jacobian_volume.GetDisplayNode()
    assert display.GetColorNode() is out.jacobian_colors
    low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    assert (low + high) / 2 == pytest.approx(1.0)
    deviation = np.abs(slicer.util.arrayFromVolume(out.jacobian_volume) - 1.0)
    assert high - 1.0 == pytest.approx(max(np.percentile(deviation, 99.5), outputs.MIN_JACOBIAN_HALF_WINDOW))
    colors = out.jacobian_colors
    count = colors.GetNumberOfColors()
    rgba_low, rgba_mid, rgba_high = [0.0] * 4, [0.0] * 4, [0.0] * 4
    colors.GetColor(0, rgba_low), colors.GetColor(count // 2, rgba_mid), colors.GetColor(count - 1, rgba_high)
    assert rgba_low[2] > rgba_low[0]  # blue below 1
    assert min(rgba_mid[:3]) > 0.95  # white at 1
    assert rgba_high[0] > rgba_high[2]  # red above 1
    assert out.jacobian_volume.GetAttribute("MetaRegistration.foldingPercent") is not None


def test_loss_curve_is_a_plot_chart(brain3d_run):
    out = brain3d_run["outputs"]
    assert out.loss_table.GetTable().GetNumberOfRows() == len(out.report["loss_curve"]) == sum(FAST.iterations)
    assert out.loss_chart.GetPlotSeriesNodeID() == out.loss_series.GetID()
    assert out.loss_series.GetTableNodeID() == out.loss_table.GetID()


def test_inputs_are_unchanged(brain3d_run):
    after = {node.GetID(): node_checksum(node) for node in brain3d_run["input_nodes"]}
    assert after == brain3d_run["before"]
    assert all(node.GetParentTransformNode() is None for node in brain3d_run["input_nodes"])


def test_checkerboard_square_size_can_be_changed(brain3d_run):
    out, data = brain3d_run["outputs"], brain3d_run["data"]
    before = slicer.util.arrayFromVolume(out.checkerboard_volume).copy()
    outputs.update_checkerboard(out, data.fixed_volume, 3)
    after = slicer.util.arrayFromVolume(out.checkerboard_volume)
    assert after.shape == before.shape and not np.array_equal(after, before)
    assert out.checkerboard_volume.GetAttribute("MetaRegistration.checkerboardSquares") == "3"
    outputs.update_checkerboard(out, data.fixed_volume, FAST.checkerboard_squares)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(out.checkerboard_volume), before)


def test_align_moving_data_puts_it_under_the_output_transform(brain3d_run):
    """The panel's "Align moving data": the one action that changes inputs (their parent transform), on request."""
    inputs, out = brain3d_run["inputs"], brain3d_run["outputs"]
    moving = [inputs.moving_volume, inputs.moving_landmarks, inputs.moving_segmentation]
    logic.MetaRegistrationLogic.place_under_transform(out.transform, moving + [None])
    try:
        assert all(node.GetParentTransformNode() is out.transform for node in moving)
    finally:
        for node in moving:
            node.SetAndObserveTransformNodeID(None)


def test_cancel_mid_run_leaves_the_node_list_unchanged(brain3d_run):
    scene, inputs = brain3d_run["scene"], brain3d_run["inputs"]
    ids_before = node_ids(scene)
    slow = logic.RegistrationSettings(iterations=(400, 200, 100))
    job = logic.MetaRegistrationLogic(scene).start(logic.RegistrationInputs(inputs.fixed_volume, inputs.moving_volume),
                                                   slow)
    deadline = time.perf_counter() + 120
    while job.progress[0] < 0.02 and not job.done and time.perf_counter() < deadline:
        time.sleep(0.05)
    assert not job.done, "the run ended before it could be cancelled"
    cancelled_at = time.perf_counter()
    job.cancel()
    assert job.wait(10)
    latency = time.perf_counter() - cancelled_at
    assert logic.MetaRegistrationLogic(scene).finish(job) is None
    assert job.cancelled and job.result is None and job.progress[1] == "cancelled"
    assert node_ids(scene) == ids_before
    assert latency < 2.0, f"cancel took {latency:.1f} s"


def test_a_failed_run_raises_a_message_and_leaves_the_node_list_unchanged(brain3d_run, tmp_path):
    from MetaRegistrationLib.jobs import EngineError

    scene, inputs = brain3d_run["scene"], brain3d_run["inputs"]
    ids_before = node_ids(scene)
    settings = logic.RegistrationSettings(model=str(tmp_path / "missing.safetensors"))
    with pytest.raises(EngineError, match="missing.safetensors does not exist") as raised:
        logic.MetaRegistrationLogic(scene).run(logic.RegistrationInputs(inputs.fixed_volume, inputs.moving_volume),
                                               settings)
    assert raised.value.kind == "InputError"
    assert node_ids(scene) == ids_before


def test_outputs_are_all_or_nothing(brain3d_run, monkeypatch):
    """A failure while the output nodes are being made removes the ones already made."""
    scene, inputs = brain3d_run["scene"], brain3d_run["inputs"]
    job = logic.MetaRegistrationLogic(scene).start(logic.RegistrationInputs(inputs.fixed_volume, inputs.moving_volume),
                                                   logic.RegistrationSettings(iterations=(2, 1, 1)))
    assert job.wait(120) and job.error is None
    ids_before = node_ids(scene)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "_loss_plot", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.MetaRegistrationLogic(scene).finish(job)
    assert node_ids(scene) == ids_before


def test_bad_inputs_are_refused_before_any_work(brain3d_run):
    scene, inputs = brain3d_run["scene"], brain3d_run["inputs"]
    ids_before = node_ids(scene)
    lg = logic.MetaRegistrationLogic(scene)
    with pytest.raises(convert.NodeInputError, match="moving landmarks: none selected"):
        lg.start(logic.RegistrationInputs(inputs.fixed_volume, inputs.moving_volume, inputs.fixed_landmarks), FAST)
    with pytest.raises(convert.NodeInputError, match="same node"):
        lg.start(logic.RegistrationInputs(inputs.fixed_volume, inputs.fixed_volume), FAST)
    assert node_ids(scene) == ids_before


# ---------------------------------------------------------------------------------------------------------------------
# Slicer's slice views of each check, rendered offscreen


def rgb_of_png(path) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3].astype(np.int32)


@pytest.fixture(scope="module")
def screenshots(brain3d_run, tmp_path_factory):
    """Each check set up in the slice views and rendered to one PNG (axial, sagittal, coronal side by side)."""
    import ctypes.util

    if ctypes.util.find_library("OSMesa") is None:
        pytest.fail("offscreen rendering needs Debian's libosmesa6 (apt-get install libosmesa6; .ci/run installs it)")
    folder = Path(os.environ.get("METAREG_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    headless.slice_views((400, 400))
    scene, inputs, out = brain3d_run["scene"], brain3d_run["inputs"], brain3d_run["outputs"]
    # the segmentations are inputs of the Dice check, not of these pictures
    for segmentation in (inputs.fixed_segmentation, inputs.moving_segmentation):
        segmentation.GetDisplayNode().SetVisibility(False)
    pictures = {}
    for check in views.CHECKS:
        views.show_check(scene, check, inputs, out, 0.5, headless.slice_logics())
        layers = [(c.GetBackgroundVolumeID(), c.GetForegroundVolumeID()) for c in views._composite_nodes(scene)]
        pictures[check] = (rgb_of_png(headless.render_views_png(folder / f"slicer-{check}.png")), layers)
    for segmentation in (inputs.fixed_segmentation, inputs.moving_segmentation):
        segmentation.GetDisplayNode().SetVisibility(True)
    return pictures


def grey_fraction(rgb: np.ndarray) -> float:
    return float(np.mean(rgb.max(axis=-1) - rgb.min(axis=-1) < 10))


def assert_not_blank(rgb: np.ndarray) -> None:
    brightness = rgb.mean(axis=-1)
    assert brightness.std() > 20, "the view is blank"
    assert np.mean(brightness > 30) > 0.2, "the view is mostly black"


def test_overlay_view_shows_the_fixed_volume_under_the_registered_one(brain3d_run, screenshots):
    rgb, layers = screenshots["overlay"]
    ids = brain3d_run["inputs"].fixed_volume.GetID(), brain3d_run["outputs"].warped_volume.GetID()
    assert layers and all(layer == ids for layer in layers)
    assert_not_blank(rgb)
    assert grey_fraction(rgb) > 0.95  # greyscale anatomy (a few coloured landmark glyphs at most)


def test_checkerboard_view_shows_the_checkerboard(brain3d_run, screenshots):
    rgb, layers = screenshots["checkerboard"]
    assert all(layer == (brain3d_run["outputs"].checkerboard_volume.GetID(), None) for layer in layers)
    assert_not_blank(rgb)
    assert grey_fraction(rgb) > 0.95
    assert not np.array_equal(rgb, screenshots["overlay"][0])


def test_jacobian_view_shows_expansion_in_red_and_compression_in_blue(brain3d_run, screenshots):
    rgb, layers = screenshots["jacobian"]
    ids = brain3d_run["inputs"].fixed_volume.GetID(), brain3d_run["outputs"].jacobian_volume.GetID()
    assert all(layer == ids for layer in layers)
    assert_not_blank(rgb)
    red = np.mean(rgb[..., 0] - rgb[..., 2] > 40)
    blue = np.mean(rgb[..., 2] - rgb[..., 0] > 40)
    assert red > 0.01 and blue > 0.01, (red, blue)


def test_landmarks_view_shows_fixed_and_registered_landmarks(brain3d_run, screenshots):
    rgb, _ = screenshots["landmarks"]
    assert_not_blank(rgb)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    yellow = np.sum((r > 200) & (g > 160) & (b < 90))  # the registered moving landmarks
    pink = np.sum((r > 200) & (g > 80) & (g < 170) & (b > 80) & (b < 170))  # the fixed landmarks (Slicer's default)
    assert yellow > 30 and pink > 30, (yellow, pink)
    assert brain3d_run["outputs"].registered_landmarks.GetDisplayNode().GetVisibility()
    # in the other checks the registered landmarks are hidden
    for check in ("overlay", "checkerboard", "jacobian"):
        picture = screenshots[check][0]
        assert np.sum((picture[..., 0] > 200) & (picture[..., 1] > 160) & (picture[..., 2] < 90)) < yellow / 4


# ---------------------------------------------------------------------------------------------------------------------
# A network model through the Logic (kept last: it adds a second run's nodes to the scene)


def test_a_network_model_file_with_adaptation_steps_runs_through_the_logic(brain3d_run, tmp_path):
    """A tiny (untrained) 3D network from a .safetensors file, adapted for 3 steps: the Logic loads it by path, the
    outputs come out on the fixed grid, and the loss curve is the adaptation's."""
    from conftest import save_tiny_model

    card = {"purpose": "test", "grid": {"size": [32, 32, 32], "spacing": None}, "loss": {"similarity": "lncc"},
            "normalisation": {"method": "percentile", "low": 1.0, "high": 99.0}}
    save_tiny_model(tmp_path / "tiny3d.safetensors", card=card)
    inputs = brain3d_run["inputs"]
    settings = logic.RegistrationSettings(model=str(tmp_path / "tiny3d.safetensors"), adapt_steps=3, device="cpu")
    out = logic.MetaRegistrationLogic(brain3d_run["scene"]).run(
        logic.RegistrationInputs(inputs.fixed_volume, inputs.moving_volume), settings)
    assert out.report["method"] == "network" and out.report["adapt_steps"] == 3
    assert out.loss_table.GetTable().GetNumberOfRows() == 3
    assert out.loss_chart.GetTitle() == "Loss of the test-time adaptation"
    assert out.tre_table is None and out.registered_landmarks is None
    assert out.warped_volume.GetImageData().GetDimensions() == inputs.fixed_volume.GetImageData().GetDimensions()
