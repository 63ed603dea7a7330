"""Positional schemes: sinusoidal, learned absolute, rotary (RoPE), ALiBi.

* :func:`sinusoidal_table` -- Vaswani et al. 2017, section 3.5:
  ``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``
  (sines on even channels, cosines on odd ones, interleaved as in the paper).
* :class:`LearnedPositions` -- a trained table ``(max_len, d)`` (GPT-2, BERT, ViT).
* :class:`RotaryEmbedding` -- Su et al. 2021: rotates each pair of channels of q
  and k by ``p * theta_i``, ``theta_i = base^(-2i/D)``, so ``q_p . k_s`` depends on
  ``p - s`` only. Two pairings exist in the wild:

  - ``style="half"``: channel ``i`` pairs with ``i + D/2`` ("rotate_half"; GPT-NeoX,
    Hugging Face Llama/Mistral/Qwen checkpoints);
  - ``style="interleaved"``: channel ``2i`` pairs with ``2i + 1`` (RoFormer, GPT-J,
    Meta's original Llama code). The two agree after permuting the rows of the q/k
    projection weights (tested).
* ALiBi (Press et al. 2022) is a score bias, not an embedding: pass
  ``positions="alibi"`` to :class:`~attnkit.modules.MultiHeadAttention`, which adds
  :func:`attnkit.alibi` to every call.

Positions are explicit: modules and models take ``positions`` / ``position_ids``
(default: consecutive after the cached tokens), nothing is read from global state.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_table", "SinusoidalPositions", "LearnedPositions", "RotaryEmbedding",
           "apply_rotary", "token_positions"]


def token_positions(offset: int, T: int, *, device=None) -> Tensor:
    """Positions of the T tokens of a call that follows ``offset`` cached tokens:
    ``offset .. offset+T-1`` (int64). Models take explicit ``position_ids`` instead when
    the positions are not consecutive (context parallelism, packed sequences)."""
    return torch.arange(offset, offset + T, device=device)


def sinusoidal_table(n_positions: int, d_model: int, base: float = 10000.0) -> Tensor:
    """The 2017 paper's table ``(n_positions, d_model)`` in float32."""
    if not isinstance(d_model, int) or d_model < 2 or d_model % 2:
        raise ValueError(f"d_model: expected an even int >= 2 for sinusoidal positions, "
                         f"got {d_model!r}")
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]             # (P, 1)
    inv = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    table = torch.empty(n_positions, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table.float()


def _check_positions(pos: Tensor, limit: int, what: str) -> None:
    if pos.numel() and int(pos.max()) >= limit:
        raise ValueError(f"positions: {what} covers positions 0..{limit - 1}, got position "
                         f"{int(pos.max())} (sequence too long)")


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal embeddings; ``forward(pos)`` -> ``pos.shape + (d_model,)``."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model), persistent=False)

    def forward(self, pos: Tensor) -> Tensor:
        _check_positions(pos, self.table.shape[0], "the sinusoidal table")
        return self.table[pos]


class LearnedPositions(nn.Module):
    """Learned absolute embeddings; ``forward(pos)`` -> ``pos.shape + (d_model,)``."""

    def __init__(self, max_len: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, pos: Tensor) -> Tensor:
        _check_positions(pos, self.weight.shape[0], "the learned position table")
        return self.weight[pos]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_interleaved(x: Tensor) -> Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, style: str = "half") -> Tensor:
    """Rotate ``x (B, H, T, D)`` by angles whose cos/sin are ``(T, D)`` (or broadcastable)."""
    rot = _rotate_half(x) if style == "half" else _rotate_interleaved(x)
    return (x * cos + rot * sin).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for one head dim ``D`` (even).

    ``forward(q, k, offset)`` rotates ``q (B, H, T, D)`` and ``k (B, Hkv, T, D)`` as
    tokens at positions ``offset .. offset + T - 1`` (``offset`` = tokens already in
    the KV cache). Angles are computed in float32 as Hugging Face Llama does.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, style: str = "half"):
        super().__init__()
        if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
            raise ValueError(f"head_dim: expected an even int >= 2 for RoPE, got {head_dim!r}")
        if style not in ("half", "interleaved"):
            raise ValueError(f"style: expected 'half' or 'interleaved', got {style!r}")
        if not (isinstance(base, (int, float)) and math.isfinite(base) and base > 1):
            raise ValueError(f"base: expected a finite number > 1, got {base!r}")
        self.head_dim, self.base, self.style = head_dim, float(base), style

    def angles(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin of shape ``pos.shape + (D,)`` (float32). The frequencies are
        recomputed in float32 on every call (no buffer a ``model.to(bfloat16)`` could
        round)."""
        inv = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, device=pos.device,
                                                dtype=torch.int64).float() / self.head_dim))
        f = pos.float()[..., None] * inv                                          # (..., D/2)
        if self.style == "half":
            f = torch.cat((f, f), dim=-1)
        else:
            f = f.repeat_interleave(2, dim=-1)
        return f.cos(), f.sin()

    def forward(self, q: Tensor, k: Tensor, offset: int = 0,
                positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``positions``: the tokens' positions, ``(T,)`` or ``(B, T)`` (like HF's
        ``position_ids``); default ``offset .. offset + T - 1``."""
        T = q.shape[-2]
        pos = token_positions(offset, T, device=q.device) if positions is None else positions
        if pos.shape[-1] != T:
            raise ValueError(f"positions: expected (T,) or (B, T) with T={T}, got shape "
                             f"{tuple(pos.shape)}")
        cos, sin = self.angles(pos)                                    # (T, D) or (B, T, D)
        if cos.dim() == 3:
            cos, sin = cos[:, None], sin[:, None]                      # (B, 1, T, D)
        return apply_rotary(q, cos, sin, self.style), apply_rotary(k, cos, sin, self.style)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base:g}, style={self.style!r}"
