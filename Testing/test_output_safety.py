"""Outputs never destroy anything (issue 17, S1 and S5): each fault is made to happen for real.

1. an output that is an input (the same path, another spelling, a symbolic or hard link, a companion file, the model,
   a file a pairs CSV or task names) is refused;
2. an output onto a device, FIFO or socket is refused;
3. a full disk or a file-size limit (``ulimit -f``; a tiny tmpfs where this machine lets root mount one) fails the run
   and keeps the previous output, also where ITK's NIfTI writer does not report it;
4. a failed run puts back every file it replaced, companion files included;
5. two outputs whose companion files overlap are refused;
S5. SIGTERM while the outputs are written rolls them back; scratch folders left by dead runs are removed.

Every refused or failed run is checked for four things: its exit status, its one error line (naming the option and
what to do), that no input changed (sha256 before and after), and that the output folders hold exactly what they held
before, so no partial output and no hidden ``.partial`` folder either.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import save_tiny_model
from metareg.app.cli import main
from metareg.core.imageio import output_files, write_image
from metareg.core.modelio import load_model, sha256_of

SIZE, SPACING = (20, 18, 16), (1.2, 0.9, 2.0)
FAST = ["--iterations", "2,2"]
CLI = [sys.executable, "-m", "metareg.app.cli"]


# ---------------------------------------------------------------------------------------------------------------------
# Inputs and checks
# ---------------------------------------------------------------------------------------------------------------------


def blobs(size=SIZE, shift_mm: float = 0.0, noise: float = 0.0, seed: int = 0) -> sitk.Image:
    """A smooth blob (float32) on an anisotropic grid, shifted along x; ``noise`` makes it compress badly."""
    spacing = SPACING if len(size) == len(SPACING) else (1.0,) * len(size)
    axes = [np.arange(n) * s for n, s in zip(size, spacing)]
    coords = np.meshgrid(*axes[::-1], indexing="ij")[::-1]
    centre = [n * s / 2 for n, s in zip(size, spacing)]
    r2 = sum(((c - m - (shift_mm if i == 0 else 0.0)) / 6.0) ** 2 for i, (c, m) in enumerate(zip(coords, centre)))
    voxels = 100 * np.exp(-r2) + noise * np.random.default_rng(seed).random(r2.shape)
    image = sitk.GetImageFromArray(voxels.astype(np.float32))
    image.SetSpacing(spacing)
    return image


@pytest.fixture
def d(tmp_path, monkeypatch) -> Path:
    """Valid inputs: a 3D pair (also as .hdr/.img), landmarks, a tiny model, a pairs CSV, a task folder, a zoo."""
    folder = tmp_path / "in"
    folder.mkdir()
    fixed, moving = blobs(), blobs(shift_mm=2.0)
    for name, image in (("fixed", fixed), ("moving", moving)):
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    sitk.WriteImage(fixed, str(folder / "fixed.hdr"))  # and fixed.img
    points = [fixed.TransformContinuousIndexToPhysicalPoint(i) for i in ((10, 9, 8), (5, 4, 4), (15, 13, 11))]
    for name, shift in (("fixed_points.csv", 0.0), ("moving_points.csv", 2.0)):
        rows = "".join(f"{label},{x + shift},{y},{z}\n" for label, (x, y, z) in zip("ABC", points))
        (folder / name).write_text("label,x,y,z\n" + rows)
    save_tiny_model(folder / "tiny.safetensors", card={"grid": {"size": [16, 16, 16]}})
    with open(folder / "pairs.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["fixed", "moving"], ["fixed.nii.gz", "moving.nii.gz"]])
    (folder / "task").mkdir()
    (folder / "task" / "pairs.csv").write_text(f"fixed,moving\n{folder / 'fixed.nii.gz'},{folder / 'moving.nii.gz'}\n")
    (folder / "task" / "task.json").write_text(json.dumps({"name": "task", "dimension": 3}) + "\n")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("tiny.safetensors", "tiny.json"):
        (zoo / name).write_bytes((folder / name).read_bytes())
    index = {"models": [{"name": "tiny", "file": "tiny.safetensors", "sha256": sha256_of(zoo / "tiny.safetensors"),
                         "dimension": 3}]}
    (zoo / "index.json").write_text(json.dumps(index))
    monkeypatch.setenv("METAREG_MODEL_DIR", str(zoo))
    return folder


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def state(*folders: Path) -> dict[str, str]:
    """Everything below ``folders`` (hidden entries too): sha256 of each regular file, the kind and inode of anything
    else (never opened: a FIFO would block), the target of each symbolic link."""
    entries = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                entries[str(path)] = f"link to {os.readlink(path)}"
            elif stat.S_ISREG(info.st_mode):
                entries[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                entries[str(path)] = f"{stat.filemode(info.st_mode)[0]} inode {info.st_ino}"
    return entries


def assert_refused(rc: int, err: str, command: str, expected: str, before: dict, *folders: Path,
                   status: int = 2) -> str:
    """The four checks: exit status, one error line containing ``expected``, nothing below ``folders`` (inputs and
    outputs) created, changed or removed, and so no ``.partial`` folder either. Returns the line."""
    assert rc == status, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"metareg {command}: "), err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]
    assert state(*folders) == before, "a refused or failed run created, changed or removed files"
    assert not [p for folder in folders for p in folder.rglob("*") if ".partial" in p.name]
    return lines[0]


def refused_in_process(argv: list[str], capsys, expected: str, *folders: Path) -> str:
    before = state(*folders)
    rc = main(argv)
    captured = capsys.readouterr()
    assert captured.out == ""
    return assert_refused(rc, captured.err, argv[0], expected, before, *folders)


def register(d: Path, *extra: str, fixed: str = "fixed.nii.gz") -> list[str]:
    return ["register", "--fixed", str(d / fixed), "--moving", str(d / "moving.nii.gz"), *extra, "--quiet"]


# ---------------------------------------------------------------------------------------------------------------------
# 1. An output that is an input
# ---------------------------------------------------------------------------------------------------------------------


def _symlink(d: Path, out: Path) -> Path:
    (out / "link.nii.gz").symlink_to(d / "moving.nii.gz")
    return out / "link.nii.gz"


def _hard_link(d: Path, out: Path) -> Path:
    os.link(d / "moving.nii.gz", out / "copy.nii.gz")
    return out / "copy.nii.gz"


def _train(command: str, d: Path, *extra: str) -> list[str]:
    return [command, "--tasks", str(d / "task"), "--steps", "1", *extra]


SAME = "is the same file as the input"
INPUT_CASES = {
    "warped-is-moving": lambda d, out: (
        register(d, *FAST, "--warped", str(d / "moving.nii.gz")), f"--warped {d / 'moving.nii.gz'}: {SAME} --moving"),
    "warped-is-moving-spelt-otherwise": lambda d, out: (
        register(d, *FAST, "--warped", str(d / "task" / ".." / "moving.nii.gz")), f"{SAME} --moving"),
    "warped-is-a-symlink-to-moving": lambda d, out: (
        register(d, *FAST, "--warped", str(_symlink(d, out))), f"--warped {out / 'link.nii.gz'}: {SAME} --moving"),
    "warped-is-a-hard-link-of-moving": lambda d, out: (
        register(d, *FAST, "--warped", str(_hard_link(d, out))), f"--warped {out / 'copy.nii.gz'}: {SAME} --moving"),
    "report-is-fixed": lambda d, out: (
        register(d, *FAST, "--report", str(d / "fixed.nii.gz")), f"--report {d / 'fixed.nii.gz'}: {SAME} --fixed"),
    "mapped-landmarks-is-fixed-landmarks": lambda d, out: (
        register(d, *FAST, "--fixed-landmarks", str(d / "fixed_points.csv"), "--moving-landmarks",
                 str(d / "moving_points.csv"), "--mapped-landmarks", str(d / "fixed_points.csv")),
        f"--mapped-landmarks {d / 'fixed_points.csv'}: {SAME} --fixed-landmarks"),
    "field-is-the-img-of-fixed-hdr": lambda d, out: (
        register(d, *FAST, "--field", str(d / "fixed.img"), fixed="fixed.hdr"),
        f"--field {d / 'fixed.img'}: fixed.img is a file of the input --fixed {d / 'fixed.hdr'}"),
    "warped-nii-beside-fixed-nii-gz": lambda d, out: (  # ITK would then read fixed.nii for fixed.nii.gz
        register(d, *FAST, "--warped", str(d / "fixed.nii")),
        f"--warped {d / 'fixed.nii'}: fixed.nii is a file of the input --fixed {d / 'fixed.nii.gz'}"),
    "report-is-the-model-card": lambda d, out: (
        register(d, "--model", str(d / "tiny.safetensors"), "--report", str(d / "tiny.json")),
        f"--report {d / 'tiny.json'}: tiny.json is a file of the input --model {d / 'tiny.safetensors'}"),
    "evaluate-out-csv-is-pairs": lambda d, out: (
        ["evaluate", "--pairs", str(d / "pairs.csv"), *FAST, "--out-csv", str(d / "pairs.csv"), "--quiet"],
        f"--out-csv {d / 'pairs.csv'}: {SAME} --pairs"),
    "evaluate-summary-is-an-image-of-the-pairs": lambda d, out: (
        ["evaluate", "--pairs", str(d / "pairs.csv"), *FAST, "--out-csv", str(out / "rows.csv"), "--summary",
         str(d / "moving.nii.gz"), "--quiet"], f"--summary {d / 'moving.nii.gz'}: {SAME} --pairs line 2 moving"),
    "finetune-out-is-model": lambda d, out: (
        _train("finetune", d, "--model", str(d / "tiny.safetensors"), "--out", str(d / "tiny.safetensors")),
        f"--out {d / 'tiny.safetensors'}: {SAME} --model"),
    "finetune-out-is-the-zoo-model-by-name": lambda d, out: (
        _train("finetune", d, "--model", "tiny", "--out", str(d.parent / "zoo" / "tiny.safetensors")),
        f"--out {d.parent / 'zoo' / 'tiny.safetensors'}: {SAME} --model tiny"),
    "finetune-card-is-task-json": lambda d, out: (
        _train("finetune", d, "--model", "tiny", "--out", str(d / "task" / "task.safetensors")),
        f"--out {d / 'task' / 'task.safetensors'}: task.json is a file of the input --tasks"),
    "metatrain-out-is-init": lambda d, out: (
        _train("metatrain", d, "--init", str(d / "tiny.safetensors"), "--out", str(d / "tiny.safetensors")),
        f"--out {d / 'tiny.safetensors'}: {SAME} --init"),
}


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_an_output_that_is_an_input_is_refused(case, d, out, capsys):
    argv, expected = INPUT_CASES[case](d, out)
    line = refused_in_process(argv, capsys, expected, d, out, d.parent / "zoo")
    assert "give the output another file name" in line
    assert load_model("tiny").name == "tiny"  # the zoo's file still matches its index sha256


def test_pretrain_out_whose_card_is_a_task_json_is_refused(d, out, capsys):
    argv = _train("pretrain", d, "--dim", "3", "--grid", "16,16,16", "--out", str(d / "task" / "task.safetensors"))
    refused_in_process(argv, capsys, "task.json is a file of the input --tasks", d, out)


# ---------------------------------------------------------------------------------------------------------------------
# 2. An output onto a device, FIFO or socket
# ---------------------------------------------------------------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    return server


def _device(path: Path) -> None:
    """A private node of /dev/full's kind: written over, it would harm nothing. (Never test on /dev/full itself: as
    root, a regression would replace the machine's device.)"""
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))


