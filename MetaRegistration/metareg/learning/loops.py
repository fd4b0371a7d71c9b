"""The training loops: :func:`train_loop` (pretraining and fine-tuning: one optimiser step per step over a batch of
pairs) and :func:`reptile_loop` (Reptile meta-training), with :func:`reptile_update` and the inner loop
:func:`adapt_to_task`.

Randomness is counter-based: every draw (which pair, which augmentation) comes from a generator seeded by
``(seed, step, slot, inner step)`` (:func:`metareg.learning.sampling.generator`). A run is therefore reproducible, a
checkpoint's step number is its whole random state, and a draw does not depend on which process makes it: under
``torchrun`` the slots of a step are split across ranks (DistributedDataParallel averages the gradients for
pretraining; the adapted Reptile weights are summed with an all-reduce), and the result equals a single-process run
on the same seed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Callable

import torch
import torch.distributed as dist

from metareg.core.adaptation import adapt_network
from metareg.core.card import ModelCard
from metareg.core.errors import Cancelled, InputError
from metareg.core.geometry import warp_tensor
from metareg.core.losses import LossConfig, registration_loss
from metareg.core.networks import RegistrationNetwork
from metareg.core.progress import progress_bar
from metareg.learning.config import ReptileConfig, TrainConfig
from metareg.learning.distributed import Processes
from metareg.learning.runlog import (
    LossLog,
    RunFiles,
    resume_state,
    run_settings,
    save_checkpoint,
)
from metareg.learning.sampling import (
    PairPool,
    draw_sample,
    draw_synthetic_sample,
    generator,
    random_index,
)
from metareg.learning.tasks import TaskData


def _batch_loss(network: torch.nn.Module, samples: list[tuple[torch.Tensor, ...]], loss: LossConfig,
                device: torch.device, total: int, field_supervision: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Loss of a batch of samples, scaled by ``len(samples) / total`` (this process's share).

    A sample is ``(fixed, moving)`` or, from :func:`draw_synthetic_sample`, ``(fixed, moving, known displacement)``;
    the known displacements add ``field_supervision * mean squared error`` (voxels²) over those samples.
    """
    fixed = torch.cat([s[0] for s in samples]).to(device)
    moving = torch.cat([s[1] for s in samples]).to(device)
    disp = network(fixed=fixed, moving=moving)
    value, parts = registration_loss(loss, fixed, warp_tensor(moving, disp), disp)
    supervised = [i for i, s in enumerate(samples) if len(s) == 3]
    if supervised and field_supervision > 0:
        known = torch.cat([samples[i][2] for i in supervised]).to(device)
        error = ((disp[supervised] - known) ** 2).mean()
        value = value + field_supervision * error
        parts = {**parts, "field_mse_vox2": float(error.detach())}
    return value * (len(samples) / total), parts


def _progress(processes: Processes, total: int, start: int, description: str):
    interactive = sys.stderr is not None and sys.stderr.isatty()
    return progress_bar(total=total, initial=start, desc=description, disable=not processes.main,
                        mininterval=0.5 if interactive else 30.0)


