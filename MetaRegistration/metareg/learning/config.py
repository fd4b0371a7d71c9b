"""The settings of a training run: :class:`TrainConfig` (pretraining and fine-tuning) and :class:`ReptileConfig`
(meta-training), each checking its own fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from metareg.core.checks import check_choice, check_float, check_int
from metareg.core.errors import ParameterError
from metareg.learning.augment import AugmentConfig

#: Most optimisation (or meta-) steps a training config accepts.
MAX_TRAINING_STEPS = 10_000_000





@dataclass
class TrainConfig:
    """Gradient training (pretraining and fine-tuning).

    Attributes:
        steps: optimiser steps. batch_size: pairs per step (over all processes). learning_rate: Adam step size.
        augment: augmentation of fixed and moving (independently). seed: the run's seed.
        checkpoint_every: steps between checkpoints (0: only at the end).
        field_supervision: weight of a supervised term on synthetic pairs (0: off, purely unsupervised). When on,
            every other sample is a synthetic pair whose answer is known: the pair's augmented moving image and, as
            fixed, that image warped by a random displacement ``d`` drawn from ``augment`` (so the correct output
            is ``d`` itself); the loss adds ``field_supervision * mean |prediction - d|²`` (voxels²) to the
            unsupervised loss. Measured here: in short runs (2D, 600 steps) it did not make a small network learn
            faster (the field error stayed flat), so the zoo recipes do not use it.
    """

    steps: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    checkpoint_every: int = 100
    field_supervision: float = 0.0

    def __post_init__(self):
        check_int(self.steps, "TrainConfig.steps", 1, MAX_TRAINING_STEPS)
        check_int(self.batch_size, "TrainConfig.batch_size", 1, 1024)
        check_float(self.learning_rate, "TrainConfig.learning_rate", maximum=1.0, positive=True)
        check_int(self.seed, "TrainConfig.seed", 0)
        check_int(self.checkpoint_every, "TrainConfig.checkpoint_every", 0)
        check_float(self.field_supervision, "TrainConfig.field_supervision", 0.0, 1e4)
        if not isinstance(self.augment, AugmentConfig):
            raise ParameterError("TrainConfig.augment", f"must be an AugmentConfig, got {type(self.augment).__name__}")


@dataclass
class ReptileConfig:
    """Reptile meta-training (seed 000 task level: b = 3, k = 10; seed 002 pair level: k = 10, β 0.5 → 1e-5).

    Attributes:
        level: ``"task"`` (a task is a domain) or ``"pair"`` (a task is one pair, augmented at every inner step).
        steps: meta-steps. tasks_per_step: b. inner_steps: k. inner_learning_rate: Adam step size of the inner loop.
        inner_batch_size: pairs per inner step (task level).
        outer: ``"adam"`` (the meta-gradient ``θ − mean θᵢ`` fed to Adam with ``outer_learning_rate``) or ``"sgd"``
            (``θ ← θ − β_t (θ − mean θᵢ)``, β falling linearly from ``meta_step_start`` to ``meta_step_end``).
        augment: inner-loop augmentation (pair level needs it; seed 002 used random affines).
    """

    level: str = "task"
    steps: int = 500
    tasks_per_step: int = 3
    inner_steps: int = 10
    inner_learning_rate: float = 1e-3
    inner_batch_size: int = 1
    outer: str = "adam"
    outer_learning_rate: float = 1e-3
    meta_step_start: float = 0.5
    meta_step_end: float = 1e-5
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        check_choice(self.level, "ReptileConfig.level", ("task", "pair"))
        check_choice(self.outer, "ReptileConfig.outer", ("adam", "sgd"))
        check_int(self.steps, "ReptileConfig.steps", 1, MAX_TRAINING_STEPS)
        check_int(self.tasks_per_step, "ReptileConfig.tasks_per_step", 1, 1024)
        check_int(self.inner_steps, "ReptileConfig.inner_steps", 1, 10_000)
        check_int(self.inner_batch_size, "ReptileConfig.inner_batch_size", 1, 1024)
        for name in ("inner_learning_rate", "outer_learning_rate"):
            check_float(getattr(self, name), f"ReptileConfig.{name}", maximum=1.0, positive=True)
        for name in ("meta_step_start", "meta_step_end"):
            check_float(getattr(self, name), f"ReptileConfig.{name}", 0.0, 1.0)
        check_int(self.seed, "ReptileConfig.seed", 0)
        check_int(self.checkpoint_every, "ReptileConfig.checkpoint_every", 0)
        if not isinstance(self.augment, AugmentConfig):
            raise ParameterError("ReptileConfig.augment",
                                 f"must be an AugmentConfig, got {type(self.augment).__name__}")

    def meta_step_size(self, step: int) -> float:
        """β at meta-step ``step`` (SGD outer update): linear from ``meta_step_start`` to ``meta_step_end``."""
        fraction = step / max(self.steps - 1, 1)
        return self.meta_step_start + (self.meta_step_end - self.meta_step_start) * fraction
