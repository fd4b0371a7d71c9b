"""Landmark evaluation in the viewer (issue 13, section 3B) on real MRML (slicer-core), after one brain3d run (fast
iterative settings): when the user moves a landmark, adds a fixed/moving pair with the same label or removes one, the
TRE table follows, recomputed from the output transform's field with no new registration.

Expected numbers come from the engine's own field (the one the worker wrote, read back by the job), mapped with
:func:`metareg.core.geometry.map_points`, and from VTK's transform from parent (an independent path, to 0.1 µm).
"""

import hashlib
import json
import time

import numpy as np
import pytest

import slicer  # slicer-core, installed by `./run test` through the project's `slicer` extra

from MetaRegistrationLib import convert, headless, landmarkwatch, logic, outputs, sampledata, views
from metareg.core.geometry import map_points

pytestmark = [pytest.mark.slicer, pytest.mark.slow]  # every test needs a registration in the engine process

FAST = logic.RegistrationSettings(iterations=(40, 20, 10), checkerboard_squares=6)
SHIFT_RAS = np.array([3.0, 0.0, 0.0])  # the known move of a moving landmark: 3 mm to the right


@pytest.fixture(scope="module")
def run():
    """brain3d with its 32 landmarks, registered once; the engine's field kept from the job."""
    app = headless.get_app()
    views.set_layers(app.scene, None, None)  # slice views left by other test modules: no errors on clear
    headless.clear_scene()
    scene = app.scene
    data = sampledata.load_brain3d(scene)
    inputs = logic.RegistrationInputs(data.fixed_volume, data.moving_volume, data.fixed_landmarks,
                                      data.moving_landmarks)
    the_logic = logic.MetaRegistrationLogic(scene)
    job = the_logic.start(inputs, FAST)
    while not job.wait(0.05):
        pass
    engine_field = job.result.field
    result = the_logic.finish(job)
    return dict(scene=scene, data=data, outputs=result, field=engine_field)


def clone_markups(scene, node, name):
    clone = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    convert.set_markups_points(clone, labels, slicer.util.arrayFromMarkupsControlPoints(node))
    return clone


@pytest.fixture()
def watched(run):
    """Clones of the run's landmarks, watched; the table recomputed for them at once."""
    scene, data = run["scene"], run["data"]
    fixed = clone_markups(scene, data.fixed_landmarks, "fixed clone")
    moving = clone_markups(scene, data.moving_landmarks, "moving clone")
    watcher = landmarkwatch.LandmarkWatcher(run["outputs"], fixed, moving, update_now=True)
    yield dict(run, fixed=fixed, moving=moving, watcher=watcher)
    watcher.stop()
    scene.RemoveNode(fixed)
    scene.RemoveNode(moving)


def table_rows(outputs_) -> dict:
    """label -> {column title: value} of the TRE table (landmark and summary rows)."""
    table = outputs_.tre_table.GetTable()
    titles = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    rows = {}
    for row in range(table.GetNumberOfRows()):
        values = {title: table.GetValue(row, c) for c, title in enumerate(titles)}
        rows[values.pop("landmark").ToString()] = {title: value.ToDouble() for title, value in values.items()}
    return rows


def expected_tre_after(field, fixed_ras, moving_ras) -> float:
    """|p + d(p) - q| with the engine's field and map_points (LPS)."""
    p = np.asarray(fixed_ras, dtype=np.float64) * convert.RAS_FROM_LPS
    q = np.asarray(moving_ras, dtype=np.float64) * convert.RAS_FROM_LPS
    return float(np.linalg.norm(map_points(field, p[None])[0] - q))


def position(node, index) -> np.ndarray:
    point = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(index, point)
    return np.asarray(point)


def checksum(node) -> str:
    digest = hashlib.sha256(slicer.util.arrayFromMarkupsControlPoints(node).tobytes())
    digest.update("|".join(node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())).encode())
    digest.update(str(node.GetParentTransformNode()).encode())
    return digest.hexdigest()


