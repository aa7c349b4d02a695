"""CIM's Transformation Network: a small convolutional encoder-decoder that outputs a one-channel
input mask."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TransformationNetwork(nn.Module):
    """CIM's TN: a convolutional encoder-decoder that outputs a one-channel mask in (0, 1).

    The encoder halves the resolution ``depth`` times (3x3 stride-2 convs, width doubling up to
    ``8 * width``); the decoder goes back up level by level (a 3x3 conv at the coarser resolution,
    then bilinear upsampling to the encoder size, so no conv runs at full resolution with many
    channels), adding the encoder feature of that size when ``skip`` is on; a zero-initialised 1x1
    conv gives the mask logits, so training starts from the uniform mask
    ``sigmoid(mask_bias_init)``.

    Args:
        in_channels: image channels.
        image_size: smallest image side, used for the defaults.
        width: channels of the first level; None = 8 up to 32 px, 16 up to 64 px, 32 above [ours].
        depth: number of downsamplings; None = ``clamp(floor(log2(side / 4)), 1, 4)``
            (1 at 8 px, 2 at 28 px, 3 at 32-64 px, 4 from 128 px) [ours].
        skip: add encoder features to the decoder (U-Net style) so the mask can be sharp.
        mask_bias_init: initial mask logit (0 = every pixel weighted 0.5; larger starts closer to
            the identity transformation).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        width: int | None = None,
        depth: int | None = None,
        skip: bool = True,
        mask_bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        width = width or (8 if image_size <= 32 else 16 if image_size <= 64 else 32)
        depth = depth or int(min(4, max(1, math.floor(math.log2(max(image_size, 8) / 4)))))
        self.width, self.depth = width, depth  # the effective values
        widths = [min(width * 2**i, width * 8) for i in range(depth + 1)]
        self.skip = skip
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.ReLU(inplace=True)
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), nn.ReLU(inplace=True)
            )
            for i in range(depth)
        )
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1), nn.ReLU(inplace=True))
            for i in reversed(range(depth))
        )
        self.out = nn.Conv2d(widths[0], 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, mask_bias_init)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Mask logits N x 1 x H x W."""
        # channels-last: the small convolutions run ~1.5x faster on CPU (oneDNN) and on GPU tensor
        # cores.
        h = self.stem(x.contiguous(memory_format=torch.channels_last))
        features = [h]
        for block in self.down:
            h = block(h)
            features.append(h)
        levels = list(zip(self.up, reversed(features[:-1])))
        for block, feat in levels[:-1]:
            h = _upsample(block(h), feat)
            if self.skip:
                h = h + feat
        # The last level, out(upsample(u) + feat): the 1x1 output conv and the bilinear upsampling
        # are both linear, so the conv runs first and one channel is upsampled instead of `width`
        # (the same function; ~3% of a CIM step at 28 px in a one-off timing, docs/performance.md).
        block, feat = levels[-1]
        logits = _upsample(F.conv2d(block(h), self.out.weight), feat)
        if self.skip:
            logits = logits + F.conv2d(feat, self.out.weight)
        return logits + self.out.bias.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mask ``sigmoid(logits)`` in fp32, N x 1 x H x W."""
        return torch.sigmoid(self.logits(x).float())


def _upsample(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of ``h`` to the spatial size of ``like``."""
    return F.interpolate(h, size=like.shape[-2:], mode="bilinear", align_corners=False)
