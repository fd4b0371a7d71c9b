"""Learning on small real 2D images: pretraining, Reptile arithmetic, fine-tuning, torchrun, kill-and-resume."""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from metareg.learning.augment import AugmentConfig
from metareg.core.errors import InputError
from metareg.core.geometry import warp_tensor
from metareg.core.losses import LossConfig, registration_loss
from metareg.core.modelio import load_model
from metareg.core.networks import RegistrationNetwork
from metareg.learning.tasks import TaskData, adjacent_slice_pairs, load_task
from metareg.core.card import GridSpec, ModelCard, Normalisation
from metareg.learning.distributed import Processes
from metareg.learning.config import ReptileConfig, TrainConfig
from metareg.learning.runlog import RunFiles
from metareg.learning.loops import adapt_to_task, reptile_loop, reptile_update, train_loop
from metareg.learning.sampling import draw_sample, draw_synthetic_sample, generator

TINY = {"family": "unet", "dim": 2, "encoder_channels": [8, 16, 16], "decoder_channels": [16, 16, 16, 8]}
GRID = GridSpec((64, 64))
SPEC = ModelCard(architecture=TINY, grid=GRID, loss=LossConfig(similarity="lncc", regulariser_weight=1.0))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_task(root: Path, name: str, volume: Path, step: int = 2, every: int = 6) -> Path:
    """A task folder of adjacent-slice pairs (seed 000) of a real volume, in the `metareg data fetch` layout."""
    folder = root / "tasks" / name
    (folder / "images").mkdir(parents=True)
    pairs = adjacent_slice_pairs(sitk.ReadImage(str(volume)), step=step)[::every]
    rows = ["fixed,moving"]
    for i, pair in enumerate(pairs):
        sitk.WriteImage(pair.fixed_image, str(folder / "images" / f"{i}_fixed.nii.gz"))
        sitk.WriteImage(pair.moving_image, str(folder / "images" / f"{i}_moving.nii.gz"))
        rows.append(f"images/{i}_fixed.nii.gz,images/{i}_moving.nii.gz")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    (folder / "task.json").write_text(json.dumps({"name": name, "dimension": 2, "role": "source"}))
    return folder


