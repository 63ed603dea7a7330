"""Norms, feed-forward blocks, and encoder/decoder layers (pre-norm or post-norm).

Residual placement (``LayerConfig.norm_first``):

* post-norm (Vaswani 2017, BERT): ``x = norm(x + sublayer(x))``;
* pre-norm (GPT-2, Llama, ViT): ``x = x + sublayer(norm(x))`` -- the model then
  applies one final norm after the last layer.

FFN: ``down(act(up(x)))``, or gated (``gated=True``; SwiGLU when ``activation``
is ``"silu"``, Shazeer 2020): ``down(act(gate(x)) * up(x))``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadAttention
from .cache import KVCache
from .positional import RotaryEmbedding

__all__ = ["RMSNorm", "make_norm", "FeedForward", "LayerConfig", "Block", "DecoderBlock",
           "ACTIVATIONS"]

ACTIVATIONS = {
    "gelu": F.gelu,                                            # exact (erf), BERT / ViT
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),      # GPT-2's "gelu_new"
    "relu": F.relu,                                            # the 2017 Transformer
    "silu": F.silu,                                            # SwiGLU (Llama)
}


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` (Zhang & Sennrich 2019), in float32."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, d: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(d, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(d, eps=eps)
    raise ValueError(f"norm: expected 'layernorm' or 'rmsnorm', got {kind!r}")


@dataclass
class LayerConfig:
    """Everything one encoder/decoder layer needs."""
    d_model: int
    n_heads: int
    d_ff: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    norm: str = "layernorm"          # or "rmsnorm"
    norm_eps: float = 1e-5
    norm_first: bool = True          # pre-norm; False = post-norm
    activation: str = "gelu"         # a key of ACTIVATIONS
    gated: bool = False              # gated FFN (SwiGLU with "silu")
    bias: bool = True                # biases of every linear layer
    dropout: float = 0.0             # residual/FFN dropout
    attn_dropout: float = 0.0        # attention-weight dropout
    positions: str | None = None     # self-attention: None, "rope" or "alibi"
    rope_base: float = 10000.0
    rope_style: str = "half"         # or "interleaved" (see RotaryEmbedding)
    fused_qkv: bool = False
    backend: str = "auto"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got "
                             f"{self.activation!r}")
        if self.positions not in (None, "rope", "alibi"):
            raise ValueError(f"positions: expected None, 'rope' or 'alibi' for a layer, got "
                             f"{self.positions!r}")


class FeedForward(nn.Module):
    def __init__(self, cfg: LayerConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.activation]
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias) if cfg.gated else None
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:                     # (B, T, d) -> (B, T, d)
        h = self.act(self.up(x)) if self.gate is None else self.act(self.gate(x)) * self.up(x)
        return self.down(self.drop(h))


def _self_attention(cfg: LayerConfig, pattern) -> MultiHeadAttention:
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    pos = (RotaryEmbedding(head_dim, cfg.rope_base, cfg.rope_style) if cfg.positions == "rope"
           else cfg.positions)
    return MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias,
                              dropout=cfg.attn_dropout, pattern=pattern, positions=pos,
                              backend=cfg.backend, head_dim=cfg.head_dim, fused=cfg.fused_qkv)


class Block(nn.Module):
    """Self-attention + FFN (pre- or post-norm): the BERT/ViT encoder layer, and with a
    causal pattern the GPT/Llama block."""

    def __init__(self, cfg: LayerConfig, pattern=None):
        super().__init__()
        self.norm_first = cfg.norm_first
        self.attn = _self_attention(cfg, pattern)
        self.norm1 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.norm2 = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def _attend(self, x, norm, attn, kw, return_weights):
        """Residual sub-layer around an attention module; returns (x, weights or None)."""
        h = norm(x) if self.norm_first else x
        res = attn(h, return_weights=return_weights, **kw)
        h, w = res if return_weights else (res, None)
        x = x + self.drop(h)
        return (x if self.norm_first else norm(x)), w

    def _ffn(self, x):
        if self.norm_first:
            return x + self.drop(self.ffn(self.norm2(x)))
        return self.norm2(x + self.drop(self.ffn(x)))

    def forward(self, x: Tensor, mask=None, cache: KVCache | None = None,
                return_weights: bool = False, positions: Tensor | None = None):
        """``x (B, T, d)`` -> same, or ``(x, weights (B, H, T, Tk))`` with return_weights.
        ``positions``: RoPE positions ``(T,)`` or ``(B, T)`` (default consecutive)."""
        x, w = self._attend(x, self.norm1, self.attn,
                            dict(mask=mask, cache=cache, positions=positions), return_weights)
        x = self._ffn(x)
        return (x, w) if return_weights else x


class DecoderBlock(Block):
    """Masked self-attention + cross-attention over ``context`` + FFN (2017 decoder)."""

    def __init__(self, cfg: LayerConfig, pattern=None):
        super().__init__(cfg, pattern)
        head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads,
                                             bias=cfg.bias, dropout=cfg.attn_dropout,
                                             backend=cfg.backend, head_dim=head_dim,
                                             fused=cfg.fused_qkv)
        self.norm_cross = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)

    def forward(self, x: Tensor, context: Tensor | None = None, mask=None, context_mask=None,
                cache: KVCache | None = None, cross_cache: KVCache | None = None,
                return_weights: bool = False):
        """``x (B, T, d)``, ``context (B, S, d)`` -> ``x``, or ``(x, (self_w, cross_w))``."""
        x, w_self = self._attend(x, self.norm1, self.attn, dict(mask=mask, cache=cache),
                                 return_weights)
        x, w_cross = self._attend(x, self.norm_cross, self.cross_attn,
                                  dict(context=context, mask=context_mask, cache=cross_cache),
                                  return_weights)
        x = self._ffn(x)
        return (x, (w_self, w_cross)) if return_weights else x
