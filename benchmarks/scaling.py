"""Protocol 4, scaling: how inference, test-time adaptation and a whole registration grow with the model grid.

    .venv/bin/python -m benchmarks.scaling [--quick] [--threads 1] [--device cpu|cuda] [--out-dir DIR]

What is measured, for each model grid size (ITK order x, y[, z]; 3D 64³, 96³, 128³, 160³, 160×192×160 — the
target: 160×192×160 inference within 4 GB peak memory on a CPU — and 2D 128², 256², 512²):

* **inference**: one forward pass of the network (``torch.no_grad``; for the 3D model this includes the scaling and
  squaring of its velocity field), wall seconds, median of ``--repeats`` passes after one warm-up pass;
* **adaptation**: test-time adaptation steps (:func:`metareg.core.adaptation.adapt_network`: forward, loss, backward, Adam)
  on the same pair, wall seconds per step = median of the steps after the first (the first step is the warm-up),
  and the wall seconds of a whole 10-step adaptation: measured as one 10-step call up to ``--adapt10-max-voxels``
  voxels; above it only ``--adapt-steps-large`` steps are run and the 10-step time is *estimated* as first step +
  9 × median step (the table says which; on the sizes where both exist the JSON compares them);
* **register()**: the whole :func:`metareg.core.registration.register` call on the sample pair (resampling onto the model
  grid, normalisation, network, voxel displacement → physical field on the fixed image's grid, warp of the moving
  image, metrics), wall seconds (median of ``--register-repeats`` calls after one warm-up call), with the model saved
  to a temporary folder by :func:`metareg.core.modelio.save_model` with that grid size on its card and loaded back;
* **peak memory**: the peak resident set size (MiB) of a fresh process (:func:`common.run_measured`) that did only
  that one measurement at that one size (the interpreter with torch and SimpleITK loaded is part of it, ~0.3-0.5 GB);
  with ``--device cuda`` also the peak GPU memory torch allocated (``torch.cuda.max_memory_allocated``).

Networks: the zoo's architectures — 3D: the brain zoo recipe (/work/zoo3/train3d.sh: U-Net, encoder [16,32,32,32],
decoder [32,32,32,32,16,16], diffeomorphic, 7 scaling-and-squaring steps); 2D: the card of
``models/multidomain-2d-reptile.json`` — built by :meth:`metareg.core.networks.RegistrationNetwork.from_config` with
random weights (the time and memory of a pass do not depend on the weights' values). Inputs: a real image pair (Resources/SampleData
brain3d T1 pair, brain2d pair) resampled onto each grid and normalised exactly as registration does
(:func:`metareg.core.preprocess.prepare_pair`). Loss of adaptation: local NCC (window 9) + gradient L2 (weight 1), the
zoo models' loss.

Growth with size: a least-squares fit of ``log seconds = a log voxels + b`` per dimension and measurement gives the
exponent ``a`` (time ∝ voxels^a), and a straight line ``peak MiB = base + slope × voxels`` gives bytes per voxel.

Outputs: ``<out-dir>/scaling.{csv,md,json,png}`` (default benchmarks/results/). ``--quick``: two small grids per
dimension, fewer repeats (for the test suite). Wall seconds are ``time.perf_counter``; on CUDA every timed region
ends with ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import benchmark_parser, environment, run_measured, set_threads, write_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SAMPLES = REPO / "Resources" / "SampleData"
PAIRS = {3: ("brain3d_fixed_T1.nii.gz", "brain3d_moving_T1.nii.gz"),
         2: ("brain2d_fixed.nii.gz", "brain2d_moving.nii.gz")}

#: The 3D brain zoo architecture (/work/zoo3/train3d.sh: --architecture ... --diffeomorphic).
ARCHITECTURE_3D = {"family": "unet", "dim": 3, "diffeomorphic": True,
                   "encoder_channels": [16, 32, 32, 32], "decoder_channels": [32, 32, 32, 32, 16, 16]}
CARD_2D = REPO / "models" / "multidomain-2d-reptile.json"
LOSS = {"similarity": "lncc", "regulariser": "gradient_l2", "regulariser_weight": 1.0, "ncc_window": 9}
NORMALISATION = {"method": "percentile", "low": 1.0, "high": 99.0, "histogram_equalisation": False}

FULL_SIZES = {3: [(64, 64, 64), (96, 96, 96), (128, 128, 128), (160, 160, 160), (160, 192, 160)],
              2: [(128, 128), (256, 256), (512, 512)]}
QUICK_SIZES = {3: [(32, 32, 32), (48, 48, 48)], 2: [(64, 64), (128, 128)]}
TARGET = {"size": (160, 192, 160), "peak_mib": 4096}


def architecture(dim: int) -> dict:
    if dim == 3:
        return dict(ARCHITECTURE_3D)
    return dict(json.loads(CARD_2D.read_text())["architecture"])


# ---------------------------------------------------------------------------------------------------------------------
# Measurements, each run in a fresh process by common.run_measured (module-level, picklable in and out)
# ---------------------------------------------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gpu_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _gpu_peak_mib(device) -> float | None:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def _pair_on_grid(dim: int, size: tuple[int, ...], device):
    """The sample pair resampled onto a model grid of ``size`` placed on the fixed image, normalised, on ``device``."""
    import SimpleITK as sitk

    from metareg.core.preprocess import prepare_pair

    fixed_name, moving_name = PAIRS[dim]
    fixed = sitk.ReadImage(str(SAMPLES / fixed_name), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(SAMPLES / moving_name), sitk.sitkFloat32)
    from metareg.core.card import GridSpec, Normalisation

    _, fixed_t, moving_t = prepare_pair(fixed, moving, GridSpec(tuple(size)), Normalisation(**NORMALISATION))
    return fixed_t.to(device), moving_t.to(device)


def _network(dim: int, device, seed: int = 0):
    import torch

    from metareg.core.networks import RegistrationNetwork

    torch.manual_seed(seed)
    return RegistrationNetwork.from_config(architecture(dim)).to(device).eval()


def measure_inference(dim: int, size: tuple[int, ...], device_name: str, repeats: int) -> dict:
    """Forward passes (no gradient) at one grid size: seconds of each pass after one warm-up pass."""
    import torch

    from metareg.core.device import resolve_device

    device = resolve_device(device_name)
    fixed_t, moving_t = _pair_on_grid(dim, size, device)
    network = _network(dim, device)
    _gpu_reset(device)
    seconds = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            disp = network(fixed=fixed_t, moving=moving_t)
            _sync(device)
            seconds.append(time.perf_counter() - start)
    if not torch.isfinite(disp).all():
        raise RuntimeError(f"non-finite displacement at {size}")
    return {"warmup_s": seconds[0], "seconds": seconds[1:], "gpu_peak_mib": _gpu_peak_mib(device),
            "threads": torch.get_num_threads()}


def measure_adaptation(dim: int, size: tuple[int, ...], device_name: str, steps: int) -> dict:
    """One ``steps``-step test-time adaptation call at one grid size: its wall seconds and each step's seconds."""
    from metareg.core.device import resolve_device
    from metareg.core.losses import LossConfig
    from metareg.core.adaptation import adapt_network

    device = resolve_device(device_name)
    fixed_t, moving_t = _pair_on_grid(dim, size, device)
    network = _network(dim, device)
    stamps: list[float] = []

    def progress(fraction, message):
        _sync(device)
        stamps.append(time.perf_counter())

    _gpu_reset(device)
    _sync(device)
    start = time.perf_counter()
    _, curve = adapt_network(network, lambda step: [(fixed_t, moving_t)], LossConfig(**LOSS), steps, 1e-3,
                             progress=progress)
    _sync(device)
    total = time.perf_counter() - start
    step_seconds = list(np.diff([start, *stamps]))
    if not all(math.isfinite(v) for v in curve):
        raise RuntimeError(f"non-finite adaptation loss at {size}")
    return {"steps": steps, "total_s": total, "step_seconds": [float(s) for s in step_seconds],
            "gpu_peak_mib": _gpu_peak_mib(device), "loss_first": curve[0], "loss_last": curve[-1]}


def measure_register(dim: int, size: tuple[int, ...], device_name: str, repeats: int) -> dict:
    """Whole ``register()`` calls on the sample pair with a model whose card grid is ``size``."""
    import SimpleITK as sitk
    import torch

    from metareg.core.device import resolve_device
    from metareg.core.modelio import load_model, save_model
    from metareg.core.registration import NetworkMethod, register

    device = resolve_device(device_name)
    fixed_name, moving_name = PAIRS[dim]
    fixed = sitk.ReadImage(str(SAMPLES / fixed_name))
    moving = sitk.ReadImage(str(SAMPLES / moving_name))
    with tempfile.TemporaryDirectory(prefix="metareg-scaling-") as folder:
        path = Path(folder) / f"scaling-{dim}d.safetensors"
        save_model(_network(dim, torch.device("cpu")), path,
                   {"purpose": "scaling benchmark (random weights)", "grid": {"size": list(size), "spacing": None},
                    "normalisation": NORMALISATION, "loss": LOSS, "training": {}, "metrics": {}})
        model = load_model(path, device=device)
    _gpu_reset(device)
    totals, stages = [], []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        result = register(fixed, moving, method=NetworkMethod(model), device=device_name)
        _sync(device)
        totals.append(time.perf_counter() - start)
        stages.append(result.report.seconds)
    if list(result.report.model_grid["size"]) != list(size):
        raise RuntimeError(f"register used grid {result.report.model_grid['size']}, expected {size}")
    return {"warmup_s": totals[0], "seconds": totals[1:], "stages": stages[1:],
            "gpu_peak_mib": _gpu_peak_mib(device), "fixed_size": list(fixed.GetSize())}


