"""Vision Transformer (Dosovitskiy et al. 2021): image patches as tokens.

``(B, C, H, W)`` -> non-overlapping ``P x P`` patches, each linearly embedded (a
stride-P convolution) -> prepend a learned ``[class]`` token -> add learned
positions -> pre-norm encoder -> LayerNorm -> linear head on the class token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..modules import Block, LayerConfig
from ..modules.attention import UNSET
from .common import init_weights, preset_config, set_attention

__all__ = ["ViTConfig", "ViT"]

PRESETS = {
    "base": dict(),                                                    # ViT-B/16
    "large": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),   # ViT-L/16
    "tiny": dict(image_size=32, patch_size=8, n_classes=10, d_model=64, n_layers=2,
                 n_heads=4, d_ff=128),
}


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    n_classes: int = 1000
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    norm_eps: float = 1e-6
    dropout: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size: expected a divisor of image_size={self.image_size}, "
                             f"got {self.patch_size}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "ViTConfig":
        """``base`` (ViT-B/16), ``large`` (ViT-L/16), ``tiny``."""
        return preset_config(cls, PRESETS, name, overrides)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.patch = nn.Conv2d(cfg.channels, cfg.d_model, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos = nn.Parameter(torch.randn(1, 1 + cfg.n_patches, cfg.d_model) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        lc = LayerConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff,
                         norm_eps=cfg.norm_eps, norm_first=True, activation="gelu",
                         dropout=cfg.dropout, backend=cfg.backend)
        self.layers = nn.ModuleList(Block(lc) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)
        init_weights(self)

    def set_attention(self, *, backend=UNSET, pattern=UNSET, linear=UNSET) -> "ViT":
        """Swap the backend, a sparse pattern and/or linear attention (a feature map)."""
        set_attention(self.layers, backend=backend, pattern=pattern, linear=linear)
        return self

    def features(self, images: Tensor, return_weights: bool = False):
        """``images (B, C, H, W)`` -> tokens ``(B, 1 + N, d)`` after the final norm
        (and per-layer weights ``(B, H, 1+N, 1+N)`` with ``return_weights``)."""
        c = self.cfg
        if not isinstance(images, Tensor) or images.dim() != 4 or \
                tuple(images.shape[1:]) != (c.channels, c.image_size, c.image_size):
            raise ValueError(f"images: expected (B, {c.channels}, {c.image_size}, "
                             f"{c.image_size}), got "
                             f"{tuple(images.shape) if isinstance(images, Tensor) else images!r}")
        x = self.patch(images).flatten(2).transpose(1, 2)                        # (B, N, d)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)     # (B, 1+N, d)
        x = self.drop(x + self.pos)
        weights = []
        for layer in self.layers:
            x = layer(x, return_weights=return_weights)
            if return_weights:
                x, w = x
                weights.append(w)
        x = self.norm(x)
        return (x, weights) if return_weights else x

    def forward(self, images: Tensor, return_weights: bool = False):
        """``images (B, C, H, W)`` -> ``logits (B, n_classes)`` from the class token."""
        res = self.features(images, return_weights)
        x, w = res if return_weights else (res, None)
        logits = self.head(x[:, 0])
        return (logits, w) if return_weights else logits