def _step_loop(network: RegistrationNetwork, optimiser: torch.optim.Optimizer | None, config_json: dict,
               files: RunFiles, processes: Processes, *, steps: int, checkpoint_every: int, resume: bool,
               description: str, plot_title: str, one_step: Callable[[int], tuple[float, dict, float]],
               stop_after: int | None = None, progress: Callable[[float, str], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> list[float]:
    """The skeleton both training loops share: resume from the checkpoint (``resume``: the network's and the
    optimiser's state and the step, after :func:`metareg.learning.runlog.resume_state` has checked the run's
    settings), then for each step up to ``steps``: poll ``should_stop`` (raising :class:`Cancelled`; the last
    checkpoint stays), run ``one_step(step)`` (returning the step's loss, the loss's parts and the step size), log it,
    report ``progress(fraction, message)``, and checkpoint every ``checkpoint_every`` steps and at the end.
    ``stop_after`` ends the run early (as if killed) after that step. Returns the loss curve, steps before a resume
    included."""
    start = 0
    if resume:
        checkpoint = resume_state(files, config_json)
        network.load_state_dict(checkpoint["network"])
        if optimiser is not None:
            optimiser.load_state_dict(checkpoint["optimiser"])
        start = int(checkpoint["step"])
    log = LossLog(files, start if resume else None, processes.main)
    bar = _progress(processes, steps, start, description)
    last = time.perf_counter()
    for step in range(start, steps):
        if stop_after is not None and step >= stop_after:
            break
        if should_stop is not None and should_stop():
            bar.close()
            log.close(files.plot, plot_title)
            raise Cancelled(f"{description} cancelled at step {step}")
        loss, parts, rate = one_step(step)
        now = time.perf_counter()
        log.add(step, loss, parts, rate, now - last)
        last = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        done = step + 1
        if progress is not None:
            progress(done / steps, f"{description} step {done}/{steps}, loss {loss:.4f}")
        if processes.main and checkpoint_every and (done % checkpoint_every == 0 or done == steps):
            save_checkpoint(files.checkpoint, {"step": done, "network": network.state_dict(),
                                               "optimiser": optimiser.state_dict() if optimiser is not None else {},
                                               "config": json.dumps(config_json)})
    bar.close()
    log.close(files.plot, plot_title)
    return log.curve()


def train_loop(
    network: RegistrationNetwork,
    card: ModelCard,
    datas: list[TaskData],
    config: TrainConfig,
    files: RunFiles,
    processes: Processes,
    resume: bool = False,
    description: str = "training",
    stop_after: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[float]:
    """Adam on the pooled pairs; returns the loss curve (all steps, including those before a resume).

    ``progress(fraction, message)`` is called after every step; ``should_stop()`` is polled before every step and
    raises :class:`metareg.core.errors.Cancelled` (the last checkpoint stays; no model is written).
    """
    if config.batch_size % processes.world_size:
        raise InputError("--batch-size",
                         f"{config.batch_size} is not divisible by the {processes.world_size} processes")
    network.to(processes.device).train()
    model: torch.nn.Module = network
    if processes.distributed:
        model = torch.nn.parallel.DistributedDataParallel(network)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    config_json = run_settings(card, train=asdict(config), kind=description)
    pool = PairPool(datas)

    def one_step(step: int) -> tuple[float, dict, float]:
        samples: list[tuple[torch.Tensor, ...]] = []
        for slot in processes.mine(config.batch_size):
            gen = generator(config.seed, step, slot)
            data, index = pool.draw(gen)
            if config.field_supervision > 0 and (step + slot) % 2 == 0:
                samples.append(draw_synthetic_sample(data, index, config.augment, gen))
            else:
                samples.append(draw_sample(data, index, config.augment, gen))
        optimiser.zero_grad(set_to_none=True)
        value, parts = _batch_loss(model, samples, card.loss, processes.device,
                                   config.batch_size // processes.world_size, config.field_supervision)
        value.backward()
        optimiser.step()
        loss = float(value.detach())
        if processes.distributed:
            reduced = torch.tensor([loss], device=processes.device)
            dist.all_reduce(reduced)
            loss = float(reduced) / processes.world_size
        return loss, parts, config.learning_rate

    return _step_loop(network, optimiser, config_json, files, processes, steps=config.steps,
                      checkpoint_every=config.checkpoint_every, resume=resume, description=description,
                      plot_title=description, one_step=one_step, stop_after=stop_after, progress=progress,
                      should_stop=should_stop)


def reptile_update(
    network: torch.nn.Module,
    adapted_mean: dict[str, torch.Tensor],
    config: ReptileConfig,
    step: int,
    optimiser: torch.optim.Optimizer | None,
) -> float:
    """Move the weights toward the mean of the adapted weights; returns the step size used.

    ``adam``: the meta-gradient ``θ − mean θᵢ`` is handed to ``optimiser``. ``sgd``: ``θ ← θ − β (θ − mean θᵢ)``.
    """
    with torch.no_grad():
        if config.outer == "sgd":
            beta = config.meta_step_size(step)
            for name, parameter in network.named_parameters():
                parameter.sub_(beta * (parameter - adapted_mean[name]))
            return beta
        for name, parameter in network.named_parameters():
            parameter.grad = (parameter - adapted_mean[name]).detach().clone()
    assert optimiser is not None, "Adam's outer step needs its optimiser"
    optimiser.step()
    return config.outer_learning_rate


def adapt_to_task(
    network: RegistrationNetwork,
    draw: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]],
    config: ReptileConfig,
    loss: LossConfig,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The inner loop: ``inner_steps`` Adam steps on a copy of ``network`` (the test-time adaptation of
    :func:`metareg.core.adaptation.adapt_network`); ``draw(s)`` gives inner step s's samples. Returns the adapted
    weights and the loss before each step."""
    adapted, losses = adapt_network(network, draw, loss, config.inner_steps, config.inner_learning_rate, device=device)
    return {name: p.detach() for name, p in adapted.named_parameters()}, losses


def reptile_loop(
    network: RegistrationNetwork,
    card: ModelCard,
    datas: list[TaskData],
    config: ReptileConfig,
    files: RunFiles,
    processes: Processes,
    resume: bool = False,
    stop_after: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[float]:
    """Reptile meta-training (see the module docstring); returns the curve of mean inner-loop losses.

    ``progress`` and ``should_stop`` as in :func:`train_loop`."""
    network.to(processes.device).train()
    optimiser = (torch.optim.Adam(network.parameters(), lr=config.outer_learning_rate) if config.outer == "adam"
                 else None)
    config_json = run_settings(card, reptile=asdict(config))
    pool = PairPool(datas)
    names = [name for name, _ in network.named_parameters()]

    def one_step(step: int) -> tuple[float, dict, float]:
        total = {name: torch.zeros_like(p) for name, p in network.named_parameters()}
        inner_losses = torch.zeros(2, device=processes.device)  # (sum of final inner losses, count)
        for slot in processes.mine(config.tasks_per_step):
            task_gen = generator(config.seed, step, slot)
            if config.level == "task":  # a task is a domain: each inner step draws pairs of it
                data = datas[random_index(task_gen, len(datas))]

                def draw_of_domain(inner, data=data, slot=slot):
                    gens = [generator(config.seed, step, slot, inner, j) for j in range(config.inner_batch_size)]
                    return [draw_sample(data, random_index(g, len(data)), config.augment, g) for g in gens]
                draw: Callable[[int], list] = draw_of_domain
            else:  # a task is one pair, augmented afresh at each inner step
                data, index = pool.draw(task_gen)

                def draw_of_pair(inner, data=data, index=index, slot=slot):
                    return [draw_sample(data, index, config.augment, generator(config.seed, step, slot, inner))]
                draw = draw_of_pair

            adapted, losses = adapt_to_task(network, draw, config, card.loss, processes.device)
            for name in names:
                total[name] += adapted[name]
            inner_losses += torch.tensor([losses[-1], 1.0], device=processes.device)
        if processes.distributed:
            flat = torch.cat([total[name].flatten() for name in names])
            dist.all_reduce(flat)
            dist.all_reduce(inner_losses)
            offset = 0
            for name in names:
                count = total[name].numel()
                total[name] = flat[offset: offset + count].view_as(total[name])
                offset += count
        mean = {name: total[name] / config.tasks_per_step for name in names}
        rate = reptile_update(network, mean, config, step, optimiser)
        return float(inner_losses[0] / inner_losses[1]), {}, rate

    return _step_loop(network, optimiser, config_json, files, processes, steps=config.steps,
                      checkpoint_every=config.checkpoint_every, resume=resume,
                      description=f"Reptile ({config.level} level)",
                      plot_title=f"Reptile ({config.level} level): final inner-loop loss per meta-step",
                      one_step=one_step, stop_after=stop_after, progress=progress, should_stop=should_stop)