@pytest.fixture(scope="module")
def task_root(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("tasks")
    write_task(root, "brain-t1", sample_dir / "brain3d_fixed_T1.nii.gz")
    write_task(root, "brain-t2", sample_dir / "brain3d_moving_T2.nii.gz")
    write_task(root, "brain-t1-moved", sample_dir / "brain3d_moving_T1.nii.gz", step=3, every=5)
    return root


def datas(task_root: Path, *names: str) -> list[TaskData]:
    return [TaskData(load_task(name, task_root), GRID, Normalisation()) for name in names]


def fresh_network(seed: int = 0):
    torch.manual_seed(seed)
    return RegistrationNetwork.from_config(TINY)


def test_task_layout_and_tensors(task_root):
    task = load_task("brain-t1", task_root)
    assert task.dimension == 2 and len(task.pairs) >= 10
    fixed, moving = TaskData(task, GRID, Normalisation()).tensors(0)
    assert fixed.shape == moving.shape == (1, 1, 64, 64)
    assert 0.0 <= float(fixed.min()) and float(fixed.max()) <= 1.0 and float(fixed.std()) > 0.1


MISALIGN = AugmentConfig(rotation_deg=6.0, shift_fraction=0.04, deformation_vox=2.5)


def evaluation_loss(network, task_datas, samples: int = 12) -> float:
    """Mean loss over a fixed set of misaligned samples (independent random warps of fixed and moving)."""
    network.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(samples):
            g = generator(1234, i)
            data = task_datas[i % len(task_datas)]
            fixed, moving = draw_sample(data, int(torch.randint(len(data), (1,), generator=g)), MISALIGN, g)
            disp = network(fixed=fixed, moving=moving)
            total += float(registration_loss(SPEC.loss, fixed, warp_tensor(moving, disp), disp)[0])
    network.train()
    return total / samples


@pytest.mark.slow
def test_pretraining_lowers_the_loss(task_root, tmp_path):
    network = fresh_network()
    task_datas = datas(task_root, "brain-t1", "brain-t2")
    before = evaluation_loss(network, task_datas)
    config = TrainConfig(steps=80, batch_size=4, learning_rate=5e-3, augment=MISALIGN, checkpoint_every=0)
    curve = train_loop(network, SPEC, task_datas, config, RunFiles(tmp_path / "pre.safetensors"), Processes())
    after = evaluation_loss(network, task_datas)
    assert len(curve) == 80
    assert after < before - 0.01, (before, after)  # 1 − local NCC² on held-fixed misaligned samples
    rows = list(csv.DictReader(open(tmp_path / "pre.loss.csv")))
    assert [int(r["step"]) for r in rows] == list(range(80))
    assert (tmp_path / "pre.loss.png").stat().st_size > 1000


def test_training_pairs_can_be_affinely_prealigned(tmp_path, sample_dir):
    folder = tmp_path / "tasks" / "shifted"
    folder.mkdir(parents=True)
    fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    moving = sitk.Image(fixed)
    moving.SetOrigin((fixed.GetOrigin()[0] + 7.0, fixed.GetOrigin()[1] + 5.0))  # the same slice, 7 and 5 mm away
    sitk.WriteImage(fixed, str(folder / "f.nii.gz"))
    sitk.WriteImage(moving, str(folder / "m.nii.gz"))
    (folder / "pairs.csv").write_text("fixed,moving\nf.nii.gz,m.nii.gz\n")
    task = load_task("shifted", tmp_path)
    plain_fixed, plain_moving = TaskData(task, GRID, Normalisation()).tensors(0)
    aligned_fixed, aligned_moving = TaskData(task, GRID, Normalisation(), affine=True).tensors(0)
    torch.testing.assert_close(plain_fixed, aligned_fixed)  # the fixed image is never moved
    before = float(((plain_moving - plain_fixed) ** 2).mean())
    after = float(((aligned_moving - aligned_fixed)[..., 6:-6, 6:-6] ** 2).mean())
    assert after < 0.05 * before, (before, after)


def test_a_synthetic_pair_is_solved_by_its_known_displacement(task_root):
    data = datas(task_root, "brain-t1")[0]
    config = AugmentConfig(shift_fraction=0.08, deformation_vox=3.0)
    fixed, moving, known = draw_synthetic_sample(data, 0, config, torch.Generator().manual_seed(3))
    assert known.shape == (1, 2, 64, 64) and known.abs().max() > 1.0

    def dissimilarity(disp):
        return float(((warp_tensor(moving, disp) - fixed)[..., 8:-8, 8:-8] ** 2).mean())

    assert dissimilarity(known) < 1e-6  # the network's correct output is d itself, in its own convention
    assert dissimilarity(-known) > 100 * max(dissimilarity(known), 1e-8)
    assert dissimilarity(torch.zeros_like(known)) > 100 * max(dissimilarity(known), 1e-8)


def test_reptile_update_follows_the_formula():
    network = torch.nn.Linear(2, 1)
    with torch.no_grad():
        network.weight.copy_(torch.tensor([[1.0, -2.0]]))
        network.bias.copy_(torch.tensor([0.5]))
    mean = {"weight": torch.tensor([[3.0, -2.0]]), "bias": torch.tensor([-0.5])}
    sgd = ReptileConfig(outer="sgd", steps=11, meta_step_start=0.5, meta_step_end=0.0)
    beta = reptile_update(network, mean, sgd, step=5, optimiser=None)  # halfway: β = 0.25
    assert beta == pytest.approx(0.25)
    # θ ← θ − β (θ − mean θᵢ)
    torch.testing.assert_close(network.weight, torch.tensor([[1.0 + 0.25 * 2.0, -2.0]]))
    torch.testing.assert_close(network.bias, torch.tensor([0.5 - 0.25 * 1.0]))
    # Adam, first step: the update is lr · g / (|g| + eps) with g = θ − mean θᵢ
    adam = ReptileConfig(outer="adam", outer_learning_rate=0.1)
    before = {k: v.detach().clone() for k, v in network.named_parameters()}
    optimiser = torch.optim.Adam(network.parameters(), lr=0.1)
    reptile_update(network, mean, adam, step=0, optimiser=optimiser)
    for name, parameter in network.named_parameters():
        g = before[name] - mean[name]
        expected = before[name] - 0.1 * g / (g.abs() + 1e-8)
        torch.testing.assert_close(parameter.detach(), expected)


def test_one_meta_step_moves_the_weights_toward_the_mean_of_the_adapted_ones(task_root, tmp_path):
    """A whole meta-step of reptile_loop equals θ − β(θ − mean θᵢ) with θᵢ recomputed independently."""
    task_datas = datas(task_root, "brain-t1", "brain-t2", "brain-t1-moved")
    config = ReptileConfig(level="task", steps=1, tasks_per_step=2, inner_steps=3, inner_learning_rate=1e-3,
                           outer="sgd", meta_step_start=0.4, meta_step_end=0.4, seed=5, checkpoint_every=0)
    network = fresh_network(1)
    start = copy.deepcopy(network)
    reptile_loop(network, SPEC, task_datas, config, RunFiles(tmp_path / "meta.safetensors"), Processes())
    adapted = []
    for slot in range(2):
        data = task_datas[int(torch.randint(len(task_datas), (1,), generator=generator(5, 0, slot)))]

        def draw(inner, data=data, slot=slot):
            g = generator(5, 0, slot, inner, 0)
            return [draw_sample(data, int(torch.randint(len(data), (1,), generator=g)), config.augment, g)]

        adapted.append(adapt_to_task(start, draw, config, SPEC.loss, torch.device("cpu"))[0])
    for name, parameter in network.named_parameters():
        theta = dict(start.named_parameters())[name].detach()
        mean = (adapted[0][name] + adapted[1][name]) / 2
        torch.testing.assert_close(parameter.detach(), theta - 0.4 * (theta - mean), rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(p, q) for p, q in zip(network.parameters(), start.parameters()))


@pytest.mark.slow
def test_finetuning_from_a_meta_trained_start_is_faster_than_from_scratch(task_root, tmp_path):
    """On a held-out task, the meta-trained start is at least as good at step 0 as scratch after N steps, and
    better after the same N steps."""
    sources = datas(task_root, "brain-t1", "brain-t2")
    target = datas(task_root, "brain-t1-moved")
    network = fresh_network(2)
    train_loop(network, SPEC, sources, TrainConfig(steps=80, batch_size=4, learning_rate=2e-3, augment=MISALIGN,
                                                   checkpoint_every=0),
               RunFiles(tmp_path / "pre.safetensors"), Processes())
    reptile_loop(network, SPEC, sources, ReptileConfig(level="task", steps=6, tasks_per_step=2, inner_steps=4,
                                                       outer_learning_rate=1e-3, augment=MISALIGN, checkpoint_every=0),
                 RunFiles(tmp_path / "meta.safetensors"), Processes())
    scratch = fresh_network(3)
    meta_at_0 = evaluation_loss(network, target)
    finetune = TrainConfig(steps=20, batch_size=2, learning_rate=1e-3, augment=MISALIGN, checkpoint_every=0, seed=9)
    train_loop(scratch, SPEC, target, finetune, RunFiles(tmp_path / "a.safetensors"), Processes())
    train_loop(network, SPEC, target, finetune, RunFiles(tmp_path / "b.safetensors"), Processes())
    scratch_at_n, meta_at_n = evaluation_loss(scratch, target), evaluation_loss(network, target)
    assert meta_at_0 < scratch_at_n  # reaches scratch's 20-step loss in 0 steps
    assert meta_at_n < scratch_at_n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DISTRIBUTED_SCRIPT = """
import sys, torch
from pathlib import Path
sys.path.insert(0, {testing!r})
from test_learning import SPEC, datas, fresh_network
from metareg.learning.config import ReptileConfig, TrainConfig
from metareg.learning.runlog import RunFiles
from metareg.learning.loops import reptile_loop, train_loop
from metareg.learning.distributed import start_processes
out, root = Path(sys.argv[1]), Path(sys.argv[2])
processes = start_processes("cpu")
network = fresh_network(4)
task_datas = datas(root, "brain-t1", "brain-t2", "brain-t1-moved")
train_loop(network, SPEC, task_datas, TrainConfig(steps=4, batch_size=4, learning_rate=2e-3, checkpoint_every=0),
           RunFiles(out / "pre.safetensors"), processes)
pretrained = {{k: v.clone() for k, v in network.state_dict().items()}}
reptile_loop(network, SPEC, task_datas, ReptileConfig(level="task", steps=2, tasks_per_step=2, inner_steps=2,
             checkpoint_every=0), RunFiles(out / "meta.safetensors"), processes)
torch.save({{"pretrained": pretrained, "meta": network.state_dict()}}, out / f"rank{{processes.rank}}.pt")
"""


@pytest.mark.slow
def test_torchrun_two_processes_match_one(task_root, tmp_path):
    script = tmp_path / "run_training.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(testing=str(Path(__file__).parent)))
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir(), double.mkdir()
    subprocess.run([sys.executable, str(script), str(single), str(task_root)], check=True, env=ENV, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(free_port()), str(script), str(double), str(task_root)],
                   check=True, env=ENV, timeout=300)
    one = torch.load(single / "rank0.pt", weights_only=True)
    rank0 = torch.load(double / "rank0.pt", weights_only=True)
    rank1 = torch.load(double / "rank1.pt", weights_only=True)
    for stage in ("pretrained", "meta"):
        for key in one[stage]:
            assert torch.equal(rank0[stage][key], rank1[stage][key]), (stage, key)  # ranks agree exactly
            torch.testing.assert_close(rank0[stage][key], one[stage][key], rtol=1e-3, atol=2e-5)
    # the two processes did not just copy one process's work: the weights moved
    assert any(not torch.equal(one["meta"][k], one["pretrained"][k]) for k in one["meta"])


