"""Drawing training samples: counter-based generators (a draw depends on ``(seed, step, slot, ...)`` only),
augmented pairs, synthetic pairs with a known displacement, and the pool of all pairs of several tasks."""

from __future__ import annotations

import numpy as np
import torch

from metareg.core.errors import InputError
from metareg.core.geometry import warp_tensor
from metareg.learning.augment import AugmentConfig, augment, random_displacement
from metareg.learning.tasks import TaskData


def generator(seed: int, *counters: int) -> torch.Generator:
    """A torch generator seeded by ``(seed, *counters)`` (independent streams for every draw)."""
    state = np.random.SeedSequence([int(seed) % 2**32, *[int(c) for c in counters]]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def random_index(gen: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (1,), generator=gen))


def draw_sample(data: TaskData, index: int, config: AugmentConfig, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Pair ``index`` of a task, fixed and moving each augmented independently with ``gen``."""
    fixed, moving = data.tensors(index)
    return augment(fixed, config, gen), augment(moving, config, gen)


def draw_synthetic_sample(data: TaskData, index: int, config: AugmentConfig,
                          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A synthetic pair with a known answer: ``(fixed, moving, d)``, all on the model grid.

    ``moving`` is pair ``index``'s moving image, augmented; ``fixed = warp_tensor(moving, d)`` with ``d`` a random
    displacement (voxels, ``(1, dim, *spatial)``) drawn from ``config``. Since ``warp_tensor(moving, d)`` equals
    ``fixed``, the network's correct output for ``(moving, fixed)`` is ``d``.
    """
    if not config.active:
        raise InputError("--field-supervision", "needs augmentation (--augment-rotation/-shift/-deformation) to draw "
                         "the synthetic displacements from")
    _, moving = data.tensors(index)
    moving = augment(moving, config, gen)
    known = random_displacement(tuple(moving.shape[2:]), config, gen).to(moving.dtype)
    return warp_tensor(moving, known, padding_mode="zeros"), moving, known


class PairPool:
    """The pairs of several tasks as one pool (pretraining, fine-tuning, pair-level Reptile)."""

    def __init__(self, datas: list[TaskData]):
        self.entries = [(t, i) for t, data in enumerate(datas) for i in range(len(data))]
        self.datas = datas
        if not self.entries:
            raise InputError("--tasks", "the tasks hold no pairs")

    def draw(self, gen: torch.Generator) -> tuple[TaskData, int]:
        task, index = self.entries[random_index(gen, len(self.entries))]
        return self.datas[task], index