def _link_to_dev_null(path: Path) -> None:
    path.symlink_to("/dev/null")  # were it written over, only the link would go, never /dev/null itself


@pytest.mark.parametrize("make, kind", [(_fifo, "a FIFO (named pipe)"), (_socket, "a socket"),
                                        (_device, "a character device"), (_link_to_dev_null, "a character device")],
                         ids=["fifo", "socket", "device", "symlink-to-dev-null"])
def test_an_output_onto_a_special_file_is_refused(make, kind, d, out, capsys):
    target = out / "report.json"
    keep = make(target)
    try:
        line = refused_in_process(register(d, *FAST, "--report", str(target)), capsys,
                                  f"--report {target}: is {kind}, not a regular file", d, out)
    finally:
        if keep is not None:
            keep.close()
    assert "give a file name" in line


def test_an_output_whose_companion_file_is_a_fifo_is_refused(d, out, capsys):
    os.mkfifo(out / "warped.zraw")
    refused_in_process(register(d, *FAST, "--warped", str(out / "warped.mhd")), capsys,
                       f"--warped {out / 'warped.mhd'}: its file {out / 'warped.zraw'} is a FIFO", d, out)


def test_a_model_out_whose_card_is_a_fifo_is_refused(d, out, capsys):
    os.mkfifo(out / "new.json")
    argv = _train("finetune", d, "--model", "tiny", "--out", str(out / "new.safetensors"))
    refused_in_process(argv, capsys, f"--out {out / 'new.safetensors'}: its file {out / 'new.json'} is a FIFO", d, out)


