"""Chroma-VAE's networks: the convolutional encoder (registered as ``vae_conv``), its mirror
decoder, and the partial latents of its reconstructions.

The paper publishes no architecture; ours: ``vae_conv`` is a stack of 4x4 stride-2 convolutions +
ReLU (``width`` channels, doubled per layer; as many layers as halve the image while it stays >= 4
px, at most 4: two for 28 px, four for 64 px) and a fully connected layer of ``hidden`` units; any
registered backbone (e.g. ``resnet18`` for large images) can replace it. The decoder mirrors it
with transposed convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustrep.errors import ConfigError


def conv_depth(image_shape: Sequence[int], max_depth: int = 4) -> int:
    """Number of stride-2 layers: halve while both sides are even and stay >= 4 px (at most
    ``max_depth``).
    """
    _, h, w = image_shape
    depth = 0
    while depth < max_depth and h % 2 == 0 and w % 2 == 0 and h // 2 >= 4 and w // 2 >= 4:
        h, w, depth = h // 2, w // 2, depth + 1
    return max(depth, 1)


class ConvEncoder(nn.Module):
    """4x4 stride-2 convolutions + ReLU, then a fully connected layer (the ``vae_conv`` backbone).

    Args:
        image_shape: input (C, H, W).
        width: channels of the first convolution, doubled per layer (32-64 for 28 px, 32-256 for 64
            px).
        depth: number of convolutions; None = as many as halve the image while it stays >= 4 px (max
            4).
        hidden: size of the fully connected output (``out_dim``).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        width: int = 32,
        depth: int | None = None,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        depth = depth or conv_depth(image_shape)
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(c, width * 2**i, 4, 2, 1), nn.ReLU()]
            c, h, w = width * 2**i, (h + 2 - 4) // 2 + 1, (w + 2 - 4) // 2 + 1
        layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: FC layers to a ``C x H/2^d x W/2^d`` map, then 4x4 stride-2
    transposed convolutions; the output has the image's shape (logits or means, no activation).

    Args:
        image_shape: output (C, H, W); H and W must be divisible by ``2^depth``.
        dim_z: latent size.
        width, depth, hidden: as in :class:`ConvEncoder` (None = the same rule).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        dim_z: int,
        width: int = 32,
        depth: int | None = None,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        depth = depth or conv_depth(image_shape)
        c, h, w = image_shape
        if h % 2**depth or w % 2**depth:
            raise ConfigError(
                f"the VAE decoder needs image sides divisible by 2^{depth}; got {h}x{w}. Set "
                "decoder_kwargs.depth or data.image_size."
            )
        self.start = (width * 2 ** (depth - 1), h // 2**depth, w // 2**depth)
        self.fc = nn.Sequential(
            nn.Linear(dim_z, hidden), nn.ReLU(), nn.Linear(hidden, math.prod(self.start)), nn.ReLU()
        )
        layers: list[nn.Module] = []
        for i in reversed(range(depth)):
            out = c if i == 0 else width * 2 ** (i - 1)
            layers.append(nn.ConvTranspose2d(width * 2**i, out, 4, 2, 1))
            if i > 0:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, *self.start))


def partial_latent(
    mu: torch.Tensor, dim_z1: int, keep: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[mu_1, eps]`` (``keep=1``) or ``[eps, mu_2]`` (``keep=2``) with ``eps ~ N(0, I)``, where
    ``mu_1`` is the first ``dim_z1`` dimensions of ``mu`` (N x dim_z); ``generator`` draws on the
    CPU."""
    if keep not in (1, 2):
        raise ValueError(f"keep must be 1 or 2, got {keep}")
    noise = torch.randn(
        mu.shape, generator=generator, device="cpu" if generator is not None else mu.device
    ).to(mu.device, mu.dtype)
    keep_first = torch.arange(mu.shape[1], device=mu.device) < dim_z1
    mask = keep_first if keep == 1 else ~keep_first
    return torch.where(mask, mu, noise)
