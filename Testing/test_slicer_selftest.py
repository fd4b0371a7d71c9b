"""The module's self-test body (MetaRegistrationLib.selftest), run here on slicer-core exactly as Slicer runs it."""

import pytest

from MetaRegistrationLib import headless, logic, selftest

pytestmark = pytest.mark.slicer


@pytest.mark.slow
def test_self_test_body_passes_on_slicer_core():
    headless.get_app()
    headless.clear_scene()
    messages = []
    result = selftest.run_self_test(headless.get_app().scene, log=messages.append)
    assert messages[-1] == "MetaRegistration self-test passed"
    assert result.report["tre_after"]["mean"] < result.report["tre_before"]["mean"]


def test_self_test_uses_the_smallest_3d_zoo_model_when_there_is_one(tmp_path):
    """With a zoo, the self-test picks its smallest 3D model for the sample's T1w pair (not a T1/T2 model) and adapts
    it for a few steps (no registration here)."""
    import json

    from conftest import save_tiny_model

    assert selftest.self_test_settings(tmp_path).model == logic.ITERATIVE  # no index: iterative method
    entries = []
    for name, channels in (("big-3d", [16, 16]), ("small-3d", [4, 4]), ("tiny-2d", [2, 2]), ("tiny-t2-3d", [2, 2])):
        dim = 2 if name.endswith("2d") else 3
        save_tiny_model(tmp_path / f"{name}.safetensors", dim, {"purpose": f"{name} test model"}, channels=channels)
        entries.append({"name": name, "file": f"{name}.safetensors", "dimension": dim, "purpose": "test",
                        "modality": "MR T1w (fixed) / T2w (moving)" if "t2" in name else "MR T1w"})
    (tmp_path / "index.json").write_text(json.dumps({"models": entries}))
    settings = selftest.self_test_settings(tmp_path)
    assert settings.model == "small-3d" and settings.adapt_steps == selftest.SELF_TEST_ADAPT_STEPS
    choices = logic.model_choices(tmp_path)  # 3D models first, then 2D ones (for single-slice volumes)
    assert [choice.value for choice in choices] == [logic.ITERATIVE, "big-3d", "small-3d", "tiny-t2-3d", "tiny-2d"]
    assert "2D" in choices[-1].title