# ---------------------------------------------------------------------------------------------------------------------
# 3. A full disk or a file-size limit
# ---------------------------------------------------------------------------------------------------------------------

FILE_SIZE_LIMIT = 100_000  # bytes: the inputs and the report fit, the noisy 40^3 warped image (256 kB) does not


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.fixture
def noisy(tmp_path) -> Path:
    """A 40^3 pair with noise: its outputs compress badly, so they exceed FILE_SIZE_LIMIT even as .nii.gz."""
    folder = tmp_path / "noisy"
    folder.mkdir()
    for name, shift in (("fixed", 0.0), ("moving", 2.0)):
        sitk.WriteImage(blobs((40, 40, 40), shift, noise=30.0, seed=int(shift)), str(folder / f"{name}.nii.gz"))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("option, name, expected", [
    ("--warped", "warped.nii.gz", "the file written is not the whole image (** ERROR: NWAD: wrote only"),
    ("--warped", "warped.nii", "the file written is not the whole image"),
    ("--warped", "warped.hdr", "the file written is not the whole image"),
    ("--transform", "fixed_to_moving.tfm", "the file written is not the whole transform"),
    ("--warped", "warped.mha", "SimpleITK cannot write"),  # MetaImage reports it itself
])
def test_a_file_size_limit_fails_the_run_and_keeps_the_previous_output(option, name, expected, noisy, out):
    target = out / name
    if option == "--warped":
        write_image(blobs((4, 4, 4)), target)  # the previous result, to be kept
    else:
        target.write_text("#Insight Transform File V1.0\n# the previous transform\n")
    (out / "report.json").write_text('{"previous": true}\n')
    before = state(noisy, out)
    argv = [*CLI, "register", "--fixed", str(noisy / "fixed.nii.gz"), "--moving", str(noisy / "moving.nii.gz"), *FAST,
            option, str(target), "--report", str(out / "report.json"), "--quiet"]
    result = subprocess.run(argv, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300, preexec_fn=_limit_file_size)
    line = assert_refused(result.returncode, result.stderr, "register", f"{option} {target}: {expected}", before,
                          noisy, out)
    assert "free space or write elsewhere" in line


