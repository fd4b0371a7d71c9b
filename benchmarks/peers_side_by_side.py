"""Peers side by side (benchmark protocol 3): classical and learned registration methods on the same 2D and 3D pairs.

    .venv/bin/python -m benchmarks.peers_side_by_side                      # full: 18 2D pairs, 8 3D pairs
    .venv/bin/python -m benchmarks.peers_side_by_side --limit-3d 4         # full, the first 4 3D pairs only
    .venv/bin/python -m benchmarks.peers_side_by_side --quick --out-dir /tmp/peers   # smoke test, ~2-3 min

Pairs (built by ``metareg data fetch``; DATA.md):

- 2D: ``fundus-2d-test`` — 18 fundus photographs, each moving image the fixed one seen through a known random smooth
  warp, 20 landmarks a pair (1 pixel is called 1 mm).
- 3D: ``brain-mr-3d-test`` — 8 pairs of the MNI 2009c T1w template (2 mm, 96×112×96) and the same template through a
  known random smooth warp and rigid motion, 32 AFID landmarks a pair.

Methods (every one on ``--threads`` CPU threads, default 1: elastix ``-threads``, ANTs through
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``, SimpleITK's global default, ``torch.set_num_threads``):

- elastix affine + B-spline, ANTs SyN (antspyx defaults), SimpleITK B-spline, SimpleITK demons — see ``peers.py``;
- VoxelMorph: the ``voxelmorph`` package's network (PyTorch) trained by this script on the data of our 2D zoo model
  (the five source domains of ``multidomain-2d-pretrained``'s card, its 128×128 grid, percentile normalisation,
  augmentation, batch and learning rate) with VoxelMorph's own loss, for the 2D zoo model's pretraining budget
  (2500 steps, about 10 minutes on one thread); the weights are cached under ``--cache-dir`` (git-ignored) so a
  rerun does not retrain. Not in 3D (the notes say why, with the measured time of one 3D training step);
- ours: the zoo model (``--model-2d`` / ``--model-3d``) with 0 and with ``--adapt-steps`` test-time adaptation steps,
  and our iterative method (:func:`metareg.core.registration.register` without a model). A missing zoo model is reported and
  only its rows are left out.

Measured per method, over the pairs (each method's pairs run in one fresh process, :func:`common.run_measured`;
the measures of each pair's field are :func:`common.evaluate_field`'s):

- TRE (mm): per pair the mean over its landmarks of |φ(p) − q|, φ the method's field (fixed point ↦ moving point, LPS
  mm on the fixed image's grid), p the fixed and q the moving landmark; then mean ± sd over pairs. It is measured
  against known synthetic warps, not between two real subjects.
- NCC after: global normalised cross-correlation of the fixed image and the moving image warped through the field,
  over the fixed-grid region that sees the moving image both without a transform and through the field (as
  :func:`metareg.core.registration.register` reports it); mean ± sd over pairs.
- folding %: percentage of fixed-grid voxels with Jacobian determinant ≤ 0, mean over pairs.
- s/pair: wall seconds of the registration itself (``time.perf_counter``; no file I/O, no metrics), mean over pairs.
- peak MiB: peak resident memory of the process that ran the method on all its pairs (Python, torch and SimpleITK
  loaded; for elastix, the larger of that process and the elastix process it started).
- time ÷ elastix and memory ÷ elastix: the method's s/pair and peak MiB over elastix's, measured in the same run.

Outputs: ``peers-2d.{csv,md,json,png}`` and ``peers-3d.{csv,md,json,png}`` under ``--out-dir`` (default
``benchmarks/results``); the PNG plots mean TRE against seconds a pair (log scale).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks import peers
from benchmarks.common import (RESULTS, benchmark_parser, environment, evaluate_field, landmark_pairs, method_row,
                               run_measured, set_threads, write_results)

HERE = Path(__file__).resolve().parent

TASK_2D = "fundus-2d-test"
TASK_3D = "brain-mr-3d-test"
#: The zoo model whose card names the data, grid and normalisation VoxelMorph is trained on (same data as our 2D zoo).
VXM_DATA_CARD_2D = "multidomain-2d-pretrained"
DEFAULT_CACHE = HERE / ".cache" / "peers"

FULL = {"pairs_2d": None, "pairs_3d": None, "downsample_3d": 1, "vxm_steps": 2500, "elastix_iterations": None,
        "bspline_mesh_mm": 10.0}
# quick mode is a smoke test: fewer pairs, smaller images, and smaller budgets for the slow peers
QUICK = {"pairs_2d": 2, "pairs_3d": 1, "downsample_3d": 2, "vxm_steps": 3, "elastix_iterations": (20, 40),
         "bspline_mesh_mm": 30.0}

ELASTIX = "elastix affine+B-spline"
ANTS = "ANTs SyN (antspyx defaults)"
SITK_BSPLINE = "SimpleITK B-spline"
SITK_DEMONS = "SimpleITK demons"
VOXELMORPH = "VoxelMorph (voxelmorph package)"
ITERATIVE = "ours: iterative (no network)"


# ---------------------------------------------------------------------------------------------------------------------
# What runs in the measured child processes
# ---------------------------------------------------------------------------------------------------------------------


def shrink_pair(pair, factor: int):
    """The pair with both images averaged over ``factor``-voxel bins (same physical extent); landmarks unchanged."""
    import SimpleITK as sitk

    if factor <= 1:
        return pair
    dim = pair.fixed.GetDimension()
    shrink = [factor] * dim
    return replace(pair, fixed=sitk.BinShrink(sitk.Cast(pair.fixed, sitk.sitkFloat32), shrink),
                   moving=sitk.BinShrink(sitk.Cast(pair.moving, sitk.sitkFloat32), shrink))


def run_ours(fixed, moving, threads: int = 1, model=None, adapt_steps: int = 0):
    """Our network ``model`` (adapted ``adapt_steps`` steps, not refined: `zoo_heldout` measures refinement), or our
    iterative method when ``model`` is None; seconds = every stage up to the exported field (not the warped image or
    the metrics). ``threads``: set for the whole process by :func:`common.run_measured`."""
    from metareg.core.registration import NetworkMethod, register

    method = None if model is None else NetworkMethod(model, adapt_steps=adapt_steps, refine_steps=0)
    result = register(fixed, moving, method=method, device="cpu")
    stages = result.report.seconds
    seconds = sum(v for k, v in stages.items() if k not in ("warp", "metrics", "total"))
    return result.field, seconds


#: The methods :func:`job_method` runs, by key: ``runner(fixed, moving, threads=..., **options) -> (field, seconds)``.
#: The options are the method's entry of ``options`` in the JSON (for ``ours-network`` its ``model`` is a file, which
#: :func:`job_method` loads once for all pairs).
METHODS = {
    "elastix": peers.run_elastix,
    "ants": peers.run_ants_syn,
    "sitk-bspline": peers.run_sitk_bspline,
    "sitk-demons": peers.run_sitk_demons,
    "voxelmorph": peers.run_voxelmorph,
    "ours-network": run_ours,
    "ours-iterative": run_ours,
}


def job_method(method: str, task: str, limit: int | None, downsample: int, threads: int, options: dict) -> list[dict]:
    """Run one method on every pair of ``task`` (first ``limit``, shrunk by ``downsample``): one row per pair."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    runner, options = METHODS[method], dict(options)
    if "model" in options:
        from metareg.core.modelio import load_model

        options["model"] = load_model(options["model"])
    pairs = [shrink_pair(p, downsample) for p in landmark_pairs(task, limit=limit)]
    rows = []
    for pair in pairs:
        field, seconds = runner(pair.fixed, pair.moving, threads=threads, **options)
        row = {"pair": pair.index, "seconds": float(seconds), **evaluate_field(pair, field)}
        print(f"  pair {pair.index}: TRE {row['tre_before_mm']:.2f} -> {row['tre_after_mm']:.2f} mm, "
              f"{seconds:.2f} s", flush=True)
        rows.append(row)
    return rows


