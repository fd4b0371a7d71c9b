"""Protocol 2, seed 002's "test-time optimisation" table on 3D brain MR: time, TRE, Dice, NCC and folding per method.

    .venv/bin/python -m benchmarks.testtime_3d [--model brain-mr-3d-reptile] [--adapt-steps 5] [--train-steps 150]
                                               [--train-grid 48,56,48] [--threads 1] [--quick] [--out-dir DIR]

Rows (Baum et al., Table 1, on our data):

* **classical iterative** — ``register(fixed, moving)`` with no model: our direct multi-resolution optimisation of
  the displacement field (local NCC + gradient L2, Adam; :mod:`metareg.core.iterative`, default settings);
* **LocalNet** and **VoxelMorph-style U-Net** — reference networks trained here *the same way as each other* with
  :func:`metareg.learning.recipes.pretrain`: same data (``brain-mr-3d`` + ``brain-mr-3d-warp``), loss (local NCC +
  gradient L2, weight 1), model grid, steps, batch size 1, Adam 1e-3, augmentation, seed 0, diffeomorphic head — the
  recipe of the 3D zoo model (/work/zoo3/train3d.sh; ``--recipe supervised``, the default: synthetic field supervision
  weight 1, augmentation 5°/3 %/3 voxels, no pre-alignment; ``--recipe affine``: the script's later version, affine
  pre-aligned pairs, unsupervised, 2°/1 %/1.5 voxels) at a small shared budget (default 150 steps at 48×56×48 on one
  CPU thread). They are budget-matched reference networks, not the zoo model. The training pairs are prepared once
  and shared by both networks. Trained models are cached in ``benchmarks/.cache/`` (git-ignored; the file name holds
  a hash of the whole training recipe), so a rerun skips training;
* **meta-registration** — the zoo model (``--model``, default ``brain-mr-3d-reptile``: pair-level Reptile) with
  0 test-time steps and with ``--adapt-steps`` (default 5) test-time adaptation steps on each pair
  (``register(fixed, moving, NetworkMethod(model, adapt_steps=5))``, the card's adaptation learning rate). When the
  model does not exist the script says why and leaves out only those two rows (``--require-model`` makes that an error
  instead).

Evaluation: the pairs of ``brain-mr-3d-test`` (held out, 8 pairs): the MNI 2009c T1w template (2 mm, 96×112×96)
against the template seen through **known synthetic** smooth warps plus small rigid motions; 32 AFID landmarks per
pair whose moving positions follow from the known warp. So TRE measures recovery of a known synthetic warp, not
registration of two real subjects.

Columns: ``seconds`` — wall seconds of one ``register()`` call per pair (affine pre-alignment where the model card
asks for it, resampling onto the model grid, test-time adaptation, network or iterative optimisation, the voxel
displacement turned into the physical field on the fixed grid, the warp of the moving image; the metrics stage
excluded), mean over pairs, CPU with ``--threads`` threads, after one untimed warm-up call per network; ``TRE`` — per
pair the mean over landmarks of |φ(p) − q| in mm (fixed landmark p mapped through the field, LPS mm, against its moving
landmark q), then mean ± sd over pairs; ``Dice`` — mean over labels of the warped moving label map against the fixed one
when the task lists label maps, else "—": ``brain-mr-3d-test`` has none (Baum et al. used prostate gland segmentations;
we have none for these volumes and do not invent any); ``NCC after`` — NCC of fixed and warped moving image on the fixed
grid (common region), mean over pairs; ``folding %`` — share of fixed-grid voxels with Jacobian determinant ≤ 0, mean
over pairs.

Outputs: ``<out-dir>/testtime-3d.{csv,md,json}`` (default benchmarks/results/). ``--quick``: 1 pair, 3 training steps
at 32×40×32, a shortened iterative schedule (levels 1/4, 1/2; 30 + 20 steps) — for the test
suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import (benchmark_parser, environment, evaluate_field, landmark_pairs, mean_sd, run_measured,
                               set_threads, summarise, write_results)

HERE = Path(__file__).resolve().parent

CACHE = HERE / ".cache"
TRAIN_TASKS = ("brain-mr-3d", "brain-mr-3d-warp")
TEST_TASK = "brain-mr-3d-test"
#: The reference networks. Both diffeomorphic like the zoo model; the U-Net has the zoo's widths.
FAMILIES = {
    "localnet": {"label": "LocalNet", "architecture": {"family": "localnet", "channels": [16, 32, 32, 64]}},
    "unet": {"label": "VoxelMorph-style U-Net",
             "architecture": {"family": "unet", "encoder_channels": [16, 32, 32, 32],
                              "decoder_channels": [32, 32, 32, 32, 16, 16]}},
}
#: The reference networks' training recipes (apart from steps and grid): the 3D zoo recipe of /work/zoo3/train3d.sh
#: in its two versions. "supervised" (the default; the script's version of 2026-11-22 05:52): no pre-alignment,
#: synthetic field supervision weight 1, augmentation 5°, 3 %, 3 voxels. "affine" (its version of 06:03): every pair
#: affinely pre-aligned, unsupervised, augmentation 2°, 1 %, 1.5 voxels — the pre-alignment costs ~10 s per training
#: pair on one CPU thread. Both: local NCC + gradient L2 (weight 1), diffeomorphic, batch 1, Adam 1e-3, seed 0.
_COMMON = {"batch_size": 1, "learning_rate": 1e-3, "seed": 0,
           "loss": {"similarity": "lncc", "regulariser": "gradient_l2", "regulariser_weight": 1.0, "ncc_window": 9},
           "normalisation": {"method": "percentile", "low": 1.0, "high": 99.0, "histogram_equalisation": False}}
RECIPES = {
    "supervised": {**_COMMON, "prealign": "none", "field_supervision": 1.0,
                   "augment": {"rotation_deg": 5.0, "shift_fraction": 0.03, "deformation_vox": 3.0}},
    "affine": {**_COMMON, "prealign": "affine", "field_supervision": 0.0,
               "augment": {"rotation_deg": 2.0, "shift_fraction": 0.01, "deformation_vox": 1.5}},
}
QUICK_ITERATIVE = {"shrink_factors": (4, 2), "iterations": (30, 20)}


# ---------------------------------------------------------------------------------------------------------------------
# Reference networks: trained once per recipe, cached
# ---------------------------------------------------------------------------------------------------------------------


def recipe_for(family: str, args: argparse.Namespace) -> dict:
    """Everything that determines a trained reference network (its cache key)."""
    architecture = {**FAMILIES[family]["architecture"], "dim": 3, "diffeomorphic": True}
    return {"family": family, "architecture": architecture, "grid": list(args.train_grid), "steps": args.train_steps,
            "tasks": list(TRAIN_TASKS), **RECIPES[args.recipe]}


def cached_model_path(recipe: dict, cache_dir: Path) -> Path:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]
    grid = "x".join(str(n) for n in recipe["grid"])
    return cache_dir / f"{recipe['family']}-3d-{recipe['steps']}steps-{grid}-{digest}.safetensors"


def train_references(recipes: dict[str, dict], outs: dict[str, str], data_dir: str | None) -> dict:
    """Train the reference networks one after the other with :func:`metareg.learning.recipes.pretrain` (in a fresh
    process).

    The recipes differ only in the architecture, so the networks share one prepared copy of the training pairs
    (model grid, normalisation, affine pre-alignment): the pairs the training will draw are prepared first, timed
    apart, and every network then trains on the same tensors.
    """
    from metareg.learning.augment import AugmentConfig
    from metareg.core.losses import LossConfig
    from metareg.learning.tasks import TaskData, default_data_dir, load_task
    from metareg.core.card import GridSpec, ModelCard, Normalisation
    from metareg.learning.sampling import PairPool, generator
    from metareg.learning.config import TrainConfig
    from metareg.learning.recipes import pretrain

    first = next(iter(recipes.values()))
    shared = {k: v for k, v in first.items() if k not in ("family", "architecture")}
    if any({k: v for k, v in r.items() if k not in ("family", "architecture")} != shared for r in recipes.values()):
        raise ValueError("the reference networks must share every setting but the architecture")
    tasks = [load_task(name, data_dir or default_data_dir()) for name in first["tasks"]]
    grid = GridSpec(tuple(first["grid"]))
    datas = [TaskData(task, grid, Normalisation(**first["normalisation"]), affine=first["prealign"] == "affine")
             for task in tasks]
    config = TrainConfig(steps=first["steps"], batch_size=first["batch_size"], learning_rate=first["learning_rate"],
                         augment=AugmentConfig(**first["augment"]), seed=first["seed"], checkpoint_every=0,
                         field_supervision=first["field_supervision"])
    # the pairs the training draws (same counter-based draws as metareg.learning.loops.train_loop), prepared once
    started = time.perf_counter()
    pool = PairPool(datas)
    drawn = set()
    for step in range(config.steps):
        for slot in range(config.batch_size):
            data, index = pool.draw(generator(config.seed, step, slot))
            data.tensors(index)
            drawn.add((id(data), index))
    result = {"prepare_seconds": time.perf_counter() - started, "prepared_pairs": len(drawn), "networks": {}}
    for family, recipe in recipes.items():
        spec = ModelCard(architecture=recipe["architecture"], grid=grid,
                         normalisation=Normalisation(**recipe["normalisation"]), loss=LossConfig(**recipe["loss"]),
                         prealign=recipe["prealign"])
        started = time.perf_counter()
        curve = pretrain(tasks, spec, config, Path(outs[family]), device="cpu", stage="pretrain", datas=datas,
                         command=f"benchmarks/testtime_3d.py reference network, recipe {json.dumps(recipe)}",
                         purpose=f"budget-matched {family} reference for benchmarks/testtime_3d.py (not a zoo model)")
        result["networks"][family] = {"seconds": time.perf_counter() - started,
                                      "final_loss": float(np.mean(curve[-10:]))}
    return result


def reference_models(args: argparse.Namespace) -> dict[str, tuple[Path, dict]]:
    """The cached reference networks for this recipe, trained first (all missing ones together) when missing."""
    recipes = {family: recipe_for(family, args) for family in FAMILIES}
    paths = {family: cached_model_path(recipe, args.cache_dir) for family, recipe in recipes.items()}
    missing = [f for f, p in paths.items() if not (p.exists() and p.with_suffix(".json").exists())]
    trained = {}
    if missing:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        ignore = args.cache_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# trained benchmark models: regenerated by the benchmarks, never committed\n*\n")
        names = ", ".join(FAMILIES[f]["label"] for f in missing)
        print(f"training {names}: {args.train_steps} steps at {args.train_grid} each, recipe {args.recipe} "
              f"({args.threads} thread(s)) ...", flush=True)
        trained, peak = run_measured(train_references, {f: recipes[f] for f in missing},
                                     {f: str(paths[f]) for f in missing}, args.data_dir, threads=args.threads)
        trained["peak_mib"] = peak
        print(f"prepared {trained['prepared_pairs']} training pairs in {trained['prepare_seconds']:.0f} s; "
              + ", ".join(f"{FAMILIES[f]['label']} trained in {v['seconds']:.0f} s"
                          for f, v in trained["networks"].items()) + f" (peak {peak:.0f} MiB)", flush=True)
    out = {}
    for family, path in paths.items():
        card = json.loads(path.with_suffix(".json").read_text())
        info = {"recipe": recipes[family], "file": str(path), "cached": family not in missing,
                "train_seconds": card["training"].get("seconds_this_run"),
                "final_loss": card["training"].get("final_loss")}
        if family in missing:
            info.update(prepare_seconds_shared=trained["prepare_seconds"], prepared_pairs=trained["prepared_pairs"],
                        train_peak_mib=trained["peak_mib"])
        else:
            print(f"{FAMILIES[family]['label']}: cached {path.name}", flush=True)
        out[family] = (path, info)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def attach_labels(pairs, args: argparse.Namespace) -> bool:
    """Read the task's label maps (columns fixed_labels, moving_labels) into the pairs; False when it has none."""
    from metareg.core.imageio import read_image
    from metareg.learning.tasks import default_data_dir, load_task

    task = load_task(args.task, args.data_dir or default_data_dir())
    listed = [task.pairs[p.index] for p in pairs]
    if not all(t.fixed_labels and t.moving_labels for t in listed):
        return False
    for pair, entry in zip(pairs, listed):
        pair.fixed_labels = read_image(entry.fixed_labels, "fixed labels")
        pair.moving_labels = read_image(entry.moving_labels, "moving labels")
    return True


