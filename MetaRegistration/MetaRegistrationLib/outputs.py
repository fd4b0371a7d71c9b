"""The output nodes of a registration, named after the inputs, made only when the whole run has succeeded.

Every output node carries node references to the fixed and moving volumes it came from (``MetaRegistration.fixed``,
``MetaRegistration.moving``) and sits in one subject-hierarchy folder per run. Inputs are only read, never modified.

A 2D run (two single-slice volumes) gives single-slice output volumes on the fixed volume's slice, a single-slice
grid transform in its plane, and TRE measured in that plane (x/y), as the engine measures it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import vtk

from . import convert

FIXED_REFERENCE = "MetaRegistration.fixed"
MOVING_REFERENCE = "MetaRegistration.moving"
REPORT_ATTRIBUTE = "MetaRegistration.report"
#: Node references from the output transform to the other outputs of its run (so a saved scene finds them again).
OUTPUT_REFERENCES = {
    "warped_volume": "MetaRegistration.warped",
    "checkerboard_volume": "MetaRegistration.checkerboard",
    "jacobian_volume": "MetaRegistration.jacobian",
    "tre_table": "MetaRegistration.treTable",
    "registered_landmarks": "MetaRegistration.registeredLandmarks",
    "segment_table": "MetaRegistration.segmentTable",
    "loss_table": "MetaRegistration.lossTable",
    "loss_chart": "MetaRegistration.lossChart",
    "loss_series": "MetaRegistration.lossSeries",
}
JACOBIAN_COLORS_NAME = "MetaRegistration Jacobian (blue < 1 < red)"
#: How far from 1 the Jacobian colour table reaches at least (so a near-identity map still shows its colours).
MIN_JACOBIAN_HALF_WINDOW = 0.2


@dataclass
class RegistrationOutputs:
    """The nodes one successful run added to the scene (None where the inputs did not call for one)."""

    warped_volume: object
    transform: object
    checkerboard_volume: object
    jacobian_volume: object
    jacobian_colors: object
    tre_table: object | None = None
    registered_landmarks: object | None = None
    segment_table: object | None = None
    loss_table: object | None = None
    loss_chart: object | None = None
    loss_series: object | None = None
    folder_item: int = 0
    report: dict = field(default_factory=dict)
    results_line: str = ""

    def nodes(self) -> list:
        """The output nodes (not the shared Jacobian colour table), in creation order."""
        return [node for node in (self.warped_volume, self.transform, self.checkerboard_volume, self.jacobian_volume,
                                  self.tre_table, self.registered_landmarks, self.segment_table, self.loss_table,
                                  self.loss_series, self.loss_chart) if node is not None]


def results_line(report: dict) -> str:
    """The panel's line for a report as JSON data (the engine's :meth:`RegistrationReport.summary_line`)."""
    from metareg.core.report import RegistrationReport

    return RegistrationReport.from_dict(report).summary_line()


def _unique(scene, base: str) -> str:
    return scene.GenerateUniqueName(base)


def _mark(node, fixed_node, moving_node) -> None:
    node.SetNodeReferenceID(FIXED_REFERENCE, fixed_node.GetID())
    node.SetNodeReferenceID(MOVING_REFERENCE, moving_node.GetID())


def jacobian_colors(scene):
    """The diverging colour table of the Jacobian maps, made once per scene and shared by all runs.

    Blue below 1 (compression), white at 1, red above 1 (expansion).
    """
    existing = scene.GetFirstNodeByName(JACOBIAN_COLORS_NAME)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", JACOBIAN_COLORS_NAME)
    node.SetTypeToUser()
    count = 256
    node.SetNumberOfColors(count)
    for index in range(count):
        t = index / (count - 1) * 2.0 - 1.0  # -1 .. 1 over the display range; 0 = Jacobian 1
        if t < 0:  # white → blue
            rgb = (1.0 + 0.9 * t, 1.0 + 0.7 * t, 1.0 + 0.1 * t)
        else:  # white → red
            rgb = (1.0 - 0.1 * t, 1.0 - 0.8 * t, 1.0 - 0.9 * t)
        node.SetColor(index, f"{index}", *rgb, 1.0)
    node.SetAttribute("Category", "MetaRegistration")
    return node


def jacobian_window(jacobian: sitk.Image) -> tuple[float, float]:
    """Display range centred at 1: ``(1 - w, 1 + w)`` with ``w`` the 99.5th percentile of ``|J - 1|`` (at least
    :data:`MIN_JACOBIAN_HALF_WINDOW`); values beyond it show in the end colours (folding, ``J <= 0``, in full blue)."""
    deviation = np.abs(sitk.GetArrayViewFromImage(jacobian).astype(np.float64) - 1.0)
    half = max(float(np.percentile(deviation, 99.5)), MIN_JACOBIAN_HALF_WINDOW)
    return 1.0 - half, 1.0 + half


def _volume(scene, name: str, image: sitk.Image, created: list, reference=None):
    """A new scalar volume of ``image``; a 2D image becomes a single slice in the plane of ``reference``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", _unique(scene, name))
    created.append(node)
    convert.image_to_volume(image, node, reference)
    node.CreateDefaultDisplayNodes()
    return node


