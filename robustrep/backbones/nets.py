"""The registered backbones (see :mod:`robustrep.backbones`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from robustrep.errors import ConfigError


class Tiny(nn.Module):
    """Flatten + Linear(-> ``out_dim``) + ReLU. For tests: a few thousand parameters."""

    def __init__(self, image_shape: Sequence[int], out_dim: int = 16) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(image_shape), out_dim), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLP(nn.Module):
    """Flatten + fully connected layers with ReLU; features = the last hidden layer.

    Args:
        image_shape: input (C, H, W).
        hidden: hidden layer sizes; the last one is ``out_dim``. CIM uses ``[1024, 512, 256]``.
        dropout: dropout after each hidden layer (0 = off).
    """

    def __init__(
        self, image_shape: Sequence[int], hidden: Sequence[int] = (256, 128), dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(image_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Conv(3x3)-BN-ReLU blocks, each halving the resolution, then global average pooling.

    Args:
        image_shape: input (C, H, W).
        width: channels of the first block; doubled per block.
        blocks: number of conv blocks (3 suits 16-32 px, 4 suits 64 px).
        batch_norm: use BatchNorm (turn off for exact DDP-vs-single-process comparisons).
    """

    def __init__(
        self, image_shape: Sequence[int], width: int = 32, blocks: int = 3, batch_norm: bool = True
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for b in range(blocks):
            c_out = width * 2**b
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(inplace=True)]
            if b < blocks - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def resnet(
    arch: str, image_shape: Sequence[int], pretrained: bool = False, cifar_stem: bool = False
) -> nn.Module:
    """A torchvision ResNet without its classification layer (``out_dim`` = 512 or 2048).

    ``pretrained`` loads ImageNet weights from the local torch hub cache only; when they are not
    there the error says how to put them there (robustrep never downloads weights itself).
    """
    import torchvision

    weights_enum = {
        "resnet18": torchvision.models.ResNet18_Weights,
        "resnet50": torchvision.models.ResNet50_Weights,
    }[arch]
    net = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        weights = weights_enum.DEFAULT
        cache = torch.hub.get_dir() + "/checkpoints/" + weights.url.rsplit("/", 1)[-1]
        try:
            state = torch.load(cache, map_location="cpu", weights_only=True)
        except FileNotFoundError as err:
            raise ConfigError(
                f"pretrained {arch} weights are not in the local cache ({cache}). robustrep does "
                "not download weights; fetch them once on a machine with internet (e.g. `python "
                f"-c 'import torchvision; torchvision.models.{arch}(weights=\"DEFAULT\")'`) and "
                "copy the file there, or set pretrained: false."
            ) from err
        net.load_state_dict(state)
    if image_shape[0] != 3 or cifar_stem:
        net.conv1 = nn.Conv2d(
            image_shape[0],
            64,
            3 if cifar_stem else 7,
            1 if cifar_stem else 2,
            1 if cifar_stem else 3,
            bias=False,
        )
    if cifar_stem:
        net.maxpool = nn.Identity()
    net.out_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net
