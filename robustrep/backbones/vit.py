"""A compact pre-norm Vision Transformer for small images (the L_spread paper's CIFAR/MNIST
encoder).

Defaults follow reference_code.md section 4.3 (thanos-code): 4 x 4 patches -> Linear(16 C -> 256) ->
LayerNorm -> dropout 0.1; a learned CLS token and learned positional embeddings; 7 pre-norm blocks
(LayerNorm -> multi-head self-attention, 8 heads -> residual; LayerNorm -> MLP 256 -> 512 -> 256
with GELU -> residual), dropout 0.05, stochastic depth rising linearly from 0 to 0.05 over the
blocks; a final LayerNorm; the representation is the CLS token (``out_dim = width``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustrep.errors import ConfigError


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole example with probability ``p`` (training
    only).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (
            torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) >= self.p
        )
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """One pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        drop_path: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=attention_dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, width),
            nn.Dropout(dropout),
        )
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        x = x + self.drop_path(self.drop(h))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Vision Transformer returning the CLS token.

    Args:
        image_shape: input (C, H, W); H and W must be multiples of ``patch_size``.
        patch_size: side of the square patches (4: 64 tokens for 32 px, 49 for 28 px).
        width: token dimension (= ``out_dim``).
        depth: number of transformer blocks.
        heads: attention heads (must divide ``width``).
        mlp_dim: hidden size of each block's MLP.
        dropout: dropout inside the blocks (paper 0.05).
        embed_dropout: dropout after the patch embedding (paper 0.1).
        attention_dropout: dropout on attention weights (paper: 0.1 on the logits; 0 here by
            default).
        drop_path: stochastic-depth rate of the last block; block ``k`` uses
            ``drop_path * k / (depth - 1)``.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        patch_size: int = 4,
        width: int = 256,
        depth: int = 7,
        heads: int = 8,
        mlp_dim: int = 512,
        dropout: float = 0.05,
        embed_dropout: float = 0.1,
        attention_dropout: float = 0.0,
        drop_path: float = 0.05,
    ) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        if height % patch_size or width_px % patch_size:
            raise ConfigError(
                f"ViT: image size {height}x{width_px} is not a multiple of patch_size "
                f"{patch_size}; set data.image_size or patch_size"
            )
        if width % heads:
            raise ConfigError(f"ViT: width {width} is not divisible by heads {heads}")
        num_patches = (height // patch_size) * (width_px // patch_size)
        self.out_dim = width
        # = Linear on each flattened patch
        self.patch = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        self.patch_norm = nn.LayerNorm(width)
        self.embed_drop = nn.Dropout(embed_dropout)
        self.cls = nn.Parameter((0.1 * torch.randn(1, 1, width)).clamp(-1, 1))
        self.pos = nn.Parameter((0.1 * torch.randn(1, num_patches + 1, width)).clamp(-1, 1))
        rates = [drop_path * k / max(1, depth - 1) for k in range(depth)]
        self.blocks = nn.Sequential(
            *[Block(width, heads, mlp_dim, dropout, attention_dropout, r) for r in rates]
        )
        self.norm = nn.LayerNorm(width)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_norm(self.patch(x).flatten(2).transpose(1, 2))  # B x P x width
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        tokens = self.blocks(self.embed_drop(tokens))
        return self.norm(tokens[:, 0])


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
