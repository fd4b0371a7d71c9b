"""Images of clinical size: a CT-sized pair (512×512×400 voxels) and a 0.6 mm isotropic brain, registered at default
settings by `metareg register` as a user runs it, with its outputs written; wall seconds and peak memory.

    .venv/bin/python -m benchmarks.clinical_size [--quick] [--threads 2] [--out-dir DIR]

Pairs: the repository's sample brain pair (Resources/SampleData brain3d T1, 2 mm, 96×114×96; the moving image is the
fixed one after a known synthetic warp, with 32 AFIDs landmarks on both) resampled (linear) to

* **ct-sized**: 512×512×400 voxels over the same extent (0.38×0.45×0.48 mm): the voxel count of a clinical CT
  (105 M voxels), not a CT's contrast;
* **brain-0.6mm**: 0.6 mm isotropic, 320×380×320 voxels (39 M), a high-resolution brain MR.

``--quick`` (the test suite): 96×96×76 and 2.4 mm (80×95×80) instead.

Methods: the zoo model ``brain-mr-3d-reptile`` at its card's defaults (affine pre-alignment, the network, 30
refinement steps) and the built-in iterative method at its defaults. Each run is one fresh process (the benchmark's
``run_measured``) calling ``metareg register`` with ``--warped``, ``--field``, ``--jacobian``, ``--transform`` (.h5)
and ``--report`` outputs (compressed NIfTI), so the peak memory includes reading the inputs, writing and checking every
output. Columns: ``register_s`` — the report's total seconds of registration; ``command_s`` — the whole command, writing
included; ``peak_mib`` — the peak resident memory of that process; ``estimate_mib`` — what :mod:`metareg.core.memory`
estimated before the work; TRE before → after on the landmarks (mm); folding. Outputs:
``<out-dir>/clinical-size{,-quick}.{csv,md,json}`` (default benchmarks/results/).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import benchmark_parser, environment, run_measured, write_results

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent / "Resources" / "SampleData"
CASES = {"ct-sized": {"size": (512, 512, 400)}, "brain-0.6mm": {"spacing": 0.6}}
QUICK_CASES = {"ct-sized-quick": {"size": (96, 96, 76)}, "brain-2.4mm": {"spacing": 2.4}}
METHODS = {"brain-mr-3d-reptile (card defaults)": ["--model", "brain-mr-3d-reptile"],
           "iterative (defaults)": ["--method", "iterative"]}


def make_pair(case: dict, folder: Path) -> tuple[Path, Path, tuple[int, ...], tuple[float, ...]]:
    """The sample pair resampled (linear) onto the case's grid over the same field of view
    (:func:`metareg.core.geometry.model_grid_on_fixed`), written uncompressed."""
    import SimpleITK as sitk

    from metareg.core.geometry import model_grid_on_fixed

    paths = []
    for name in ("fixed", "moving"):
        image = sitk.ReadImage(str(SAMPLES / f"brain3d_{name}_T1.nii.gz"), sitk.sitkFloat32)
        grid = model_grid_on_fixed(image, size=case.get("size"),
                                   spacing=(case["spacing"],) * 3 if "spacing" in case else None)
        path = folder / f"{name}.nii"
        sitk.WriteImage(sitk.Resample(image, grid.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0,
                                      sitk.sitkFloat32), str(path))
        paths.append(path)
    return paths[0], paths[1], grid.size, grid.spacing


def job_register(fixed: str, moving: str, method: list[str], out: str) -> dict:
    """One `metareg register` run in this (fresh) process; the report and the command's wall seconds."""
    from metareg.app.cli import main

    landmarks = ["--fixed-landmarks", str(SAMPLES / "brain3d_fixed_landmarks.mrk.json"),
                 "--moving-landmarks", str(SAMPLES / "brain3d_moving_landmarks.mrk.json")]
    outputs = ["--warped", f"{out}/warped.nii.gz", "--field", f"{out}/field.nii.gz", "--jacobian",
               f"{out}/jacobian.nii.gz", "--transform", f"{out}/fixed_to_moving.h5", "--report", f"{out}/report.json"]
    started = time.perf_counter()
    status = main(["register", "--fixed", fixed, "--moving", moving, *method, *landmarks, *outputs, "--quiet",
                   "--device", "cpu"])
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"metareg register exited {status}")
    report = json.loads(Path(out, "report.json").read_text())
    return {"report": report, "command_s": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, threads=2, quick="small stand-ins of both sizes (for the test suite)",
                              out_dir="where the result files go (default benchmarks/results)")
    args = parser.parse_args(argv)
    cases = QUICK_CASES if args.quick else CASES
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="metareg-clinical-") as scratch:
        for case_name, case in cases.items():
            folder = Path(scratch) / case_name
            folder.mkdir()
            fixed, moving, size, spacing = make_pair(case, folder)
            for method_name, method in METHODS.items():
                out = folder / "out"
                out.mkdir(exist_ok=True)
                print(f"{case_name} {'×'.join(map(str, size))}: {method_name} ...", flush=True)
                result, peak = run_measured(job_register, str(fixed), str(moving), method, str(out),
                                            threads=args.threads)
                report = result["report"]
                rows.append({
                    "pair": case_name, "size": "×".join(map(str, size)),
                    "spacing_mm": "×".join(f"{s:.2f}" for s in spacing), "megavoxels": round(
                        size[0] * size[1] * size[2] / 1e6, 1), "method": method_name,
                    "register_s": report["seconds"]["total"], "command_s": round(result["command_s"], 1),
                    "peak_mib": round(peak), "estimate_mib": report["memory"]["needed_mb"],
                    "tre_before_mm": report["tre_before"]["mean"], "tre_after_mm": report["tre_after"]["mean"],
                    "folding_pct": 100 * report["folding_fraction"],
                    "work_grid": "×".join(map(str, report["refine_grid"]["size"] if report.get("refine_grid")
                                              else report["model_grid"]["size"])),
                })
                raw.append({"pair": case_name, "method": method_name, "seconds": report["seconds"],
                            "memory": report["memory"], "warnings": report["warnings"]})
                print(f"  {rows[-1]['register_s']:.1f} s registering, {rows[-1]['command_s']:.1f} s in all, peak "
                      f"{rows[-1]['peak_mib']} MiB (estimated {rows[-1]['estimate_mib']} MiB beyond the process), "
                      f"TRE {rows[-1]['tre_before_mm']:.2f} -> {rows[-1]['tre_after_mm']:.2f} mm", flush=True)
                for file in out.iterdir():
                    file.unlink()
    stem = "clinical-size-quick" if args.quick else "clinical-size"
    notes = [
        "Pairs: the sample brain pair (a known synthetic warp, 32 AFIDs landmarks) resampled to each size; the "
        "CT-sized pair has a CT's voxel count, not its contrast.",
        "register_s is the report's total; command_s the whole `metareg register` run with its five outputs written "
        "(compressed NIfTI, each read back and checked) and the .h5 transform; peak_mib the peak resident memory of "
        "that process, the interpreter, torch and the two input images included; estimate_mib what metareg.core.memory "
        "estimated the registration would add before it started.",
        "The work grid of the iterative method and the refinement is the fixed grid coarsened to at most 128³ "
        "voxels (work_grid); the field, the warped image and the Jacobian are on the fixed image's full grid.",
    ]
    paths = write_results(stem, "Images of clinical size: `metareg register` at default settings", rows,
                          environment(args.threads), notes, {"raw": raw}, out_dir=args.out_dir)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
