r"""What the method-specific callbacks need from a method, as ``typing.Protocol``\ s.

Every other callback depends only on ``embed`` / ``forward`` and the evaluation outputs. These four
read more: :class:`ChromaModel` (``ChromaDiagnostics``), :class:`MaskingModel` (``CIMImages``),
:class:`CropPolicyModel` (``CRLTACMetrics``) and :class:`PartitionModel` (``PartitionAlignment``).
Each checks its protocol in ``setup`` with :func:`require`, which names the missing members, so any
method that provides them works too.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from robustrep.errors import ConfigError


@runtime_checkable
class ChromaModel(Protocol):
    """A VAE whose latent is split into ``z1`` (the first ``dim_z1`` dimensions) and ``z2``."""

    dim_z1: int

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...
    def stage2_features(self, mu: torch.Tensor) -> torch.Tensor: ...
    def partial_reconstruction(
        self, images: torch.Tensor, keep: int, generator: torch.Generator | None = None
    ) -> torch.Tensor: ...


@runtime_checkable
class MaskingModel(Protocol):
    """A method that multiplies its input by a learned mask before the classifier."""

    def mask(self, images: torch.Tensor) -> torch.Tensor: ...
    def morph(self, images: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class CropPolicyModel(Protocol):
    """A method that embeds a fixed grid of crops and pools them (CRL-TAC and its SimCLR)."""

    crop_size: int
    offsets: torch.Tensor
    grid_shape: tuple[int, int]
    learned_policy: bool

    def crop_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...
    def crop_weights(
        self, images: torch.Tensor, probs: torch.Tensor, weighting: str
    ) -> torch.Tensor: ...
    def embed_variants(
        self, images: torch.Tensor, variants: Any
    ) -> dict[tuple[str, str], torch.Tensor]: ...


@runtime_checkable
class PartitionModel(Protocol):
    """A method that keeps partitions of the training set (IP-IRM): ``partitions`` is P x N subset
    ids by dataset index (-1 = none), ``partition_epochs`` the epoch each was made."""

    partitions: torch.Tensor
    partition_epochs: list[int]


def _members(protocol: type) -> list[str]:
    names = list(getattr(protocol, "__annotations__", {}))
    names += [k for k, v in vars(protocol).items() if callable(v) and not k.startswith("_")]
    return list(dict.fromkeys(names))


def require(protocol: type, module: Any, callback: str) -> None:
    """Raise a :class:`ConfigError` naming what ``module`` lacks if it does not follow
    ``protocol``.
    """
    if isinstance(module, protocol):
        return
    missing = [name for name in _members(protocol) if not hasattr(module, name)]
    raise ConfigError(
        f"{callback} needs a method that follows {protocol.__name__} ({protocol.__doc__.strip()}); "
        f"{type(module).__name__} lacks {', '.join(missing) or 'a member'}"
    )
