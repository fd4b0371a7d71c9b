"""The engine without tqdm and matplotlib (3D Slicer's Python ships neither), and without touching matplotlib's backend.

Registering and fine-tuning run in a subprocess where ``import tqdm`` and ``import matplotlib`` (and their submodules)
raise ImportError: they must finish and write their outputs (the model and its card, the loss CSV). The plots must
draw on their own Agg canvas: inside Slicer's process, ``matplotlib.use("Agg")`` would switch every module's backend.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import SimpleITK as sitk

BLOCKED = ("tqdm", "matplotlib")

# Run by `python -c` before anything else: every finder of sys.meta_path is wrapped so that it finds none of the
# blocked packages or their submodules (`import tqdm` raises ModuleNotFoundError); then metareg's CLI runs once
# for every argument list given as JSON in argv[1]. Exit status: the first non-zero status of those runs.
BOOTSTRAP = textwrap.dedent("""
    import json, sys

    BLOCKED = {blocked!r}

    class Hiding:
        # A finder of sys.meta_path that finds none of the blocked packages: as if they were not installed.
        # (It finds None rather than raising: torch probes optional packages with importlib.util.find_spec.)

        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or not hasattr(self.inner, "find_spec"):
                return None
            return self.inner.find_spec(name, path, target)

        def __getattr__(self, attribute):
            return getattr(self.inner, attribute)

    for name in list(sys.modules):  # nothing imported yet in a fresh interpreter, but be sure
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]

    from metareg.app.cli import main

    status = 0
    for argv in json.loads(sys.argv[1]):
        status = status or main(argv) or 0
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    assert not loaded, f"blocked packages were imported: {{loaded}}"
    sys.exit(status)
""").format(blocked=BLOCKED)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_without_optional_packages(*commands: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``metareg <command>`` for each command, in one fresh interpreter where tqdm and matplotlib cannot be imported."""
    return subprocess.run([sys.executable, "-c", BOOTSTRAP, json.dumps([list(map(str, c)) for c in commands])],
                          env=ENV, timeout=timeout, capture_output=True, text=True, encoding="utf-8")


def test_the_blocker_blocks():
    """The bootstrap really hides the packages (else the tests below would prove nothing)."""
    probe = BOOTSTRAP.replace("from metareg.app.cli import main", "import importlib\n"
                              "for n in ('tqdm', 'matplotlib', 'matplotlib.figure', 'tqdm.auto'):\n"
                              "    try:\n"
                              "        importlib.import_module(n)\n"
                              "    except ImportError:\n"
                              "        print('blocked', n)\n"
                              "main = None")
    done = subprocess.run([sys.executable, "-c", probe, "[]"], env=ENV, timeout=60, capture_output=True, text=True,
                          encoding="utf-8")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["blocked tqdm", "blocked matplotlib", "blocked matplotlib.figure",
                                           "blocked tqdm.auto"]


@pytest.fixture()
def tiny_parent(tmp_path):
    """The tiny network as a 2D model (grid 32×32), the parent of the fine-tuning runs."""
    from conftest import save_tiny_model

    return save_tiny_model(tmp_path / "parent.safetensors", dim=2,
                           card={"purpose": "test parent", "grid": {"size": [32, 32], "spacing": None}})


@pytest.fixture()
def pairs_csv(tmp_path, sample_dir):
    path = tmp_path / "pairs.csv"
    path.write_text(f"fixed,moving\n{sample_dir / 'brain2d_fixed.nii.gz'},{sample_dir / 'brain2d_moving.nii.gz'}\n")
    return path


@pytest.mark.slow
def test_finetuning_without_tqdm_and_matplotlib_saves_the_model(tiny_parent, pairs_csv, tmp_path):
    child = tmp_path / "child.safetensors"
    done = run_without_optional_packages(
        ["finetune", "--model", tiny_parent, "--tasks", pairs_csv, "--steps", "3", "--batch-size", "1",
         "--checkpoint-every", "2", "--device", "cpu", "--out", child])
    assert done.returncode == 0, done.stderr[-3000:]
    assert child.is_file() and child.stat().st_size > 0
    card = json.loads(child.with_suffix(".json").read_text())
    assert card["training"]["stage"] == "finetune" and len(card["training"]["loss_curve"]) == 3
    with open(tmp_path / "child.loss.csv", newline="") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == [0, 1, 2]
    assert not (tmp_path / "child.loss.png").exists()  # no matplotlib: no plot, and one line saying so
    assert "matplotlib" in done.stderr and "child.loss.png" in done.stderr


