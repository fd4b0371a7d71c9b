"""Adapt a model to my images, on real MRML (slicer-core): fine-tune a tiny 3D network on the brain3d sample volumes
loaded in a scene, through the module's Logic, in the engine's child process with progress and cancel.

A few steps of a tiny network on a coarse grid, so each run takes seconds.
"""

import json

import pytest

from conftest import save_tiny_model
from MetaRegistrationLib import convert, finetune, headless, logic, sampledata
from test_slicer_brain3d import node_checksum, node_ids

pytestmark = pytest.mark.slicer


@pytest.fixture(scope="module")
def parent_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("zoo") / "tiny3d.safetensors",
                           card={"purpose": "test parent", "grid": {"size": [32, 40, 32], "spacing": None}})


@pytest.fixture()
def scene_volumes(sample_dir):
    scene = headless.get_app().scene
    fixed = sampledata.load_volume(scene, sample_dir / "brain3d_fixed_T1.nii.gz", "brain3d fixed T1")
    moving = [sampledata.load_volume(scene, sample_dir / f"brain3d_moving_{c}.nii.gz", f"brain3d moving {c}")
              for c in ("T1", "T2")]
    yield scene, fixed, moving
    for node in [fixed, *moving]:
        scene.RemoveNode(node)


@pytest.mark.slow
def test_adapting_a_model_to_scene_volumes_saves_a_new_model_with_its_card(scene_volumes, parent_model, tmp_path):
    from metareg.core.modelio import load_model, sha256_of

    scene, fixed, moving = scene_volumes
    before = {node.GetID(): node_checksum(node) for node in [fixed, *moving]}
    ids = node_ids(scene)
    folder = tmp_path / "my models" / "nested"  # created when missing
    seen = []
    path = logic.MetaRegistrationLogic(scene).run_finetune(
        finetune.FinetuneInputs(fixed_volume=fixed, moving_volumes=[*moving, fixed]),  # the fixed one is skipped
        finetune.FinetuneSettings(parent=str(parent_model), steps=4, device="cpu", model_dir=folder, name="my brain"),
        progress=lambda fraction, message: seen.append((fraction, message)))

    assert path == folder / "my-brain.safetensors" and path.is_file()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["name"] == "my-brain"
    assert card["training"]["stage"] == "finetune"
    assert card["training"]["steps"] == 4
    assert card["training"]["parent"]["sha256"] == sha256_of(parent_model)
    assert card["training"]["tasks"][0]["pairs"] == 2
    assert card["grid"]["size"] == [32, 40, 32]
    assert len(card["training"]["loss_curve"]) == 4
    assert "tiny3d" in card["purpose"]
    loaded = load_model(path)
    assert loaded.card.sha256 == sha256_of(path) != sha256_of(parent_model)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no training leftovers
    assert all(0.0 <= fraction <= 1.0 for fraction, _ in seen)
    # the scene is unchanged and the new model is offered in the panel's list
    assert node_ids(scene) == ids
    assert {node.GetID(): node_checksum(node) for node in [fixed, *moving]} == before
    choices = logic.model_choices(tmp_path / "no zoo", user_model_dir=folder)
    assert [c.value for c in choices] == [logic.ITERATIVE, str(path)]
    # a second run with the same name does not overwrite the first
    again = logic.MetaRegistrationLogic(scene).run_finetune(
        finetune.FinetuneInputs(fixed_volume=fixed, moving_volumes=moving[:1]),
        finetune.FinetuneSettings(parent=str(path), steps=3, device="cpu", model_dir=folder, name="my brain"))
    assert again == folder / "my-brain-2.safetensors"
    assert json.loads(again.with_suffix(".json").read_text())["training"]["parent"]["sha256"] == sha256_of(path)


