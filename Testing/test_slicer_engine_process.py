"""The module runs the engine in a child process (issue 13, section 1), on real MRML (slicer-core).

- The GIL test: the main thread holds the GIL in 100 ms C calls and polls the job between them, as desktop Slicer's
  idle loop does (PythonQt's thread support is off, so Slicer's main thread keeps the GIL while Qt idles). The
  registration must then take at most 1.5x its time with a free main thread. An engine *thread* fails this.
- Cancel during each stage (affine, adaptation, network, refinement; fine-tuning in test_slicer_finetune.py): within
  2 s the worker is gone and its temporary folder too; the scene is unchanged.
- A worker that crashes or is killed becomes a clear message; the scene is unchanged; nothing is left behind.
- No worker outlives its parent (standard input closes, the worker exits), a scene close or module cleanup
  (:func:`jobs.stop_all`).
- The worker runs the module's own engine even when another ``metareg`` comes first on the path.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import slicer

from MetaRegistrationLib import headless, jobs, logic, sampledata
from test_slicer_brain3d import node_checksum, node_ids

pytestmark = [pytest.mark.slicer, pytest.mark.slow]  # every test starts the engine process

#: fast iterative settings for the brain3d pair (a few seconds on an idle CPU)
FAST = logic.RegistrationSettings(iterations=(40, 20, 10))
SLOW = logic.RegistrationSettings(iterations=(2000, 1000, 500))


@pytest.fixture(scope="module")
def brain3d():
    app = headless.get_app()
    headless.clear_scene()
    data = sampledata.load_brain3d(app.scene)
    return app.scene, data


def pair_inputs(data, landmarks=False):
    if landmarks:
        return logic.RegistrationInputs(data.fixed_volume, data.moving_volume, data.fixed_landmarks,
                                        data.moving_landmarks)
    return logic.RegistrationInputs(data.fixed_volume, data.moving_volume)


def process_gone(pid: int) -> bool:
    """True when no process ``pid`` runs (a zombie that nobody reaps counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_for_message(job, words: str, timeout: float = 180.0) -> str:
    """Poll until the job's progress message contains ``words``; returns the message."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        message = job.progress[1]
        if words in message:
            return message
        assert not job.done, f"the job ended before '{words}' (last message: {message!r}, error: {job.error})"
        time.sleep(0.01)
    raise AssertionError(f"no progress message with '{words}' within {timeout} s")


def hold_gil_and_poll(job, period_us: int = 100_000) -> None:
    """What desktop Slicer's main thread does while a job runs: it sits in C with the GIL held (``PyDLL`` keeps the
    GIL across the call) and runs a little Python (the module's poll timer) every ``period_us``."""
    usleep = ctypes.PyDLL("libc.so.6").usleep
    usleep.argtypes = [ctypes.c_uint]
    while not job.done:
        usleep(period_us)


# ---------------------------------------------------------------------------------------------------------------------
# The GIL test


@pytest.fixture(scope="module")
def free_run(brain3d):
    """One FAST job on the pair with landmarks, waited for with a free main thread: the GIL test's reference time
    and the success test's job (one registration for both). What the job's folder held at the start is kept."""
    scene, data = brain3d
    ids = node_ids(scene)
    started = time.perf_counter()
    job = logic.MetaRegistrationLogic(scene).start(pair_inputs(data, landmarks=True), FAST)
    folder = job.folder
    at_start = {"folder_was_there": folder.is_dir(), "job_json": json.loads((folder / "job.json").read_text())}
    assert job.wait(300)
    return dict(job=job, seconds=time.perf_counter() - started, ids=ids, folder=folder, **at_start)


def test_registration_runs_at_full_speed_while_the_main_thread_holds_the_gil(brain3d, free_run):
    scene, data = brain3d
    free, free_seconds = free_run["job"], free_run["seconds"]
    assert free.error is None, free.error_details

    held_started = time.perf_counter()
    held = logic.MetaRegistrationLogic(scene).start(pair_inputs(data, landmarks=True), FAST)
    hold_gil_and_poll(held)
    held_seconds = time.perf_counter() - held_started
    assert held.error is None, held.error_details

    ratio = held_seconds / free_seconds
    print(f"GIL test: {held_seconds:.2f} s with the GIL held vs {free_seconds:.2f} s free: ratio {ratio:.2f}")
    assert ratio <= 1.5, f"with the main thread holding the GIL the run took {ratio:.2f}x as long"
    # the same registration both times
    assert held.result.report["ncc_after"] == pytest.approx(free.result.report["ncc_after"], abs=1e-6)
    assert node_ids(scene) == free_run["ids"]  # nothing is added before finish()


# ---------------------------------------------------------------------------------------------------------------------
# Success: outputs read back, the folder removed, the engine's identity


def test_a_successful_job_reads_its_outputs_back_and_removes_its_folder(brain3d, free_run):
    scene, data = brain3d
    lib = logic.MetaRegistrationLogic(scene)
    job, folder = free_run["job"], free_run["folder"]
    assert free_run["folder_was_there"] and free_run["job_json"]["command"] == "register"
    assert job.done and job.error is None, job.error_details
    assert not folder.exists()
    assert job.engine["path"] == str((jobs.engine_folder() / "metareg").resolve())
    assert job.result.field.GetSize() == data.fixed_volume.GetImageData().GetDimensions()
    assert job.result.report["tre_after"]["mean"] < job.result.report["tre_before"]["mean"]
    assert process_gone(job.pid)
    out = lib.finish(job)
    try:
        assert out.results_line.startswith("TRE ")
    finally:  # the run's nodes and its subject-hierarchy folder
        for node in out.nodes():
            scene.RemoveNode(node)
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if hierarchy is not None and out.folder_item:
            hierarchy.RemoveItem(out.folder_item)


def test_the_worker_runs_the_modules_own_engine_before_an_installed_one(brain3d, tmp_path, monkeypatch):
    """A ``metareg`` first on PYTHONPATH (as one pip-installed into Slicer's Python would be) must not be run."""
    impostor = tmp_path / "site" / "metareg"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("__version__ = '0.0.0-impostor'\n")
    (impostor / "worker.py").write_text("import sys; print('impostor'); sys.exit(1)\n")
    environment = jobs._engine_environment

    def impostor_first():  # as Slicer's launcher might: the other metareg's site folder before ours
        env = environment()
        env["PYTHONPATH"] = os.pathsep.join([str(impostor.parent), env["PYTHONPATH"]])
        return env

    monkeypatch.setattr(jobs, "_engine_environment", impostor_first)
    scene, data = brain3d
    job = logic.MetaRegistrationLogic(scene).start(pair_inputs(data), logic.RegistrationSettings(iterations=(2, 1, 1)))
    assert job.wait(300)
    assert job.error is None, job.error_details
    assert job.engine["path"] == str((jobs.engine_folder() / "metareg").resolve())
    assert job.engine["version"] != "0.0.0-impostor"


# ---------------------------------------------------------------------------------------------------------------------
# Cancel during each stage


def smallest_model():
    name = logic.smallest_zoo_model()
    assert name is not None, "the zoo has no 3D T1w model (models/index.json)"
    return name


CANCEL_STAGES = {
    # stage: (settings, the words of its progress message)
    "affine": (lambda: logic.RegistrationSettings(model=smallest_model(), affine=True, adapt_steps=5,
                                                  refine_steps=30), "affine"),
    "adaptation": (lambda: logic.RegistrationSettings(model=smallest_model(), affine=False, adapt_steps=500,
                                                      refine_steps=30), "adaptation"),
    "network": (lambda: logic.RegistrationSettings(model=smallest_model(), affine=False, adapt_steps=0,
                                                   refine_steps=500), "network inference"),
    "refinement": (lambda: logic.RegistrationSettings(model=smallest_model(), affine=False, adapt_steps=0,
                                                      refine_steps=2000), "refin"),
    "iterative": (lambda: SLOW, "iterative"),
}


@pytest.mark.parametrize("stage", sorted(CANCEL_STAGES))
def test_cancel_during_each_stage_ends_the_worker_within_2_s_and_leaves_the_scene_unchanged(brain3d, stage):
    scene, data = brain3d
    make_settings, words = CANCEL_STAGES[stage]
    inputs = pair_inputs(data, landmarks=True)
    nodes = [inputs.fixed_volume, inputs.moving_volume, inputs.fixed_landmarks, inputs.moving_landmarks]
    before = {node.GetID(): node_checksum(node) for node in nodes}
    ids = node_ids(scene)
    lib = logic.MetaRegistrationLogic(scene)
    job = lib.start(inputs, make_settings())
    folder, pid = job.folder, job.pid
    wait_for_message(job, words)
    cancelled_at = time.perf_counter()
    job.cancel()
    assert job.wait(10)
    latency = time.perf_counter() - cancelled_at
    print(f"cancel during {stage}: {latency * 1000:.0f} ms")
    assert latency < 2.0, f"the worker took {latency:.2f} s to end"
    assert job.process.returncode == -signal.SIGTERM  # it ended on SIGTERM at once, not by the kill after 1 s
    assert process_gone(pid)
    assert not folder.exists()
    assert job.cancelled and job.result is None and job.error is None
    assert lib.finish(job) is None
    assert node_ids(scene) == ids
    assert {node.GetID(): node_checksum(node) for node in nodes} == before


# ---------------------------------------------------------------------------------------------------------------------
# A worker that crashes or is killed


@pytest.mark.parametrize("signal_name, words", [("SIGKILL", "out of memory"), ("SIGSEGV", "crash"),
                                                ("SIGABRT", "aborted")])
def test_a_killed_or_crashed_worker_becomes_a_clear_message_and_changes_nothing(brain3d, signal_name, words):
    scene, data = brain3d
    ids = node_ids(scene)
    lib = logic.MetaRegistrationLogic(scene)
    job = lib.start(pair_inputs(data), SLOW)
    folder = job.folder
    wait_for_message(job, "iterative")
    os.kill(job.pid, getattr(signal, signal_name))  # what the kernel's OOM killer, a segfault or abort() do
    assert job.wait(10)
    assert not job.cancelled and isinstance(job.error, jobs.EngineError)
    assert signal_name in str(job.error) and words in str(job.error)
    assert "nothing was added to the scene" in str(job.error)
    assert not folder.exists()
    with pytest.raises(jobs.EngineError, match=signal_name):
        lib.finish(job)
    assert node_ids(scene) == ids


def test_a_worker_that_cannot_start_fails_clearly_and_leaves_no_folder(brain3d, monkeypatch, tmp_path):
    monkeypatch.setenv("METAREG_ENGINE_PYTHON", str(tmp_path / "no-such-python"))
    scene, data = brain3d
    before = set(Path(jobs.tempfile.gettempdir()).glob("MetaRegistration-register-*"))
    with pytest.raises(OSError):
        logic.MetaRegistrationLogic(scene).start(pair_inputs(data), FAST)
    assert set(Path(jobs.tempfile.gettempdir()).glob("MetaRegistration-register-*")) == before


def test_an_engine_error_reaches_the_user_with_the_engines_message(brain3d, tmp_path):
    scene, data = brain3d
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    broken.with_suffix(".json").write_text("{}")
    ids = node_ids(scene)
    job = logic.MetaRegistrationLogic(scene).start(pair_inputs(data), logic.RegistrationSettings(model=str(broken)))
    assert job.wait(300)
    assert isinstance(job.error, jobs.EngineError) and "broken.safetensors" in str(job.error)
    assert node_ids(scene) == ids


# ---------------------------------------------------------------------------------------------------------------------
# No worker outlives its parent, a scene close or module cleanup


def test_stop_all_ends_every_running_worker(brain3d):
    scene, data = brain3d
    lib = logic.MetaRegistrationLogic(scene)
    running = [lib.start(pair_inputs(data), SLOW) for _ in range(2)]
    for job in running:  # both workers have started the engine (polling reads their "start" line) and still run
        assert wait_for(lambda job=job: job.done or job.engine, 120) and not job.done, job.error
    assert set(jobs.running_jobs()) >= set(running)
    started = time.perf_counter()
    jobs.stop_all()
    assert time.perf_counter() - started < 2.5
    for job in running:
        assert job.done and job.cancelled and process_gone(job.pid) and not job.folder.exists()
    assert not jobs.running_jobs()


def test_the_worker_exits_when_its_parent_dies(tmp_path):
    """The parent (here a Python that stands in for Slicer) starts a job and dies without any cleanup (os._exit, as a
    crash would): the worker notices its standard input closing and exits."""
    pid_file = tmp_path / "worker.pid"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(jobs.engine_folder())!r})
        from MetaRegistrationLib import headless, logic, sampledata
        app = headless.get_app()
        data = sampledata.load_brain3d(app.scene)
        job = logic.MetaRegistrationLogic(app.scene).start(
            logic.RegistrationInputs(data.fixed_volume, data.moving_volume),
            logic.RegistrationSettings(iterations=(2000, 1000, 500)))
        while not job.engine:
            job.poll(); time.sleep(0.05)
        open({str(pid_file)!r}, "w").write(str(job.pid) + "\\n" + str(job.folder))
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    pid_text, folder = pid_file.read_text().split("\n")
    pid = int(pid_text)
    assert wait_for(lambda: process_gone(pid), 10), "the worker outlived its parent"
    # the folder of the parent that died is removed by the next job that starts (its owner is gone)
    assert Path(folder).is_dir()
    assert Path(folder) in jobs.remove_stale_folders()
    assert not Path(folder).exists()