def evaluate(name: str, pairs, run_one, warmup=None) -> list[dict]:
    """``run_one(pair) -> RegistrationResult`` on every pair; one row per pair: its field measured by
    :func:`common.evaluate_field` (TRE in mm, LPS), the report's seconds, pre-alignment, Dice and model grid."""
    if warmup is not None:
        warmup(pairs[0])
    rows = []
    for pair in pairs:
        result = run_one(pair)
        report = result.report.to_dict()
        stages = report["seconds"]
        seconds = stages["total"] - stages.get("metrics", 0.0)
        measured = evaluate_field(pair, result.field)
        dice = (report.get("labels") or {}).get("mean_dice_after")
        rows.append({"method": name, "pair": pair.index, "seconds": seconds, "affine": report["affine"],
                     "tre_before_mm": measured["tre_before_mm"], "tre_after_mm": measured["tre_after_mm"],
                     "tre_after_max_mm": measured["tre_after_max_mm"], "dice_after": dice,
                     "ncc_before": measured["ncc_before"], "ncc_after": measured["ncc_after"],
                     "folding_percent": 100.0 * measured["folding_fraction"], "stages_s": stages,
                     "model_grid": report["model_grid"]["size"]})
        print(f"  pair {pair.index}  {name:44s} TRE {measured['tre_before_mm']:5.2f} -> "
              f"{measured['tre_after_mm']:5.2f} mm  NCC {measured['ncc_after']:.3f}  folding {100 * measured['folding_fraction']:.3f} %  "
              f"{seconds:6.1f} s", flush=True)
    return rows


