"""Few-shot adaptation to an unseen 2D domain: seed 000's Table 1 and Fig. 3 on our data and models.

    .venv/bin/python -m benchmarks.fewshot_2d            # full: ~15 min on one CPU thread
    .venv/bin/python -m benchmarks.fewshot_2d --quick --out-dir /tmp/x   # tiny budgets, 3 test pairs, ~1 min

Setting (seed 000, Park et al.): source domains brain-t1-2d, brain-t2-2d, head-ct-2d, chest-ct-2d, ultrasound-2d; the
unseen target domain is fundus photographs: ``fundus-2d-finetune`` (18 pairs, the few-shot training set) and
``fundus-2d-test`` (18 held-out pairs with known synthetic warps, 20 landmarks each). Rows:

- **Not deformed**: the identity.
- **Model-Seen**: the zoo's U-Net architecture trained from scratch, unsupervised, on the target finetune + test pairs
  (their images only, never their landmarks or warps), as in the paper.
- **Model-Unseen**: the same from scratch on the target finetune pairs only.
- **Transfer**: ``multidomain-2d-pretrained`` (sources only) as it is.
- **Fine-tune (short / long)**: ``multidomain-2d-pretrained`` fine-tuned on fundus-2d-finetune.
- **Ours (short / long)**: ``multidomain-2d-reptile`` (task-level Reptile from the pretrained model) fine-tuned the
  same way.

All training goes through :func:`metareg.learning.recipes.finetune` / :func:`metareg.learning.recipes.pretrain` with one recipe:
Adam, learning rate 1e-4 (``--lr``), batch 4, no augmentation (``--augment zoo``: the zoo models' rotation ±8°,
shift ±5 %, smooth deformation ≤ 3 voxels), loss = local NCC (9×9 window) + 1.0 × gradient L2 of the displacement
(the zoo cards' loss), seed 0. The same seed means Fine-tune and Ours see the same pairs (and augmentations) at every
step. The curves (Fig. 3) come from one long run per start, taken in segments (``stop_after`` + ``resume``): the
checkpoint at each evaluation step is evaluated, then training continues from it, so the curve is the long run itself.

Measured on the test pairs (the first ``--test-pairs`` only in quick mode), after registering each pair with the
network (no test-time adaptation) through :func:`metareg.core.registration.register`:

- TRE (mm): mean over the pair's 20 landmarks of |φ(p) − q|, φ the registration's field (fixed point ↦ moving point,
  LPS mm on the fixed image's grid); then mean ± sd over pairs. The fundus pixel is 1 "mm" by convention (DATA.md).
- NCC after: global normalised cross-correlation of the fixed image and the warped moving image on the fixed image's
  grid, over the region both see (``register``'s report); then mean ± sd over pairs.
- folding: fraction of fixed-grid pixels with Jacobian determinant ≤ 0.
- step seconds: sum of the optimiser-step times from the run's loss log (data preparation and checkpoints excluded);
  peak MiB: peak resident memory of the fresh process that trained and evaluated that model.

The target "the meta-learned start reaches the long fine-tune's final TRE in ≤ 20 % of its steps" is read off the
curves: the first evaluated step at which Ours' mean test TRE ≤ Fine-tune(long)'s final mean test TRE, as a fraction
of the long budget. Two checks go with it: whether fine-tuning improved on its own start at all (if Fine-tune(long)
is no better than Transfer, reaching it says nothing), and the first step from which Ours stays at or below that TRE
at every later evaluated step (robust to a single lucky checkpoint).
"""

from __future__ import annotations

import csv
import math
import shutil
import sys
import time
from functools import reduce
from pathlib import Path

import numpy as np

from benchmarks.common import (RESULTS, benchmark_parser, environment, evaluate_field, landmark_pairs, mean_sd,
                               run_measured, set_threads, summarise, write_results)

HERE = Path(__file__).resolve().parent

SOURCES = ["brain-t1-2d", "brain-t2-2d", "head-ct-2d", "chest-ct-2d", "ultrasound-2d"]
FINETUNE_TASK = "fundus-2d-finetune"
TEST_TASK = "fundus-2d-test"
TRANSFER = "multidomain-2d-pretrained"
META = "multidomain-2d-reptile"
DEFAULT_CACHE = HERE / ".cache" / "fewshot-2d"
STEM = "fewshot-2d"

