"""Landmark evaluation after a registration: the TRE table follows the landmarks while the user checks them.

After a run, a clinician moves a landmark that was placed a little off, or adds a fixed/moving pair with the same
label at an anatomical point of interest, and wants its error at once. :func:`update_tre_table` recomputes the run's
TRE table and its registered landmarks from the output transform's field, with no new registration:

- the field is read back exactly from the output grid transform node (:func:`convert.grid_transform_to_field`), so
  the numbers are the engine's: the fixed landmark ``p`` mapped through the field, ``p + d(p)`` (ITK's linear
  interpolation, zero displacement outside the fixed grid, :func:`metareg.core.geometry.map_points`), against its moving
  partner ``q``: ``TRE after = |p + d(p) − q|``; ``TRE before = |p − q|`` (identity). Unchanged landmarks get the
  report's numbers (to rounding); a 2D run measures in the slice's plane, as the engine does;
- the registered landmarks are the moving landmarks under the transform (its transform to parent, moving → fixed),
  as when the run made them;
- points are paired by label (fixed order); a point without a partner, a label used twice in one list and a point
  without a position are skipped; the summary rows (mean, median, max) are recomputed.

Positions are the markups' own (local) coordinates: the coordinates the registration used, also when the moving
landmarks were placed under the output transform to show them aligned (Align moving data).

:class:`LandmarkWatcher` observes both point lists and calls :func:`update_tre_table` on every change. It holds no qt:
the Widget makes one after each run and stops it when the run's outputs or the inputs change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import slicer

from . import convert, outputs

LOG = logging.getLogger("MetaRegistration")

#: The markups events after which the table is recomputed (all exist on vtkMRMLMarkupsNode in Slicer ≥ 5.0 and in
#: slicer-core): a point added, removed, moved or renamed, or its position set or cleared.
WATCHED_EVENTS = ("PointAddedEvent", "PointRemovedEvent", "PointModifiedEvent", "PointPositionDefinedEvent",
                  "PointPositionUndefinedEvent")


@dataclass
class LandmarkEvaluation:
    """The landmark errors of a run for the current landmarks (LPS/RAS mm).

    Attributes:
        labels: the paired labels, in the fixed list's order.
        fixed_ras, moving_ras: ``(N, 3)`` the paired points.
        mapped_ras: ``(N, 3)`` the fixed points mapped through the field (``p + d(p)``, in the moving image; a 2D run
            keeps the fixed point's S).
        registered_ras: ``(N, 3)`` the moving points under the output transform (in the fixed image).
        tre_before_mm, tre_after_mm: ``(N,)``.
        skipped: labels left out: no partner, used twice in one list (fixed list's first, then the moving one's).
        dim: 2 or 3 (2: errors in the slice's plane).
    """

    labels: list[str]
    fixed_ras: np.ndarray
    moving_ras: np.ndarray
    mapped_ras: np.ndarray
    registered_ras: np.ndarray
    tre_before_mm: np.ndarray
    tre_after_mm: np.ndarray
    skipped: list[str] = field(default_factory=list)
    dim: int = 3

    def summary(self) -> dict:
        """``{"tre_before": {...}, "tre_after": {...}}`` as in the engine's report (n, mean, std, median, p90, max);
        empty without paired landmarks."""
        from metareg.core.metrics import tre_summary

        if not self.labels:
            return {}
        return {"tre_before": tre_summary(self.tre_before_mm), "tre_after": tre_summary(self.tre_after_mm)}

    def results_line(self, report: dict) -> str:
        """The run's results line (:func:`.outputs.results_line`) with the TRE of these landmarks (none when no pair
        is left), the rest (NCC, folding, seconds, device) as the run reported it."""
        current = {key: value for key, value in report.items() if key not in ("tre_before", "tre_after")}
        return outputs.results_line({**current, **self.summary()})




def pair_by_label(fixed_labels, fixed_points, moving_labels, moving_points):
    """``(labels, fixed (N, 3), moving (N, 3), skipped)``: the labels found exactly once in each list, in the fixed
    list's order; ``skipped`` the others (no partner, or used twice in one list)."""
    fixed_count = {label: list(fixed_labels).count(label) for label in fixed_labels}
    moving_count = {label: list(moving_labels).count(label) for label in moving_labels}
    moving_index = {label: index for index, label in enumerate(moving_labels)}
    labels, fixed_rows, moving_rows, skipped = [], [], [], []
    for index, label in enumerate(fixed_labels):
        if fixed_count[label] == 1 and moving_count.get(label) == 1:
            labels.append(label)
            fixed_rows.append(fixed_points[index])
            moving_rows.append(moving_points[moving_index[label]])
        elif label not in skipped:
            skipped.append(label)
    skipped += [label for label in dict.fromkeys(moving_labels) if label not in labels and label not in skipped]
    return (labels, np.asarray(fixed_rows, dtype=np.float64).reshape(-1, 3),
            np.asarray(moving_rows, dtype=np.float64).reshape(-1, 3), skipped)


class FieldOfTransform:
    """The engine's field read back from an output grid transform node, and its ITK transform, kept until the node's
    transform changes (reading a 3D field copies it once: tens of milliseconds; mapping points is then cheap)."""

    def __init__(self, transform_node):
        self.transform_node = transform_node
        self._transform = None  # held, so that VTK hands back the same Python object while it is the same transform
        self._stamp = None
        self._field = None
        self._itk_transform = None

    @property
    def field(self):
        """The displacement field (sitk vector image, LPS mm, on the fixed grid; 2D for a 2D run)."""
        transform = self.transform_node.GetTransformFromParent()
        grid = transform.GetDisplacementGrid() if transform is not None and transform.IsA("vtkGridTransform") else None
        stamp = (transform.GetMTime() if transform is not None else 0, grid.GetMTime() if grid is not None else 0)
        if self._field is None or transform is not self._transform or stamp != self._stamp:
            from metareg.core.geometry import field_to_transform

            self._field = convert.grid_transform_to_field(self.transform_node)
            self._itk_transform = field_to_transform(self._field)
            self._transform, self._stamp = transform, stamp
        return self._field

    @property
    def dim(self) -> int:
        return self.field.GetDimension()

    def map_points_lps(self, points_lps: np.ndarray) -> np.ndarray:
        """``x + d(x)`` for ``(N, dim)`` LPS points, as the engine's TRE does
        (:func:`metareg.core.geometry.map_points`)."""
        from metareg.core.geometry import map_points

        field_image = self.field
        return map_points(field_image, np.asarray(points_lps, dtype=np.float64).reshape(-1, field_image.GetDimension()),
                          self._itk_transform)


def evaluate_landmarks(transform_node, fixed_markups, moving_markups,
                       field: FieldOfTransform | None = None) -> LandmarkEvaluation:
    """TRE before/after and the registered points for the current landmarks (see the module docstring); no nodes
    change."""
    field = field or FieldOfTransform(transform_node)
    dim = field.dim
    fixed_labels, fixed_points = convert.markups_points(fixed_markups)
    moving_labels, moving_points = convert.markups_points(moving_markups)
    labels, fixed_ras, moving_ras, skipped = pair_by_label(fixed_labels, fixed_points, moving_labels, moving_points)
    p = fixed_ras * convert.RAS_FROM_LPS
    q = moving_ras * convert.RAS_FROM_LPS
    mapped_lps = p.copy()
    if labels:
        mapped_lps[:, :dim] = field.map_points_lps(p[:, :dim])
    before = np.linalg.norm(p[:, :dim] - q[:, :dim], axis=1)
    after = np.linalg.norm(mapped_lps[:, :dim] - q[:, :dim], axis=1)
    registered = outputs.registered_points_ras(transform_node, moving_ras) if labels else np.zeros((0, 3))
    return LandmarkEvaluation(labels, fixed_ras, moving_ras, mapped_lps * convert.RAS_FROM_LPS, registered, before,
                              after, skipped, dim)


def _set_registered_points(markups, labels, points_ras) -> None:
    """Move the registered landmarks in place when the labels are the same (no points removed or added), else
    replace them."""
    same = (markups.GetNumberOfControlPoints() == len(labels)
            and all(markups.GetNthControlPointLabel(i) == label for i, label in enumerate(labels)))
    was_modifying = markups.StartModify()
    if same:
        for index, point in enumerate(points_ras):
            markups.SetNthControlPointPosition(index, *[float(c) for c in point])
    else:
        convert.set_markups_points(markups, labels, points_ras)
    markups.EndModify(was_modifying)


def update_tre_table(run_outputs: outputs.RegistrationOutputs, fixed_markups, moving_markups,
                     field: FieldOfTransform | None = None) -> LandmarkEvaluation:
    """Recompute the run's TRE table (the columns of :func:`outputs.tre_rows`) and its registered landmarks from the
    output transform's field for the current fixed and moving landmarks; no registration runs.

    Args:
        run_outputs: the run's :class:`~.outputs.RegistrationOutputs` (e.g. :func:`.outputs.outputs_of` of its
            transform). When the run had no landmarks, the table and the registered landmarks are made now (named
            after ``moving_markups``, in the run's folder, referenced from the transform) and set on it.
        fixed_markups, moving_markups: the point lists (only read).
        field: a :class:`FieldOfTransform` of the run's transform to reuse (saves reading the field again).

    Returns:
        The :class:`LandmarkEvaluation` now in the table. The run's report (the transform's attribute) is not changed:
        it stays the record of the registration.
    """
    transform = run_outputs.transform
    evaluation = evaluate_landmarks(transform, fixed_markups, moving_markups, field)
    columns = outputs.tre_columns(evaluation.labels, evaluation.tre_before_mm, evaluation.tre_after_mm,
                                  evaluation.registered_ras, evaluation.fixed_ras, evaluation.dim)
    scene = transform.GetScene()
    created = []
    if run_outputs.tre_table is None:
        run_outputs.tre_table = outputs._table(scene, f"{moving_markups.GetName()} TRE", columns, created)
    else:
        outputs.fill_table(run_outputs.tre_table, columns)
    if run_outputs.registered_landmarks is None:
        run_outputs.registered_landmarks = outputs.registered_landmarks_node(
            scene, f"{moving_markups.GetName()} registered", evaluation.labels, evaluation.registered_ras, created)
    else:
        _set_registered_points(run_outputs.registered_landmarks, evaluation.labels, evaluation.registered_ras)
    if created:  # a run without landmarks: give the new nodes the run's references and folder
        fixed_node, moving_node = outputs.input_volumes_of(transform)
        for node in created:
            if fixed_node is not None and moving_node is not None:
                outputs._mark(node, fixed_node, moving_node)
        for role in ("tre_table", "registered_landmarks"):
            transform.SetNodeReferenceID(outputs.OUTPUT_REFERENCES[role], getattr(run_outputs, role).GetID())
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if hierarchy is not None and run_outputs.folder_item:
            for node in created:
                item = hierarchy.GetItemByDataNode(node)
                if item:
                    hierarchy.SetItemParent(item, run_outputs.folder_item)
                else:
                    hierarchy.CreateItem(run_outputs.folder_item, node)
    return evaluation


class LandmarkWatcher:
    """Keeps a run's TRE table up to date while the user edits the fixed and moving landmarks (no qt).

    Observes :data:`WATCHED_EVENTS` on both markups nodes and calls :func:`update_tre_table` after each; the field is
    read from the transform once and reused. The markups are only read. :meth:`stop` removes the observers (the Widget
    calls it before the next run, or when the outputs or the landmark selection change).

    Args:
        run_outputs: the run's outputs.
        fixed_markups, moving_markups: the point lists to watch.
        on_update: called with the :class:`LandmarkEvaluation` after each update (e.g. to refresh the results line).
        update_now: recompute once at once (not needed right after a run: the table already holds the run's numbers).
    """

    def __init__(self, run_outputs, fixed_markups, moving_markups, on_update=None, update_now: bool = False):
        if fixed_markups is None or moving_markups is None:
            raise ValueError("watching landmarks needs a fixed and a moving point list")
        self.outputs = run_outputs
        self.fixed_markups = fixed_markups
        self.moving_markups = moving_markups
        self.on_update = on_update
        self.field = FieldOfTransform(run_outputs.transform)
        self.updates = 0
        self.last: LandmarkEvaluation | None = None
        self.last_error: BaseException | None = None
        self._observations: list[tuple[object, int]] = []
        for node in (fixed_markups, moving_markups):
            for name in WATCHED_EVENTS:
                self._observations.append((node, node.AddObserver(getattr(slicer.vtkMRMLMarkupsNode, name),
                                                                  self._on_event)))
        if update_now:
            self.update()

    @property
    def active(self) -> bool:
        return bool(self._observations)

    def update(self) -> LandmarkEvaluation | None:
        """Recompute the table now; None (and the watcher stops) when the run's transform has left the scene."""
        if self.outputs.transform.GetScene() is None:
            self.stop()
            return None
        for role in ("tre_table", "registered_landmarks"):  # an output deleted by the user: made again
            node = getattr(self.outputs, role)
            if node is not None and node.GetScene() is None:
                setattr(self.outputs, role, None)
        self.last = update_tre_table(self.outputs, self.fixed_markups, self.moving_markups, self.field)
        self.updates += 1
        if self.on_update is not None:
            self.on_update(self.last)
        return self.last

    def _on_event(self, caller, event) -> None:
        # an exception must not escape into VTK's event loop: log it and keep watching
        try:
            self.update()
            self.last_error = None
        except Exception as error:  # noqa: BLE001
            self.last_error = error
            LOG.exception("MetaRegistration: could not update the TRE table")

    def stop(self) -> None:
        """Remove the observers (idempotent)."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []
