"""The learning commands of the ``metareg`` CLI: ``pretrain``, ``metatrain`` and ``finetune``.

All three run unchanged under ``torchrun --nproc_per_node N -m metareg.app.cli ...`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from metareg.core.card import PREALIGN_CHOICES
from metareg.core.errors import InputError
from metareg.core.losses import REGULARISERS, SIMILARITIES, LossConfig
from metareg.core.networks import FAMILIES
from metareg.learning.augment import AugmentConfig
from metareg.learning.tasks import Task, default_data_dir, load_task

TRAIN_EXAMPLES = """\
examples (2D slices of the tasks built by `metareg data fetch`):
  metareg pretrain  --tasks brain-t1-2d,head-ct-2d,chest-ct-2d --dim 2 --grid 128,128 --steps 2000 --out pre.safetensors
  metareg metatrain --level task --init pre.safetensors --tasks brain-t1-2d,head-ct-2d,chest-ct-2d --steps 500 \\
                    --out meta.safetensors
  metareg finetune  --model meta.safetensors --tasks fundus-2d-finetune --steps 100 --out mine.safetensors
  metareg register  --fixed f.nii.gz --moving m.nii.gz --model mine.safetensors --adapt-steps 5
Long runs write <out>.ckpt/last.pt every --checkpoint-every steps; --resume continues from it.
Under torchrun: torchrun --nproc_per_node 2 -m metareg.app.cli pretrain ...
"""


def _int_list(text: str | None, option: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{option} {text}", "must be comma-separated integers, e.g. 128,128") from None


def _float_list(text: str | None, option: str) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{option} {text}", "must be comma-separated numbers, e.g. 2,2,2") from None


def _tasks(args: argparse.Namespace) -> list[Task]:
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    specs = [s for text in args.tasks for s in text.split(",") if s]
    if not specs:
        raise InputError("--tasks", "name at least one task (a name from `metareg data list`, a folder or a CSV)")
    return [load_task(spec, data_dir) for spec in specs]


def _check_out(args: argparse.Namespace, tasks: list[Task], parent: str | None = None) -> None:
    """Refuse an ``--out`` that would write over an input: the parent model (weights and card), a task's pairs CSV or
    task.json, or a file one of its pairs names (:func:`metareg.core.imageio.check_output_path`), before any work."""
    from metareg.core.errors import MetaRegError
    from metareg.core.imageio import check_output_path
    from metareg.core.modelio import resolve_model

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    inputs: list[tuple[str, str | Path | None]] = []
    for spec in (s for text in args.tasks for s in text.split(",") if s):
        folder = Path(spec) if Path(spec).is_dir() else data_dir / "tasks" / spec
        files = [Path(spec)] if spec.endswith(".csv") else [folder / "pairs.csv", folder / "task.json"]
        inputs += [(f"--tasks {spec}", file) for file in files]
    inputs += [(f"task {task.name}", value) for task in tasks for pair in task.pairs for value in vars(pair).values()
               if isinstance(value, str)]
    if parent:
        option = "--init" if args.command == "metatrain" else "--model"
        try:
            inputs.append((f"{option} {parent}", resolve_model(parent)[0]))
        except MetaRegError:
            pass  # an unknown or missing model is reported when it is loaded
    check_output_path(args.out, "--out", inputs)


def _augment(args: argparse.Namespace) -> AugmentConfig:
    return AugmentConfig(rotation_deg=args.augment_rotation, scale=args.augment_scale,
                         shift_fraction=args.augment_shift, deformation_vox=args.augment_deformation)


def _spec(args: argparse.Namespace):
    from metareg.core.card import GridSpec, ModelCard, Normalisation

    if args.dim not in (2, 3):
        raise InputError("--dim", "must be 2 or 3")
    size = _int_list(args.grid, "--grid")
    if not size or len(size) != args.dim:
        raise InputError(f"--grid {args.grid}", f"needs {args.dim} sizes (ITK order x,y[,z]), e.g. 128,128")
    spacing = _float_list(args.spacing, "--spacing")
    if spacing is not None and len(spacing) != args.dim:
        raise InputError(f"--spacing {args.spacing}", f"needs {args.dim} values in mm")
    architecture = {"family": args.family, "dim": args.dim, "diffeomorphic": args.diffeomorphic}
    if args.architecture:
        try:
            architecture.update(json.loads(args.architecture))
        except json.JSONDecodeError as error:
            raise InputError(f"--architecture {args.architecture}", f"is not JSON ({error})") from None
    loss = LossConfig(similarity=args.similarity, regulariser=args.regulariser, regulariser_weight=args.smoothness)
    return ModelCard(architecture=architecture, grid=GridSpec(size, spacing),
                     normalisation=Normalisation(histogram_equalisation=bool(args.histogram_equalisation)),
                     loss=loss, prealign=args.prealign)


def _command_line() -> str:
    return "metareg " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_pretrain(args: argparse.Namespace) -> int:
    from metareg.learning.config import TrainConfig
    from metareg.learning.recipes import pretrain

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, augment=_augment(args),
                         seed=args.seed, checkpoint_every=args.checkpoint_every,
                         field_supervision=args.field_supervision)
    tasks = _tasks(args)
    _check_out(args, tasks)
    pretrain(tasks, _spec(args), config, Path(args.out), args.device, args.resume, command=_command_line())
    print(f"wrote {args.out} and its card; loss log {Path(args.out).stem}.loss.csv")
    return 0


def run_finetune(args: argparse.Namespace) -> int:
    from metareg.learning.config import TrainConfig
    from metareg.learning.recipes import finetune

    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, augment=_augment(args),
                         seed=args.seed, checkpoint_every=args.checkpoint_every,
                         field_supervision=args.field_supervision)
    tasks = _tasks(args)
    _check_out(args, tasks, args.model)
    loss = None
    if args.similarity is not None:
        from metareg.core.modelio import load_model

        loss = LossConfig(**{**load_model(args.model).card.loss.to_dict(), "similarity": args.similarity})
    events = getattr(args, "events", None)  # the worker's JSON lines (metareg.app.worker)
    curve = finetune(args.model, tasks, config, Path(args.out), args.device, args.resume,
                     command=args.record_command or _command_line(), loss=loss, progress=events)
    if events is not None:
        events.emit("result", model=str(args.out), loss_curve=[float(value) for value in curve])
    else:
        print(f"wrote {args.out} and its card (parent {args.model})")
    return 0


def run_metatrain(args: argparse.Namespace) -> int:
    from metareg.learning.config import ReptileConfig
    from metareg.learning.recipes import metatrain

    config = ReptileConfig(level=args.level, steps=args.steps, tasks_per_step=args.tasks_per_step,
                           inner_steps=args.inner_steps, inner_learning_rate=args.inner_lr,
                           inner_batch_size=args.inner_batch_size, outer=args.outer, outer_learning_rate=args.outer_lr,
                           meta_step_start=args.meta_step_start, meta_step_end=args.meta_step_end,
                           augment=_augment(args), seed=args.seed, checkpoint_every=args.checkpoint_every)
    spec = None if args.init else _spec(args)
    tasks = _tasks(args)
    _check_out(args, tasks, args.init)
    metatrain(tasks, spec, config, Path(args.out), args.device, args.resume, parent=args.init,
              command=_command_line(), progress=getattr(args, "events", None))
    print(f"wrote {args.out} and its card")
    return 0


def _common(parser: argparse.ArgumentParser, steps: int, checkpoint_every: int) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--tasks", action="append", required=True, metavar="T[,T...]",
                      help="tasks: names in --data-dir (see `metareg data list`), task folders, or pair CSVs")
    data.add_argument("--data-dir", metavar="DIR", help="where `metareg data fetch` put the tasks "
                                                        "(default $METAREG_DATA_DIR or ~/.cache/metareg/data)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="OUT.safetensors", help="the model to write (plus its .json card)")
    run.add_argument("--steps", type=int, default=steps, help=f"optimisation steps (default {steps})")
    run.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    run.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="N",
                     help=f"write <out>.ckpt/last.pt every N steps (default {checkpoint_every})")
    run.add_argument("--resume", action="store_true", help="continue from <out>.ckpt/last.pt")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    aug = parser.add_argument_group("augmentation (fixed and moving independently)")
    aug.add_argument("--augment-rotation", type=float, default=0.0, metavar="DEG", help="largest rotation, degrees")
    aug.add_argument("--augment-scale", type=float, default=0.0, metavar="F", help="largest scaling, e.g. 0.1 = ±10%%")
    aug.add_argument("--augment-shift", type=float, default=0.0, metavar="F", help="largest shift, fraction of extent")
    aug.add_argument("--augment-deformation", type=float, default=0.0, metavar="VOX",
                     help="largest random smooth deformation, voxels")


def _model_options(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("the network (ignored with --init)")
    model.add_argument("--dim", type=int, default=2, help="2 or 3 (default 2)")
    model.add_argument("--grid", default="128,128", help="model grid size, ITK order x,y[,z] (default 128,128)")
    model.add_argument("--spacing", help="model grid spacing in mm (default: the grid spans the fixed image)")
    model.add_argument("--family", choices=sorted(FAMILIES), default="unet", help="network family (default unet)")
    model.add_argument("--architecture", metavar="JSON",
                       help='width overrides, e.g. \'{"encoder_channels": [8,16,16]}\'')
    model.add_argument("--diffeomorphic", action="store_true", help="integrate a velocity field (scaling and squaring)")
    model.add_argument("--similarity", choices=sorted(SIMILARITIES), default="lncc", help="similarity (default lncc)")
    model.add_argument("--regulariser", choices=sorted(REGULARISERS), default="gradient_l2",
                       help="regulariser (default gradient_l2)")
    model.add_argument("--smoothness", type=float, default=1.0, help="regulariser weight (default 1.0)")
    model.add_argument("--histogram-equalisation", action="store_true", help="equalise intensities (seed 000)")
    model.add_argument("--prealign", choices=PREALIGN_CHOICES, default="none",
                       help="affine: pre-align every pair (SimpleITK affine, mutual information) before training, and "
                            "by default before every registration with the model (default none)")


def add_training_commands(commands) -> None:
    """Add ``pretrain``, ``metatrain`` and ``finetune`` to the ``metareg`` sub-command parser."""
    formatter = argparse.RawDescriptionHelpFormatter
    pre = commands.add_parser("pretrain", help="train a network on the pairs of several tasks (one pool)",
                              description="Unsupervised training over all pairs of the given tasks as one pool "
                                          "(similarity + smoothness, no labels).", epilog=TRAIN_EXAMPLES,
                              formatter_class=formatter)
    _common(pre, steps=2000, checkpoint_every=100)
    _model_options(pre)
    pre.add_argument("--batch-size", type=int, default=4, help="pairs per step over all processes (default 4)")
    pre.add_argument("--lr", type=float, default=1e-3, help="Adam step size (default 1e-3)")
    pre.add_argument("--field-supervision", type=float, default=0.0, metavar="W",
                     help="every other sample is a synthetic pair (moving warped by a random displacement drawn from "
                          "the augmentation settings) whose known displacement is supervised with weight W, "
                          "voxels^2 (default 0: unsupervised only)")
    pre.set_defaults(handler=run_pretrain)

    meta = commands.add_parser("metatrain", help="Reptile meta-training (task level or pair level)",
                               description="Reptile: each meta-step adapts copies of the weights to a few tasks and "
                                           "moves the weights toward their mean. --level task: a task is a domain "
                                           "(seed 000); --level pair: a task is one pair with random affine "
                                           "augmentation in the inner loop (seed 002).", epilog=TRAIN_EXAMPLES,
                               formatter_class=formatter)
    _common(meta, steps=500, checkpoint_every=50)
    _model_options(meta)
    meta.add_argument("--init", metavar="MODEL", help="start from this model (usually the pretrained one)")
    meta.add_argument("--level", choices=("task", "pair"), default="task", help="task or pair level (default task)")
    meta.add_argument("--tasks-per-step", type=int, default=3, metavar="B", help="tasks per meta-step (default 3)")
    meta.add_argument("--inner-steps", type=int, default=10, metavar="K", help="inner Adam steps (default 10)")
    meta.add_argument("--inner-lr", type=float, default=1e-3, help="inner Adam step size (default 1e-3)")
    meta.add_argument("--inner-batch-size", type=int, default=1, help="pairs per inner step (default 1)")
    meta.add_argument("--outer", choices=("adam", "sgd"), default="adam",
                      help="outer update: Adam on θ − mean θᵢ, or SGD with a decaying meta step (default adam)")
    meta.add_argument("--outer-lr", type=float, default=1e-3, help="outer Adam step size (default 1e-3)")
    meta.add_argument("--meta-step-start", type=float, default=0.5, help="SGD meta step at the start (default 0.5)")
    meta.add_argument("--meta-step-end", type=float, default=1e-5, help="SGD meta step at the end (default 1e-5)")
    meta.set_defaults(handler=run_metatrain)

    fine = commands.add_parser("finetune", help="adapt a model to a small target-domain set",
                               description="Fine-tune MODEL on the pairs of the given tasks; writes a new model whose "
                                           "card names its parent, the data, the steps and the loss curve.",
                               epilog=TRAIN_EXAMPLES, formatter_class=formatter)
    _common(fine, steps=200, checkpoint_every=50)
    fine.add_argument("--model", required=True, metavar="MODEL", help="the parent model (zoo name or file)")
    fine.add_argument("--batch-size", type=int, default=4, help="pairs per step over all processes (default 4)")
    fine.add_argument("--lr", type=float, default=1e-4, help="Adam step size (default 1e-4)")
    fine.add_argument("--similarity", choices=sorted(SIMILARITIES), default=None,
                      help="train with this similarity instead of the parent's, e.g. mi for a multimodal variant")
    fine.add_argument("--field-supervision", type=float, default=0.0, metavar="W",
                      help="as for pretrain: supervise synthetic pairs' known displacement with weight W (default 0)")
    fine.add_argument("--record-command", metavar="TEXT",
                      help="what the new card records as the command that made it (default: this command line); "
                           "a GUI names itself and the data here")
    fine.set_defaults(handler=run_finetune)