def _mount_tiny_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, timeout=30)
    return result.returncode == 0


def test_a_full_disk_fails_the_run_and_keeps_the_previous_output(noisy, tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tiny_tmpfs(disk, "200k"):
        pytest.skip("mounting a tmpfs needs root and a system that allows it")
    try:
        target = disk / "warped.nii.gz"
        write_image(blobs((4, 4, 4)), target)
        argv = ["register", "--fixed", str(noisy / "fixed.nii.gz"), "--moving", str(noisy / "moving.nii.gz"), *FAST,
                "--warped", str(target), "--quiet"]
        line = refused_in_process(argv, capsys, f"--warped {target}: the file written is not the whole image", noisy,
                                  disk)
        assert "free space or write elsewhere" in line
    finally:
        subprocess.run(["umount", str(disk)], check=True, timeout=30)


# ---------------------------------------------------------------------------------------------------------------------
# 4. A failed run keeps the previous companion files; 5. outputs whose files overlap
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["warped.mhd", "warped.hdr", "warped.nhdr"])
def test_a_failed_run_keeps_every_file_of_the_previous_output(name, d, out, capsys):
    write_image(blobs((6, 5, 4)), out / name)  # the previous result: a header and its data file
    assert len(list(out.iterdir())) == 2
    argv = register(d, *FAST, "--warped", str(out / name), "--field", str(out / "field.png"))  # PNG: no vector field
    refused_in_process(argv, capsys, f"--field {out / 'field.png'}: SimpleITK cannot write", d, out)


@pytest.mark.parametrize("first, second, shared", [
    (("--warped", "x.hdr"), ("--field", "x.img"), "x.img"),
    (("--warped", "x.mhd"), ("--jacobian", "x.nhdr"), "x.raw"),  # both can write x.raw
    (("--warped", "x.nii.gz"), ("--jacobian", "x.nii"), "x.nii"),  # x.nii would be read for x.nii.gz
])
def test_outputs_whose_files_overlap_are_refused(first, second, shared, d, out, capsys):
    argv = register(d, *FAST, first[0], str(out / first[1]), second[0], str(out / second[1]))
    refused_in_process(argv, capsys, f"{second[0]} {out / second[1]}: {shared} is also a file of {first[0]} "
                                     f"{out / first[1]}", d, out)


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii", "x.hdr", "x.img", "x.mhd", "x.mha", "x.nrrd", "x.nhdr"])
@pytest.mark.parametrize("compress", [True, False])
def test_each_format_writes_only_the_files_it_is_known_to(name, compress, tmp_path):
    write_image(blobs((6, 5, 4)), tmp_path / name, compress=compress)
    written = {path.name for path in tmp_path.iterdir()}
    assert name in written and written <= {path.name for path in output_files(tmp_path / name)}