# The one recipe for every trained row. Default: Adam 1e-4, batch 4, no augmentation (seed 000 trains on the pairs as
# they are; 1e-4 is VoxelMorph's rate). ``--lr 1e-3 --augment zoo`` is the zoo models' own pretraining recipe.
LEARNING_RATE = 1e-4
BATCH_SIZE = 4
AUGMENTS = {"none": {},
            "zoo": {"rotation_deg": 8.0, "shift_fraction": 0.05, "deformation_vox": 3.0, "deformation_control_points": 5}}
SEED = 0

FULL = {"short": 20, "long": 200, "scratch": 1000, "test_pairs": None}
QUICK = {"short": 2, "long": 4, "scratch": 4, "test_pairs": 3}


# ---------------------------------------------------------------------------------------------------------------------
# Pieces that run in the measured child processes
# ---------------------------------------------------------------------------------------------------------------------


def train_config(steps: int, checkpoint_every: int, recipe: dict):
    """The benchmark's one training recipe (``recipe``: learning_rate and augment) for ``steps`` steps."""
    from metareg.learning.augment import AugmentConfig
    from metareg.learning.config import TrainConfig

    return TrainConfig(steps=steps, batch_size=BATCH_SIZE, learning_rate=recipe["learning_rate"],
                       augment=AugmentConfig(**recipe["augment"]), seed=SEED, checkpoint_every=checkpoint_every)


#: What is kept of each test pair's :func:`common.evaluate_field` (lists over the pairs, as in the JSON's per_pair):
#: after a registration, and for the identity (the pair as it is).
MEASURES = {"tre_mm": "tre_after_mm", "ncc_after": "ncc_after", "folding_fraction": "folding_fraction"}
IDENTITY_MEASURES = {"tre_mm": "tre_before_mm", "ncc_after": "ncc_before", "folding_fraction": "folding_fraction"}


def measure(pairs, fields, measures: dict = MEASURES) -> dict:
    """Per-pair TRE (mm), NCC after and folding fraction of each pair's field (:func:`common.evaluate_field`)."""
    rows = [evaluate_field(pair, field) for pair, field in zip(pairs, fields)]
    return {key: [row[measured] for row in rows] for key, measured in measures.items()}


def evaluate(model, pairs) -> dict:
    """Register every test pair with ``model`` (no adaptation) and measure its field."""
    from metareg.core.registration import NetworkMethod, register

    method = NetworkMethod(model, refine_steps=0)
    return measure(pairs, (register(p.fixed, p.moving, method=method, device="cpu").field for p in pairs))


def evaluate_identity(pairs) -> dict:
    """The identity (a zero field): TRE of the landmarks as they are; NCC of fixed and moving (moving resampled on the
    fixed grid)."""
    from metareg.core.geometry import identity_field

    return measure(pairs, (identity_field(p.fixed) for p in pairs), IDENTITY_MEASURES)


def read_loss_log(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{"step": int(r["step"]), "loss": float(r["loss"]), "seconds": float(r["seconds"])}
                for r in csv.DictReader(handle)]


def fresh_run_files(out: Path) -> None:
    """Remove what an earlier run left for ``out`` (model, card, checkpoint folder, loss log and plot)."""
    for path in (out, out.with_suffix(".json"), out.with_name(out.stem + ".loss.csv"),
                 out.with_name(out.stem + ".loss.png")):
        path.unlink(missing_ok=True)
    for folder in (out.with_name(out.stem + ".ckpt"), out.with_name(out.stem + ".tensorboard")):
        shutil.rmtree(folder, ignore_errors=True)


