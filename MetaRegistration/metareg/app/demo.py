"""``./run demo``: register the sample pair shipped in Resources/SampleData and write everything to demo-output/.

Both pairs use the zoo by default: the 3D pair the 3D brain network (``brain-mr-3d-reptile``: affine pre-alignment,
the network, then the refinement steps its card asks for), the 2D pair the 2D network (``multidomain-2d-reptile``,
adapted to the pair for a few steps). ``--model NAME`` picks any zoo model or file, ``--model iterative`` the
built-in iterative method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metareg.app.visualize import checkerboard, render_report_png
from metareg.core.imageio import atomic_output, read_image, write_image
from metareg.core.landmarks import read_landmarks
from metareg.core.modelio import load_model
from metareg.core.outputs import Outputs, write_json, write_transform
from metareg.core.progress import ProgressBar
from metareg.core.registration import NetworkMethod, register

#: The sample pairs, at the repository's top (this file is MetaRegistration/metareg/app/demo.py).
SAMPLE_DIR = Path(__file__).resolve().parents[3] / "Resources" / "SampleData"
PAIRS = {
    "brain3d": {
        "fixed": "brain3d_fixed_T1.nii.gz",
        "moving": "brain3d_moving_T1.nii.gz",
        "fixed_landmarks": "brain3d_fixed_landmarks.mrk.json",
        "moving_landmarks": "brain3d_moving_landmarks.mrk.json",
        "about": "MNI152 2009c T1 template (2 mm) with its 32 AFIDs, and the same template after a known synthetic "
                 "smooth deformation and rigid motion (so TRE is measured against a known warp).",
    },
    "brain2d": {
        "fixed": "brain2d_fixed.nii.gz",
        "moving": "brain2d_moving.nii.gz",
        "about": "ITK's 2D proton-density brain slice and its B-spline-deformed copy (no landmarks).",
    },
}
ITERATIVE = "iterative"
DEFAULT_MODELS = {"brain3d": "brain-mr-3d-reptile", "brain2d": "multidomain-2d-reptile"}
#: Test-time adaptation by default: on brain-mr-3d-test, 10 steps before the refinement changed TRE by < 0.01 mm for
#: 2.4 s more, so the 3D pair skips it; the 2D pair keeps 10 to show the adaptation path, which costs 0.1 s there (on
#: fundus-2d-test it changes the refined TRE by < 0.01 mm too; README, zoo tables).
DEFAULT_ADAPT_STEPS = {"brain3d": 0, "brain2d": 10}


def _write_report_png(path: Path, fixed, moving, result, pair: str) -> None:
    with atomic_output(path, "report PNG") as temporary:
        render_report_png(temporary, fixed, moving, result.warped, result.jacobian, result.report,
                          title=f"MetaRegistration demo: {pair}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./run demo", description=__doc__)
    parser.add_argument("--pair", choices=sorted(PAIRS), default="brain3d", help="which sample pair (default brain3d)")
    parser.add_argument("--output", default="demo-output", help="output folder (default demo-output/)")
    parser.add_argument("--model", default=None,
                        help=f"zoo model name or file, or '{ITERATIVE}' (default: {DEFAULT_MODELS['brain3d']} for "
                             f"brain3d, {DEFAULT_MODELS['brain2d']} for brain2d)")
    parser.add_argument("--adapt-steps", type=int, default=None,
                        help="test-time adaptation steps of the network (default "
                             + ", ".join(f"{n} for {p}" for p, n in DEFAULT_ADAPT_STEPS.items()) + ")")
    parser.add_argument("--refine-steps", type=int, default=None,
                        help="refinement steps after the network (default: the model card's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = parser.parse_args(argv)
    model_name = args.model or DEFAULT_MODELS[args.pair]
    model = None if model_name == ITERATIVE else load_model(model_name)
    adapt_steps = (DEFAULT_ADAPT_STEPS[args.pair] if args.adapt_steps is None else args.adapt_steps) \
        if model is not None else 0
    refine_steps = (model.card.refinement.steps if args.refine_steps is None else args.refine_steps) \
        if model is not None else 0

    pair = PAIRS[args.pair]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    fixed = read_image(SAMPLE_DIR / pair["fixed"], "fixed sample")
    moving = read_image(SAMPLE_DIR / pair["moving"], "moving sample")
    landmarks = {}
    if "fixed_landmarks" in pair:
        landmarks = {
            "fixed_landmarks": read_landmarks(SAMPLE_DIR / pair["fixed_landmarks"]),
            "moving_landmarks": read_landmarks(SAMPLE_DIR / pair["moving_landmarks"]),
        }
    print(f"Sample pair {args.pair}: {pair['about']}")
    bar = ProgressBar(enabled=True)
    try:
        result = register(fixed, moving,
                          method=NetworkMethod(model, adapt_steps=adapt_steps, refine_steps=refine_steps),
                          device=args.device, progress=bar, **landmarks)
    finally:
        bar.close()
    report = {"pair": args.pair, "fixed": pair["fixed"], "moving": pair["moving"],
              "note": result.report.method_description(), **result.report.to_dict()}

    outputs = Outputs()
    outputs.add("warped", out / "warped.nii.gz", lambda p: write_image(result.warped, p, "warped"))
    outputs.add("field", out / "field.nii.gz", lambda p: write_image(result.field, p, "field"))
    outputs.add("transform", out / "transform.h5", lambda p: write_transform(result.field, p, "transform"))
    outputs.add("checkerboard", out / "checkerboard.nii.gz",
                lambda p: write_image(checkerboard(fixed, result.warped), p, "checkerboard"))
    outputs.add("jacobian", out / "jacobian.nii.gz", lambda p: write_image(result.jacobian, p, "jacobian"))
    outputs.add("report", out / "report.json", lambda p: write_json(report, p, "report"))
    outputs.add("report PNG", out / "report.png", lambda p: _write_report_png(p, fixed, moving, result, args.pair))
    outputs.write()
    print(result.report.method_description())
    print(result.report.summary_line())
    print(f"Wrote {', '.join(sorted(p.name for p in out.iterdir() if not p.name.startswith('.')))} to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