def pretrain_command(task_root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "metareg.app.cli", "pretrain", "--tasks", "brain-t1,brain-t2", "--data-dir",
            str(task_root), "--dim", "2", "--grid", "64,64", "--architecture", json.dumps(TINY), "--steps", str(steps),
            "--batch-size", "2", "--checkpoint-every", "10", "--device", "cpu", "--out", str(out), *extra]


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_terminated_training_says_what_it_kept(task_root, tmp_path):
    """SIGTERM mid-run: exit 143, no model, and one line naming the checkpoint that --resume continues from."""
    out = tmp_path / "stopped.safetensors"
    process = subprocess.Popen(pretrain_command(task_root, out, 400), env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    checkpoint = out.with_name("stopped.ckpt") / "last.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    said = [line[line.index("metareg pretrain: "):] for line in stderr.splitlines() if "metareg pretrain: " in line]
    assert said == [f"metareg pretrain: terminated (SIGTERM); the model was not written; the last checkpoint "
                    f"{checkpoint} is kept: the same command with --resume continues from it"], stderr
    assert not out.exists() and checkpoint.is_file()


@pytest.mark.slow
def test_killed_run_resumes_and_continues_its_loss_curve(task_root, tmp_path):
    steps = 80
    reference = tmp_path / "reference.safetensors"
    subprocess.run(pretrain_command(task_root, reference, steps), check=True, env=ENV, timeout=300,
                   capture_output=True)
    out = tmp_path / "killed.safetensors"
    process = subprocess.Popen(pretrain_command(task_root, out, steps), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    log = out.with_name("killed.loss.csv")
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and len(read_log(log)) >= 35:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_rows = read_log(log)
    assert 35 <= len(killed_rows) < steps, "the run was not killed mid-way"
    assert not out.exists()  # no model written by a killed run
    checkpoint = torch.load(out.with_name("killed.ckpt") / "last.pt", weights_only=True)  # the last good one is intact
    assert checkpoint["step"] % 10 == 0 and checkpoint["step"] <= len(killed_rows)

    subprocess.run(pretrain_command(task_root, out, steps, "--resume"), check=True, env=ENV, timeout=300,
                   capture_output=True)
    rows = read_log(log)
    assert [int(r["step"]) for r in rows] == list(range(steps))  # each step once, in order
    assert [r["loss"] for r in rows[: checkpoint["step"]]] == [r["loss"] for r in killed_rows[: checkpoint["step"]]]
    reference_rows = read_log(reference.with_name("reference.loss.csv"))
    resumed = [float(r["loss"]) for r in rows]
    uninterrupted = [float(r["loss"]) for r in reference_rows]
    assert resumed == pytest.approx(uninterrupted, rel=1e-4)  # the curve continues exactly where it stopped
    a, b = load_model(out).network.state_dict(), load_model(reference).network.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_a_resumed_run_may_change_its_length_but_not_its_settings(task_root, tmp_path):
    files = RunFiles(tmp_path / "run.safetensors")
    task_datas = datas(task_root, "brain-t1")
    config = TrainConfig(steps=10, batch_size=1, augment=MISALIGN, checkpoint_every=2)
    train_loop(fresh_network(), SPEC, task_datas, config, files, Processes(), stop_after=4)
    shorter = TrainConfig(steps=6, batch_size=1, augment=MISALIGN, checkpoint_every=3)
    curve = train_loop(fresh_network(), SPEC, task_datas, shorter, files, Processes(), resume=True)
    assert len(curve) == 6  # steps 0-3 from the first run, 4-5 from this one
    other = TrainConfig(steps=8, batch_size=1, learning_rate=5e-3, augment=MISALIGN, checkpoint_every=2)
    with pytest.raises(InputError, match="other settings"):
        train_loop(fresh_network(), SPEC, task_datas, other, files, Processes(), resume=True)


@pytest.mark.slow
def test_finetune_card_names_parent_data_steps_and_curve(task_root, tmp_path):
    base = [sys.executable, "-m", "metareg.app.cli"]
    parent = tmp_path / "parent.safetensors"
    subprocess.run(pretrain_command(task_root, parent, 5), check=True, env=ENV, timeout=300, capture_output=True)
    child = tmp_path / "child.safetensors"
    subprocess.run(base + ["finetune", "--model", str(parent), "--tasks", "brain-t1-moved", "--data-dir",
                           str(task_root), "--steps", "6", "--batch-size", "2", "--device", "cpu", "--out", str(child)],
                   check=True, env=ENV, timeout=300, capture_output=True)
    card = json.loads(child.with_suffix(".json").read_text())
    training = card["training"]
    assert training["stage"] == "finetune" and training["steps"] == 6
    assert training["parent"]["sha256"] == json.loads(parent.with_suffix(".json").read_text())["sha256"]
    assert training["tasks"][0]["name"] == "brain-t1-moved" and training["tasks"][0]["pairs"] > 0
    assert len(training["loss_curve"]) == 6 and "metareg finetune" in training["command"]
    assert card["grid"] == {"size": [64, 64], "spacing": None} and card["architecture"]["encoder_channels"] == [8, 16, 16]
    assert card["loss"] == json.loads(parent.with_suffix(".json").read_text())["loss"]  # the parent's loss by default
    multimodal = tmp_path / "mi.safetensors"
    subprocess.run(base + ["finetune", "--model", str(parent), "--similarity", "mi", "--tasks", "brain-t2",
                           "--data-dir", str(task_root), "--steps", "2", "--batch-size", "1", "--device", "cpu",
                           "--out", str(multimodal)], check=True, env=ENV, timeout=300, capture_output=True)
    mi_card = json.loads(multimodal.with_suffix(".json").read_text())
    assert mi_card["loss"] == {**card["loss"], "similarity": "mi"}  # only the similarity changes


def test_finetune_reports_progress_and_can_be_cancelled(task_root, tmp_path):
    from metareg.core.errors import Cancelled

    fractions = []
    config = TrainConfig(steps=6, batch_size=2, checkpoint_every=2)
    with pytest.raises(Cancelled):
        train_loop(fresh_network(), SPEC, datas(task_root, "brain-t1"), config, RunFiles(tmp_path / "c.safetensors"),
                   Processes(), progress=lambda f, m: fractions.append(f), should_stop=lambda: len(fractions) >= 3)
    assert fractions == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    assert not (tmp_path / "c.safetensors").exists()
    assert torch.load(tmp_path / "c.ckpt" / "last.pt", weights_only=True)["step"] == 2


def test_meta_training_reports_progress_and_can_be_cancelled(task_root, tmp_path):
    """Reptile runs in the same loop skeleton as pretraining: progress after each meta-step, cancel between them."""
    from metareg.core.errors import Cancelled

    fractions = []
    config = ReptileConfig(level="task", steps=5, tasks_per_step=2, inner_steps=1, checkpoint_every=2)
    with pytest.raises(Cancelled, match="cancelled at step 3"):
        reptile_loop(fresh_network(), SPEC, datas(task_root, "brain-t1", "brain-t2"), config,
                     RunFiles(tmp_path / "m.safetensors"), Processes(), progress=lambda f, m: fractions.append(f),
                     should_stop=lambda: len(fractions) >= 3)
    assert fractions == pytest.approx([1 / 5, 2 / 5, 3 / 5])
    assert not (tmp_path / "m.safetensors").exists()
    assert torch.load(tmp_path / "m.ckpt" / "last.pt", weights_only=True)["step"] == 2