def job_train_voxelmorph(card: str, steps: int, out: str) -> dict:
    return peers.train_voxelmorph(card, steps, out)


def job_voxelmorph_3d_step(grid: list[int], steps: int) -> dict:
    """Seconds of one VoxelMorph training step (batch 1, forward + backward + Adam) on a 3D grid of random images."""
    import torch
    from neurite.nn.modules import NCC, SpatialGradient

    torch.manual_seed(0)
    network = peers.voxelmorph_network(3)
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    ncc, grad = NCC(window_size=peers.VXM_NCC_WINDOW), SpatialGradient(penalty="l2")
    shape = (1, 1, *reversed(grid))
    fixed, moving = torch.rand(shape), torch.rand(shape)
    times = []
    for _ in range(steps + 1):  # the first step warms up and is not counted
        started = time.perf_counter()
        velocity, warped = network(moving, fixed, return_warped_source=True, return_field_type="velocity")
        loss = peers.voxelmorph_loss(ncc, grad, fixed, warped, velocity)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - started)
    return {"grid": grid, "step_seconds": float(np.mean(times[1:])), "steps_timed": steps}


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------------


def zoo_card(name_or_path: str) -> tuple[Path | None, str]:
    """The card path of a zoo name or model file, or ``(None, why not)``."""
    from metareg.core.errors import MetaRegError
    from metareg.core.modelio import resolve_model

    try:
        weights, _ = resolve_model(name_or_path)
    except MetaRegError as error:
        return None, str(error)
    if not weights.exists() or not weights.with_suffix(".json").exists():
        return None, f"model {name_or_path}: {weights} or its card is missing"
    return weights.with_suffix(".json"), ""