@pytest.mark.slow
def test_registering_and_evaluating_without_tqdm_and_matplotlib(sample_dir, pairs_csv, tmp_path):
    """`metareg register` and `metareg evaluate` with their progress bars on (no --quiet)."""
    warped, report, rows = tmp_path / "warped.nii.gz", tmp_path / "report.json", tmp_path / "rows.csv"
    iterative = ["--method", "iterative", "--iterations", "3,3,3", "--device", "cpu"]
    done = run_without_optional_packages(
        ["register", "--fixed", sample_dir / "brain2d_fixed.nii.gz", "--moving", sample_dir / "brain2d_moving.nii.gz",
         *iterative, "--warped", warped, "--report", report],
        ["evaluate", "--pairs", pairs_csv, *iterative, "--out-csv", rows])
    assert done.returncode == 0, done.stderr[-3000:]
    assert sitk.ReadImage(str(warped)).GetSize() == sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz")).GetSize()
    assert json.loads(report.read_text())["method"] == "iterative"
    with open(rows, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 1


def test_the_plain_progress_fallback_has_the_interface_the_engine_uses(monkeypatch, capsys):
    """Without tqdm: the CLI's bar, training's bar and an iterated bar, printing plain lines on stderr."""
    from metareg.core import progress
    from metareg.learning.distributed import Processes
    from metareg.learning.loops import _progress

    monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` raises ImportError
    bar = progress.ProgressBar(enabled=True, description="registering")
    assert isinstance(bar.bar, progress.PlainProgress) and bar.bar.interval >= 10  # a line every 10 s at most
    bar.bar.interval = 0.0  # a line at every update, for the test
    bar(0.5, "level 1")
    bar(1.0, "done")
    bar.close()
    training = _progress(Processes(), 4, 1, "training")
    assert isinstance(training, progress.PlainProgress) and training.interval >= 30
    training.interval = 0.0
    for _ in range(3):
        training.update(1)
        training.set_postfix(loss="0.1234", refresh=False)
    training.close()
    pairs = progress.progress_bar(["a", "b"], desc="pairs")
    pairs.interval = 0.0
    assert list(pairs) == ["a", "b"]
    quiet = progress.progress_bar(["a", "b"], desc="quiet", disable=True)
    quiet.interval = 0.0
    assert list(quiet) == ["a", "b"]
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0].startswith("registering: 500/1000") and "level 1" in lines[0]
    assert lines[1].startswith("registering: 1000/1000") and "done" in lines[1]
    assert lines[2].startswith("training: 2/4") and "[0 s]" in lines[2]
    assert lines[4].startswith("training: 4/4") and lines[4].endswith("loss=0.1234")
    assert lines[5] == lines[4]  # close() repeats the last state once (leave=True, as tqdm's default)
    assert [line.split(" ")[:2] for line in lines[6:]] == [["pairs:", "1/2"], ["pairs:", "2/2"], ["pairs:", "2/2"]]
    assert len(lines) == 9  # and nothing from the disabled bar


@pytest.fixture()
def other_backend():
    """matplotlib set to the SVG backend for the test (a stand-in for Slicer's own), then put back."""
    matplotlib = pytest.importorskip("matplotlib")
    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield matplotlib
    matplotlib.use(before)


def test_the_training_loss_plot_leaves_the_backend_alone(other_backend, tmp_path):
    from metareg.learning.runlog import plot_loss_curves

    rows = [{"step": s, "loss": 1 / (s + 1), "similarity": 0.5 / (s + 1), "regulariser": 0.01} for s in range(30)]
    path = tmp_path / "run.loss.png"
    drawn = plot_loss_curves(rows, path, "a tiny run")
    assert other_backend.get_backend() == "svg"
    assert drawn is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_the_png_report_leaves_the_backend_alone(other_backend, sample_dir, tmp_path):
    from metareg.core.geometry import Grid, resample_onto
    from metareg.app.visualize import render_report_png
    from metareg.core.report import RegistrationReport

    fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    moving = sitk.ReadImage(str(sample_dir / "brain2d_moving.nii.gz"))
    warped = resample_onto(moving, Grid.from_image(fixed))
    jacobian = sitk.Image(fixed.GetSize(), sitk.sitkFloat32) + 1.0
    jacobian.CopyInformation(fixed)
    report = RegistrationReport(method="iterative", ncc_before=0.5, ncc_after=0.9, std_log_jacobian=0.01,
                                seconds={"total": 1.0})
    path = tmp_path / "report.png"
    render_report_png(path, fixed, moving, warped, jacobian, report)
    assert other_backend.get_backend() == "svg"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_the_png_report_without_matplotlib_names_it(monkeypatch, sample_dir, tmp_path):
    from metareg.app.visualize import render_report_png
    from metareg.core.errors import MetaRegError
    from metareg.core.report import RegistrationReport

    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fixed = sitk.ReadImage(str(sample_dir / "brain2d_fixed.nii.gz"))
    with pytest.raises(MetaRegError, match="needs matplotlib"):
        render_report_png(tmp_path / "report.png", fixed, fixed, fixed, fixed, RegistrationReport(method="iterative"))
    assert not (tmp_path / "report.png").exists()