@pytest.mark.slow
def test_adapting_to_a_pairs_csv(parent_model, sample_dir, tmp_path):
    """Fine-tuning on the pairs of a CSV file writes a new model: the parent's network with other weights (the steps
    moved them), a card naming the parent, the pairs and the steps; the parent's file is left as it was."""
    import torch

    from metareg.core.modelio import load_model, sha256_of

    csv = tmp_path / "pairs.csv"
    csv.write_text(f"fixed,moving\n{sample_dir / 'brain3d_fixed_T1.nii.gz'},{sample_dir / 'brain3d_moving_T2.nii.gz'}\n")
    parent_sha256 = sha256_of(parent_model)
    scene = headless.get_app().scene
    path = logic.MetaRegistrationLogic(scene).run_finetune(
        finetune.FinetuneInputs(pairs_csv=csv),
        finetune.FinetuneSettings(parent=str(parent_model), steps=3, device="cpu", model_dir=tmp_path / "out"))
    card = json.loads(path.with_suffix(".json").read_text())
    assert path.stem.startswith("tiny3d-adapted-") and card["training"]["tasks"][0]["name"] == "pairs"
    assert card["training"]["tasks"][0]["pairs"] == 1 and card["training"]["steps"] == 3
    assert len(card["training"]["loss_curve"]) == 3
    assert card["training"]["parent"]["sha256"] == parent_sha256 == sha256_of(parent_model)
    parent, child = load_model(parent_model).network.state_dict(), load_model(path).network.state_dict()
    assert {k: v.shape for k, v in child.items()} == {k: v.shape for k, v in parent.items()}  # the same network
    changed = [k for k in parent if not torch.equal(parent[k], child[k])]
    assert len(changed) > len(parent) // 2, changed  # the fine-tuning moved the weights, not just saved the parent's


@pytest.mark.slow
def test_cancel_leaves_no_model_and_the_scene_unchanged(scene_volumes, parent_model, tmp_path):
    """Cancel mid-training: within 2 s the worker is gone, its temporary folder too, no model file is written."""
    import time

    from test_slicer_engine_process import process_gone

    scene, fixed, moving = scene_volumes
    ids = node_ids(scene)
    before = {node.GetID(): node_checksum(node) for node in [fixed, *moving]}
    folder = tmp_path / "models"
    job = logic.MetaRegistrationLogic(scene).start_finetune(
        finetune.FinetuneInputs(fixed_volume=fixed, moving_volumes=moving),
        finetune.FinetuneSettings(parent=str(parent_model), steps=5000, device="cpu", model_dir=folder))
    work, pid = job.folder, job.pid
    deadline = time.perf_counter() + 300
    while "step" not in job.progress[1]:
        assert not job.done and time.perf_counter() < deadline, job.error
        time.sleep(0.02)
    cancelled_at = time.perf_counter()
    job.cancel()
    assert job.wait(10)
    latency = time.perf_counter() - cancelled_at
    assert latency < 2.0, f"the fine-tuning worker took {latency:.2f} s to end"
    assert process_gone(pid) and not work.exists()
    assert logic.MetaRegistrationLogic(scene).finish_finetune(job) is None
    assert list(folder.iterdir()) == []
    assert node_ids(scene) == ids
    assert {node.GetID(): node_checksum(node) for node in [fixed, *moving]} == before


@pytest.mark.slow
def test_fine_tuning_goes_on_across_a_scene_close(scene_volumes, parent_model, tmp_path):
    """It reads only copies: removing the volumes it was started from changes nothing."""
    scene, fixed, moving = scene_volumes
    lib = logic.MetaRegistrationLogic(scene)
    job = lib.start_finetune(finetune.FinetuneInputs(fixed_volume=fixed, moving_volumes=moving),
                             finetune.FinetuneSettings(parent=str(parent_model), steps=3, device="cpu",
                                                       model_dir=tmp_path / "models"))
    for node in [fixed, *moving]:
        scene.RemoveNode(node)
    assert job.wait(300)
    path = lib.finish_finetune(job)
    assert path is not None and path.is_file() and path.with_suffix(".json").is_file()
    assert len(job.loss_curve) == 3


def test_unusable_inputs_give_a_message_and_start_nothing(scene_volumes, parent_model, tmp_path):
    scene, fixed, moving = scene_volumes
    lib = logic.MetaRegistrationLogic(scene)
    cases = [
        (finetune.FinetuneInputs(fixed_volume=fixed, moving_volumes=[fixed]), str(parent_model), "at least one volume"),
        (finetune.FinetuneInputs(moving_volumes=moving), str(parent_model), "fixed volume"),
        (finetune.FinetuneInputs(fixed_volume=fixed, moving_volumes=moving), logic.ITERATIVE, "network model"),
        (finetune.FinetuneInputs(fixed_volume=fixed, moving_volumes=moving), "no-such-model", "unknown model"),
        (finetune.FinetuneInputs(pairs_csv=tmp_path / "missing.csv"), str(parent_model), "does not exist"),
    ]
    for inputs, parent, message in cases:
        with pytest.raises(convert.NodeInputError, match=message):
            lib.start_finetune(inputs, finetune.FinetuneSettings(parent=parent, steps=3, model_dir=tmp_path / "m"))