def job_finetune_curve(parent: str, long_steps: int, points: list[int], out: str, test_pairs: int | None,
                       command: str, recipe: dict) -> dict:
    """Fine-tune ``parent`` for ``long_steps`` in segments ending at ``points``; evaluate the model at every point.

    Returns the per-point evaluations, the loss log of the whole run and the optimiser-step seconds.
    """
    from metareg.core.modelio import LoadedModel, load_model
    from metareg.learning.tasks import default_data_dir, load_task
    from metareg.learning.recipes import finetune
    from metareg.learning.runlog import load_checkpoint

    out_path = Path(out)
    fresh_run_files(out_path)
    pairs = landmark_pairs(TEST_TASK, limit=test_pairs)
    task = load_task(FINETUNE_TASK, default_data_dir())
    every = reduce(math.gcd, [p for p in points if p > 0])
    config = train_config(long_steps, every, recipe)
    parent_model = load_model(parent)
    evaluations = {0: evaluate(parent_model, pairs)}
    for start, stop in zip(points[:-1], points[1:]):
        finetune(parent, [task], config, out_path, device="cpu", resume=start > 0, command=command,
                 stop_after=stop if stop < long_steps else None)
        if stop < long_steps:
            checkpoint = load_checkpoint(out_path.with_name(out_path.stem + ".ckpt") / "last.pt")
            if int(checkpoint["step"]) != stop:
                raise RuntimeError(f"checkpoint at step {checkpoint['step']}, expected {stop}")
            network = load_model(parent).network
            network.load_state_dict(checkpoint["network"])
            network.eval()
            model = LoadedModel(network=network, card=parent_model.card.replace(name=f"{out_path.stem}@{stop}"),
                                weights_path=out_path)
        else:
            model = load_model(out_path)
        evaluations[stop] = evaluate(model, pairs)
    log = read_loss_log(out_path.with_name(out_path.stem + ".loss.csv"))
    if [r["step"] for r in log] != list(range(long_steps)):
        raise RuntimeError(f"{out}: the loss log does not hold steps 0..{long_steps - 1} once each")
    return {"evaluations": evaluations, "loss": [r["loss"] for r in log],
            "step_seconds": float(sum(r["seconds"] for r in log)), "card": str(out_path.with_suffix(".json"))}


def job_train(parent: str | None, tasks: list[str], steps: int, out: str, test_pairs: int | None, command: str,
              recipe: dict) -> dict:
    """Train one model in one go (``finetune`` from ``parent``, or ``pretrain`` from scratch) and evaluate it."""
    from metareg.core.modelio import load_model
    from metareg.learning.tasks import default_data_dir, load_task
    from metareg.core.card import RefinementDefaults
    from metareg.learning.recipes import finetune, pretrain

    out_path = Path(out)
    fresh_run_files(out_path)
    pairs = landmark_pairs(TEST_TASK, limit=test_pairs)
    loaded = [load_task(name, default_data_dir()) for name in tasks]
    config = train_config(steps, 0, recipe)
    if parent:
        finetune(parent, loaded, config, out_path, device="cpu", command=command)
    else:
        # the architecture, grid, normalisation and loss of the zoo's 2D models, fresh weights (seed 0)
        # (the card's refinement is not carried over: the baseline is a network alone, as the transfer model's
        # fine-tuned children were before)
        spec = load_model(TRANSFER).card.replace(name="", sha256="", training={}, metrics={},
                                                 refinement=RefinementDefaults())
        pretrain(loaded, spec, config, out_path, device="cpu", stage="scratch", command=command,
                 purpose=f"trained from scratch on {', '.join(tasks)} (few-shot benchmark baseline)")
    log = read_loss_log(out_path.with_name(out_path.stem + ".loss.csv"))
    return {"evaluation": evaluate(load_model(out_path), pairs), "loss": [r["loss"] for r in log],
            "step_seconds": float(sum(r["seconds"] for r in log))}


def job_evaluate(model_name: str, test_pairs: int | None) -> dict:
    from metareg.core.modelio import load_model

    pairs = landmark_pairs(TEST_TASK, limit=test_pairs)
    return {"identity": evaluate_identity(pairs), "evaluation": evaluate(load_model(model_name), pairs)}


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------------


