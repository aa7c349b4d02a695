"""Registry of swappable encoders. Every backbone maps images to a flat feature vector and exposes
``out_dim``.

========== ===================================================================================
name       what
========== ===================================================================================
``tiny``   flatten + one linear layer to 16 features (tests only)
``mlp``    flatten + MLP (``hidden`` sizes, ReLU); CIM's Colored MNIST net is ``[1024, 512, 256]``
``cnn``    small 3- or 4-block conv net (``width``), global average pool; fast on CPU
``resnet18`` / ``resnet50``  torchvision ResNets; ``pretrained: true`` loads ImageNet weights from
           the local torch cache (never downloaded in tests); ``cifar_stem: true`` swaps the stem
           for a 3x3 stride-1 conv without max-pool (small images)
``vit``    ViT for 32 x 32 inputs (4 x 4 patches, width 256, 7 pre-norm layers, 8 heads, MLP 512;
           the L_spread paper's encoder); features = the CLS token
``crltac_cnn`` CRL-TAC's crop trunk ``f``: three stride-2 convolutions (+ BatchNorm), pooled
``vae_conv``   Chroma-VAE's convolutional encoder (strided convolutions + a hidden layer)
========== ===================================================================================

Method-specific networks that are not encoders live here too, outside the table:
:class:`~robustrep.backbones.crops.PolicyNet` (CRL-TAC's policy),
:mod:`robustrep.backbones.vae` (Chroma-VAE's decoder), :mod:`robustrep.backbones.morph` (CIM's
transformation network).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robustrep.backbones.crops import CropCNN
from robustrep.backbones.nets import CNN, MLP, Tiny, resnet
from robustrep.backbones.vae import ConvEncoder
from robustrep.backbones.vit import ViT

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "tiny": Tiny,
    "mlp": MLP,
    "cnn": CNN,
    "resnet18": lambda image_shape, **kw: resnet("resnet18", image_shape, **kw),
    "resnet50": lambda image_shape, **kw: resnet("resnet50", image_shape, **kw),
    "vit": ViT,
    "crltac_cnn": CropCNN,
    "vae_conv": ConvEncoder,
}


def register_backbone(name: str, builder: Callable[..., nn.Module]) -> None:
    """Add a backbone: ``builder(image_shape, **kwargs)`` must return a module with ``out_dim``.
    Call it from your own code (not at import time of a library module); a taken name is an
    error."""
    if name in BACKBONES:
        raise ValueError(
            f"a backbone named {name!r} is already registered "
            f"({BACKBONES[name]!r}); choose another name"
        )
    BACKBONES[name] = builder


def build_backbone(name: str, image_shape: tuple[int, int, int], **kwargs) -> nn.Module:
    """Build a registered backbone for inputs of ``image_shape`` (C, H, W)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONES))}")
    net = BACKBONES[name](image_shape, **kwargs)
    if not hasattr(net, "out_dim"):
        raise TypeError(f"backbone {name!r} must set an `out_dim` attribute")
    return net


__all__ = [
    "BACKBONES",
    "CNN",
    "MLP",
    "ConvEncoder",
    "CropCNN",
    "Tiny",
    "build_backbone",
    "register_backbone",
    "resnet",
]