def test_recomputed_table_equals_the_engine_report(watched):
    """Unchanged landmarks: the recomputed TRE is the engine's (report) to 1e-6 mm, the summary rows too; VTK's
    transform from parent gives the same mapped points to 0.1 µm (so it is what the viewer shows)."""
    out = watched["outputs"]
    rows = table_rows(out)
    report = out.report
    for row in report["landmarks"]:
        assert rows[row["label"]]["TRE after (mm)"] == pytest.approx(row["tre_after_mm"], abs=1e-6)
        assert rows[row["label"]]["TRE before (mm)"] == pytest.approx(row["tre_before_mm"], abs=1e-6)
    for name in ("mean", "median", "max"):
        assert rows[name]["TRE after (mm)"] == pytest.approx(report["tre_after"][name], abs=1e-6)
        assert rows[name]["TRE before (mm)"] == pytest.approx(report["tre_before"][name], abs=1e-6)
    evaluation = watched["watcher"].last
    by_label = dict(zip(evaluation.labels, evaluation.tre_after_mm))
    worst = max(abs(by_label[row["label"]] - row["tre_after_mm"]) for row in report["landmarks"])
    print(f"largest |recomputed TRE after - report TRE after| on brain3d: {worst:.1e} mm")
    assert evaluation.summary()["tre_after"]["mean"] == pytest.approx(report["tre_after"]["mean"], abs=1e-6)
    from_parent = out.transform.GetTransformFromParent()
    by_vtk = np.array([from_parent.TransformPoint(tuple(p)) for p in evaluation.fixed_ras])
    np.testing.assert_allclose(by_vtk, evaluation.mapped_ras, atol=1e-4)
    worst_vtk = np.max(np.abs(np.linalg.norm(by_vtk - evaluation.moving_ras, axis=1) - evaluation.tre_after_mm))
    print(f"largest |TRE by VTK's transform from parent - engine TRE| on brain3d: {worst_vtk:.2e} mm")


def test_moving_a_moving_landmark_by_3_mm_updates_its_row_and_the_mean(watched):
    out, moving, fixed, watcher = watched["outputs"], watched["moving"], watched["fixed"], watched["watcher"]
    before = table_rows(out)
    updates = watcher.updates
    label = moving.GetNthControlPointLabel(5)
    old = position(moving, 5)
    moving.SetNthControlPointPosition(5, *(old + SHIFT_RAS))  # what dragging the point in a view does
    assert watcher.updates > updates and watcher.last_error is None
    after = table_rows(out)
    expected = expected_tre_after(watched["field"], position(fixed, 5), old + SHIFT_RAS)
    assert after[label]["TRE after (mm)"] == pytest.approx(expected, abs=1e-6)
    assert after[label]["TRE after (mm)"] - before[label]["TRE after (mm)"] == pytest.approx(
        expected - before[label]["TRE after (mm)"], abs=1e-6)
    assert abs(after[label]["TRE after (mm)"] - before[label]["TRE after (mm)"]) > 0.5  # it really changed
    expected_before = float(np.linalg.norm(position(fixed, 5) - old - SHIFT_RAS))
    assert after[label]["TRE before (mm)"] == pytest.approx(expected_before, abs=1e-9)
    others = [name for name in before if name not in (label, "mean", "median", "max")]
    assert all(after[name]["TRE after (mm)"] == pytest.approx(before[name]["TRE after (mm)"], abs=1e-9)
               for name in others)
    landmark_after = [after[name]["TRE after (mm)"] for name in others + [label]]
    assert after["mean"]["TRE after (mm)"] == pytest.approx(np.mean(landmark_after), abs=1e-9)
    assert after["max"]["TRE after (mm)"] == pytest.approx(np.max(landmark_after), abs=1e-9)
    assert after["mean"]["TRE after (mm)"] != pytest.approx(before["mean"]["TRE after (mm)"], abs=1e-3)
    line = watcher.last.results_line(out.report)
    assert line.startswith(f"TRE {after['mean']['TRE before (mm)']:.2f} → {after['mean']['TRE after (mm)']:.2f} mm "
                           f"(mean of {len(out.report['landmarks'])})") and "NCC" in line
    # the registered landmark moved with it (moving → fixed under the transform)
    registered = out.registered_landmarks
    assert registered.GetNthControlPointLabel(5) == label
    landed = np.array(out.transform.GetTransformToParent().TransformPoint(tuple(old + SHIFT_RAS)))
    np.testing.assert_allclose(position(registered, 5), landed, atol=1e-9)
    assert after[label]["registered R (mm)"] == pytest.approx(landed[0], abs=1e-9)


