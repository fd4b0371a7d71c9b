"""Slice-view set-ups for the visual checks of a registration, through MRML nodes only.

Each check sets the layers of every slice view (composite nodes) and, where it helps, where the slices cut:

- ``overlay``: fixed volume in the background, registered (warped) moving volume on top, opacity adjustable.
- ``checkerboard``: the checkerboard volume alone (fixed and registered squares side by side).
- ``jacobian``: fixed volume with the Jacobian determinant on top in the diverging colours (blue < 1 < red).
- ``landmarks``: fixed volume with the registered volume faintly on top, the fixed landmarks and the registered moving
  landmarks, slices through the landmark with the largest remaining TRE.

The input nodes are never modified (not even their display); only output nodes' display and the views change.
"""

from __future__ import annotations

import numpy as np
import slicer

CHECKS = ("overlay", "checkerboard", "jacobian", "landmarks")
#: The colour of the registered landmarks (yellow), distinct from Slicer's default point colour.
REGISTERED_LANDMARKS_COLOR = (1.0, 0.85, 0.1)
#: The Jacobian colours are pale near 1; below this opacity they vanish in the anatomy.
JACOBIAN_MIN_OPACITY = 0.6


def _composite_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def set_layers(scene, background=None, foreground=None, opacity: float = 0.5) -> None:
    """Background and foreground volume of every slice view (no label layer)."""
    for composite in _composite_nodes(scene):
        composite.SetBackgroundVolumeID(background.GetID() if background is not None else None)
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(float(opacity))
        composite.SetLabelVolumeID(None)


def set_foreground_opacity(scene, opacity: float) -> None:
    """The overlay opacity slider: foreground opacity of every slice view."""
    for composite in _composite_nodes(scene):
        composite.SetForegroundOpacity(float(opacity))


def _show_markups(node, visible: bool) -> None:
    if node is not None and node.GetDisplayNode() is not None:
        node.GetDisplayNode().SetVisibility(visible)


def is_2d(outputs) -> bool:
    """Whether a run registered single slices (2D): its registered volume has one slice."""
    volume = outputs.warped_volume
    return volume is not None and volume.GetImageData() is not None and min(volume.GetImageData().GetDimensions()) == 1


def show_axial_view_only(scene) -> bool:
    """Switch the layout to the Red (axial) slice view alone, where a 2D run's single slices show (the other views cut
    them edge-on); False when the scene has no layout node (nothing changed)."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is None:
        return False
    layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutOneUpRedSliceView)
    return True


def jump_to(scene, point_ras) -> None:
    """Move every slice view so it cuts through a RAS point (field of view kept)."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *[float(c) for c in point_ras],
                                          slicer.vtkMRMLSliceNode.OffsetJumpSlice)


def worst_landmark(outputs) -> tuple[str, np.ndarray] | None:
    """Label and registered RAS position of the landmark with the largest TRE after registration.

    Read from the TRE table and the registered landmarks as they are now (a :class:`.landmarkwatch.LandmarkWatcher`
    keeps them up to date while the user edits the landmarks), not from the run's report.
    """
    markups, table_node = outputs.registered_landmarks, outputs.tre_table
    if markups is None or table_node is None:
        return None
    table = table_node.GetTable()
    after = table.GetColumnByName("TRE after (mm)")
    count = min(markups.GetNumberOfControlPoints(), table.GetNumberOfRows())  # landmark rows come first
    if after is None or count == 0:
        return None
    values = [after.GetValue(row) for row in range(count)]
    worst = max(range(count), key=lambda row: -np.inf if np.isnan(values[row]) else values[row])
    position = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPosition(worst, position)
    return markups.GetNthControlPointLabel(worst), np.asarray(position)


def show_check(scene, check: str, inputs, outputs, opacity: float = 0.5, slice_logics=()) -> None:
    """Set the slice views up for one check (see the module docstring).

    Args:
        scene: the MRML scene.
        check: one of :data:`CHECKS`.
        inputs: the run's :class:`~MetaRegistrationLib.logic.RegistrationInputs`.
        outputs: the run's :class:`~MetaRegistrationLib.outputs.RegistrationOutputs`.
        opacity: foreground opacity (overlay; the Jacobian gets at least :data:`JACOBIAN_MIN_OPACITY`).
        slice_logics: slice logics to fit to the volumes afterwards (``slicer.app.applicationLogic()
            .GetSliceLogics()`` in Slicer); none: the views are not refitted.
    """
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; choose one of {', '.join(CHECKS)}")
    _show_markups(outputs.registered_landmarks, check == "landmarks")
    if check == "overlay":
        set_layers(scene, inputs.fixed_volume, outputs.warped_volume, opacity)
    elif check == "checkerboard":
        set_layers(scene, outputs.checkerboard_volume, None, 0.0)
    elif check == "jacobian":
        set_layers(scene, inputs.fixed_volume, outputs.jacobian_volume, max(opacity, JACOBIAN_MIN_OPACITY))
    else:
        set_layers(scene, inputs.fixed_volume, outputs.warped_volume, 0.0)
        display = outputs.registered_landmarks.GetDisplayNode() if outputs.registered_landmarks else None
        if display is not None:
            display.SetSelectedColor(*REGISTERED_LANDMARKS_COLOR)
            display.SetColor(*REGISTERED_LANDMARKS_COLOR)
            display.SetGlyphScale(2.0)
            display.SetTextScale(2.0)
    for logic in slice_logics:
        logic.FitSliceToAll()
    if check == "landmarks":
        worst = worst_landmark(outputs)
        if worst is not None:
            jump_to(scene, worst[1])
