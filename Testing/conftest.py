"""Shared fixtures and helpers of the test suite.

Markers (registered in pyproject.toml): ``slow`` for a test that takes seconds of registration, training or
subprocesses (or needs a fixture that does), ``bench`` for a benchmark's quick mode, ``slicer`` for the Slicer module
on slicer-core. Between edits: ``./run test -m "not slow and not bench"``; CI runs everything (``./run test``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO / "Resources" / "SampleData"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """Resources/SampleData: the small real images shipped with the repository."""
    return SAMPLE_DIR


# ---------------------------------------------------------------------------------------------------------------------
# The brain3d sample pair: the MNI template (fixed) and a known synthetic warp + rigid motion of it, 32 AFIDs each


@pytest.fixture(scope="session")
def brain3d_pair():
    """(fixed T1, moving T1, fixed landmarks, moving landmarks) of the brain3d sample, read once for the session.
    Tests must not modify the images (``register()`` never does; test_registration checks that)."""
    import SimpleITK as sitk

    from metareg.core.landmarks import read_landmarks

    return (sitk.ReadImage(str(SAMPLE_DIR / "brain3d_fixed_T1.nii.gz")),
            sitk.ReadImage(str(SAMPLE_DIR / "brain3d_moving_T1.nii.gz")),
            read_landmarks(SAMPLE_DIR / "brain3d_fixed_landmarks.mrk.json"),
            read_landmarks(SAMPLE_DIR / "brain3d_moving_landmarks.mrk.json"))


# ---------------------------------------------------------------------------------------------------------------------
# The tiny network: a U-Net of a few hundred weights, saved as a model file


def tiny_network(dim: int = 3, channels: tuple[int, int] = (4, 4), seed: int = 0, jitter: float = 0.0):
    """An untrained U-Net with two encoder levels of ``channels`` (decoder: the last one three times), its weights
    drawn from ``seed`` (the global torch generator is left as it was); ``jitter`` adds that much Gaussian noise to
    every weight, so that the network no longer starts at exactly zero displacement."""
    import torch

    from metareg.core.networks import UNet

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = UNet(dim=dim, encoder_channels=list(channels), decoder_channels=[channels[-1]] * 3)
        if jitter:
            with torch.no_grad():
                for parameter in network.parameters():
                    parameter.add_(jitter * torch.randn_like(parameter))
    return network


def save_tiny_model(path: Path, dim: int = 3, card: dict | None = None, **network) -> Path:
    """:func:`tiny_network` (``network`` are its parameters) saved as a model at ``path`` (``.safetensors``, and its
    card beside it as ``.json``) with ``card``; registers, adapts and fine-tunes in well under a second."""
    from metareg.core.modelio import save_model

    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(tiny_network(dim, **network), path, card or {})
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The task sets of `metareg data fetch`, and the benchmarks as a user runs them


def require_tasks(*names: str) -> Path:
    """The tasks folder of ``metareg data fetch`` (``default_data_dir()/tasks``). A missing task fails the test (it is
    not skipped): ``./run test`` builds them before the tests."""
    from metareg.learning.tasks import default_data_dir

    root = default_data_dir() / "tasks"
    missing = [name for name in names if not (root / name / "task.json").is_file()]
    if missing:
        pytest.fail(f"task(s) {', '.join(missing)} are missing in {root}: `./run test` builds them, or run "
                    f"`metareg data fetch --tasks {','.join(missing)}` (see DATA.md)", pytrace=False)
    return root


def run_benchmark(name: str, *arguments: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<name> ARGUMENTS`` as a user runs it: from the repository, one CPU thread (OpenMP, MKL),
    output captured as text. With ``check``, a non-zero exit status fails the test with the end of its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *arguments], cwd=REPO, env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"benchmarks.{name} {' '.join(arguments)} failed (exit status {done.returncode}):\n"
                    f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    return done
