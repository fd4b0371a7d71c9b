"""Held-out evaluation of a zoo model, with elastix and our iterative method measured in the same run.

    .venv/bin/python benchmarks/zoo_heldout.py --model brain-mr-3d-pretrained --model brain-mr-3d-reptile \\
        --task brain-mr-3d-test --adapt-steps 0,10 --refine-steps 0,30 --elastix --iterative \\
        --out benchmarks/results/zoo-brain.json [--update-card]

For each pair of the task (built by ``metareg data fetch``; known synthetic warps with landmarks) it registers with
each model at each number of test-time adaptation steps and of refinement steps (the iterative method started from
the network's field), with the pre-alignment its card asks for, and optionally
with elastix (affine + B-spline) and the iterative method, and reports per method the mean over pairs of TRE
before/after (mm), NCC before/after, folding fraction and wall seconds (CPU threads as set by ``--threads``).
``--update-card`` writes the summary (every method of the run, so each card carries elastix measured beside it),
the command and the machine into each model card's ``metrics``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metareg.core import metrics  # noqa: E402
from metareg.core.geometry import map_points  # noqa: E402
from metareg.core.landmarks import match_landmarks, read_landmarks  # noqa: E402
from metareg.core.card import RefinementDefaults  # noqa: E402
from metareg.core.modelio import load_model  # noqa: E402
from metareg.core.registration import register  # noqa: E402
from metareg.learning.tasks import default_data_dir, load_task  # noqa: E402
from peers import run_elastix  # noqa: E402


def summarise(rows: list[dict]) -> dict:
    keys = ("tre_before_mm", "tre_after_mm", "ncc_before", "ncc_after", "folding_fraction", "seconds")
    return {key: {"mean": float(np.mean([r[key] for r in rows])), "sd": float(np.std([r[key] for r in rows]))}
            for key in keys} | {"pairs": len(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="zoo name or file; repeat for several")
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--adapt-steps", default="0,5")
    parser.add_argument("--adapt-lr", type=float, default=None)
    parser.add_argument("--refine-steps", default="0", help="comma-separated refinement steps after the network")
    parser.add_argument("--refine-weight", type=float, default=None,
                        help="refinement regulariser weight instead of the card's (to choose a card's setting on a "
                             "task's training pairs; not with --update-card)")
    parser.add_argument("--elastix", action="store_true")
    parser.add_argument("--iterative", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args(argv)
    if args.refine_weight is not None and args.update_card:
        parser.error("--refine-weight measures a setting the card does not have: drop --update-card")
    torch.set_num_threads(args.threads)
    models = [load_model(name) for name in args.model]
    if args.refine_weight is not None:
        for model in models:  # in memory only: the card file is not touched
            model.card = model.card.replace(refinement=RefinementDefaults(model.card.refinement.steps,
                                                                          args.refine_weight))
    task = load_task(args.task, args.data_dir or default_data_dir())
    pairs = task.pairs[: args.limit] if args.limit else task.pairs
    methods: dict[str, list[dict]] = {}
    for index, pair in enumerate(pairs):
        fixed, moving = pair.images()
        labels, p, q = match_landmarks(read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks))
        dim = fixed.GetDimension()
        p, q = p[:, :dim], q[:, :dim]
        before = float(metrics.landmark_distances_mm(p, q).mean())

        def record(name: str, field, seconds: float, ncc_before=None, ncc_after=None, folding=None):
            tre = float(metrics.landmark_distances_mm(map_points(field, p), q).mean())
            if folding is None:
                folding = metrics.folding_fraction(metrics.jacobian_determinant(field))
            methods.setdefault(name, []).append({"pair": index, "tre_before_mm": before, "tre_after_mm": tre,
                                                 "ncc_before": ncc_before, "ncc_after": ncc_after,
                                                 "folding_fraction": folding, "seconds": seconds})
            print(f"pair {index} {name:24s} TRE {before:.2f} -> {tre:.2f} mm  {seconds:.1f} s", flush=True)

        for model in models:
            for steps in [int(s) for s in args.adapt_steps.split(",")]:
                for refine in [int(s) for s in args.refine_steps.split(",")]:
                    result = register(fixed, moving, model=model, adapt_steps=steps, adapt_learning_rate=args.adapt_lr,
                                      refine_steps=refine, device="cpu")
                    r = result.report
                    name = f"{model.name} +{steps} steps" + (f", refined {refine}" if refine else "")
                    if refine and args.refine_weight is not None:
                        name += f" (weight {args.refine_weight:g})"
                    record(name, result.field, r["seconds"]["total"], r["ncc_before"], r["ncc_after"],
                           r["folding_fraction"])
        if args.iterative:
            result = register(fixed, moving, device="cpu")
            r = result.report
            record("iterative", result.field, r["seconds"]["total"], r["ncc_before"], r["ncc_after"],
                   r["folding_fraction"])
        if args.elastix:
            field, seconds = run_elastix(fixed, moving, threads=args.threads)
            record("elastix affine+bspline", field, seconds, None, None)
    summary = {
        "models": [model.name for model in models], "task": task.name, "pairs": len(pairs),
        "methods": {name: summarise([{k: (v if v is not None else float("nan")) for k, v in row.items()}
                                     for row in rows]) for name, rows in methods.items()},
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "note": "TRE against known synthetic warps (see the task's truth.json), not between two real subjects.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "per_pair": methods}, indent=2) + "\n")
    for name, s in summary["methods"].items():
        print(f"{name:28s} TRE {s['tre_before_mm']['mean']:.2f} -> {s['tre_after_mm']['mean']:.2f} ± "
              f"{s['tre_after_mm']['sd']:.2f} mm, folding {100 * s['folding_fraction']['mean']:.3f} %, "
              f"{s['seconds']['mean']:.1f} s")
    if args.update_card:
        for model in models:
            card_path = model.weights_path.with_suffix(".json")
            card = json.loads(card_path.read_text())
            card.setdefault("metrics", {})[task.name] = summary
            card_path.write_text(json.dumps(card, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
