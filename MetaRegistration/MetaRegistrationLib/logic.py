"""The module's logic: read the input nodes, run the engine in a child process, add the outputs on success.

Three steps, all on the main thread:

1. :meth:`MetaRegistrationLogic.start` reads the input nodes into SimpleITK images and landmarks (copies), and
   starts a :class:`RegistrationJob`: the images, landmarks and label maps go to a private temporary folder, and the
   engine's worker (``python -m metareg.app.worker``: the ``metareg register`` command line in its JSON-lines mode) runs
   on them in a child process (:mod:`.jobs` says why a process and not a thread).
2. The caller polls the job (a GUI timer in Slicer, a loop in scripts and tests): :attr:`RegistrationJob.progress`,
   :meth:`RegistrationJob.cancel` (the process is terminated, and killed if it does not end at once).
3. :meth:`MetaRegistrationLogic.finish` adds the output nodes when the job succeeded (its outputs were read back
   from the folder, which is then removed). A cancelled or failed job adds nothing: the scene stays as it was.

:meth:`MetaRegistrationLogic.run` does all three for scripts and tests. Nothing here uses qt, ctk or ``slicer.app``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from . import convert, finetune, outputs
from .jobs import EngineJob

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

    @property
    def uses_network(self) -> bool:
        return self.model not in (None, "", ITERATIVE)

    def engine_options(self) -> dict:
        """The options of ``metareg register`` for these settings (see :mod:`metareg.app.worker`)."""
        options: dict = {"device": self.device, "affine": bool(self.affine)}
        if self.uses_network:
            options.update(model=str(self.model), adapt_steps=int(self.adapt_steps),
                           refine_steps=None if self.refine_steps is None else int(self.refine_steps))
        else:
            options.update(method=ITERATIVE, diffeomorphic=bool(self.diffeomorphic),
                           iterations=",".join(str(int(n)) for n in self.iterations) if self.iterations else None)
        return options


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
    if inputs.fixed_volume is not None and inputs.fixed_volume is inputs.moving_volume:
        raise convert.NodeInputError("fixed and moving volume are the same node; choose two different volumes")
    # single-slice volumes (a 2D image loaded in Slicer) become 2D images; both volumes must agree
    fixed = convert.volume_to_image(inputs.fixed_volume, "fixed volume", allow_2d=True)
    moving = convert.volume_to_image(inputs.moving_volume, "moving volume", allow_2d=True)
    convert.pair_dimension(inputs.fixed_volume, inputs.moving_volume)
    prepared = PreparedInputs(fixed, moving)
    if (inputs.fixed_landmarks is None) != (inputs.moving_landmarks is None):
        missing = "moving" if inputs.moving_landmarks is None else "fixed"
        raise convert.NodeInputError(f"{missing} landmarks: none selected; TRE needs a point list for both volumes "
                                     "(or clear both)")
    if inputs.fixed_landmarks is not None:
        prepared.fixed_landmarks = convert.markups_to_landmarks(inputs.fixed_landmarks, "fixed landmarks",
                                                                volume=inputs.fixed_volume, volume_role="fixed volume")
        prepared.moving_landmarks = convert.markups_to_landmarks(inputs.moving_landmarks, "moving landmarks",
                                                                 volume=inputs.moving_volume,
                                                                 volume_role="moving volume")
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


@dataclass
class EngineResult:
    """What the engine's worker returned, read back from its files (the fields of
    :class:`metareg.core.registration.RegistrationResult` the outputs need)."""

    field: object  # sitk vector image, LPS mm, on the fixed grid: fixed x -> moving x + d(x)
    warped: object
    jacobian: object
    report: dict
    loss_curve: list = field(default_factory=list)


#: The files of a registration job, relative to its folder.
JOB_FILES = {"fixed": "fixed.mha", "moving": "moving.mha", "fixed_landmarks": "fixed_landmarks.mrk.json",
             "moving_landmarks": "moving_landmarks.mrk.json", "fixed_labels": "fixed_labels.mha",
             "moving_labels": "moving_labels.mha", "warped": "warped.mha", "field": "field.mha",
             "jacobian": "jacobian.mha"}


class RegistrationJob(EngineJob):
    """One registration in the engine's child process.

    The inputs are copies written to the job's private folder (the scene is never read or changed by the worker).
    Poll :attr:`progress` / :attr:`done`, call :meth:`cancel` to stop it, then hand the job to
    :meth:`MetaRegistrationLogic.finish`; :attr:`result` is the :class:`EngineResult` on success.
    """

    command = "register"
    folder_prefix = "MetaRegistration-register-"

    def __init__(self, inputs: RegistrationInputs, prepared: PreparedInputs, settings: RegistrationSettings):
        super().__init__()
        self.inputs = inputs
        self.prepared = prepared
        self.settings = settings
        self.result: EngineResult | None = None
        self.seconds: dict[str, float] = {}

    def _write_inputs(self, folder):
        import SimpleITK as sitk

        from metareg.core.landmarks import write_landmarks

        began = time.perf_counter()
        prepared = self.prepared
        options = {"fixed": JOB_FILES["fixed"], "moving": JOB_FILES["moving"]}
        sitk.WriteImage(prepared.fixed_image, str(folder / JOB_FILES["fixed"]), useCompression=False)
        sitk.WriteImage(prepared.moving_image, str(folder / JOB_FILES["moving"]), useCompression=False)
        for role in ("fixed_landmarks", "moving_landmarks"):
            landmarks = getattr(prepared, role)
            if landmarks is not None:
                write_landmarks(landmarks, folder / JOB_FILES[role])
                options[role] = JOB_FILES[role]
        for role in ("fixed_labels", "moving_labels"):
            labels = getattr(prepared, role)
            if labels is not None:
                sitk.WriteImage(labels, str(folder / JOB_FILES[role]), useCompression=False)
                options[role] = JOB_FILES[role]
        options.update(self.settings.engine_options())
        options.update({role: JOB_FILES[role] for role in ("warped", "field", "jacobian")},
                       uncompressed=True, quiet=True)
        self.seconds["write_inputs"] = round(time.perf_counter() - began, 4)
        return options

    def _read_outputs(self, folder, result):
        import SimpleITK as sitk

        began = time.perf_counter()
        report = result["report"]  # the worker's result event carries the report; no file needed
        images = {role: sitk.ReadImage(str(folder / JOB_FILES[role])) for role in ("field", "warped", "jacobian")}
        self.result = EngineResult(report=report, loss_curve=list(report.get("loss_curve") or []), **images)
        self.seconds["read_outputs"] = round(time.perf_counter() - began, 4)


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
    try:  # the imports too: before torch is installed there are no defaults yet, and no error
        from metareg.core.modelio import read_card, resolve_model

        weights, _ = resolve_model(model)
        card = read_card(weights.with_suffix(".json"))
        return CardDefaults(affine=card.affine, refine_steps=card.refinement.steps)
    except Exception:  # noqa: BLE001 - defaults only
        return CardDefaults()


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
        """Read the inputs (main thread) and start the registration in the engine's child process.

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
        began = time.perf_counter()
        result = outputs.create_outputs(self.scene, job.inputs, job.prepared, job.result,
                                        job.settings.checkerboard_squares)
        job.seconds["create_nodes"] = round(time.perf_counter() - began, 4)
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
        """Fine-tune and return the new model path (None when ``should_stop`` cancelled it); blocking (for scripts and
        tests)."""
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
    """The iterative method, then every model of the zoo with its one-line purpose (3D models first; 2D models
    register single-slice volumes and say "2D"), then the user's own models (adapted ones) of ``user_model_dir`` by
    path, when given."""
    from metareg.core.modelio import read_index

    choices = [Choice("iterative (no network)", ITERATIVE,
                      "Optimises the displacement field of this pair directly (3D volumes or single slices); always "
                      "available, no model needed.")]
    entries = sorted(read_index(zoo_dir), key=lambda entry: -int(entry.get("dimension", 3)))
    for entry in entries:
        purpose = entry.get("purpose", "")
        name = entry["name"] + (" (2D: single slices)" if int(entry.get("dimension", 3)) == 2 else "")
        choices.append(Choice(f"{name} — {purpose}" if purpose else name, entry["name"], purpose))
    if user_model_dir is not None:
        for weights, card in finetune.user_models(user_model_dir):
            purpose = card.purpose
            name = f"{weights.stem} (my model{', 2D' if card.dim == 2 else ''})"
            choices.append(Choice(f"{name} — {purpose}" if purpose else name, str(weights),
                                  f"{purpose}\n{weights}".strip()))
    return choices


def smallest_zoo_model(zoo_dir=None, modality: str = "MR T1w") -> str | None:
    """Name of the zoo's smallest 3D model (by file size) for ``modality`` (the index entry's; entries without one
    count as any), or None when the zoo has none. The default suits the brain3d sample's T1w pair."""
    from metareg.core.modelio import default_zoo_dir, read_index

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