# ---------------------------------------------------------------------------------------------------------------------
# Fits, table, plot
# ---------------------------------------------------------------------------------------------------------------------


def power_law(voxels, seconds) -> dict | None:
    """Least-squares ``log s = a log v + b``: exponent ``a`` and the coefficient ``exp(b)`` (None below 2 points)."""
    v, s = np.asarray(voxels, dtype=float), np.asarray(seconds, dtype=float)
    keep = np.isfinite(v) & np.isfinite(s) & (v > 0) & (s > 0)
    if keep.sum() < 2:
        return None
    a, b = np.polyfit(np.log(v[keep]), np.log(s[keep]), 1)
    return {"exponent": float(a), "coefficient": float(math.exp(b)), "points": int(keep.sum())}


def linear_memory(voxels, peaks) -> dict | None:
    """Least-squares ``peak MiB = base + slope × voxels``; slope also as bytes per voxel."""
    v, p = np.asarray(voxels, dtype=float), np.asarray(peaks, dtype=float)
    if len(v) < 2:
        return None
    slope, base = np.polyfit(v, p, 1)
    return {"base_mib": float(base), "bytes_per_voxel": float(slope * 2**20), "points": len(v)}


def size_label(size) -> str:
    if len(set(size)) == 1:
        return f"{size[0]}{'³' if len(size) == 3 else '²'}"
    return "×".join(str(n) for n in size)


