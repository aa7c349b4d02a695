"""CRL-TAC's networks: the crop encoder trunk ``f`` (registered as ``crltac_cnn``) and the policy
network ``P(T|x)``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn


class CropCNN(nn.Module):
    """The paper's encoder trunk ``f`` [ours in detail]: three 3x3 stride-2 convolutions
    (``channels``; the last has ``out_dim`` channels), each followed by BatchNorm and ReLU, then
    global average pooling.

    Args:
        image_shape: (C, H, W) of the input; only C matters (any crop size works).
        channels: channels of the first two convolutions.
        out_dim: feature size (the paper: 200).
        batch_norm: BatchNorm after each convolution [ours]. Without it the initial features of
            20 x 20 crops of a mostly black canvas are nearly identical (cosine 0.9997 between any
            two crops after ``g``) and the contrastive loss stays at ``log(n m - 1)`` for epochs.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int] = (32, 64),
        out_dim: int = 200,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = image_shape[0]
        for c_out in (*channels, out_dim):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PolicyNet(nn.Module):
    """``P(T|x)`` logits: Conv-ReLU-Conv-ReLU-AvgPool2-FC-ReLU-FC|T| (paper Figure 5).

    The convolutions are 3x3 with stride ``stride`` [ours; the paper gives none. 3 tiles the image
    without gaps and makes the policy about 4x cheaper than stride 2, which matters for the CRL-TAC
    / SimCLR step-time ratio]. The last layer starts at zero, so the initial policy is exactly
    uniform [ours].
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_crops: int,
        channels: int = 32,
        hidden: int = 128,
        stride: int = 3,
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=stride, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=stride, padding=1),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2, ceil_mode=True),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(
            nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_crops)
        )
        nn.init.zeros_(self.fc[-1].weight)
        nn.init.zeros_(self.fc[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@torch.no_grad()
def encode_constant_crops_once(encode, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``encode(crops)`` for an encoder that maps each crop on its own (eval mode), computing each
    distinct constant crop (every pixel equal) once and copying its outputs; exact."""
    if crops.shape[0] < 2:
        return encode(crops)
    flat = crops.flatten(1)
    first = flat[:, 0]
    constant = (flat == first[:, None]).all(1)
    if not bool(constant.any()):
        return encode(crops)
    values, which = first[constant].unique(return_inverse=True)
    varying = (~constant).nonzero().squeeze(1)
    unique_crops = values.view(-1, *([1] * (crops.dim() - 1))).expand(-1, *crops.shape[1:])
    outputs = encode(torch.cat([crops[varying], unique_crops.to(crops.dtype)]))
    n_var = varying.shape[0]
    result = []
    for out in outputs:
        full = out.new_empty(crops.shape[0], *out.shape[1:])
        full[varying] = out[:n_var]
        full[constant] = out[n_var:][which]
        result.append(full)
    return tuple(result)


@torch.no_grad()
def encode_without_grad(
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
    modules: Sequence[nn.Module],
    crops: torch.Tensor,
    dedupe: bool = True,
) -> tuple[torch.Tensor, ...]:
    """``encode(crops)`` without gradient. When every one of ``modules`` (the encoder) is in eval
    mode, each crop is mapped on its own, and with ``dedupe`` each distinct constant crop (e.g. Grid
    MNIST's blank canvas, most of its 289 crops) is encoded once and its output copied
    (:func:`encode_constant_crops_once`): the same result, far fewer crops."""
    in_eval = not any(mod.training for enc in modules for mod in enc.modules())
    if dedupe and in_eval:
        return encode_constant_crops_once(encode, crops)
    return encode(crops)


@contextlib.contextmanager
def in_eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` (and their submodules) in eval mode inside the block, then restore each
    mode.
    """
    modes = [(mod, mod.training) for module in modules for mod in module.modules()]
    for mod, _ in modes:
        mod.training = False
    try:
        yield
    finally:
        for mod, mode in modes:
            mod.training = mode