def test_adding_a_pair_with_a_new_label_adds_a_row_and_removing_one_takes_it_away(watched):
    out, moving, fixed, watcher = watched["outputs"], watched["moving"], watched["fixed"], watched["watcher"]
    count = len(out.report["landmarks"])
    p = position(fixed, 0) + np.array([4.0, -6.0, 5.0])
    q = position(moving, 0) + np.array([4.5, -5.0, 4.0])
    fixed.AddControlPoint(*p, "my check")  # no partner yet: skipped
    assert "my check" not in table_rows(out) and "my check" in watcher.last.skipped
    moving.AddControlPoint(*q, "my check")
    rows = table_rows(out)
    assert "my check" in rows and len(rows) == count + 1 + 3
    assert rows["my check"]["TRE after (mm)"] == pytest.approx(expected_tre_after(watched["field"], p, q), abs=1e-6)
    assert rows["my check"]["TRE before (mm)"] == pytest.approx(np.linalg.norm(p - q), abs=1e-9)
    assert out.registered_landmarks.GetNumberOfControlPoints() == count + 1
    assert rows["mean"]["TRE after (mm)"] == pytest.approx(
        np.mean([rows[name]["TRE after (mm)"] for name in rows if name not in ("mean", "median", "max")]), abs=1e-9)
    # remove a pair's moving point: its row goes
    gone = moving.GetNthControlPointLabel(3)
    moving.RemoveNthControlPoint(3)
    rows = table_rows(out)
    assert gone not in rows and len(rows) == count + 3
    assert gone not in [out.registered_landmarks.GetNthControlPointLabel(i)
                        for i in range(out.registered_landmarks.GetNumberOfControlPoints())]
    # a point whose position is cleared is skipped too, and comes back when placed again
    label = fixed.GetNthControlPointLabel(7)
    saved = position(fixed, 7)
    fixed.UnsetNthControlPointPosition(7)
    assert label not in table_rows(out)
    fixed.SetNthControlPointPosition(7, *saved)
    assert label in table_rows(out)


def test_renaming_a_point_to_a_duplicate_label_skips_that_label(watched):
    out, moving = watched["outputs"], watched["moving"]
    first, second = moving.GetNthControlPointLabel(0), moving.GetNthControlPointLabel(1)
    moving.SetNthControlPointLabel(1, first)  # now 'first' twice, 'second' without a partner
    rows = table_rows(out)
    assert first not in rows and second not in rows and len(rows) == len(out.report["landmarks"]) - 2 + 3
    assert watched["watcher"].last_error is None


def test_updates_are_cheap_and_run_no_registration(watched):
    scene, out, moving, watcher = watched["scene"], watched["outputs"], watched["moving"], watched["watcher"]
    transform_mtime = out.transform.GetMTime()
    field_mtime = out.transform.GetTransformFromParent().GetMTime()
    report = out.transform.GetAttribute(outputs.REPORT_ATTRIBUTE)
    nodes = scene.GetNumberOfNodes()
    timings, computing = [], []
    for step in range(10):  # like dragging a point
        started = time.perf_counter()
        moving.SetNthControlPointPosition(2, *(position(moving, 2) + np.array([0.3, 0.0, 0.0])))
        timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        landmarkwatch.evaluate_landmarks(out.transform, watched["fixed"], moving, watcher.field)
        computing.append(time.perf_counter() - started)
    assert watcher.updates >= 10 and watcher.last_error is None
    assert out.transform.GetMTime() == transform_mtime
    assert out.transform.GetTransformFromParent().GetMTime() == field_mtime
    assert out.transform.GetAttribute(outputs.REPORT_ATTRIBUTE) == report
    assert json.loads(report) == json.loads(json.dumps(out.report))
    assert scene.GetNumberOfNodes() == nodes
    print(f"TRE table update after a point move (32 landmarks): computing {1000 * np.median(computing):.1f} ms; "
          f"with the table and point list updates (and any slice views re-rendering) median "
          f"{1000 * np.median(timings):.1f} ms, max {1000 * max(timings):.1f} ms")
    assert np.median(computing) < 0.02
    assert np.median(timings) < 0.5  # offscreen software rendering of open slice views included, when there are any