def plot(rows: list[dict], fits: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {3: "tab:blue", 2: "tab:orange"}
    for dim in (3, 2):
        mine = [r for r in rows if r["dim"] == dim]
        if not mine:
            continue
        v = [r["voxels"] for r in mine]
        for key, style, name in (("inference_s", "o-", "inference"), ("adapt_step_s", "s--", "adaptation step"),
                                 ("register_s", "^:", "register()")):
            fit = fits.get(f"{dim}d_{key}")
            label = f"{dim}D {name}" + (f" (∝ v^{fit['exponent']:.2f})" if fit else "")
            axes[0].plot(v, [r[key] for r in mine], style, color=colours[dim], label=label,
                         alpha=1.0 if key == "inference_s" else 0.7)
        for key, style, name in (("inference_peak_mib", "o-", "inference"), ("adapt_peak_mib", "s--", "adaptation"),
                                 ("register_peak_mib", "^:", "register()")):
            axes[1].plot(v, [r[key] for r in mine], style, color=colours[dim], label=f"{dim}D {name}",
                         alpha=1.0 if key == "inference_peak_mib" else 0.7)
        for r in mine:
            axes[0].annotate(r["grid"], (r["voxels"], r["inference_s"]), fontsize=7, xytext=(3, -10),
                             textcoords="offset points")
    axes[1].axhline(TARGET["peak_mib"], color="red", lw=0.8, ls="--", label="4 GB target (3D 160×192×160 inference)")
    axes[0].set(xscale="log", yscale="log", xlabel="voxels of the model grid", ylabel="wall seconds",
                title="Time (median; CPU threads as in the table)")
    axes[1].set(xscale="log", yscale="log", xlabel="voxels of the model grid", ylabel="peak RSS of the process, MiB",
                title="Peak memory (fresh process per size and measurement)")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.lower().replace("x", ",").split(",") if v)


def run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    set_threads(args.threads)
    env = environment(args.threads, argv)
    env["device"] = args.device
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes_3d is not None:
        sizes = {**sizes, 3: [parse_size(s) for s in args.sizes_3d.split(";") if s]}
    if args.sizes_2d is not None:
        sizes = {**sizes, 2: [parse_size(s) for s in args.sizes_2d.split(";") if s]}
    repeats = args.repeats or (2 if args.quick else 3)
    register_repeats = args.register_repeats or (1 if args.quick else 2)
    adapt10_max_voxels = args.adapt10_max_voxels
    if adapt10_max_voxels is None:
        adapt10_max_voxels = 0 if args.quick else 128**3
    adapt_steps_large = args.adapt_steps_large or (3 if args.quick else 4)
    rows, raw = [], []
    started = time.perf_counter()
    args.load_averages = []
    for dim in (3, 2):
        for size in sizes.get(dim, []):
            args.load_averages.append(os.getloadavg()[0])
            voxels = int(np.prod(size))
            label = size_label(size)
            print(f"[{time.perf_counter() - started:6.0f} s] {dim}D {label}: inference", flush=True)
            inference, inference_peak = run_measured(measure_inference, dim, size, args.device, repeats,
                                                     threads=args.threads)
            full_adapt = voxels <= adapt10_max_voxels
            steps = 10 if full_adapt else adapt_steps_large
            print(f"[{time.perf_counter() - started:6.0f} s] {dim}D {label}: adaptation ({steps} steps)", flush=True)
            adapt, adapt_peak = run_measured(measure_adaptation, dim, size, args.device, steps, threads=args.threads)
            print(f"[{time.perf_counter() - started:6.0f} s] {dim}D {label}: register()", flush=True)
            whole, register_peak = run_measured(measure_register, dim, size, args.device, register_repeats,
                                                threads=args.threads)
            step = statistics.median(adapt["step_seconds"][1:])
            estimate10 = adapt["step_seconds"][0] + 9 * step
            row = {
                "dim": dim, "grid": label, "voxels": voxels,
                "inference_s": statistics.median(inference["seconds"]),
                "inference_peak_mib": inference_peak,
                "adapt_step_s": step,
                "adapt_10_steps_s": adapt["total_s"] if full_adapt else estimate10,
                "adapt_10_basis": "measured" if full_adapt else f"estimated (1st + 9 × median of {steps} steps)",
                "adapt_peak_mib": adapt_peak,
                "register_s": statistics.median(whole["seconds"]),
                "register_peak_mib": register_peak,
            }
            if args.device != "cpu":
                row["inference_gpu_peak_mib"] = inference["gpu_peak_mib"]
                row["adapt_gpu_peak_mib"] = adapt["gpu_peak_mib"]
                row["register_gpu_peak_mib"] = whole["gpu_peak_mib"]
            rows.append(row)
            raw.append({"dim": dim, "size": list(size), "inference": inference, "adaptation": adapt,
                        "adapt_10_estimate_s": estimate10, "register": whole})
            print(f"    inference {row['inference_s']:.3f} s, {inference_peak:.0f} MiB | adaptation step "
                  f"{step:.3f} s, 10 steps {row['adapt_10_steps_s']:.1f} s ({row['adapt_10_basis']}), "
                  f"{adapt_peak:.0f} MiB | register() {row['register_s']:.2f} s, {register_peak:.0f} MiB", flush=True)
    args.load_averages.append(os.getloadavg()[0])
    fits = {}
    for dim in (3, 2):
        mine = [r for r in rows if r["dim"] == dim]
        for key in ("inference_s", "adapt_step_s", "adapt_10_steps_s", "register_s"):
            fit = power_law([r["voxels"] for r in mine], [r[key] for r in mine])
            if fit:
                fits[f"{dim}d_{key}"] = fit
        for key in ("inference_peak_mib", "adapt_peak_mib", "register_peak_mib"):
            fit = linear_memory([r["voxels"] for r in mine], [r[key] for r in mine])
            if fit:
                fits[f"{dim}d_{key}"] = fit
    checks = [{"grid": r["grid"], "measured_s": r["adapt_10_steps_s"], "estimate_s": x["adapt_10_estimate_s"],
               "estimate_over_measured": x["adapt_10_estimate_s"] / r["adapt_10_steps_s"]}
              for r, x in zip(rows, raw) if r["adapt_10_basis"] == "measured"]
    notes = notes_for(rows, fits, checks, args, repeats, register_repeats)
    out_dir = args.out_dir
    paths = write_results(args.stem, "Scaling: inference, test-time adaptation and register() against grid size",
                          rows, env, notes, extra={"fits": fits, "adapt_10_estimate_checks": checks, "raw": raw,
                                                   "load_averages": args.load_averages,
                                                   "architectures": {"3d": architecture(3), "2d": architecture(2)},
                                                   "seconds_whole_benchmark": time.perf_counter() - started},
                          out_dir=out_dir)
    paths["png"] = out_dir / f"{args.stem}.png"
    plot(rows, fits, paths["png"])
    print(paths["md"].read_text())
    print(f"whole benchmark: {time.perf_counter() - started:.0f} s")
    return paths