def curve_points(short: int, long: int) -> list[int]:
    """Evaluation steps: 0, the short budget, every 5 % of the long budget (and 2.5 %), the long budget."""
    points = {0, short, long, max(1, long // 40)}
    points |= set(range(max(1, long // 20), long + 1, max(1, long // 20)))
    return sorted(p for p in points if p <= long)


def first_reach(steps: list[int], values: list[float], target: float) -> int | None:
    """The first evaluated step whose value is ≤ ``target`` (None when it never is)."""
    return next((s for s, v in zip(steps, values) if v <= target), None)


def first_sustained(steps: list[int], values: list[float], target: float) -> int | None:
    """The first evaluated step from which every later evaluated value is ≤ ``target`` (None when the last is not)."""
    found = None
    for step, value in zip(reversed(steps), reversed(values)):
        if value > target:
            break
        found = step
    return found


def sign_test_p(better: int, worse: int) -> float:
    """Two-sided exact sign test (ties dropped): P(a split at least this uneven | both directions equally likely)."""
    n = better + worse
    if n == 0:
        return 1.0
    k = min(better, worse)
    return min(1.0, 2.0 * sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n)


def plot_curves(path: Path, curves: dict, target: float, reach: int | None, long: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"Fine-tune": "tab:blue", "Ours": "tab:red"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for name, curve in curves.items():
        steps = np.array(curve["steps"])
        for ax, key, label in ((axes[0], "tre", "TRE (mm) on fundus-2d-test"), (axes[1], "ncc", "NCC after")):
            ax.plot(steps, np.array(curve[f"{key}_mean"]), "o-", ms=3, color=colours[name], label=name)
            ax.set_ylabel(f"{label}, mean over test pairs")
        loss = np.array(curve["loss"])
        axes[2].plot(np.arange(len(loss)), loss, lw=0.6, alpha=0.35, color=colours[name])
        window = max(1, min(10, len(loss) // 5))
        if window > 1:
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            axes[2].plot(np.arange(window - 1, len(loss)), smooth, lw=1.6, color=colours[name],
                         label=f"{name} ({window}-step mean)")
        else:
            axes[2].plot(np.arange(len(loss)), loss, lw=1.6, color=colours[name], label=name)
    axes[0].axhline(target, ls="--", color="grey", lw=1, label=f"Fine-tune final ({target:.2f})")
    if reach is not None:
        axes[0].axvline(reach, ls=":", color="tab:red", lw=1, label=f"Ours reaches it: step {reach}")
    axes[2].set_ylabel("training loss (batch of 4, fundus-2d-finetune)")
    titles = ("(a) landmark distance", "(b) NCC", "(c) training loss")
    for ax, title in zip(axes, titles):
        ax.set_xlabel("fine-tuning step")
        ax.set_title(title)
        ax.set_xlim(0, long)
        ax.legend(fontsize=8)
    fig.suptitle("Fine-tuning on the unseen fundus domain: from the pretrained model (Fine-tune) vs the "
                 "Reptile model (Ours)")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


def describe_augment(name: str) -> str:
    if name == "none":
        return "no augmentation (the pairs as they are, as in seed 000)"
    a = AUGMENTS[name]
    return (f"augmentation '{name}': rotation ±{a['rotation_deg']:g}°, shift ±{100 * a['shift_fraction']:g} %, smooth "
            f"deformation ≤ {a['deformation_vox']:g} voxels, fixed and moving independently")


def summary(evaluation: dict) -> dict:
    """Mean and sd over the pairs of each of an evaluation's lists (:func:`common.summarise`)."""
    return summarise([dict(zip(evaluation, values)) for values in zip(*evaluation.values())], keys=list(evaluation))


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(
        __doc__, quick="tiny budgets (2/4 steps) and 3 test pairs", out_dir_default=None,
        out_dir="where the results go (default: benchmarks/results; quick mode: the cache folder)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="intermediate models (default benchmarks/.cache/fewshot-2d[-quick], git-ignored)")
    parser.add_argument("--short", type=int, default=None, help="short fine-tuning budget (steps)")
    parser.add_argument("--long", type=int, default=None, help="long fine-tuning budget (steps)")
    parser.add_argument("--scratch", type=int, default=None, help="steps of Model-Seen and Model-Unseen")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help="Adam learning rate of every trained row")
    parser.add_argument("--augment", choices=sorted(AUGMENTS), default="none",
                        help="augmentation of every trained row (zoo: the zoo models' pretraining augmentation)")
    args = parser.parse_args(argv)
    budget = dict(QUICK if args.quick else FULL)
    for key in ("short", "long", "scratch"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    if not 0 < budget["short"] < budget["long"]:
        parser.error("need 0 < --short < --long")
    cache = args.cache_dir or (DEFAULT_CACHE.with_name(DEFAULT_CACHE.name + "-quick") if args.quick else DEFAULT_CACHE)
    out_dir = args.out_dir or (cache if args.quick else RESULTS)
    cache.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)
    env = environment(args.threads, argv)
    test_pairs = budget["test_pairs"]
    short, long, scratch = budget["short"], budget["long"], budget["scratch"]
    points = curve_points(short, long)
    recipe = {"learning_rate": args.lr, "augment": AUGMENTS[args.augment]}
    started = time.perf_counter()

    def measured(func, *func_args):
        t0 = time.perf_counter()
        result, peak = run_measured(func, *func_args, threads=args.threads)
        print(f"{func.__name__}{tuple(a for a in func_args if not isinstance(a, list))}: "
              f"{time.perf_counter() - t0:.0f} s wall, peak {peak:.0f} MiB", flush=True)
        return result, peak

    def cmd(what: str) -> str:
        return f"benchmarks/fewshot_2d.py ({what})"

    base, base_peak = measured(job_evaluate, TRANSFER, test_pairs)
    curves, curve_peaks = {}, {}
    for label, parent in (("Fine-tune", TRANSFER), ("Ours", META)):
        out = cache / f"{'finetune' if parent == TRANSFER else 'ours'}-long.safetensors"
        curves[label], curve_peaks[label] = measured(job_finetune_curve, parent, long, points, str(out), test_pairs,
                                                     cmd(f"{label} long"), recipe)
    shorts, short_peaks = {}, {}
    for label, parent in (("Fine-tune", TRANSFER), ("Ours", META)):
        out = cache / f"{'finetune' if parent == TRANSFER else 'ours'}-short.safetensors"
        shorts[label], short_peaks[label] = measured(job_train, parent, [FINETUNE_TASK], short, str(out), test_pairs,
                                                     cmd(f"{label} short"), recipe)
    scratch_runs, scratch_peaks = {}, {}
    for label, tasks in (("Model-Seen", [FINETUNE_TASK, TEST_TASK]), ("Model-Unseen", [FINETUNE_TASK])):
        out = cache / f"{label.lower()}.safetensors"
        scratch_runs[label], scratch_peaks[label] = measured(job_train, None, tasks, scratch, str(out), test_pairs,
                                                             cmd(label), recipe)

    # ---- rows (seed 000 Table 1) ----
    n_pairs = len(base["identity"]["tre_mm"])
    evaluations = {
        "Not deformed": (base["identity"], "—", "—", 0, None, None),
        "Model-Seen": (scratch_runs["Model-Seen"]["evaluation"], "random (seed 0)",
                       f"{FINETUNE_TASK} + {TEST_TASK} images", scratch, scratch_runs["Model-Seen"]["step_seconds"],
                       scratch_peaks["Model-Seen"]),
        "Model-Unseen": (scratch_runs["Model-Unseen"]["evaluation"], "random (seed 0)", FINETUNE_TASK, scratch,
                         scratch_runs["Model-Unseen"]["step_seconds"], scratch_peaks["Model-Unseen"]),
        "Transfer": (base["evaluation"], TRANSFER, "—", 0, None, base_peak),
        f"Fine-tune ({short} steps)": (shorts["Fine-tune"]["evaluation"], TRANSFER, FINETUNE_TASK, short,
                                       shorts["Fine-tune"]["step_seconds"], short_peaks["Fine-tune"]),
        f"Fine-tune ({long} steps)": (curves["Fine-tune"]["evaluations"][long], TRANSFER, FINETUNE_TASK, long,
                                      curves["Fine-tune"]["step_seconds"], curve_peaks["Fine-tune"]),
        f"Ours ({short} steps)": (shorts["Ours"]["evaluation"], META, FINETUNE_TASK, short,
                                  shorts["Ours"]["step_seconds"], short_peaks["Ours"]),
        f"Ours ({long} steps)": (curves["Ours"]["evaluations"][long], META, FINETUNE_TASK, long,
                                 curves["Ours"]["step_seconds"], curve_peaks["Ours"]),
    }
    rows = []
    for name, (ev, start, trained_on, steps, seconds, peak) in evaluations.items():
        rows.append({"method": name, "start": start, "target pairs trained on": trained_on, "steps": steps,
                     "TRE mm (mean ± sd)": mean_sd(ev["tre_mm"]), "NCC after (mean ± sd)": mean_sd(ev["ncc_after"]),
                     "folding %": f"{100 * float(np.mean(ev['folding_fraction'])):.3f}",
                     "step s": round(seconds, 1) if seconds is not None else None,
                     "peak MiB": round(peak) if peak is not None else None})

    # ---- curves (seed 000 Fig. 3) and the ≤ 20 % target ----
    curve_out = {}
    for label, run in curves.items():
        steps = sorted(run["evaluations"])
        stats = [summary(run["evaluations"][s]) for s in steps]
        curve_out[label] = {
            "steps": steps,
            "tre_mean": [x["tre_mm"]["mean"] for x in stats], "tre_sd": [x["tre_mm"]["sd"] for x in stats],
            "ncc_mean": [x["ncc_after"]["mean"] for x in stats], "ncc_sd": [x["ncc_after"]["sd"] for x in stats],
            "per_pair_tre_mm": [run["evaluations"][s]["tre_mm"] for s in steps],
            "loss": run["loss"],
        }
    target_tre = curve_out["Fine-tune"]["tre_mean"][-1]
    target_ncc = curve_out["Fine-tune"]["ncc_mean"][-1]
    reach = first_reach(curve_out["Ours"]["steps"], curve_out["Ours"]["tre_mean"], target_tre)
    reach_ncc = first_reach(curve_out["Ours"]["steps"], [-v for v in curve_out["Ours"]["ncc_mean"]], -target_ncc)
    previous = max((s for s in curve_out["Ours"]["steps"] if reach is not None and s < reach), default=None)
    sustained = first_sustained(curve_out["Ours"]["steps"], curve_out["Ours"]["tre_mean"], target_tre)
    fine_tune_improved = target_tre < curve_out["Fine-tune"]["tre_mean"][0]
    fraction = None if reach is None else reach / long
    passed = fraction is not None and fraction <= 0.20
    ours_long = np.array(curves["Ours"]["evaluations"][long]["tre_mm"])
    ft_long = np.array(curves["Fine-tune"]["evaluations"][long]["tre_mm"])
    better, worse = int(np.sum(ours_long < ft_long)), int(np.sum(ours_long > ft_long))
    # the short rows come from separate runs; with the same seed they must equal the long runs at that step
    consistency = max(float(np.max(np.abs(np.array(shorts[k]["evaluation"]["tre_mm"])
                                          - np.array(curves[k]["evaluations"][short]["tre_mm"])))) for k in shorts)
    target = {
        "statement": "the meta-learned start reaches the long fine-tune's final TRE in <= 20 % of its steps",
        "fine_tune_long_final_tre_mm": target_tre, "first_step_ours_reaches_it": reach,
        "previous_evaluated_step": previous,
        "fine_tune_improved_on_transfer": bool(fine_tune_improved),
        "transfer_tre_mm": curve_out["Fine-tune"]["tre_mean"][0],
        "first_step_ours_stays_at_or_below_it": sustained,
        "sustained_fraction_of_long_budget": None if sustained is None else sustained / long,
        "fraction_of_long_budget": fraction, "passed": passed,
        "ncc": {"fine_tune_long_final_ncc": target_ncc, "first_step_ours_reaches_it": reach_ncc,
                "fraction_of_long_budget": None if reach_ncc is None else reach_ncc / long},
        "long_budget_pairs_ours_better": better, "long_budget_pairs_ours_worse": worse,
        "sign_test_p_two_sided": sign_test_p(better, worse),
    }
    plot_path = out_dir / f"{STEM}-curves.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(plot_path, curve_out, target_tre, reach, long)

    if reach is None:
        verdict = (f"NOT MET: Ours never reaches Fine-tune({long})'s final mean TRE {target_tre:.2f} mm within "
                   f"{long} steps")
    else:
        verdict = (f"{'MET' if passed else 'NOT MET'}: Ours first reaches Fine-tune({long})'s final mean TRE "
                   f"{target_tre:.2f} mm at step {reach} of {long} = {100 * fraction:.1f} % of the long budget "
                   + ("(already at the start)" if reach == 0 else
                      f"(the crossing lies after the previous evaluated step, {previous})"))
    verdict += (f". Fine-tune({long}) {'improved' if fine_tune_improved else 'did NOT improve'} on its start "
                f"(Transfer {curve_out['Fine-tune']['tre_mean'][0]:.2f} mm → {target_tre:.2f} mm)"
                + ("" if fine_tune_improved else ", so meeting this target says little") + ". Ours stays at or below "
                + (f"{target_tre:.2f} mm at every evaluated step from step {sustained} on "
                   f"({100 * sustained / long:.1f} % of the long budget)" if sustained is not None
                   else f"{target_tre:.2f} mm at its final step: no (it ends above it)"))
    wall = time.perf_counter() - started
    notes = [
        f"Data: fundus-2d-test, {n_pairs} pairs{' (quick mode: first 3 only)' if args.quick else ''}, 20 landmarks "
        "each, known synthetic warps; 1 px = 1 \"mm\" by convention. Training target data: fundus-2d-finetune "
        "(18 pairs; other image tiles and warps than the test pairs). Model-Seen also trains (unsupervised) on the "
        "test pairs' images, as in seed 000.",
        "TRE mm: per pair the mean over its landmarks of |φ(p) − q| (φ: the registration's field, fixed point ↦ moving "
        "point, LPS mm); mean ± sd over pairs. NCC after: global NCC of fixed and warped moving on the fixed grid over "
        "the region both see. No test-time adaptation anywhere (adapt_steps = 0).",
        f"One recipe for every trained row, through metareg.learning.recipes.finetune (Fine-tune, Ours) and "
        f"metareg.learning.recipes.pretrain (Model-Seen/Unseen, fresh weights, seed 0): Adam lr {args.lr:g}, batch "
        f"{BATCH_SIZE}, {describe_augment(args.augment)}, loss "
        "local NCC (9×9) + 1.0 × gradient L2, seed 0; the 2D zoo architecture (U-Net encoder [16,32,32,32], decoder "
        "[32,32,32,32,16,16], 128×128 model grid, 91k parameters)."
        + (" Why this recipe (the default): seed 000 trains on the target pairs as they are, and 1e-4 is VoxelMorph's "
           "rate (the rate is lost in our copy of the paper); the zoo's pretraining recipe is one flag away "
           "(--lr 1e-3 --augment zoo) for comparison." if (args.lr, args.augment) == (LEARNING_RATE, "none") else
           " (Not the default recipe, lr 1e-4 without augmentation.)"),
        f"Budgets scaled to this machine (seed 000: 10 / 2000 fine-tuning epochs, 25k / 38k for Model-Seen / Unseen): "
        f"short = {short} steps, long = {long} steps (batch {BATCH_SIZE}: {long * BATCH_SIZE / 18:.0f} epochs of the "
        f"18 fine-tuning pairs), Model-Seen / Model-Unseen = {scratch} steps each from scratch "
        f"({scratch / long:g}× the long budget; seed 000 gave them 12–19× its long budget, which would not fit in the "
        "20-minute single-thread budget of this benchmark, so these two rows are under-trained relative to the paper).",
        f"Fine-tune ({long}) and Ours ({long}) are the end of one run each, taken in segments (stop_after + resume, "
        f"checkpoints at the evaluation steps {points}); the curves are those runs. The short rows are separate "
        f"{short}-step runs; they equal the long runs at step {short} (largest per-pair TRE difference "
        f"{consistency:.2g} mm), as the counter-based sampling promises.",
        f"Target: {target['statement']}: {verdict}.",
        f"Ours({long}) vs Fine-tune({long}) per test pair: Ours lower TRE on {better}, higher on {worse} of {n_pairs} "
        f"(two-sided sign test p = {target['sign_test_p_two_sided']:.3g}).",
        "step s: optimiser-step seconds from the run's loss log (sum over its steps; one thread); peak MiB: the fresh "
        "process that trained and evaluated the model (Transfer / Not deformed: the evaluation process). "
        f"Whole benchmark: {wall / 60:.1f} min wall.",
    ]
    paths = write_results(STEM, "Few-shot adaptation to an unseen 2D domain (fundus), seed 000 Table 1", rows, env,
                          notes=notes, out_dir=out_dir, extra={
                              "budgets": {"short": short, "long": long, "scratch": scratch, "curve_points": points},
                              "recipe": {"learning_rate": args.lr, "batch_size": BATCH_SIZE, "augment": recipe["augment"],
                                         "seed": SEED, "loss": "lncc window 9 + 1.0 gradient_l2"},
                              "summary": {name: summary(ev[0]) for name, ev in evaluations.items()},
                              "per_pair": {name: ev[0] for name, ev in evaluations.items()},
                              "curves": curve_out, "target": target, "wall_seconds": wall,
                              "short_vs_curve_max_tre_difference_mm": consistency,
                          })
    paths["png"] = plot_path
    print(paths["md"].read_text())
    print("\n".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