def labels_of(pair) -> dict:
    return {"fixed_labels": pair.fixed_labels, "moving_labels": pair.moving_labels}


#: What the JSON's summary gives the mean and sd of, per method (:func:`common.summarise`).
SUMMARY_KEYS = ("seconds", "tre_before_mm", "tre_after_mm", "ncc_before", "ncc_after", "folding_percent")


def summary_row(name: str, rows: list[dict], grid: str) -> dict:
    """The method's line of the table (means over its pairs; TRE and Dice mean ± sd)."""
    summary = summarise(rows, (*SUMMARY_KEYS, "dice_after"))
    return {
        "method": name,
        "model grid": grid,
        "affine pre-alignment": "yes" if all(r["affine"] for r in rows) else "no",
        "pairs": len(rows),
        "seconds": summary["seconds"]["mean"],
        "TRE before mm": mean_sd(summary["tre_before_mm"]),
        "TRE after mm": mean_sd(summary["tre_after_mm"]),
        "Dice": mean_sd(summary["dice_after"]),  # "—" when the task has no label maps
        "NCC after": summary["ncc_after"]["mean"],
        "folding %": summary["folding_percent"]["mean"],
    }


def grid_text(size) -> str:
    return "×".join(str(n) for n in size)


def run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    set_threads(args.threads)
    env = environment(args.threads, argv)
    import torch

    from metareg.core.errors import ModelError
    from metareg.core.iterative import IterativeConfig
    from metareg.core.modelio import load_model
    from metareg.core.registration import NetworkMethod, register

    started = time.perf_counter()
    args.load_averages = [os.getloadavg()[0]]
    pairs = landmark_pairs(args.task, limit=args.pairs, data_dir=args.data_dir)
    has_labels = attach_labels(pairs, args)
    print(f"{args.task}: {len(pairs)} pair(s), {len(pairs[0].fixed_points)} landmarks each", flush=True)

    # 1. the networks: the zoo model (checked first, so a missing one is reported at once) and the reference
    #    networks (trained, or found in the cache)
    try:
        zoo = load_model(args.model)
        zoo_reason = None
    except ModelError as error:
        zoo, zoo_reason = None, str(error)
        if args.require_model:
            raise SystemExit(f"--model {args.model}: {zoo_reason}")
        print(f"SKIPPING the meta-registration rows: model {args.model!r} is not available ({zoo_reason})", flush=True)
    references = reference_models(args)

    # 2. registration of every test pair by every method
    per_pair: dict[str, list[dict]] = {}
    table: list[dict] = []
    iterative = IterativeConfig(**QUICK_ITERATIVE) if args.quick else IterativeConfig()
    name = "classical iterative (no network)"
    print(name, flush=True)
    per_pair[name] = evaluate(name, pairs, lambda p: register(p.fixed, p.moving, method=iterative, device=args.device,
                                                              **labels_of(p)))
    table.append(summary_row(name, per_pair[name], grid_text(per_pair[name][0]["model_grid"]) + " (fixed grid)"))

    def network_rows(label: str, model, steps: int) -> None:
        print(label, flush=True)
        per_pair[label] = evaluate(
            label, pairs, lambda p: register(p.fixed, p.moving,
                                             method=NetworkMethod(model, adapt_steps=steps, refine_steps=0),
                                             device=args.device, **labels_of(p)),
            warmup=lambda p: register(p.fixed, p.moving,
                                      method=NetworkMethod(model, adapt_steps=min(steps, 1), refine_steps=0),
                                      affine=False, device=args.device))
        table.append(summary_row(label, per_pair[label], grid_text(model.card.grid.size)))

    for family, (path, info) in references.items():
        network_rows(f"{FAMILIES[family]['label']} (budget-matched, {args.train_steps} steps)", load_model(path), 0)
    if zoo is not None:
        network_rows(f"meta-registration {zoo.name}, 0 test-time steps", zoo, 0)
        network_rows(f"meta-registration {zoo.name}, {args.adapt_steps} test-time steps", zoo, args.adapt_steps)

    # 3. results
    args.load_averages.append(os.getloadavg()[0])
    training = {FAMILIES[f]["label"]: info for f, (_, info) in references.items()}
    notes = notes_for(args, pairs, training, zoo, zoo_reason, iterative, has_labels)
    zoo_info = {"name": zoo.name, "file": str(zoo.weights_path), "sha256": zoo.card.sha256} if zoo else None
    extra = {"has_labels": has_labels,
             "summary": {name: summarise(rows, SUMMARY_KEYS) for name, rows in per_pair.items()},
             "per_pair": per_pair, "reference_networks": training, "zoo_model": zoo_info,
             "zoo_model_skipped": zoo_reason, "iterative_config": iterative.to_dict(), "task": args.task,
             "torch_threads": torch.get_num_threads(), "seconds_whole_benchmark": time.perf_counter() - started}
    paths = write_results(args.stem, "Test-time optimisation on 3D brain MR (seed 002, Table 1 protocol)", table, env,
                          notes, extra=extra, out_dir=args.out_dir)
    print(paths["md"].read_text())
    print(f"whole benchmark: {time.perf_counter() - started:.0f} s")
    return paths