# ---------------------------------------------------------------------------------------------------------------------
# S5. SIGTERM while writing; scratch folders of dead runs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_while_the_outputs_are_written_rolls_them_back(tmp_path, out):
    """SIGTERM arrives once the first output has replaced the previous one and the others are being written: the
    run ends with 143 and the folder is as before, the previous outputs back in place."""
    images = tmp_path / "big"
    images.mkdir()
    for name, shift in (("fixed", 0.0), ("moving", 2.0)):
        sitk.WriteImage(blobs((64, 64, 64), shift, noise=5.0), str(images / f"{name}.nii.gz"))
    write_image(blobs((4, 4, 4)), out / "warped.nii.gz")
    (out / "report.json").write_text('{"previous": true}\n')
    before = state(images, out)
    first = (out / "warped.nii.gz").stat().st_ino
    argv = [*CLI, "register", "--fixed", str(images / "fixed.nii.gz"), "--moving", str(images / "moving.nii.gz"),
            *FAST, "--warped", str(out / "warped.nii.gz"), "--field", str(out / "field.nii.gz"),
            "--transform", str(out / "fixed_to_moving.tfm"), "--jacobian", str(out / "jacobian.nii.gz"),
            "--report", str(out / "report.json"), "--quiet"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
    deadline = time.monotonic() + 240
    while (out / "warped.nii.gz").stat().st_ino == first and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert stdout == ""
    assert_refused(process.returncode, stderr, "register", "terminated (SIGTERM); no outputs were written", before,
                   images, out, status=143)


def test_scratch_folders_of_dead_runs_are_removed_on_the_next_run(d, out, capsys):
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = out / f".warped.nii.gz.metareg-{ended.pid}-abcd1234.partial"
    alive = out / f".report.json.metareg-{os.getpid()}-abcd1234.partial"  # a run still going: left alone
    other = out / ".notes.partial"  # not metareg's
    for folder in (stale, alive, other):
        folder.mkdir()
        (folder / "file").write_text("left behind\n")
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    assert main(register(d, *FAST, "--warped", str(out / "warped.nii.gz"))) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted([alive.name, other.name, "warped.nii.gz"])


# ---------------------------------------------------------------------------------------------------------------------
# S3. Ctrl-C while the engine loads; an output name too long for the file system
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_while_the_command_starts_prints_one_line(d, out):
    """SIGINT while ``metareg`` still imports torch and SimpleITK: one line, status 130, nothing written. The
    command is the installed console script, as a user runs it; the signal goes at several moments of the start."""
    script = Path(sys.executable).with_name("metareg")
    argv = [str(script), *register(d, *FAST, "--warped", str(out / "warped.nii.gz"))]
    before = state(d, out)
    seen_message = False
    for delay in (0.3, 0.6, 1.0):
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace")
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
        assert "Traceback" not in stderr, stderr
        assert process.returncode in (130, -signal.SIGINT), (process.returncode, stderr)
        if process.returncode == 130:
            lines = [line for line in stderr.splitlines() if line.strip() and "%" not in line]
            assert len(lines) == 1 and ("interrupted" in lines[0]), stderr
            seen_message = True
        assert state(d, out) == before
    assert seen_message, "no interrupt reached the command while it was running"


def test_an_output_name_too_long_for_the_file_system_is_refused_before_the_work(d, out, capsys):
    long_name = "w" * 246 + ".nii.gz"  # 253 bytes: the file itself would fit, its temporary name would not
    expected = f"its file name is 253 bytes long; at most {os.pathconf(out, 'PC_NAME_MAX') - 5} can be written"
    refused_in_process(register(d, *FAST, "--warped", str(out / long_name)), capsys, expected, d, out)
    refused_in_process(register(d, *FAST, "--warped", str(out / ("w" * 300 + ".nii.gz"))), capsys,
                       "is 307 bytes long", d, out)