def peer_versions() -> dict:
    import importlib.metadata as meta

    versions = {}
    for package in ("antspyx", "voxelmorph", "neurite", "SimpleITK"):
        try:
            versions[package] = meta.version(package)
        except meta.PackageNotFoundError:
            versions[package] = None
    try:
        out = subprocess.run(["elastix", "--version"], capture_output=True, text=True, check=True).stdout
        versions["elastix"] = out.strip().split()[-1]
    except (OSError, subprocess.CalledProcessError):
        versions["elastix"] = None
    return versions


def ensure_voxelmorph(cache: Path, steps: int, threads: int) -> tuple[Path, dict, float | None]:
    """The cached VoxelMorph weights for this budget, trained now (in a measured process) when missing or stale."""
    from metareg.core.modelio import sha256_of

    card, why = zoo_card(VXM_DATA_CARD_2D)
    if card is None:
        raise SystemExit(f"cannot train VoxelMorph on the 2D zoo data: {why}")
    card_sha = sha256_of(card.with_suffix(".safetensors"))
    out = cache / f"voxelmorph-2d-{steps}steps.safetensors"
    record_path = out.with_suffix(".json")
    if out.exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("steps") == steps and record.get("data_card_sha256") == card_sha:
            print(f"VoxelMorph: cached weights {out} ({steps} steps, trained in {record['seconds']:.0f} s)", flush=True)
            return out, record, None
    print(f"VoxelMorph: training {steps} steps on {', '.join(t['name'] for t in json.loads(card.read_text())['training']['tasks'])}"
          f" (the data of {VXM_DATA_CARD_2D})", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    record, peak = run_measured(job_train_voxelmorph, str(card), steps, str(out), threads=threads)
    record = {**record, "data_card": str(card), "data_card_sha256": card_sha, "peak_mib": round(peak)}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"VoxelMorph: trained in {record['seconds']:.0f} s, final loss {np.mean(record['loss_curve'][-20:]):.4f}",
          flush=True)
    return out, record, peak


def table_row(name: str, rows: list[dict], peak: float, reference: dict | None) -> dict:
    """The method's line of the table (:func:`common.method_row`) with its peak memory, and its time and memory over
    ``reference``'s (elastix's ``{"seconds", "peak"}``)."""
    summary = {**method_row(name, rows), "peak MiB": round(peak), "time ÷ elastix": None, "memory ÷ elastix": None}
    if reference is not None:
        seconds = float(np.mean([r["seconds"] for r in rows]))
        summary["time ÷ elastix"] = round(seconds / reference["seconds"], 3)
        summary["memory ÷ elastix"] = round(peak / reference["peak"], 2)
    return summary