def notes_for(rows, fits, checks, args, repeats, register_repeats) -> list[str]:
    notes = [
        f"Networks with random weights (time and memory of a pass do not depend on the weights' values): 3D = the "
        f"brain zoo architecture (U-Net encoder [16,32,32,32], decoder [32,32,32,32,16,16], diffeomorphic, 7 scaling-"
        f"and-squaring steps, {_parameters(3)} parameters); 2D = models/multidomain-2d-reptile.json's architecture "
        f"({_parameters(2)} parameters).",
        "Inputs: the real sample pairs (Resources/SampleData brain3d T1 fixed/moving; brain2d) resampled onto each grid "
        "and normalised as registration does. Grid sizes in ITK order x×y×z.",
        f"inference_s: median of {repeats} forward passes after one warm-up pass (3D includes velocity integration). "
        "adapt_step_s: median seconds of one test-time adaptation step (forward + local NCC/gradient-L2 loss + backward "
        "+ Adam), steps after the first; adapt_10_steps_s: a whole 10-step adaptation call (measured, or estimated as "
        "first step + 9 × median step where the table says so). register_s: the whole register() call on the sample "
        f"pair (resample, normalise, network, field on the fixed grid, warp, metrics), median of {register_repeats} "
        "after one warm-up call.",
        "Peak MiB: peak resident set size of a fresh process that did only that measurement at that size (includes "
        "the ~0.3-0.5 GB of the interpreter with torch and SimpleITK); adapt_peak_mib is that of the process that "
        "ran the adaptation steps (10, or fewer where the 10-step time is estimated).",
        f"Machine load while measuring (1-minute load average, {os.cpu_count()} cores): "
        f"{', '.join(f'{v:.1f}' for v in args.load_averages)} (sampled before each size and at the end); a load above "
        "the threads used means other work shared the CPUs and lengthened the times.",
    ]
    for dim in (3, 2):
        parts = []
        for key, name in (("inference_s", "inference"), ("adapt_step_s", "adaptation step"),
                          ("register_s", "register()")):
            fit = fits.get(f"{dim}d_{key}")
            if fit:
                parts.append(f"{name} ∝ voxels^{fit['exponent']:.2f}")
        memory = fits.get(f"{dim}d_inference_peak_mib")
        adapt_memory = fits.get(f"{dim}d_adapt_peak_mib")
        if parts:
            points = max(fits[f"{dim}d_{k}"]["points"] for k in ("inference_s", "adapt_step_s", "register_s")
                         if f"{dim}d_{k}" in fits)
            text = f"{dim}D growth (least-squares fit on log-log over {points} sizes): " + ", ".join(parts)
            if memory and adapt_memory:
                text += (f"; peak memory ≈ {memory['base_mib']:.0f} MiB + {memory['bytes_per_voxel']:.0f} bytes/voxel "
                         f"(inference), {adapt_memory['base_mib']:.0f} MiB + {adapt_memory['bytes_per_voxel']:.0f} "
                         "bytes/voxel (adaptation)")
            notes.append(text + ".")
    target = [r for r in rows if r["dim"] == 3 and r["grid"] == size_label(TARGET["size"])]
    if target:
        r = target[0]
        verdict = "meets" if r["inference_peak_mib"] <= TARGET["peak_mib"] else "MISSES"
        notes.append(f"Target 3D 160×192×160 inference within 4 GB (4096 MiB) peak on CPU: {verdict} it — "
                     f"{r['inference_peak_mib']:.0f} MiB, {r['inference_s']:.1f} s with {args.threads} thread(s); the "
                     f"whole register() call peaks at {r['register_peak_mib']:.0f} MiB, test-time adaptation at "
                     f"{r['adapt_peak_mib']:.0f} MiB.")
    if checks:
        ratios = ", ".join(f"{c['grid']} {c['estimate_over_measured']:.2f}" for c in checks)
        notes.append("Step times are steady after the first step: where 10 steps were measured, first step + 9 × median "
                     f"step over the measured 10-step time is {ratios} (the basis of the estimate at larger grids).")
    if args.device == "cpu":
        notes.append("CPU only: this machine has no GPU. The script accepts --device cuda (timings synchronised, "
                     "GPU peak memory columns added) but that path has not been run here.")
    return notes