# ---------------------------------------------------------------------------------------------------------------------
# The worker's job description


def test_job_options_become_the_command_line_of_metareg():
    from metareg.app.worker import job_argv

    argv = job_argv({"command": "register", "options": {
        "fixed": "f.mha", "adapt_steps": 5, "affine": False, "diffeomorphic": False, "uncompressed": True,
        "refine_steps": None, "tasks": ["a.csv", "b.csv"]}})
    assert argv == ["register", "--fixed", "f.mha", "--adapt-steps", "5", "--no-affine", "--uncompressed",
                    "--tasks", "a.csv", "--tasks", "b.csv"]
    with pytest.raises(ValueError, match="unknown command"):
        job_argv({"command": "rm", "options": {}})


def test_the_worker_reports_json_lines_and_an_error_for_a_bad_job(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"command": "register", "options": {
        "fixed": "missing.mha", "moving": "missing.mha", "method": "iterative"}}))
    env = dict(os.environ, PYTHONPATH=str(jobs.engine_folder()))
    done = subprocess.run([sys.executable, "-m", "metareg.app.worker", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=120, stdin=subprocess.DEVNULL)
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "start" and events[0]["engine"]["version"]
    assert events[-1]["event"] == "error" and "missing.mha" in events[-1]["message"]
    assert events[-1]["kind"] == "InputError"
    assert done.returncode == 2
