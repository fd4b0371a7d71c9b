"""The module's self-test body: the same code runs as Slicer's ScriptedLoadableModuleTest (``ctest`` in a Slicer
build, or the Reload and Test button) and in our pytest suite on slicer-core.

It loads the brain3d sample pair and its landmarks, registers it with the zoo's smallest 3D model (with a few
test-time adaptation steps) or, while the zoo has no 3D model, with the iterative method at reduced iterations, and
checks that the TRE improves, that the outputs exist, and that the inputs are untouched.
"""

from __future__ import annotations

import numpy as np

from . import logic, sampledata

#: Test-time adaptation steps when the self-test runs a network.
SELF_TEST_ADAPT_STEPS = 5
#: Iterative method levels (coarse to fine) when the zoo has no 3D model: a few seconds on a laptop CPU.
SELF_TEST_ITERATIONS = (40, 20, 10)


def self_test_settings(zoo_dir=None) -> logic.RegistrationSettings:
    """The smallest 3D zoo model with :data:`SELF_TEST_ADAPT_STEPS` adaptation steps, else the fast iterative method."""
    model = logic.smallest_zoo_model(zoo_dir)
    if model is None:
        return logic.RegistrationSettings(iterations=SELF_TEST_ITERATIONS)
    return logic.RegistrationSettings(model=model, adapt_steps=SELF_TEST_ADAPT_STEPS)


def run_self_test(scene, log=print, settings: logic.RegistrationSettings | None = None):
    """Load the sample data into ``scene``, register it, check the result; returns the outputs.

    Raises:
        AssertionError: a check failed (the message says which).
    """
    settings = settings or self_test_settings()
    log(f"MetaRegistration self-test: loading brain3d, registering with {settings.model!r}")
    data = sampledata.load_brain3d(scene)
    inputs = logic.RegistrationInputs(data.fixed_volume, data.moving_volume, data.fixed_landmarks,
                                      data.moving_landmarks)
    moving_before = _voxels(data.moving_volume)
    fixed_before = _voxels(data.fixed_volume)
    result = logic.MetaRegistrationLogic(scene).run(inputs, settings)
    assert result is not None, "the registration was cancelled"
    log(f"MetaRegistration self-test: {result.results_line}")
    before, after = result.report["tre_before"]["mean"], result.report["tre_after"]["mean"]
    assert after < before, f"TRE did not improve: {before:.2f} → {after:.2f} mm"
    assert result.report["ncc_after"] > result.report["ncc_before"], "NCC did not improve"
    for node in (result.warped_volume, result.transform, result.checkerboard_volume, result.jacobian_volume,
                 result.tre_table, result.registered_landmarks):
        assert node is not None and scene.GetNodeByID(node.GetID()) is node, "an output node is missing"
    assert np.array_equal(_voxels(data.moving_volume), moving_before), "the moving volume was modified"
    assert np.array_equal(_voxels(data.fixed_volume), fixed_before), "the fixed volume was modified"
    log("MetaRegistration self-test passed")
    return result


def _voxels(node) -> np.ndarray:
    import slicer

    return np.array(slicer.util.arrayFromVolume(node), copy=True)
