"""The module's logic: read the input nodes, run the engine in a background thread, add the outputs on success.

Three steps, each on the thread that may do it:

1. :meth:`MetaRegistrationLogic.start` (main thread) reads the input nodes into SimpleITK images and landmarks —
   copies, so the worker never touches MRML — and starts a :class:`RegistrationJob` (worker thread) that runs
   :func:`metareg.register.register` with progress and a stop flag.
2. The caller polls the job (a GUI timer in Slicer, a loop in scripts and tests): :attr:`RegistrationJob.progress`,
   :meth:`RegistrationJob.cancel`.
3. :meth:`MetaRegistrationLogic.finish` (main thread) adds the output nodes when the job succeeded. A cancelled or
   failed job adds nothing: the scene stays exactly as it was.

:meth:`MetaRegistrationLogic.run` does all three for scripts and tests. Nothing here uses qt, ctk or ``slicer.app``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from . import convert, finetune, outputs
from .jobs import BackgroundJob

ITERATIVE = "iterative"
LOG = logging.getLogger("MetaRegistration")


@dataclass
class RegistrationInputs:
    """The input nodes. Volumes are required; landmark and segmentation pairs are optional (both or neither)."""

    fixed_volume: object
    moving_volume: object
    fixed_landmarks: object | None = None
    moving_landmarks: object | None = None
    fixed_segmentation: object | None = None
    moving_segmentation: object | None = None


@dataclass
class RegistrationSettings:
    """How to register.

    Attributes:
        model: ``"iterative"`` (no network), a model name from the zoo, or the path of a ``.safetensors`` file.
        adapt_steps: test-time adaptation steps on this pair (networks only; 0 = the model as trained).
        refine_steps: networks only: steps of the iterative method on the field, started from the network's result
            (0 = none; None = as the model's card says, see :func:`card_defaults`).
        affine: classical affine pre-alignment first, composed into the output transform.
        diffeomorphic: iterative method only: optimise a velocity field (no folding in practice). A network's
            integration is fixed by the model.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        iterations: iterative method only: steps per resolution level, coarsest first (None: the engine default).
        checkerboard_squares: squares along each axis of the checkerboard volume.
    """

    model: str = ITERATIVE
    adapt_steps: int = 0
    refine_steps: int | None = None
    affine: bool = False
    diffeomorphic: bool = False
    device: str = "auto"
    iterations: tuple[int, ...] | None = None
    checkerboard_squares: int = 8

    def iterative_config(self):
        """The engine's :class:`metareg.iterative.IterativeConfig` for these settings."""
        from metareg.iterative import IterativeConfig

        default = IterativeConfig()
        iterations = tuple(self.iterations or default.iterations)
        shrink = default.shrink_factors
        if len(iterations) != len(shrink):  # fewer or more levels: halve the resolution per level, finest last
            shrink = tuple(2 ** (len(iterations) - 1 - level) for level in range(len(iterations)))
        return IterativeConfig(shrink_factors=shrink, iterations=iterations, diffeomorphic=self.diffeomorphic)


@dataclass
class PreparedInputs:
    """What the engine gets: copies of the inputs' voxels and points (LPS), safe to use from another thread."""

    fixed_image: object
    moving_image: object
    fixed_landmarks: object | None = None
    moving_landmarks: object | None = None
    fixed_labels: object | None = None
    moving_labels: object | None = None
    segment_names: list[str] = field(default_factory=list)


def prepare_inputs(inputs: RegistrationInputs) -> PreparedInputs:
    """Read the input nodes (main thread). Raises :class:`~.convert.NodeInputError` with a message for the user."""
    fixed = convert.volume_to_image(inputs.fixed_volume, "fixed volume")
    moving = convert.volume_to_image(inputs.moving_volume, "moving volume")
    if inputs.fixed_volume is inputs.moving_volume:
        raise convert.NodeInputError("fixed and moving volume are the same node; choose two different volumes")
    prepared = PreparedInputs(fixed, moving)
    if (inputs.fixed_landmarks is None) != (inputs.moving_landmarks is None):
        missing = "moving" if inputs.moving_landmarks is None else "fixed"
        raise convert.NodeInputError(f"{missing} landmarks: none selected; TRE needs a point list for both volumes "
                                     "(or clear both)")
    if inputs.fixed_landmarks is not None:
        prepared.fixed_landmarks = convert.markups_to_landmarks(inputs.fixed_landmarks, "fixed landmarks")
        prepared.moving_landmarks = convert.markups_to_landmarks(inputs.moving_landmarks, "moving landmarks")
    if (inputs.fixed_segmentation is None) != (inputs.moving_segmentation is None):
        missing = "moving" if inputs.moving_segmentation is None else "fixed"
        raise convert.NodeInputError(f"{missing} segmentation: none selected; Dice needs a segmentation for both "
                                     "volumes (or clear both)")
    if inputs.fixed_segmentation is not None:
        names = convert.shared_segment_names(inputs.fixed_segmentation, inputs.moving_segmentation)
        if not names:
            raise convert.NodeInputError(
                f"segmentations '{inputs.fixed_segmentation.GetName()}' and '{inputs.moving_segmentation.GetName()}' "
                "share no segment names; segments are paired by name"
            )
        prepared.segment_names = names
        prepared.fixed_labels = convert.segmentation_to_labels(inputs.fixed_segmentation, inputs.fixed_volume, names,
                                                               "fixed segmentation")
        prepared.moving_labels = convert.segmentation_to_labels(inputs.moving_segmentation, inputs.moving_volume,
                                                                names, "moving segmentation")
    return prepared


class RegistrationJob(BackgroundJob):
    """One registration running in a background thread.

    The thread only computes; it never touches the scene. Read :attr:`progress` and :attr:`done` from any thread,
    call :meth:`cancel` to stop it (the engine checks the flag every optimisation step, so it stops within about a
    second), then hand the job to :meth:`MetaRegistrationLogic.finish` on the main thread.
    """

    def __init__(self, inputs: RegistrationInputs, prepared: PreparedInputs, settings: RegistrationSettings):
        self.inputs = inputs
        self.prepared = prepared
        self.settings = settings
        self.result = None
        super().__init__()

    def _compute(self, report, should_stop) -> None:
        self.result = run_engine(self.prepared, self.settings, report, should_stop)
        report(1.0, "done")


def load_model_for(settings: RegistrationSettings):
    """The engine model the settings ask for (None for the iterative method)."""
    if settings.model in (None, "", ITERATIVE):
        return None
    from metareg.modelio import load_model

    return load_model(settings.model)


@dataclass(frozen=True)
class CardDefaults:
    """What a model's card asks for by default: affine pre-alignment (``"prealign": "affine"``) and refinement steps
    (``"refinement": {"steps": N}``)."""

    affine: bool = False
    refine_steps: int = 0


def card_defaults(model: str | None) -> CardDefaults:
    """The defaults of ``model``'s card; none for the iterative method or a model whose card cannot be read (the
    error then comes, clearly, when the model is loaded)."""
    if model in (None, "", ITERATIVE):
        return CardDefaults()
    from metareg.modelio import read_card, resolve_model
    from metareg.register import refine_steps_by_default

    try:
        weights, _ = resolve_model(model)
        card = read_card(weights.with_suffix(".json"))
        return CardDefaults(affine=card.get("prealign") == "affine", refine_steps=refine_steps_by_default(card))
    except Exception:  # noqa: BLE001 - defaults only
        return CardDefaults()


def run_engine(prepared: PreparedInputs, settings: RegistrationSettings, progress=None, should_stop=None):
    """Run :func:`metareg.register.register` on prepared inputs (any thread; no MRML)."""
    from metareg.register import register

    model = load_model_for(settings)
    return register(
        prepared.fixed_image,
        prepared.moving_image,
        model=model,
        adapt_steps=int(settings.adapt_steps) if model is not None else 0,
        refine_steps=None if model is None or settings.refine_steps is None else int(settings.refine_steps),
        affine=bool(settings.affine),
        iterative_config=settings.iterative_config() if model is None else None,
        device=settings.device,
        fixed_landmarks=prepared.fixed_landmarks,
        moving_landmarks=prepared.moving_landmarks,
        fixed_labels=prepared.fixed_labels,
        moving_labels=prepared.moving_labels,
        progress=progress,
        should_stop=should_stop,
    )


class MetaRegistrationLogic:
    """Registration in a scene: usable from the module's Widget, from the Python console and from tests.

    Args:
        scene: the MRML scene (default: ``slicer.mrmlScene``).
    """

    def __init__(self, scene=None):
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        self.scene = scene

    def start(self, inputs: RegistrationInputs, settings: RegistrationSettings) -> RegistrationJob:
        """Read the inputs (main thread) and start the registration in a background thread.

        Raises:
            convert.NodeInputError: an input cannot be used (the message says which and what to do).
        """
        prepared = prepare_inputs(inputs)
        LOG.info("MetaRegistration: registering '%s' to '%s' with %s", inputs.moving_volume.GetName(),
                 inputs.fixed_volume.GetName(), settings)
        return RegistrationJob(inputs, prepared, settings).start()

    def finish(self, job: RegistrationJob) -> outputs.RegistrationOutputs | None:
        """Add the outputs of an ended job to the scene (main thread).

        Returns:
            The new output nodes, or None when the job was cancelled (the scene is left as it was).

        Raises:
            The job's error when it failed (the scene is left as it was); ``job.error_details`` has the traceback.
        """
        if not job.done:
            raise RuntimeError("the registration is still running; wait for it or cancel it first")
        if job.cancelled:
            LOG.info("MetaRegistration: cancelled; the scene is unchanged")
            return None
        if job.error is not None:
            LOG.error("MetaRegistration failed:\n%s", job.error_details)
            raise job.error
        # the inputs may have been deleted while the job ran
        for node in (job.inputs.fixed_volume, job.inputs.moving_volume):
            if self.scene.GetNodeByID(node.GetID()) is not node:
                raise convert.NodeInputError(f"input volume '{node.GetName()}' was removed during the registration")
        result = outputs.create_outputs(self.scene, job.inputs, job.prepared, job.result,
                                        job.settings.checkerboard_squares)
        LOG.info("MetaRegistration: %s", result.results_line)
        return result

    def run(
        self,
        inputs: RegistrationInputs,
        settings: RegistrationSettings | None = None,
        progress: Callable[[float, str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        poll_seconds: float = 0.05,
    ) -> outputs.RegistrationOutputs | None:
        """Register and add the outputs, blocking until done: for scripts and tests.

        ``progress`` and ``should_stop`` are called on the calling (main) thread while the job runs; when
        ``should_stop`` returns True the job is cancelled and None is returned with the scene unchanged.
        """
        job = self.start(inputs, settings or RegistrationSettings())
        while not job.wait(poll_seconds):
            if progress is not None:
                progress(*job.progress)
            if should_stop is not None and should_stop():
                job.cancel()
        return self.finish(job)

    # --- adapt the model to my images (fine-tuning; never changes the scene) -----------------------------------------

    def start_finetune(self, inputs: finetune.FinetuneInputs,
                       settings: finetune.FinetuneSettings) -> finetune.FinetuneJob:
        """Read the volumes (main thread) and start fine-tuning ``settings.parent`` on them in a background thread.

        Raises:
            convert.NodeInputError: the inputs or settings cannot be used (the message says which and what to do).
        """
        prepared = finetune.prepare_finetune(inputs, settings)
        LOG.info("MetaRegistration: adapting %s to %s -> %s", settings.parent, prepared.description, prepared.out)
        return finetune.FinetuneJob(prepared, settings).start()

    def finish_finetune(self, job: finetune.FinetuneJob):
        """The new model's path (its card beside it) once the job ended; None when it was cancelled (no file written).

        Raises:
            The job's error when it failed (no file written); ``job.error_details`` has the traceback.
        """
        if not job.done:
            raise RuntimeError("the fine-tuning is still running; wait for it or cancel it first")
        if job.cancelled:
            LOG.info("MetaRegistration: fine-tuning cancelled; no model was saved")
            return None
        if job.error is not None:
            LOG.error("MetaRegistration fine-tuning failed:\n%s", job.error_details)
            raise job.error
        LOG.info("MetaRegistration: saved the adapted model %s", job.model_path)
        return job.model_path

    def run_finetune(self, inputs: finetune.FinetuneInputs, settings: finetune.FinetuneSettings,
                     progress: Callable[[float, str], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, poll_seconds: float = 0.05):
        """Fine-tune and return the new model path (None when ``should_stop`` cancelled it), blocking: scripts, tests."""
        job = self.start_finetune(inputs, settings)
        while not job.wait(poll_seconds):
            if progress is not None:
                progress(*job.progress)
            if should_stop is not None and should_stop():
                job.cancel()
        return self.finish_finetune(job)

    @staticmethod
    def place_under_transform(transform_node, nodes) -> None:
        """Put nodes (the moving volume, its landmarks, its segmentation) under the output transform, so Slicer shows
        them aligned with the fixed volume. This changes those nodes' parent transform, which the user asks for."""
        for node in nodes:
            if node is not None:
                node.SetAndObserveTransformNodeID(transform_node.GetID())


# ---------------------------------------------------------------------------------------------------------------------
# What the panel offers


@dataclass(frozen=True)
class Choice:
    """One entry of a combo box: what the user reads, the value the settings get, and a tooltip."""

    title: str
    value: str
    tooltip: str = ""


def model_choices(zoo_dir=None, user_model_dir=None) -> list[Choice]:
    """The iterative method, then every model of the zoo with its one-line purpose (dimension 3 only: the module
    registers volumes), then the user's own models (adapted ones) of ``user_model_dir`` by path, when given."""
    from metareg.modelio import read_index

    choices = [Choice("iterative (no network)", ITERATIVE,
                      "Optimises the displacement field of this pair directly; always available, no model needed.")]
    for entry in read_index(zoo_dir):
        if int(entry.get("dimension", 3)) != 3:
            continue
        purpose = entry.get("purpose", "")
        choices.append(Choice(f"{entry['name']} — {purpose}" if purpose else entry["name"], entry["name"], purpose))
    if user_model_dir is not None:
        for weights, card in finetune.user_models(user_model_dir):
            purpose = card.get("purpose", "")
            choices.append(Choice(f"{weights.stem} (my model) — {purpose}" if purpose else f"{weights.stem} (my model)",
                                  str(weights), f"{purpose}\n{weights}".strip()))
    return choices


def smallest_zoo_model(zoo_dir=None, modality: str = "MR T1w") -> str | None:
    """Name of the zoo's smallest 3D model (by file size) for ``modality`` (the index entry's; entries without one
    count as any), or None when the zoo has none. The default suits the brain3d sample's T1w pair."""
    from metareg.modelio import default_zoo_dir, read_index

    folder = zoo_dir or default_zoo_dir()
    sizes = []
    for entry in read_index(zoo_dir):
        path = folder / entry["file"]
        if int(entry.get("dimension", 3)) == 3 and entry.get("modality", modality) == modality and path.exists():
            sizes.append((path.stat().st_size, entry["name"]))
    return min(sizes)[1] if sizes else None


def device_choices() -> list[Choice]:
    """auto and CPU always; each CUDA GPU (with its memory) or Apple MPS only when torch sees one."""
    choices = [Choice("auto", "auto", "The GPU when there is one, else the CPU."), Choice("CPU", "cpu")]
    try:
        import torch
    except ImportError:
        return choices
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        choices.append(Choice(f"GPU {index}: {props.name} ({props.total_memory / 2**30:.0f} GiB)", f"cuda:{index}"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        choices.append(Choice("GPU (Apple MPS)", "mps"))
    return choices
