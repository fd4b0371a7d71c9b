"""Issue 17, S2 #7, #9, #10 and S3: values the library cannot use are refused where they enter, named as the caller
wrote them (a Python parameter, a command-line option, a model card's field), before any work; a batch reports a bad
row and goes on.

Every CLI case runs the real command in-process and checks the exit status, the one-line message, that no input
changed (hashes before and after) and that nothing was written (:func:`test_cli_errors.fails_cleanly`).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from metareg.core.card import GridSpec, ModelCard
from metareg.app.cli import main
from metareg.core.errors import InputError, ModelError, ParameterError
from metareg.core.iterative import IterativeConfig
from metareg.core.losses import LossConfig
from metareg.core.modelio import load_model
from metareg.core.registration import NetworkMethod, register
from metareg.learning.runlog import CHECKPOINT_NAME, RunFiles, save_checkpoint
from metareg.learning.distributed import Processes
from metareg.learning.config import TrainConfig
from metareg.learning.loops import train_loop
from conftest import save_tiny_model, tiny_network
from test_cli_errors import (FAST, blobs, empty_zoo, fails_cleanly, inputs, out, pair,  # noqa: F401
                             register_fails, snapshot, write)

# ---------------------------------------------------------------------------------------------------------------------
# Numeric options: negative, NaN, infinite, out of range, or silently ignored
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--adapt-steps", "1", "--adapt-lr", "-1"], "--adapt-lr: must be > 0, got -1"),
        (["--adapt-steps", "1", "--adapt-lr", "nan"], "--adapt-lr: must be a finite number, got nan"),
        (["--adapt-steps", "1", "--adapt-lr", "0"], "--adapt-lr: must be > 0, got 0"),
        (["--adapt-steps", "-1"], "--adapt-steps: must be >= 0, got -1"),
        (["--refine-steps", "-3"], "--refine-steps: must be >= 0, got -3"),
        (["--refine-steps", "1000000000"], "--refine-steps: must be <= 10000, got 1000000000"),
        (["--smoothness", "3"], "--smoothness: configures the iterative method; a network uses its card's loss"),
        (["--adapt-lr", "0.01"], "--adapt-lr: is the step size of test-time adaptation, which is off"),
    ],
    ids=["adapt-lr-negative", "adapt-lr-nan", "adapt-lr-zero", "adapt-steps-negative", "refine-negative",
         "refine-1e9", "smoothness-with-model", "adapt-lr-without-adaptation"],
)
def test_bad_numbers_with_a_model(extra, expected, inputs, out, capsys):
    line = register_fails(pair(inputs) + ["--model", str(inputs / "model" / "tiny.safetensors"), *extra],
                          capsys, inputs, out)
    assert expected in line


def test_training_options_are_checked_before_any_work(inputs, tmp_path, capsys):
    model = tmp_path / "new.safetensors"
    for option, value, expected in (("--batch-size", "0", "--batch-size: must be >= 1, got 0"),
                                    ("--lr", "nan", "--lr: must be a finite number, got nan"),
                                    ("--steps", "-5", "--steps: must be >= 1, got -5"),
                                    ("--augment-rotation", "-10", "--augment-rotation: must be >= 0, got -10")):
        line = fails_cleanly(["pretrain", "--tasks", "nowhere", "--out", str(model), option, value], capsys,
                             tmp_path, inputs, command="pretrain")
        assert expected in line, line


# ---------------------------------------------------------------------------------------------------------------------
# The library checks its own inputs, naming its parameters
# ---------------------------------------------------------------------------------------------------------------------


def test_register_names_its_parameters():
    fixed, moving = blobs((24, 20, 16), (1.2, 0.9, 2.0)), blobs((24, 20, 16), (1.2, 0.9, 2.0), 2.0)
    vector = sitk.Compose([moving, moving, moving])
    tiny = sitk.GetImageFromArray(np.random.default_rng(0).random((2, 2, 2)).astype(np.float32))
    cases = [
        (dict(moving=vector), "^moving: has 3 values per voxel"),
        (dict(fixed=tiny), r"^fixed: has size \(2, 2, 2\), too small to register \(every axis needs at least 8"),
        (dict(moving=np.zeros((8, 8, 8))), "^moving: must be a SimpleITK image, got ndarray"),
        (dict(method="brain-mr-3d-reptile"), "^method: must be a NetworkMethod or an IterativeConfig, got str"),
        (dict(affine="yes"), "^affine: must be True, False or None"),
        (dict(fixed_landmarks=[[0, 0, 0]]), "^fixed_landmarks: must be Landmarks"),
    ]
    for changes, expected in cases:
        arguments = {"fixed": fixed, "moving": moving, **changes}
        with pytest.raises(InputError, match=expected):
            register(arguments.pop("fixed"), arguments.pop("moving"), device="cpu", **arguments)


def test_a_network_method_names_its_parameters(inputs):
    model = load_model(inputs / "model" / "tiny.safetensors")
    cases = [
        (dict(model="brain-mr-3d-reptile"), "^model: must be a loaded model"),
        (dict(adapt_steps=True), "^adapt_steps: must be a whole number, got True"),
        (dict(adapt_steps=-1), "^adapt_steps: must be >= 0, got -1"),
        (dict(refine_steps=2.5), "^refine_steps: must be a whole number, got 2.5"),
        (dict(adapt_learning_rate=1e-3), "^adapt_learning_rate: is the step size of test-time adaptation, which is off"),
        (dict(adapt_steps=1, adapt_learning_rate=0.0), "^adapt_learning_rate: must be > 0, got 0"),
    ]
    for changes, expected in cases:
        with pytest.raises(ParameterError, match=expected):
            NetworkMethod(**{"model": model, **changes})
    method = NetworkMethod(model, adapt_steps=3)
    assert method.learning_rate == model.card.adaptation.learning_rate  # the card's, when none is given
    assert method.refinement_steps == model.card.refinement.steps
    assert NetworkMethod(model, adapt_steps=3, adapt_learning_rate=0.01, refine_steps=0).learning_rate == 0.01
    fixed = blobs((24, 20, 16), (1.2, 0.9, 2.0))
    with pytest.raises(ParameterError, match=r"^method: .*got LoadedModel \(wrap a loaded model as NetworkMethod"):
        register(fixed, fixed, model, device="cpu")


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: LossConfig(regulariser_weight=-5.0), "^LossConfig.regulariser_weight: must be >= 0, got -5"),
        (lambda: LossConfig(regulariser_weight=math.inf), "^LossConfig.regulariser_weight: must be a finite"),
        (lambda: LossConfig(ncc_window=8), "^LossConfig.ncc_window: must be odd, got 8"),
        (lambda: LossConfig(similarity="ssd"), "^LossConfig.similarity: must be one of lncc, mi, mse, ncc"),
        (lambda: IterativeConfig(learning_rate=math.nan), "^IterativeConfig.learning_rate: must be a finite"),
        (lambda: IterativeConfig(iterations=(10, -1, 5)), "^IterativeConfig.iterations: must be >= 0, got -1"),
        (lambda: IterativeConfig(iterations=(1e9, 1, 1)), "^IterativeConfig.iterations: must be a whole number"),
        (lambda: TrainConfig(batch_size=0), "^TrainConfig.batch_size: must be >= 1, got 0"),
        (lambda: GridSpec((64, 0)), "^grid.size: must be >= 4, got 0"),
    ],
    ids=["weight-negative", "weight-inf", "window-even", "similarity-unknown", "rate-nan", "iterations-negative",
         "iterations-float", "batch-zero", "grid-zero"],
)
def test_configs_refuse_values_they_cannot_use(build, expected):
    with pytest.raises(ParameterError, match=expected):
        build()


# ---------------------------------------------------------------------------------------------------------------------
# Model cards: every field checked, the settings authenticated by the weights
# ---------------------------------------------------------------------------------------------------------------------


def _copy_model(inputs: Path, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(inputs / "model" / f"tiny{suffix}", folder / f"tiny{suffix}")
    return folder / "tiny.safetensors"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda card: card["grid"].update(size=[8, 8, 8]), "its settings (architecture, grid, normalisation, loss, "
                                                          "prealign, adaptation, refinement) are not those the weights"),
        (lambda card: card.update(refinement={"steps": 1e9}), "refinement.steps: must be a whole number, got 1000000000.0"),
        (lambda card: card.update(refinement={"steps": 10**9}), "refinement.steps: must be <= 10000, got 1000000000"),
        (lambda card: card.update(refinment={"steps": 5}), "refinment: is not a card field"),
        (lambda card: card["loss"].update(regulariser_weight=-5), "loss.regulariser_weight: must be >= 0, got -5"),
        (lambda card: card["loss"].update(smoothness=3), "loss.smoothness: is not a loss setting"),
        (lambda card: card["architecture"].update(family="transformer"), "architecture.family: must be one of"),
        (lambda card: card["architecture"].update(dim=4), "architecture.dim: must be <= 3, got 4"),
        (lambda card: card["grid"].update(size=[16, 16]), "grid: has 2 axes but the network is 3-D"),
        (lambda card: card["normalisation"].update(low="1"), "normalisation.low: must be a number, got the text '1'"),
        (lambda card: card.update(prealign="rigid"), "prealign: must be one of affine, none, got the text 'rigid'"),
        (lambda card: card.update(adaptation={"learning_rate": 0}), "adaptation.learning_rate: must be > 0, got 0"),
    ],
    ids=["settings-edited", "steps-float", "steps-huge", "unknown-field", "weight-negative", "unknown-loss-key",
         "family-unknown", "dim-4", "grid-dim", "text-number", "prealign-unknown", "adapt-rate-zero"],
)
def test_a_tampered_card_is_refused(edit, expected, inputs, out, tmp_path, capsys):
    weights = _copy_model(inputs, tmp_path / "model")
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text())
    edit(card)
    card_path.write_text(json.dumps(card))
    line = register_fails(pair(inputs) + ["--model", str(weights)], capsys, inputs, out)
    assert f"--model {weights}: model card {card_path}: " in line and expected in line, line
    with pytest.raises(ModelError, match="model card"):
        load_model(weights)


def test_descriptions_and_metrics_may_change_the_settings_may_not(inputs, tmp_path):
    weights = _copy_model(inputs, tmp_path / "model")
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["purpose"] = "renamed by hand"
    card["metrics"] = {"held-out": {"tre_mm": 1.0, "command": "a benchmark"}}
    card_path.write_text(json.dumps(card))
    assert load_model(weights).card.purpose == "renamed by hand"
    card["refinement"] = {"steps": 3}
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="are not those the weights were saved with"):
        load_model(weights)


def test_weights_without_a_settings_digest_are_refused(inputs, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = _copy_model(inputs, tmp_path / "model")
    save_file(load_file(str(weights)), str(weights))  # the same tensors, no metadata
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text())
    from metareg.core.modelio import sha256_of

    card["sha256"] = sha256_of(weights)
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelError, match="carry no digest of their card's settings"):
        load_model(weights)


def test_the_zoo_cards_are_authentic():
    from metareg.core.modelio import read_index

    for entry in read_index(Path(__file__).resolve().parents[1] / "models"):
        model = load_model(Path(__file__).resolve().parents[1] / "models" / entry["file"])
        assert ModelCard.from_dict(model.card.to_dict()) == model.card  # the typed card round-trips


# ---------------------------------------------------------------------------------------------------------------------
# --resume: a checkpoint must exist, be ours, and continue the same parent
# ---------------------------------------------------------------------------------------------------------------------

TINY_2D = tiny_network(dim=2).to_config()


@pytest.fixture
def task_data():
    from metareg.core.card import Normalisation
    from metareg.learning.tasks import Pair, Task, TaskData

    pair_ = Pair(fixed_image=blobs((48, 40), (1.0, 1.0)), moving_image=blobs((48, 40), (1.0, 1.0), 1.5))
    return [TaskData(Task("pairs", [pair_]), GridSpec((32, 32)), Normalisation())]


def _card(parent_sha: str | None = None) -> ModelCard:
    training = {"parent": {"sha256": parent_sha}} if parent_sha else {}
    return ModelCard(architecture=TINY_2D, grid=GridSpec((32, 32)), training=training)


def test_resume_without_a_checkpoint_is_refused(task_data, tmp_path):
    files = RunFiles(tmp_path / "run.safetensors")
    with pytest.raises(InputError, match=r"^--resume .*last.pt: there is no checkpoint to resume"):
        train_loop(tiny_network(dim=2), _card(), task_data, TrainConfig(steps=2, batch_size=1), files,
                   Processes(), resume=True)
    assert not files.checkpoint_dir.exists() and not files.log.exists()


def test_resume_from_another_parent_is_refused(task_data, tmp_path):
    files = RunFiles(tmp_path / "run.safetensors")
    config = TrainConfig(steps=4, batch_size=1, checkpoint_every=1)
    train_loop(tiny_network(dim=2), _card("a" * 64), task_data, config, files, Processes(), stop_after=2)
    with pytest.raises(InputError, match="continues a run from another parent model"):
        train_loop(tiny_network(dim=2), _card("b" * 64), task_data, config, files, Processes(), resume=True)
    assert len(train_loop(tiny_network(dim=2), _card("a" * 64), task_data, config, files, Processes(),
                          resume=True)) == 4


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", "foreign"], ids=["empty", "garbage", "foreign"])
def test_a_damaged_or_foreign_checkpoint_is_refused(content, task_data, tmp_path):
    files = RunFiles(tmp_path / "run.safetensors")
    files.checkpoint_dir.mkdir()
    if content == "foreign":
        torch.save({"weights": torch.zeros(3)}, files.checkpoint)
    else:
        files.checkpoint.write_bytes(content)
    before = files.checkpoint.read_bytes()
    with pytest.raises(InputError, match="is not a readable training checkpoint"):
        train_loop(tiny_network(dim=2), _card(), task_data, TrainConfig(steps=2, batch_size=1), files,
                   Processes(), resume=True)
    assert files.checkpoint.read_bytes() == before  # left for the user to look at


def test_a_killed_writers_temporary_checkpoint_is_removed(tmp_path):
    """A process killed while writing leaves ``.last.pt.<pid>.tmp`` (0 bytes when killed early): the next write
    removes it; a temporary file of a process still running is kept; a failed write leaves none of its own."""
    folder = tmp_path / "run.ckpt"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, encoding="utf-8", errors="replace")
    leftover = folder / f".{CHECKPOINT_NAME}.{int(dead.stdout)}.tmp"
    leftover.write_bytes(b"")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        running = folder / f".{CHECKPOINT_NAME}.{alive.pid}.tmp"
        running.write_bytes(b"")
        save_checkpoint(folder / CHECKPOINT_NAME, {"step": 1})
        assert not leftover.exists() and running.exists()
        with pytest.raises(Exception):
            save_checkpoint(folder / CHECKPOINT_NAME, {"step": lambda: 2})  # cannot be pickled
        assert sorted(p.name for p in folder.iterdir()) == sorted([CHECKPOINT_NAME, running.name])
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------------------------------------------------------------
# evaluate: a bad row is reported in its CSV row, the batch goes on, the exit status says so
# ---------------------------------------------------------------------------------------------------------------------


def test_evaluate_reports_each_bad_row_and_goes_on(inputs, tmp_path, capsys):
    fixed, moving = inputs / "fixed.nii.gz", inputs / "moving.nii.gz"
    two_d = write(blobs((32, 28), (0.8, 1.1)), tmp_path / "flat.nii.gz")
    lines = [b"fixed,moving,fixed_landmarks,moving_landmarks",
             f"{fixed},{moving}".encode(),                       # fine
             f"{fixed},".encode(),                               # empty moving cell
             f"{fixed}".encode(),                                # short row
             f"{fixed},caf\xe9.nii.gz".encode("latin-1"),        # not UTF-8
             f"{fixed},{moving},,,extra".encode(),               # too many cells
             f"{fixed},{two_d}".encode(),                        # this pair fails: 3D and 2D
             f"{fixed},{moving}".encode()]                       # fine again
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(b"\n".join(lines) + b"\n")
    results = tmp_path / "results"
    results.mkdir()
    before = snapshot(inputs)
    rc = main(["evaluate", "--pairs", str(pairs), *FAST, "--out-csv", str(results / "per_pair.csv"),
               "--summary", str(results / "summary.json"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert snapshot(inputs) == before
    with open(results / "per_pair.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["ok", "error", "error", "error", "error", "error", "ok"]
    assert [row["line"] for row in rows] == ["2", "3", "4", "5", "6", "7", "8"]
    messages = [row["error"] for row in rows]
    assert "line 3 has no moving path" in messages[1] and "line 4 has no moving path" in messages[2]
    assert "line 5 is not UTF-8 text (byte 0xe9" in messages[3]
    assert "line 6 has 5 cells, the header 4" in messages[4]
    assert f"pair 5 (line 7) fixed {fixed} and pair 5 (line 7) moving {two_d}: are 3D and 2D" in messages[5]
    assert err.count("failed:") == 5
    summary = json.loads((results / "summary.json").read_text())
    assert (summary["pairs"], summary["succeeded"], summary["failed"]) == (7, 2, 5)
    assert sorted(p.name for p in results.iterdir()) == ["per_pair.csv", "summary.json"]


def test_training_refuses_a_pairs_csv_with_a_bad_row(tmp_path):
    from metareg.learning.tasks import read_pairs_csv

    pairs = tmp_path / "pairs.csv"
    pairs.write_text("fixed,moving\na.nii.gz,b.nii.gz\nc.nii.gz,\n")
    with pytest.raises(InputError, match=r"^--pairs .*pairs.csv: line 3 has no moving path"):
        read_pairs_csv(pairs)
    pairs.write_text("fixed,moving,weight\na.nii.gz,b.nii.gz,1\n")
    with pytest.raises(InputError, match="has unknown columns weight"):
        read_pairs_csv(pairs)


def test_a_card_saved_from_a_dict_is_checked(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(ModelError, match="refinement.steps: must be >= 0, got -1"):
        save_tiny_model(folder / "m.safetensors", card={"refinement": {"steps": -1}})
    assert list(folder.iterdir()) == []