def _copy_window_level(source_node, target_node) -> None:
    source = source_node.GetDisplayNode()
    target = target_node.GetDisplayNode()
    if source is None or target is None or not source.IsA("vtkMRMLScalarVolumeDisplayNode"):
        return
    target.SetAndObserveColorNodeID(source.GetColorNodeID())
    target.AutoWindowLevelOff()
    target.SetWindowLevel(source.GetWindow(), source.GetLevel())


def _table(scene, name: str, columns: list[tuple[str, str, list]], created: list):
    """A table node from ``(title, "string" | "double", values)`` columns."""
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", _unique(scene, name))
    created.append(node)
    fill_table(node, columns)
    return node


def fill_table(node, columns: list[tuple[str, str, list]]) -> None:
    """Replace the columns of a table node with ``(title, "string" | "double", values)`` columns (None → NaN), with
    one Modified event."""
    table = node.GetTable()
    was_modifying = node.StartModify()
    while table.GetNumberOfColumns():
        table.RemoveColumn(table.GetNumberOfColumns() - 1)
    for title, kind, values in columns:
        array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
        array.SetName(title)
        for value in values:
            array.InsertNextValue(str(value) if kind == "string" else float("nan") if value is None else float(value))
        table.AddColumn(array)
    table.Modified()
    node.Modified()
    node.EndModify(was_modifying)


#: The summary rows of the TRE table, after one row per landmark.
TRE_SUMMARY = {"mean": np.mean, "median": np.median, "max": np.max}


def tre_rows(report: dict, labels: list[str], registered_ras: np.ndarray,
             fixed_ras: np.ndarray, dim: int = 3) -> list[tuple[str, str, list]]:
    """Columns of the TRE table: one row per landmark, then mean, median and max.

    ``TRE before/after (mm)`` are the engine's numbers (fixed landmark mapped through the field vs its moving
    partner). ``registered R/A/S`` is where the moving landmark lands when placed under the output transform, and the
    last column is its distance to the fixed landmark (the same error measured in the fixed image; for a 2D run
    (``dim=2``) in the slice's plane, R/A only, as the engine's 2D TRE).
    """
    by_label = {row["label"]: row for row in report["landmarks"]}
    before = [by_label[label]["tre_before_mm"] for label in labels]
    after = [by_label[label]["tre_after_mm"] for label in labels]
    return tre_columns(labels, before, after, registered_ras, fixed_ras, dim)


def tre_columns(labels, before, after, registered_ras: np.ndarray, fixed_ras: np.ndarray,
                dim: int = 3) -> list[tuple[str, str, list]]:
    """The TRE table's columns from per-landmark numbers (see :func:`tre_rows`); no landmark: no rows at all."""
    labels, before, after = list(labels), [float(v) for v in before], [float(v) for v in after]
    registered_ras = np.asarray(registered_ras, dtype=np.float64).reshape(-1, 3)
    fixed_ras = np.asarray(fixed_ras, dtype=np.float64).reshape(-1, 3)
    in_fixed = [float(v) for v in np.linalg.norm((registered_ras - fixed_ras)[:, :dim], axis=1)]
    summary = TRE_SUMMARY if labels else {}
    names = labels + list(summary)
    blank = [None] * len(summary)
    return [
        ("landmark", "string", names),
        ("TRE before (mm)", "double", before + [float(f(before)) for f in summary.values()]),
        ("TRE after (mm)", "double", after + [float(f(after)) for f in summary.values()]),
        ("registered R (mm)", "double", [float(v) for v in registered_ras[:, 0]] + blank),
        ("registered A (mm)", "double", [float(v) for v in registered_ras[:, 1]] + blank),
        ("registered S (mm)", "double", [float(v) for v in registered_ras[:, 2]] + blank),
        ("distance to fixed landmark (mm)", "double", in_fixed + [float(f(in_fixed)) for f in summary.values()]),
    ]


