"""Held-out evaluation of a zoo model, with elastix and our iterative method measured in the same run.

    .venv/bin/python -m benchmarks.zoo_heldout --model brain-mr-3d-pretrained --model brain-mr-3d-reptile \\
        --task brain-mr-3d-test --adapt-steps 0,10 --refine-steps 0,30 --elastix --iterative \\
        --out benchmarks/results/zoo-brain.json [--update-card]

For each pair of the task (built by ``metareg data fetch``; known synthetic warps with landmarks) it registers with
each model at each number of test-time adaptation steps and of refinement steps (the iterative method started from
the network's field), with the pre-alignment its card asks for, and optionally
with elastix (affine + B-spline) and the iterative method, and reports per method the mean over pairs of TRE
before/after (mm), NCC before/after, folding fraction and wall seconds (CPU threads as set by ``--threads``, for
torch, ITK and elastix alike). Every field is measured the same way (:func:`benchmarks.common.evaluate_field`).

``--out DIR/STEM.json`` writes ``STEM.json`` (the summary, every pair's numbers, the command and the machine),
``STEM.md`` (the table) and ``STEM.csv`` into ``DIR``. ``--update-card`` writes the summary (every method of the
run, so each card carries elastix measured beside it), the command and the machine into each model card's
``metrics``; each card is replaced in one rename, after the updated card has been checked.
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import date
from pathlib import Path

from benchmarks.common import (benchmark_parser, environment, evaluate_field, landmark_pairs, method_row, set_threads,
                               summarise, write_atomic, write_results)
from benchmarks.peers import run_elastix

NOTE = "TRE against known synthetic warps (see the task's truth.json), not between two real subjects."


def update_cards(card_paths: list[Path], task: str, summary: dict) -> None:
    """Put ``summary`` under ``metrics[task]`` of each card, each file replaced in one rename.

    Every updated card is checked as a card (:class:`metareg.core.card.ModelCard`) before any is written, so a card
    that would no longer load is never written; the metrics are not among the settings the weights authenticate.
    """
    from metareg.core.card import ModelCard

    texts = {}
    for card_path in card_paths:
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {})[task] = summary
        ModelCard.from_dict(card, f"model card {card_path}")
        texts[card_path] = json.dumps(card, indent=2) + "\n"
    for card_path, text in texts.items():
        write_atomic(card_path, text)


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__, threads=2)
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
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--out", type=Path, required=True,
                        help="DIR/STEM.json: the results (STEM.json, STEM.md and STEM.csv in DIR)")
    parser.add_argument("--update-card", action="store_true")
    args = parser.parse_args(argv)
    if args.refine_weight is not None and args.update_card:
        parser.error("--refine-weight measures a setting the card does not have: drop --update-card")
    if args.out.suffix != ".json":
        parser.error(f"--out {args.out}: must end in .json (STEM.md and STEM.csv go beside it)")
    set_threads(args.threads)
    env = environment(args.threads, argv)
    import torch

    from metareg.core.card import RefinementDefaults
    from metareg.core.modelio import load_model
    from metareg.core.registration import NetworkMethod, register
    from metareg.learning.tasks import default_data_dir, load_task

    models = [load_model(name) for name in args.model]
    if args.refine_weight is not None:
        for model in models:  # in memory only: the card file is not touched
            model.card = model.card.replace(refinement=RefinementDefaults(model.card.refinement.steps,
                                                                          args.refine_weight))
    task = load_task(args.task, args.data_dir or default_data_dir())
    pairs = landmark_pairs(task, limit=args.limit)
    methods: dict[str, list[dict]] = {}
    for pair in pairs:

        def record(name: str, field, seconds: float) -> None:
            row = {"pair": pair.index, **evaluate_field(pair, field), "seconds": seconds}
            methods.setdefault(name, []).append(row)
            print(f"pair {pair.index} {name:24s} TRE {row['tre_before_mm']:.2f} -> {row['tre_after_mm']:.2f} mm  "
                  f"{seconds:.1f} s", flush=True)

        for model in models:
            for steps in [int(s) for s in args.adapt_steps.split(",")]:
                for refine in [int(s) for s in args.refine_steps.split(",")]:
                    method = NetworkMethod(model, adapt_steps=steps, adapt_learning_rate=args.adapt_lr,
                                           refine_steps=refine)
                    result = register(pair.fixed, pair.moving, method=method, device="cpu")
                    name = f"{model.name} +{steps} steps" + (f", refined {refine}" if refine else "")
                    if refine and args.refine_weight is not None:
                        name += f" (weight {args.refine_weight:g})"
                    record(name, result.field, result.report.seconds["total"])
        if args.iterative:
            result = register(pair.fixed, pair.moving, device="cpu")
            record("iterative", result.field, result.report.seconds["total"])
        if args.elastix:
            record("elastix affine+bspline", *run_elastix(pair.fixed, pair.moving, threads=args.threads))
    summary = {
        "models": [model.name for model in models], "task": task.name, "pairs": len(pairs),
        "methods": {name: summarise(rows) for name, rows in methods.items()},
        "command": env["command"],
        "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}",
        "date": date.today().isoformat(),
        "note": NOTE,
    }
    title = f"Held-out evaluation of {', '.join(summary['models'])} on {task.name}"
    table = [method_row(name, rows) for name, rows in methods.items()]
    notes = [f"{len(pairs)} pairs of {task.name}. {NOTE}",
             "TRE: per pair the mean over its landmarks of |φ(p) − q| (mm; φ the method's field, fixed point ↦ moving "
             "point), then mean ± sd over pairs. NCC: fixed image and moving image (as it is, and warped) over the "
             "region both mappings see; folding %: voxels with Jacobian determinant ≤ 0; s/pair: the registration's "
             "wall seconds (for elastix, elastix alone)."]
    paths = write_results(args.out.stem, title, table, env, notes=notes,
                          extra={"summary": summary, "per_pair": methods}, out_dir=args.out.parent)
    print(paths["md"].read_text(), flush=True)
    for name, s in summary["methods"].items():
        print(f"{name:28s} TRE {s['tre_before_mm']['mean']:.2f} -> {s['tre_after_mm']['mean']:.2f} ± "
              f"{s['tre_after_mm']['sd']:.2f} mm, folding {100 * s['folding_fraction']['mean']:.3f} %, "
              f"{s['seconds']['mean']:.1f} s")
    if args.update_card:
        update_cards([model.weights_path.with_suffix(".json") for model in models], task.name, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