def _parameters(dim: int) -> int:
    from metareg.core.networks import RegistrationNetwork, count_parameters

    return count_parameters(RegistrationNetwork.from_config(architecture(dim)))


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, threads_help="CPU threads of every measurement (default 1)",
                              quick="two small grids per dimension, fewer repeats",
                              out_dir="where the result files go (default benchmarks/results)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=None, help="timed forward passes after the warm-up (3; quick 2)")
    parser.add_argument("--register-repeats", type=int, default=None,
                        help="timed register() calls after the warm-up (2; quick 1)")
    parser.add_argument("--adapt10-max-voxels", type=int, default=None,
                        help="measure a whole 10-step adaptation up to this many voxels (default 128³; quick 0)")
    parser.add_argument("--adapt-steps-large", type=int, default=None,
                        help="adaptation steps run above --adapt10-max-voxels (default 4 = 1 warm-up + 3 timed; "
                             "quick 3)")
    parser.add_argument("--sizes-3d", default=None, help="override the 3D grids, e.g. '64,64,64;96,96,96'")
    parser.add_argument("--sizes-2d", default=None, help="override the 2D grids, e.g. '128,128;256,256'")
    parser.add_argument("--stem", default="scaling", help="result file stem (default scaling)")
    args = parser.parse_args(argv)
    if args.adapt_steps_large is not None and args.adapt_steps_large < 2:
        parser.error("--adapt-steps-large must be at least 2 (one warm-up step and one timed step)")
    run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