def plot(path: Path, title: str, results: dict, tre_before: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    markers = "osD^v<>pPX*h"
    for i, (name, result) in enumerate(results.items()):
        rows = result["rows"]
        x = float(np.mean([r["seconds"] for r in rows]))
        tre = [r["tre_after_mm"] for r in rows]
        ax.errorbar([x], [np.mean(tre)], yerr=[np.std(tre)], marker=markers[i % len(markers)], ms=8, capsize=3,
                    ls="none", label=name)
    ax.axhline(tre_before, ls="--", color="grey", lw=1, label=f"before registration ({tre_before:.2f} mm)")
    ax.set_xscale("log")
    ax.set_xlabel("wall seconds a pair (log scale)")
    ax.set_ylabel("TRE after, mm (mean ± sd over pairs)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def run_dimension(dim: int, args, budget: dict, out_dir: Path, cache: Path, env: dict, versions: dict) -> None:
    """Every method on the pairs of one dimension; writes ``peers-{dim}d.*``."""
    task = TASK_2D if dim == 2 else TASK_3D
    limit = budget["pairs_2d"] if dim == 2 else budget["pairs_3d"]
    downsample = 1 if dim == 2 else budget["downsample_3d"]
    model_name = args.model_2d if dim == 2 else args.model_3d
    notes = []
    methods: list[tuple[str, str, dict]] = [
        (ELASTIX, "elastix", {"iterations": budget["elastix_iterations"]}), (ANTS, "ants", {}),
        (SITK_BSPLINE, "sitk-bspline", {"mesh_mm": budget["bspline_mesh_mm"]}), (SITK_DEMONS, "sitk-demons", {}),
    ]
    vxm_record = None
    if dim == 2:
        weights, vxm_record, vxm_peak = ensure_voxelmorph(cache, budget["vxm_steps"], args.threads)
        methods.append((VOXELMORPH, "voxelmorph", {"weights": str(weights)}))
    card, why = zoo_card(model_name)
    if card is None:
        message = (f"ours-{dim}D network rows SKIPPED: the zoo model {model_name!r} is not available ({why}); "
                   "the other rows are complete")
        print(f"*** {message}", flush=True)
        notes.append(message + ".")
    else:
        for steps in sorted({0, args.adapt_steps}):
            label = f"ours: {model_name_label(model_name)}, {steps} adaptation steps"
            methods.append((label, "ours-network", {"model": str(card.with_suffix(".safetensors")),
                                                    "adapt_steps": steps}))
    methods.append((ITERATIVE, "ours-iterative", {}))

    results = {}
    for name, key, options in methods:
        print(f"[{dim}D] {name} on {task}" + (f" (first {limit} pairs)" if limit else "")
              + (f", images shrunk ×{downsample}" if downsample > 1 else ""), flush=True)
        started = time.perf_counter()
        rows, peak = run_measured(job_method, key, task, limit, downsample, args.threads, options,
                                  threads=args.threads)
        results[name] = {"rows": rows, "peak": peak, "seconds": float(np.mean([r["seconds"] for r in rows])),
                         "options": options}
        print(f"[{dim}D] {name}: TRE {np.mean([r['tre_after_mm'] for r in rows]):.2f} mm, "
              f"{results[name]['seconds']:.2f} s a pair, peak {peak:.0f} MiB ({time.perf_counter() - started:.0f} s)",
              flush=True)
    reference = results[ELASTIX]
    table = [table_row(name, r["rows"], r["peak"], reference) for name, r in results.items()]
    tre_before = float(np.mean([r["tre_before_mm"] for r in reference["rows"]]))

    pairs = len(reference["rows"])
    if dim == 2:
        notes.insert(0, f"Pairs: {task}, {pairs} fundus pairs (160×160, 1 px called 1 mm), 20 landmarks each. TRE is "
                        "measured against KNOWN SYNTHETIC warps (each moving image is the fixed one through a known "
                        "random smooth warp), not between two real images.")
    else:
        shrink = f", images averaged over {downsample}×{downsample}×{downsample} bins (quick mode)" if downsample > 1 else ""
        notes.insert(0, f"Pairs: {task}, {pairs} pairs (MNI 2009c T1w template at 2 mm, 96×112×96{shrink}), 32 AFID "
                        "landmarks each. TRE is measured against KNOWN SYNTHETIC warps (the moving image is the "
                        "template through a known random smooth warp and rigid motion), not between two subjects.")
    notes += [
        f"Threads: every method ran on {args.threads} CPU thread(s) (elastix -threads; ANTs via "
        "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS; SimpleITK's global default; torch.set_num_threads); each method's pairs "
        "ran in one fresh process, so its peak MiB is its own.",
        f"Peers and their settings: elastix {versions.get('elastix')} with the manual's recommended starting "
        "parameters for affine + B-spline (Mattes MI, adaptive stochastic gradient descent, 4 levels, 10 mm final "
        f"grid); ANTs SyN: antspyx {versions.get('antspyx')} `ants.registration(type_of_transform='SyN')` with all its "
        "defaults (translation init, affine, SyN with Mattes MI); SimpleITK "
        f"{versions.get('SimpleITK')} B-spline and demons are our setups of SimpleITK (not defaults: there are none): "
        "a SimpleITK affine stage (Mattes MI) and then either a cubic B-spline with 10 mm final control-point "
        "spacing (mesh doubled over 3 levels), Mattes MI on 10 000 random samples a level, 20 L-BFGS iterations a level; or histogram "
        "matching and fast symmetric-forces demons, 3 levels, field σ 2.5 voxels (details in benchmarks/peers.py).",
        "s/pair is the registration alone (no file I/O or metrics); for the networks it includes resampling onto the "
        "model grid and the conversion to the field. Time and memory ratios are to elastix measured in this run.",
    ]
    if dim == 2 and vxm_record is not None:
        zoo_steps = json.loads(zoo_card(VXM_DATA_CARD_2D)[0].read_text())["training"]["steps"]
        notes.append(
            f"VoxelMorph: voxelmorph {versions.get('voxelmorph')} (PyTorch backend, no tensorflow), its VxmPairwise "
            f"network with package defaults ({vxm_record['parameters']} parameters) and its loss ({vxm_record['loss']}), "
            f"trained by this script on the data of {VXM_DATA_CARD_2D} ({', '.join(vxm_record['tasks'])}; "
            f"{'×'.join(str(s) for s in vxm_record['grid']['size'])} grid, percentile normalisation, the card's "
            f"augmentation, batch {vxm_record['batch_size']}, Adam {vxm_record['learning_rate']}) for "
            f"{vxm_record['steps']} steps ({vxm_record['seconds']:.0f} s on {args.threads} thread(s); "
            + (f"the zoo model's {zoo_steps} steps fit about 10 minutes, so it got the same budget"
               if vxm_record["steps"] >= zoo_steps else f"scaled down from the zoo model's {zoo_steps} steps")
            + f"); the weights are cached in {display_path(cache)}/ and reused. Neither VoxelMorph nor our zoo "
            "network saw a fundus image in training: this domain is unseen by both (the zoo network's adaptation "
            "steps are on the test pair itself, unsupervised).")
    if dim == 3:
        notes.append(voxelmorph_3d_note(args, budget))
    if args.quick:
        notes.append("QUICK MODE: a smoke test with a handful of pairs, a tiny VoxelMorph budget, elastix limited to "
                     f"{budget['elastix_iterations'][0]}/{budget['elastix_iterations'][1]} affine/B-spline iterations a "
                     f"resolution and a {budget['bspline_mesh_mm']:g} mm SimpleITK B-spline mesh; the numbers are not "
                     "results.")
    stem = f"peers-{dim}d"
    title = f"Peers side by side, {dim}D ({task})"
    extra = {"per_pair": {name: r["rows"] for name, r in results.items()},
             "peak_mib": {name: r["peak"] for name, r in results.items()},
             "options": {name: r["options"] for name, r in results.items()},
             "versions": versions, "task": task, "pairs": pairs, "downsample": downsample,
             "adapt_steps": args.adapt_steps, "model": model_name, "model_available": card is not None,
             "voxelmorph": ({k: v for k, v in vxm_record.items() if k != "loss_curve"} if vxm_record else None)}
    paths = write_results(stem, title, table, env, notes=notes, extra=extra, out_dir=out_dir)
    plot(out_dir / f"{stem}.png", f"{title}: TRE vs time, {pairs} pairs, {args.threads} thread(s)", results,
         tre_before)
    print(f"wrote {', '.join(str(p) for p in paths.values())} and {out_dir / (stem + '.png')}", flush=True)
    print(paths["md"].read_text(), flush=True)


def display_path(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (as the results are committed there)."""
    try:
        return str(path.resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def model_name_label(name: str) -> str:
    return Path(name).stem if name.endswith((".safetensors", ".json")) else name


def voxelmorph_3d_note(args, budget: dict) -> str:
    """Why VoxelMorph has no 3D row; in full mode with the measured seconds of one 3D training step."""
    base = ("VoxelMorph is not in the 3D table: training it on the 3D zoo model's data for a comparable budget does not "
            "fit this benchmark's time on one CPU thread")
    if args.quick:
        return base + " (quick mode: not measured)."
    grid = [64, 64, 64]  # VxmPairwise's 5-level U-Net needs sides divisible by 32; 64³ covers the 3D zoo's 48×56×48
    result, _ = run_measured(job_voxelmorph_3d_step, grid, 3, threads=args.threads)
    # the pretraining budget of the 3D zoo model (a Reptile model's card names its pretrained parent)
    card, _ = zoo_card(args.model_3d)
    zoo_steps, zoo_name = None, None
    while card is not None and zoo_steps is None:
        content = json.loads(card.read_text())
        training, zoo_name = content.get("training") or {}, content.get("name")
        zoo_steps = training.get("steps")
        parent = training.get("parent")
        card = zoo_card(parent["name"])[0] if zoo_steps is None and isinstance(parent, dict) and parent.get("name") \
            else None
    step = result["step_seconds"]
    text = (f": one training step (batch 1, 64×64×64, forward + backward + Adam) took {step:.2f} s on "
            f"{args.threads} thread(s), so 10 minutes buy about {int(600 / step)} steps")
    if zoo_steps:
        text += (f", against the {zoo_steps} steps of the 3D zoo's {zoo_name} (≈ {zoo_steps * step / 60:.0f} min "
                 "at that rate)")
    return base + text + "; a network trained for that little would say nothing about VoxelMorph."


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, threads_help="CPU threads of every method (default 1)",
                              quick="smoke test: 2 pairs of 2D, 1 pair of 3D shrunk ×2, 3 VoxelMorph training steps",
                              out_dir="where the results go (default benchmarks/results; quick mode: required)",
                              out_dir_default=None)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="trained VoxelMorph weights (default benchmarks/.cache/peers, git-ignored)")
    parser.add_argument("--model-2d", default="multidomain-2d-reptile")
    parser.add_argument("--model-3d", default="brain-mr-3d-reptile")
    parser.add_argument("--adapt-steps", type=int, default=10, help="test-time adaptation steps of our network row")
    parser.add_argument("--limit-2d", type=int, default=None, help="only the first N 2D pairs")
    parser.add_argument("--limit-3d", type=int, default=None, help="only the first N 3D pairs")
    parser.add_argument("--vxm-steps", type=int, default=None,
                        help="VoxelMorph training steps (default 2500, the 2D zoo model's pretraining budget; quick 3)")
    parser.add_argument("--dims", default="2,3", help="which tables: 2, 3 or 2,3")
    args = parser.parse_args(argv)
    if args.quick and args.out_dir is None:
        parser.error("--quick needs --out-dir (quick results never go into benchmarks/results)")
    if args.adapt_steps < 0:
        parser.error("--adapt-steps must be >= 0")
    budget = dict(QUICK if args.quick else FULL)
    if args.limit_2d:
        budget["pairs_2d"] = args.limit_2d
    if args.limit_3d:
        budget["pairs_3d"] = args.limit_3d
    if args.vxm_steps:
        budget["vxm_steps"] = args.vxm_steps
    dims = sorted({int(d) for d in args.dims.split(",")})
    if not set(dims) <= {2, 3}:
        parser.error("--dims takes 2, 3 or 2,3")
    missing = [what for what, ok in (("elastix", peers.elastix_available()), ("antspyx", peers.ants_available()),
                                     ("voxelmorph", peers.voxelmorph_available())) if not ok]
    if missing:
        raise SystemExit(f"missing peers: {', '.join(missing)}; install them with `bash benchmarks/setup.sh`")
    out_dir = args.out_dir or RESULTS
    set_threads(args.threads)
    env = environment(args.threads, argv)
    versions = peer_versions()
    started = time.perf_counter()
    for dim in dims:
        run_dimension(dim, args, budget, out_dir, args.cache_dir, env, versions)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