def notes_for(args, pairs, training, zoo, zoo_reason, iterative, has_labels) -> list[str]:
    recipe = RECIPES[args.recipe]
    train_text = "; ".join(
        f"{label}: {info['train_seconds']:.0f} s{' (cached)' if info['cached'] else ''}, final loss "
        f"{info['final_loss']:.3f}" for label, info in training.items() if info.get("train_seconds") is not None)
    notes = [
        f"Test pairs: {args.task} ({len(pairs)} pair(s)): the MNI 2009c T1w template against the template seen through "
        f"known synthetic smooth warps + small rigid motions; {len(pairs[0].fixed_points)} AFID landmarks per pair. "
        "TRE measures recovery of a known synthetic warp, not registration of two real subjects.",
        "TRE: per pair the mean over landmarks of |field(p) − q| (mm, LPS), then mean ± sd over pairs. NCC after and "
        "folding % (Jacobian determinant ≤ 0 on the fixed grid): mean over pairs.",
        ("Dice: mean over labels of the warped moving label map against the fixed one (nearest neighbour), mean ± sd "
         "over pairs." if has_labels else
         f"Dice: — for every row: {args.task} has no label maps (Baum et al. used prostate gland segmentations); "
         "none are invented here."),
        f"seconds: one register() call per pair without its metrics stage, mean over pairs, CPU, {args.threads} "
        "thread(s), after one untimed warm-up call per network.",
        f"LocalNet and VoxelMorph-style U-Net are budget-matched reference networks trained here, not the zoo model, "
        f"both the same way with metareg.learning.recipes.pretrain: the zoo's 3D recipe (/work/zoo3/train3d.sh, version "
        f"'{args.recipe}': tasks {', '.join(TRAIN_TASKS)}; "
        f"{'affine pre-aligned pairs' if recipe['prealign'] == 'affine' else 'no pre-alignment'}; local NCC + "
        f"gradient L2 weight 1; diffeomorphic; augmentation rotation {recipe['augment']['rotation_deg']:g}°, shift "
        f"{100 * recipe['augment']['shift_fraction']:g} %, deformation {recipe['augment']['deformation_vox']:g} "
        f"voxels; synthetic field supervision weight {recipe['field_supervision']:g}; batch 1; Adam 1e-3; seed 0) at "
        f"a small shared budget: {args.train_steps} steps at {grid_text(args.train_grid)} each ({train_text}"
        f"{prepare_text(training)}). They are far from converged; the comparison is of equal budgets, not of the "
        "best each architecture can do.",
        "affine pre-alignment: rows marked yes first run the classical affine pre-alignment of metareg.core.registration "
        "(Mattes MI, SimpleITK) on the pair, as the model card asks; its time is in the seconds.",
        f"Classical iterative: {'shortened schedule for --quick: ' if args.quick else ''}levels 1/"
        f"{', 1/'.join(str(f) for f in iterative.shrink_factors)} with {'+'.join(str(i) for i in iterative.iterations)} "
        f"Adam steps (lr {iterative.learning_rate} voxel) on B-spline control points every "
        f"{'/'.join(str(s) if s else 'dense' for s in iterative.level_spacings())} voxels"
        f"{', moving image supersampled 2x' if iterative.supersample else ''}, local NCC + gradient L2 weight "
        f"{iterative.loss.regulariser_weight}, on the fixed image's grid.",
    ]
    if zoo is not None:
        rate = zoo.card.adaptation.learning_rate
        notes.append(f"Meta-registration: model {zoo.name} (sha256 {zoo.card.sha256[:12]}…, stage "
                     f"{zoo.card.training.get('stage')}), {args.adapt_steps} test-time Adam steps at "
                     f"learning rate {rate} (from its card) on each pair; the model file is not changed.")
    else:
        notes.append(f"Meta-registration rows LEFT OUT: model {args.model!r} is not available ({zoo_reason}). Rerun "
                     "once it exists; the reference networks are cached and not retrained.")
    notes.append(f"Machine load (1-minute load average, {os.cpu_count()} cores) at the start and the end: "
                 f"{', '.join(f'{v:.1f}' for v in args.load_averages)}; a load above the threads used means other work "
                 "shared the CPUs and lengthened the times.")
    notes.append("Context: Baum et al. (seed 002) measured on GPU with 3D prostate TRUS; their numbers are not "
                 "comparable with these CPU numbers on brain MR.")
    return notes