def create_outputs(scene, inputs, prepared, result, checkerboard_squares: int = 8) -> RegistrationOutputs:
    """Add the output nodes of a finished registration to the scene.

    Args:
        scene: the MRML scene.
        inputs: the :class:`~MetaRegistrationLib.logic.RegistrationInputs` (nodes) of the run.
        prepared: the :class:`~MetaRegistrationLib.logic.PreparedInputs` (images and landmarks read from them).
        result: the engine's :class:`metareg.core.registration.RegistrationResult`.
        checkerboard_squares: squares along each axis of the checkerboard.

    If anything fails, the nodes made so far are removed again and the error is raised: the scene gets all outputs
    or none.
    """
    from metareg.app.visualize import checkerboard

    fixed_node, moving_node = inputs.fixed_volume, inputs.moving_volume
    fixed_name, moving_name = fixed_node.GetName(), moving_node.GetName()
    report = result.report
    created: list = []
    try:
        warped = _volume(scene, f"{moving_name} registered to {fixed_name}", result.warped, created, fixed_node)
        _copy_window_level(moving_node, warped)

        transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode",
                                            _unique(scene, f"{moving_name} to {fixed_name} transform"))
        created.append(transform)
        convert.set_grid_transform(transform, result.field, fixed_node)
        transform.SetAttribute(REPORT_ATTRIBUTE, json.dumps(report))

        board = _volume(scene, f"{fixed_name} vs {moving_name} checkerboard",
                        checkerboard(prepared.fixed_image, result.warped, checkerboard_squares), created, fixed_node)
        board.SetAttribute("MetaRegistration.checkerboardSquares", str(int(checkerboard_squares)))
        board.GetDisplayNode().AutoWindowLevelOff()
        board.GetDisplayNode().SetWindowLevelMinMax(0.0, 1.0)

        jacobian = _volume(scene, f"{moving_name} to {fixed_name} Jacobian determinant", result.jacobian, created,
                           fixed_node)
        had_colors = scene.GetFirstNodeByName(JACOBIAN_COLORS_NAME) is not None
        colors = jacobian_colors(scene)
        if not had_colors:
            created.append(colors)
        display = jacobian.GetDisplayNode()
        display.SetAndObserveColorNodeID(colors.GetID())
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(*jacobian_window(result.jacobian))
        jacobian.SetAttribute("MetaRegistration.foldingPercent", f"{100 * report['folding_fraction']:.4f}")

        outputs = RegistrationOutputs(warped, transform, board, jacobian, colors, report=report,
                                      results_line=results_line(report))

        if report.get("landmarks"):
            _landmark_outputs(scene, inputs, prepared, report, outputs, created)
        if report.get("labels") and prepared.segment_names:
            rows = report["labels"]["per_label"]
            values = sorted(rows, key=int)
            outputs.segment_table = _table(scene, f"{moving_name} to {fixed_name} segment overlap", [
                ("segment", "string", [prepared.segment_names[int(v) - 1] for v in values]),
                ("Dice before", "double", [rows[v]["dice_before"] for v in values]),
                ("Dice after", "double", [rows[v]["dice_after"] for v in values]),
                ("HD95 after (mm)", "double", [rows[v]["hd95_after_mm"] for v in values]),
                ("mean surface distance after (mm)", "double", [rows[v]["mean_surface_distance_after_mm"]
                                                                for v in values]),
            ], created)
        if result.loss_curve:
            _loss_plot(scene, f"{moving_name} to {fixed_name}", report, result.loss_curve, outputs, created)

        for node in outputs.nodes():
            _mark(node, fixed_node, moving_node)
        for role, reference in OUTPUT_REFERENCES.items():
            node = getattr(outputs, role)
            if node is not None:
                transform.SetNodeReferenceID(reference, node.GetID())
        outputs.folder_item = _folder(scene, f"MetaRegistration: {moving_name} → {fixed_name}", outputs.nodes())
        return outputs
    except BaseException:
        for node in reversed(created):
            scene.RemoveNode(node)
        raise


def _landmark_outputs(scene, inputs, prepared, report, outputs, created) -> None:
    """The TRE table and the moving landmarks as they land in the fixed image under the output transform."""
    from metareg.core.landmarks import match_landmarks

    labels, fixed_lps, moving_lps = match_landmarks(prepared.fixed_landmarks, prepared.moving_landmarks)
    registered_ras = registered_points_ras(outputs.transform, moving_lps * convert.RAS_FROM_LPS)
    fixed_ras = fixed_lps * convert.RAS_FROM_LPS
    name = inputs.moving_landmarks.GetName()
    dim = int(report.get("dimension", prepared.fixed_image.GetDimension()))
    outputs.tre_table = _table(scene, f"{name} TRE", tre_rows(report, labels, registered_ras, fixed_ras, dim), created)
    outputs.registered_landmarks = registered_landmarks_node(scene, f"{name} registered", labels, registered_ras,
                                                             created)


