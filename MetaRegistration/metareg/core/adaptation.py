"""Adapting a network to data it is about to register: Adam steps on a copy, the stored network left as it was.

One loop serves both test-time adaptation (:func:`metareg.core.registration.register` with ``adapt_steps``: every
step sees the one pair being registered) and Reptile's inner loop (:func:`metareg.learning.loops.adapt_to_task`:
each step draws samples of a task), so the adaptation meta-training optimises for is, by construction, the one run at
registration time.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence, TypeVar

import torch

from metareg.core.errors import Cancelled
from metareg.core.geometry import warp_tensor
from metareg.core.losses import LossConfig, registration_loss

NetworkT = TypeVar("NetworkT", bound=torch.nn.Module)


def adapt_network(
    network: NetworkT,
    draw: Callable[[int], Sequence[tuple[torch.Tensor, torch.Tensor]]],
    loss: LossConfig,
    steps: int,
    learning_rate: float,
    device: torch.device | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[NetworkT, list[float]]:
    """``steps`` Adam steps (step size ``learning_rate``) on a *copy* of ``network``, minimising ``loss`` (similarity
    of fixed and warped moving, plus the regulariser) over the samples ``draw(step)`` gives at each step: ``(fixed,
    moving)`` tensors ``(B, 1, *spatial)`` on the network's grid, batched together and moved to ``device`` when given.

    The network passed in is never changed. Returns the adapted copy (in eval mode) and the loss before each step.
    ``progress`` gets (fraction done, message) after each step; when ``should_stop()`` is true the loop raises
    :class:`Cancelled`.
    """
    adapted = copy.deepcopy(network)
    adapted.train()
    optimiser = torch.optim.Adam(adapted.parameters(), lr=learning_rate)
    curve: list[float] = []
    for step in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled("registration cancelled")
        samples = draw(step)
        if len(samples) == 1:  # one pair (test-time adaptation): no batch to assemble
            fixed, moving = samples[0][0], samples[0][1]
        else:
            fixed = torch.cat([sample[0] for sample in samples])
            moving = torch.cat([sample[1] for sample in samples])
        if device is not None:
            fixed, moving = fixed.to(device), moving.to(device)
        optimiser.zero_grad(set_to_none=True)
        disp = adapted(fixed=fixed, moving=moving)
        value, _ = registration_loss(loss, fixed, warp_tensor(moving, disp), disp)
        value.backward()
        optimiser.step()
        curve.append(float(value.detach()))
        if progress is not None:
            progress((step + 1) / steps, f"test-time adaptation {step + 1}/{steps}")
    adapted.eval()
    return adapted, curve
