"""The model zoo that ships in models/: every entry loads, is what its card says, and registers a real pair."""

from __future__ import annotations

import json

import pytest
import SimpleITK as sitk

from conftest import REPO
from metareg.core.landmarks import read_landmarks
from metareg.core.modelio import load_model, read_index, sha256_of
from metareg.core.registration import NetworkMethod, register

ZOO = REPO / "models"
ENTRIES = read_index(ZOO)


HELD_OUT = {2: "fundus-2d-test", 3: "brain-mr-3d-test"}


def held_out_task(entry: dict) -> str:
    """The held-out task a model's card must report: the unseen 2D domain, or the 3D brain test pairs of its modality."""
    if entry["dimension"] == 2:
        return HELD_OUT[2]
    return "brain-mr-3d-t2-test" if "T2w" in entry["modality"] else HELD_OUT[3]


def test_the_zoo_lists_its_models():
    assert {e["name"] for e in ENTRIES} >= {"multidomain-2d-pretrained", "multidomain-2d-reptile"}
    for entry in ENTRIES:
        for key in ("name", "file", "sha256", "dimension", "grid", "modality", "domain", "family", "parent",
                    "purpose"):
            assert key in entry, (entry["name"], key)
        assert sha256_of(ZOO / entry["file"]) == entry["sha256"]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_each_card_says_how_it_was_made_and_how_well_it_does(entry):
    card = json.loads((ZOO / entry["file"]).with_suffix(".json").read_text())
    assert card["name"] == entry["name"] and card["sha256"] == entry["sha256"]
    assert card["training"]["retrain_command"].startswith("metareg data fetch && metareg ")
    assert card["training"]["loss_curve"] and card["training"]["tasks"]
    if entry["parent"]:
        parent = next(e for e in ENTRIES if e["name"] == entry["parent"])
        assert card["training"]["parent"]["sha256"] == parent["sha256"]
    held_out = card["metrics"][held_out_task(entry)]
    assert "command" in held_out and held_out["pairs"] > 0
    methods = held_out["methods"]
    assert any(name.endswith("+0 steps") for name in methods) and any(name.endswith("+10 steps") for name in methods)
    assert "elastix affine+bspline" in methods  # measured in the same run


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_each_model_registers_its_sample_pair(entry, sample_dir):
    """2D models: the 2D sample pair (NCC must rise). 3D models: the 3D brain sample pair with its 32 AFIDs, T1 or
    T2 moving as the model's modality: the network alone must bring TRE (against the known warp) well below the start,
    and the refinement its card asks for must improve on the network."""
    model = load_model(entry["name"], ZOO)
    if entry["dimension"] == 2:
        fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
        moving = sitk.ReadImage(str(sample_dir / "brain2d_moving.nii.gz"))
        result = register(fixed, moving, method=NetworkMethod(model), device="cpu")
        assert result.report.ncc_after > result.report.ncc_before
    else:
        contrast = "T2" if "T2w" in entry["modality"] else "T1"
        fixed = sitk.ReadImage(str(sample_dir / "brain3d_fixed_T1.nii.gz"))
        moving = sitk.ReadImage(str(sample_dir / f"brain3d_moving_{contrast}.nii.gz"))
        landmarks = {"fixed_landmarks": read_landmarks(sample_dir / "brain3d_fixed_landmarks.mrk.json"),
                     "moving_landmarks": read_landmarks(sample_dir / "brain3d_moving_landmarks.mrk.json")}
        network_only = register(fixed, moving, method=NetworkMethod(model, refine_steps=0), device="cpu", **landmarks)
        assert network_only.report.tre_after["mean"] < 0.5 * network_only.report.tre_before["mean"]
        assert network_only.report.folding_fraction == 0.0  # diffeomorphic network
        result = register(fixed, moving, method=NetworkMethod(model), device="cpu", **landmarks)  # with the card's refinement
        assert result.report.refine_steps > 0
        assert result.report.tre_after["mean"] < 0.8 * network_only.report.tre_after["mean"]
    assert result.report.folding_fraction < 0.001