def registered_points_ras(transform_node, moving_ras: np.ndarray) -> np.ndarray:
    """Where moving RAS points land under the output transform (its transform to parent, moving → fixed: what
    hardening does), ``(N, 3)`` RAS mm."""
    to_parent = transform_node.GetTransformToParent()
    return np.array([to_parent.TransformPoint(tuple(float(c) for c in p)) for p in np.asarray(moving_ras)],
                    dtype=np.float64).reshape(-1, 3)


def registered_landmarks_node(scene, name: str, labels, registered_ras: np.ndarray, created: list):
    """The locked, yellow point list of the registered moving landmarks."""
    markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", _unique(scene, name))
    created.append(markups)
    convert.set_markups_points(markups, labels, registered_ras)
    markups.SetLocked(True)
    markups.CreateDefaultDisplayNodes()
    markups.GetDisplayNode().SetSelectedColor(1.0, 0.85, 0.1)
    markups.GetDisplayNode().SetColor(1.0, 0.85, 0.1)
    return markups


def _loss_plot(scene, name: str, report: dict, curve: list[float], outputs, created) -> None:
    """A table (step, loss) and a line chart of it for the Plots module."""
    what = "test-time adaptation" if report.get("method") == "network" else "iterative optimisation"
    outputs.loss_table = _table(scene, f"{name} loss curve", [
        ("step", "double", list(range(1, len(curve) + 1))),
        ("loss", "double", list(curve)),
    ], created)
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", _unique(scene, f"{name} loss"))
    created.append(series)
    series.SetAndObserveTableNodeID(outputs.loss_table.GetID())
    series.SetXColumnName("step")
    series.SetYColumnName("loss")
    series.SetPlotType(series.PlotTypeScatter)
    series.SetMarkerStyle(series.MarkerStyleNone)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", _unique(scene, f"{name} loss chart"))
    created.append(chart)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"Loss of the {what}")
    chart.SetXAxisTitle("step")
    chart.SetYAxisTitle("loss")
    chart.SetLegendVisibility(False)
    outputs.loss_series, outputs.loss_chart = series, chart


def _folder(scene, name: str, nodes: list) -> int:
    """Put the nodes in a new subject-hierarchy folder; returns its item id (0 when the scene has no hierarchy)."""
    import slicer

    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if hierarchy is None:
        return 0
    folder = hierarchy.CreateFolderItem(hierarchy.GetSceneItemID(), name)
    for node in nodes:
        if node.GetHideFromEditors():
            continue
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, folder)
        else:  # the hierarchy logic adds items as nodes arrive in desktop Slicer; elsewhere we add them here
            hierarchy.CreateItem(folder, node)
    return folder


def update_checkerboard(outputs: RegistrationOutputs, fixed_node, squares: int) -> None:
    """Recompute the checkerboard volume of a run with ``squares`` squares along each axis (inputs untouched)."""
    from metareg.app.visualize import checkerboard

    board = checkerboard(convert.volume_to_image(fixed_node, "fixed volume", allow_2d=True),
                         convert.volume_to_image(outputs.warped_volume, "registered volume", allow_2d=True),
                         int(squares))
    convert.image_to_volume(board, outputs.checkerboard_volume, fixed_node)
    outputs.checkerboard_volume.SetAttribute("MetaRegistration.checkerboardSquares", str(int(squares)))


def outputs_of(transform_node) -> RegistrationOutputs:
    """The outputs of the run that made ``transform_node``, found again through its node references (e.g. after
    the scene was saved and loaded)."""
    if transform_node is None or transform_node.GetAttribute(REPORT_ATTRIBUTE) is None:
        raise ValueError("not an output transform of MetaRegistration")
    found = {role: transform_node.GetNodeReference(reference) for role, reference in OUTPUT_REFERENCES.items()}
    report = json.loads(transform_node.GetAttribute(REPORT_ATTRIBUTE))
    colors = found["jacobian_volume"].GetDisplayNode().GetColorNode() if found["jacobian_volume"] else None
    return RegistrationOutputs(transform=transform_node, jacobian_colors=colors, report=report,
                               results_line=results_line(report), **found)


def input_volumes_of(transform_node) -> tuple:
    """(fixed volume, moving volume) of the run that made ``transform_node`` (None where deleted since)."""
    return (transform_node.GetNodeReference(FIXED_REFERENCE), transform_node.GetNodeReference(MOVING_REFERENCE))