def test_the_watcher_does_not_modify_the_markups_and_stops(run):
    """Watching the run's own input landmarks: they are only read; after stop() edits no longer update the table."""
    data, out = run["data"], run["outputs"]
    nodes = (data.fixed_landmarks, data.moving_landmarks)
    before = [(checksum(node), node.GetMTime()) for node in nodes]
    watcher = landmarkwatch.LandmarkWatcher(out, *nodes, update_now=True)
    for _ in range(3):
        watcher.update()
    assert [(checksum(node), node.GetMTime()) for node in nodes] == before
    watcher.stop()
    assert not watcher.active
    clone = clone_markups(run["scene"], data.moving_landmarks, "moving after stop")
    watcher = landmarkwatch.LandmarkWatcher(out, data.fixed_landmarks, clone)
    watcher.stop()
    updates = watcher.updates
    clone.SetNthControlPointPosition(0, *(position(clone, 0) + SHIFT_RAS))
    assert watcher.updates == updates
    run["scene"].RemoveNode(clone)


def test_moving_landmarks_under_the_output_transform_are_read_in_their_own_coordinates(watched):
    """Align moving data puts the moving landmarks under the output transform; the TRE stays the registration's."""
    out, moving, watcher = watched["outputs"], watched["moving"], watched["watcher"]
    logic.MetaRegistrationLogic.place_under_transform(out.transform, [moving])
    watcher.update()
    rows = table_rows(out)
    for row in out.report["landmarks"]:
        assert rows[row["label"]]["TRE after (mm)"] == pytest.approx(row["tre_after_mm"], abs=1e-6)
    moving.SetAndObserveTransformNodeID(None)


def test_the_landmarks_view_jumps_to_the_worst_landmark_of_the_table(watched):
    out, moving, fixed = watched["outputs"], watched["moving"], watched["fixed"]
    moving.SetNthControlPointPosition(9, *(position(moving, 9) + np.array([0.0, 25.0, 0.0])))
    label, where = views.worst_landmark(out)
    assert label == moving.GetNthControlPointLabel(9)
    np.testing.assert_allclose(where, position(out.registered_landmarks, 9), atol=0)


def test_a_run_without_landmarks_gets_a_table_when_landmarks_are_watched(run):
    """The outputs of a run without landmarks: watching a pair of point lists makes the table and the registered
    landmarks, in the run's folder."""
    out = run["outputs"]
    bare = outputs.RegistrationOutputs(out.warped_volume, out.transform, out.checkerboard_volume, out.jacobian_volume,
                                       out.jacobian_colors, folder_item=out.folder_item, report=out.report)
    scene = run["scene"]
    fixed = clone_markups(scene, run["data"].fixed_landmarks, "fixed later")
    moving = clone_markups(scene, run["data"].moving_landmarks, "moving later")
    table_reference = out.transform.GetNodeReferenceID(outputs.OUTPUT_REFERENCES["tre_table"])
    watcher = landmarkwatch.LandmarkWatcher(bare, fixed, moving, update_now=True)
    try:
        assert bare.tre_table is not None and bare.tre_table is not out.tre_table
        assert bare.tre_table.GetName() == "moving later TRE"
        assert bare.registered_landmarks.GetNumberOfControlPoints() == len(out.report["landmarks"])
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(bare.tre_table)) == out.folder_item
    finally:
        watcher.stop()
        for node in (bare.tre_table, bare.registered_landmarks, fixed, moving):
            scene.RemoveNode(node)
        out.transform.SetNodeReferenceID(outputs.OUTPUT_REFERENCES["tre_table"], table_reference)
        out.transform.SetNodeReferenceID(outputs.OUTPUT_REFERENCES["registered_landmarks"],
                                         out.registered_landmarks.GetID())
