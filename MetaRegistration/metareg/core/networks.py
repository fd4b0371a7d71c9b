"""Registration networks: a VoxelMorph-style U-Net and a LocalNet, 2D or 3D, any input size.

Every network is called as ``network(fixed=..., moving=...)`` with tensors ``(B, 1, *spatial)`` (intensities normalised
to [0, 1]) and returns a voxel displacement ``(B, dim, *spatial)`` in voxels of the input grid, channel ``c`` along
tensor axis ``c`` (see
:mod:`metareg.core.geometry`). With ``diffeomorphic=True`` the head predicts a stationary velocity field that is
integrated by scaling and squaring. Inputs whose size is not a multiple of ``2**levels`` are padded (edge values) and
the output cropped back, so any size works.

Each network takes explicit keyword parameters; :meth:`RegistrationNetwork.to_config` gives them as the JSON-able
config a model card stores (its ``architecture``), and :meth:`RegistrationNetwork.from_config` builds the network back.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from metareg.core.geometry import integrate_velocity, resize_displacement


def _conv(dim: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv3d if dim == 3 else nn.Conv2d


def _flow_head(dim: int, in_channels: int) -> nn.Module:
    """3×3(×3) conv to ``dim`` channels, initialised near zero so an untrained network starts at the identity."""
    head = _conv(dim)(in_channels, dim, kernel_size=3, padding=1)
    nn.init.normal_(head.weight, mean=0.0, std=1e-5)
    assert head.bias is not None
    nn.init.zeros_(head.bias)
    return head


class ConvAct(nn.Module):
    """Convolution (3×3[×3]) followed by LeakyReLU(0.2)."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = _conv(dim)(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class RegistrationNetwork(nn.Module):
    """Base class: padding to a valid size, optional velocity integration, and the config it is rebuilt from.

    Subclasses set :attr:`family`, take their widths as keyword parameters, implement :meth:`predict` on a padded
    input ``(B, 2, *spatial)`` (moving and fixed channels) returning ``(B, dim, *spatial)``, and add their widths to
    :meth:`to_config`.

    Args:
        dim: 2 or 3.
        diffeomorphic: predict a stationary velocity field and integrate it (scaling and squaring) into the
            displacement.
        integration_steps: squaring steps of that integration.
    """

    family: str = ""
    levels: int = 0

    def __init__(self, *, dim: int, diffeomorphic: bool = False, integration_steps: int = 7):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError(f"network dimension must be 2 or 3, not {dim}")
        self.dim = int(dim)
        self.diffeomorphic = bool(diffeomorphic)
        self.integration_steps = int(integration_steps)

    def to_config(self) -> dict[str, Any]:
        """The network's parameters as JSON-able data, with its ``family`` (what a card's ``architecture`` holds)."""
        return {"family": self.family, "dim": self.dim, "diffeomorphic": self.diffeomorphic,
                "integration_steps": self.integration_steps}

    @classmethod
    def parameter_names(cls) -> set[str]:
        """The keyword parameters this family takes (the keys of its config besides ``family``)."""
        return set(inspect.signature(cls.__init__).parameters) - {"self"}

    @staticmethod
    def from_config(config: dict[str, Any]) -> "RegistrationNetwork":
        """The network a config describes (:meth:`to_config`'s output, or a card's ``architecture``): its ``family``
        picks the class (:data:`FAMILIES`), the other keys are that class's keyword parameters; parameters left out
        take the class's defaults. Unknown keys are refused (ValueError naming them)."""
        family = config.get("family")
        if family not in FAMILIES:
            raise ValueError(f"unknown network family {family!r}; choose one of {sorted(FAMILIES)}")
        cls = FAMILIES[family]
        parameters = {key: value for key, value in config.items() if key != "family"}
        accepted = cls.parameter_names()
        unknown = sorted(set(parameters) - accepted)
        if unknown:
            raise ValueError(f"a {family} network has no parameter {', '.join(unknown)} (it takes "
                             f"{', '.join(sorted(accepted))})")
        return cls(**parameters)

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, *, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """Voxel displacement ``(B, dim, *spatial)`` that warps ``moving`` onto ``fixed`` (both ``(B, 1, *spatial)``):
        ``warp_tensor(moving, d)`` matches ``fixed``."""
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} tensors differ in shape")
        if moving.dim() != self.dim + 2:
            raise ValueError(f"a {self.dim}-D network needs (B, 1, *spatial) tensors, got shape {tuple(moving.shape)}")
        spatial = moving.shape[2:]
        multiple = 2**self.levels
        pad = [(-n) % multiple for n in spatial]
        x = torch.cat([moving, fixed], dim=1)
        if any(pad):
            # F.pad takes (last axis first) pairs; pad only at the far end so voxel indices are unchanged
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode="replicate")
        out = self.predict(x)
        if any(pad):
            out = out[(slice(None), slice(None), *[slice(0, n) for n in spatial])]
        if self.diffeomorphic:
            out = integrate_velocity(out, self.integration_steps)
        return out