def prepare_text(training: dict) -> str:
    shared = [info for info in training.values() if "prepare_seconds_shared" in info]
    if not shared:
        return ""
    work = "resampled and affinely pre-aligned" if shared[0]["recipe"]["prealign"] == "affine" else "resampled"
    return (f"; the {shared[0]['prepared_pairs']} training pairs drawn were {work} once for both, "
            f"{shared[0]['prepare_seconds_shared']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, quick="1 pair, 3 training steps at 32,40,32, short iterative",
                              out_dir="where the result files go (default benchmarks/results)")
    parser.add_argument("--model", default="brain-mr-3d-reptile", help="the meta-registration model: zoo name or file")
    parser.add_argument("--require-model", action="store_true", help="fail instead of leaving its rows out")
    parser.add_argument("--adapt-steps", type=int, default=5, help="test-time steps of the meta-registration row")
    parser.add_argument("--train-steps", type=int, default=None, help="steps of each reference network (150; quick 3)")
    parser.add_argument("--train-grid", default=None, help="model grid of the reference networks (48,56,48; quick "
                                                           "32,40,32)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="supervised",
                        help="training recipe of the reference networks: 'supervised' (default; no pre-alignment, "
                             "synthetic field supervision 1, augmentation 5°/3 %%/3 voxels) or 'affine' (affine "
                             "pre-aligned pairs, unsupervised, 2°/1 %%/1.5 voxels; ~10 s of pre-alignment per "
                             "training pair)")
    parser.add_argument("--task", default=TEST_TASK, help=f"evaluation task (default {TEST_TASK})")
    parser.add_argument("--pairs", type=int, default=None, help="only the first N pairs (quick: 1)")
    parser.add_argument("--data-dir", default=None, help="where `metareg data fetch` put the tasks")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--cache-dir", default=str(CACHE), help="trained reference networks (default benchmarks/.cache)")
    parser.add_argument("--stem", default="testtime-3d", help="result file stem (default testtime-3d)")
    args = parser.parse_args(argv)
    args.train_steps = args.train_steps or (3 if args.quick else 150)
    args.train_grid = [int(v) for v in (args.train_grid or ("32,40,32" if args.quick else "48,56,48")).split(",")]
    if len(args.train_grid) != 3:
        parser.error("--train-grid needs three sizes (ITK order x,y,z)")
    args.pairs = args.pairs or (1 if args.quick else None)
    args.cache_dir = Path(args.cache_dir)
    run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
