"""Issue 17, S1 #11: two runs writing the same outputs at once must not leave a mixed set (the warped image of one,
the field of the other). Each run writes its set as one unit under locks on its output paths (``metareg.core.outputs._output_locks``):
a second run that reaches its writing while the first holds them waits, then writes its own whole set.

The test is the first run: it holds the locks of the output paths while a real ``metareg register`` reaches its
writing, checks that it waits without writing anything, then lets it go."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metareg.core.outputs import _output_locks

SAMPLE = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def holds_lock_file(pid: int) -> bool:
    """Whether process ``pid`` has one of the output lock files open (it has reached its writing)."""
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return False
    return any("metareg-output-locks" in link for link in links)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc to see the waiting process")
def test_a_run_waits_for_another_run_writing_the_same_outputs_then_writes_its_whole_set(tmp_path):
    fixed, moving = SAMPLE / "brain2d_fixed.nii.gz", SAMPLE / "brain2d_moving.nii.gz"
    hashes = {path: sha256(path) for path in (fixed, moving)}
    warped, field, report = tmp_path / "warped.nii.gz", tmp_path / "field.nii.gz", tmp_path / "report.json"
    with _output_locks([warped, field, report]):  # another run is writing this set now
        run = subprocess.Popen([sys.executable, "-m", "metareg.app.cli", "register", "--fixed", str(fixed),
                                "--moving", str(moving), "--method", "iterative", "--iterations", "3,2,1",
                                "--warped", str(warped), "--field", str(field), "--report", str(report), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.perf_counter() + 300
        while not holds_lock_file(run.pid):
            assert run.poll() is None, run.communicate()[1].decode("utf-8", "replace")
            assert time.perf_counter() < deadline, "the run never reached its writing"
            time.sleep(0.05)
        time.sleep(1.0)
        assert run.poll() is None, "the run wrote while another run held its outputs"
        assert sorted(path.name for path in tmp_path.iterdir()) == [], "it wrote part of its set meanwhile"
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr.decode("utf-8", "replace")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["field.nii.gz", "report.json", "warped.nii.gz"]
    assert json.loads(report.read_text())["method"] == "iterative"
    assert {path: sha256(path) for path in (fixed, moving)} == hashes


def test_output_locks_add_nothing_beside_the_outputs(tmp_path):
    """Two sets named in different orders take their locks in the same order (no deadlock), and the lock files live
    in the system's temporary folder, not beside the outputs."""
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    with _output_locks([a, b]):
        pass
    with _output_locks([b, a]):
        pass
    assert list(tmp_path.iterdir()) == []