class UNet(RegistrationNetwork):
    """VoxelMorph-style U-Net (Balakrishnan et al. 2019; seed 003).

    Encoder: one stride-2 conv per entry of ``encoder_channels``. Decoder: for each encoder level (deepest first) a
    conv, ×2 upsampling and concatenation with the matching encoder features; then the remaining ``decoder_channels`` at
    full resolution, and the flow head. The default widths are VoxelMorph's, scaled for CPU-trainable models.
    """

    family = "unet"

    def __init__(self, *, dim: int, encoder_channels: Sequence[int] = (16, 32, 32, 32),
                 decoder_channels: Sequence[int] = (32, 32, 32, 32, 16, 16), diffeomorphic: bool = False,
                 integration_steps: int = 7):
        super().__init__(dim=dim, diffeomorphic=diffeomorphic, integration_steps=integration_steps)
        self.encoder_channels = enc = [int(c) for c in encoder_channels]
        self.decoder_channels = dec = [int(c) for c in decoder_channels]
        if len(dec) < len(enc):
            raise ValueError("a U-Net needs at least as many decoder as encoder channel entries")
        self.levels = len(enc)
        self.encoder = nn.ModuleList()
        previous = 2
        skip_channels = [2]
        for channels in enc:
            self.encoder.append(ConvAct(self.dim, previous, channels, stride=2))
            previous = channels
            skip_channels.append(channels)
        self.decoder = nn.ModuleList()
        for level, channels in enumerate(dec[: self.levels]):
            self.decoder.append(ConvAct(self.dim, previous, channels))
            previous = channels + skip_channels[self.levels - 1 - level]
        self.refine = nn.ModuleList()
        for channels in dec[self.levels :]:
            self.refine.append(ConvAct(self.dim, previous, channels))
            previous = channels
        self.head = _flow_head(self.dim, previous)

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "encoder_channels": list(self.encoder_channels),
                "decoder_channels": list(self.decoder_channels)}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        skips.pop()
        mode = "trilinear" if self.dim == 3 else "bilinear"
        for block in self.decoder:
            x = block(x)
            x = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
            x = torch.cat([x, skips.pop()], dim=1)
        for block in self.refine:
            x = block(x)
        return self.head(x)


class LocalNet(RegistrationNetwork):
    """LocalNet (Hu et al. 2018; the network of seed 002).

    Encoder: at each level a conv and a residual conv, then ×2 downsampling. Decoder: ×2 upsampling (transposed conv
    plus *additive* upsampling, i.e. resize and sum channel groups), added to the skip features, then a residual conv.
    A displacement is predicted at every decoder level and the upsampled displacements are summed ("multi-scale
    local output"), which keeps the result smooth. The default widths are those of Baum et al.'s Meta-Registration.
    """

    family = "localnet"

    def __init__(self, *, dim: int, channels: Sequence[int] = (16, 32, 32, 64), diffeomorphic: bool = False,
                 integration_steps: int = 7):
        super().__init__(dim=dim, diffeomorphic=diffeomorphic, integration_steps=integration_steps)
        self.channels = channels = [int(c) for c in channels]
        self.levels = len(channels) - 1
        self.down_in = nn.ModuleList()
        self.down_res = nn.ModuleList()
        previous = 2
        for c in channels[:-1]:
            self.down_in.append(ConvAct(self.dim, previous, c))
            self.down_res.append(ConvAct(self.dim, c, c))
            previous = c
        self.bottom = ConvAct(self.dim, previous, channels[-1])
        transposed = nn.ConvTranspose3d if self.dim == 3 else nn.ConvTranspose2d
        self.up = nn.ModuleList()
        self.up_res = nn.ModuleList()
        self.heads = nn.ModuleList()
        previous = channels[-1]
        self.heads.append(_flow_head(self.dim, previous))
        for c in reversed(channels[:-1]):
            self.up.append(transposed(previous, c, kernel_size=2, stride=2))
            self.up_res.append(ConvAct(self.dim, c, c))
            self.heads.append(_flow_head(self.dim, c))
            previous = c

    def to_config(self) -> dict[str, Any]:
        return {**super().to_config(), "channels": list(self.channels)}

    @staticmethod
    def _additive_upsample(x: torch.Tensor, out_channels: int, dim: int) -> torch.Tensor:
        mode = "trilinear" if dim == 3 else "bilinear"
        x = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
        groups = x.shape[1] // out_channels
        return x[:, : groups * out_channels].reshape(x.shape[0], groups, out_channels, *x.shape[2:]).sum(1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        full = x.shape[2:]
        skips = []
        for conv_in, conv_res in zip(self.down_in, self.down_res):
            x = conv_in(x)
            x = x + conv_res(x)
            skips.append(x)
            x = F.max_pool3d(x, 2) if self.dim == 3 else F.max_pool2d(x, 2)
        x = self.bottom(x)
        disp = resize_displacement(self.heads[0](x), full)
        for up, res, head in zip(self.up, self.up_res, self.heads[1:]):
            skip = skips.pop()
            x = up(x) + self._additive_upsample(x, skip.shape[1], self.dim) + skip
            x = x + res(x)
            disp = disp + resize_displacement(head(x), full)
        return disp


FAMILIES: dict[str, type[RegistrationNetwork]] = {"unet": UNet, "localnet": LocalNet}


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
