"""Decoder-only language model: GPT-2 and Llama-style by configuration.

=================  ==============================  ===================================
                   GPT-2 (``preset("gpt2")``)      Llama (``preset("llama2-7b")``)
=================  ==============================  ===================================
positions          learned absolute                RoPE (rotate_half)
norm               LayerNorm, pre-norm             RMSNorm, pre-norm
FFN                GELU (tanh), 4x                 SwiGLU
attention          MHA, fused qkv, biases          GQA possible, separate q/k/v, no bias
output             tied to the token embedding     separate ``lm_head``
=================  ==============================  ===================================

``lm_head=False`` builds the bare transformer (Hugging Face's ``GPT2Model`` /
``LlamaModel``): ``forward`` then returns the final normed hidden states ``(B, T, d)``.

``generate()`` decodes greedily or by sampling (temperature, top-k, top-p), with a
per-layer :class:`~attnkit.modules.KVCache` (or without, recomputing the prefix:
the tokens are identical, tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks
from ..modules import (Block, KVCache, LayerConfig, LearnedPositions, LinearStateCache,
                       SinkWindowCache, SinusoidalPositions, SlidingWindowCache, make_norm)
from ..modules.cache import kept_keys
from ..modules.attention import UNSET
from .common import TextModel, init_weights, preset_config, set_attention, wants_weights

__all__ = ["GPTConfig", "GPT"]

_LLAMA = dict(positions="rope", norm="rmsnorm", activation="silu", gated=True, bias=False,
              fused_qkv=False, tie_embeddings=False)
PRESETS = {
    "gpt2": dict(),                                                            # 124M
    "gpt2-medium": dict(d_model=1024, n_layers=24, n_heads=16),
    "gpt2-large": dict(d_model=1280, n_layers=36, n_heads=20),
    "llama2-7b": dict(_LLAMA, vocab_size=32000, max_len=4096, d_model=4096, n_layers=32,
                      n_heads=32, d_ff=11008, norm_eps=1e-5),
    "llama3-8b": dict(_LLAMA, vocab_size=128256, max_len=8192, d_model=4096, n_layers=32,
                      n_heads=32, n_kv_heads=8, d_ff=14336, norm_eps=1e-5, rope_base=500000.0),
    "tiny": dict(vocab_size=256, max_len=256, d_model=64, n_layers=2, n_heads=4),
    "tiny-llama": dict(_LLAMA, vocab_size=256, max_len=256, d_model=64, n_layers=2, n_heads=4,
                       n_kv_heads=2, d_ff=172, norm_eps=1e-6),
}


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    max_len: int = 1024               # position table size (learned/sinusoidal)
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None     # GQA/MQA
    head_dim: int | None = None       # default d_model // n_heads
    d_ff: int | None = None           # default 4 * d_model
    positions: str = "learned"        # "learned", "sinusoidal", "rope", "alibi"
    rope_base: float = 10000.0
    rope_style: str = "half"          # "half" (HF Llama) or "interleaved" (Meta, GPT-J)
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    activation: str = "gelu_tanh"
    gated: bool = False
    bias: bool = True
    fused_qkv: bool = True
    tie_embeddings: bool = True
    lm_head: bool = True              # False: forward returns the final normed hidden states
    window: int | None = None         # sliding-window attention: each token sees <= window
    dropout: float = 0.0
    backend: str = "auto"

    def __post_init__(self):
        if self.positions not in ("learned", "sinusoidal", "rope", "alibi"):
            raise ValueError(f"positions: expected 'learned', 'sinusoidal', 'rope' or 'alibi', "
                             f"got {self.positions!r}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise ValueError(f"window: expected None or an int >= 1, got {self.window!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        """``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``llama2-7b``, ``llama3-8b``,
        ``tiny``, ``tiny-llama``; keyword overrides replace fields."""
        return preset_config(cls, PRESETS, name, overrides)

    def layer_config(self) -> LayerConfig:
        return LayerConfig(
            d_model=self.d_model, n_heads=self.n_heads, d_ff=self.d_ff or 4 * self.d_model,
            n_kv_heads=self.n_kv_heads, head_dim=self.head_dim, norm=self.norm,
            norm_eps=self.norm_eps, norm_first=True, activation=self.activation,
            gated=self.gated, bias=self.bias, dropout=self.dropout, attn_dropout=self.dropout,
            positions=self.positions if self.positions in ("rope", "alibi") else None,
            rope_base=self.rope_base, rope_style=self.rope_style, fused_qkv=self.fused_qkv,
            backend=self.backend)


class GPT(TextModel):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.max_tokens = cfg.max_len
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = (LearnedPositions(cfg.max_len, cfg.d_model) if cfg.positions == "learned"
                        else SinusoidalPositions(cfg.max_len, cfg.d_model)
                        if cfg.positions == "sinusoidal" else None)
        self.drop = nn.Dropout(cfg.dropout)
        lc = cfg.layer_config()
        self.layers = nn.ModuleList(Block(lc, self._pattern(None))
                                    for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.lm_head = (None if cfg.tie_embeddings or not cfg.lm_head
                        else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False))
        init_weights(self)

    def _pattern(self, extra):
        base = masks.causal() if self.cfg.window is None else masks.window(self.cfg.window - 1)
        return base if extra is None else base & extra

    def set_attention(self, *, backend=UNSET, pattern=UNSET, linear=UNSET) -> "GPT":
        """Swap the backend, add a sparse pattern (AND-ed with causal) and/or switch to
        causal linear attention (``linear="elu"``, ``"relu"`` or a FeatureMap; None = softmax)."""
        set_attention(self.layers, backend=backend, linear=linear,
                      pattern=UNSET if pattern is UNSET else self._pattern(pattern))
        return self

    def new_cache(self, bounded: bool = False) -> list[KVCache]:
        """One cache per layer; sliding-window models get a :class:`SlidingWindowCache`.
        ``bounded`` (what :meth:`generate` uses), from the layer's pattern's structure
        (:func:`~attnkit.modules.cache.kept_keys`): a pattern that reads at most w keys
        back (``window(w)``) keeps only the last w; one that also reads the first G <= w
        tokens (``longformer(w, G, causal=True)``, ``window(w) | global_tokens(range(G))``)
        a :class:`SinkWindowCache` of those G and the last w (more sinks than w: every key);
        a linear-attention layer its recurrent state (:class:`LinearStateCache`). Each call
        checks that no dropped key is read (``MultiHeadAttention._check_window``)."""
        out = []
        for layer in self.layers:
            attn = layer.attn
            if bounded and attn.linear is not None:
                out.append(LinearStateCache())
                continue
            own = [(0, self.cfg.window - 1)] if self.cfg.window is not None else []
            if bounded and attn.pattern is not None:
                own.append(kept_keys(attn.pattern.resolve(1, self.max_tokens)))
            G, w = min(own, key=lambda r: r[0] + r[1], default=(0, float("inf")))
            w = max(1, w)
            out.append(KVCache() if w == float("inf") or G > w else
                       SlidingWindowCache(int(w)) if not G else SinkWindowCache(G, int(w)))
        return out

    def forward(self, idx: Tensor, attention_mask: Tensor | None = None,
                cache: list[KVCache] | None = None, return_weights=False,
                position_ids: Tensor | None = None):
        """``idx (B, T)`` token ids -> ``logits (B, T, vocab)`` (and the per-layer weights
        ``(B, H, T, Tk)`` when ``return_weights``: True, or a set of layer indices to ask
        those layers only, the others being None). ``attention_mask (B, Tk)`` hides padded
        keys (Tk counts cached tokens too). ``position_ids (T,)`` or ``(B, T)``: the tokens'
        positions (default: consecutive after the cache; left-padded batches and context
        parallelism pass their own)."""
        if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype.is_floating_point:
            raise ValueError(f"idx: expected an integer tensor (B, T), got "
                             f"{getattr(idx, 'shape', type(idx).__name__)}")
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache: expected {len(self.layers)} per-layer caches, got "
                             f"{len(cache)}")
        offset = 0 if cache is None else cache[0].seen
        pos = position_ids
        if pos is None:
            pos = torch.arange(offset, offset + idx.shape[1], device=idx.device)
        x = self.tok_emb(idx)                                                   # (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        x = self.drop(x)
        mask = None if attention_mask is None else masks.key_padding(attention_mask)
        rope_pos = None if position_ids is None else pos
        weights = []
        for i, layer in enumerate(self.layers):
            want = wants_weights(return_weights, i)
            x = layer(x, mask=mask, cache=None if cache is None else cache[i],
                      return_weights=want, positions=rope_pos)
            if want:
                x, w = x
            weights.append(w if want else None)
        x = self.norm(x)
        logits = (x if not self.cfg.lm_head else self.lm_head(x) if self.lm_head is not None
                  else F.linear(x, self.tok_emb.weight))
        return (logits, weights) if return_weights else logits

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 use_cache: bool = True, eos_token_id: int | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Continue ``idx (B, T)`` by ``max_new_tokens`` -> ``(B, T + new)``.

        Greedy (argmax) unless ``do_sample``; sampling divides the logits by
        ``temperature``, keeps the ``top_k`` most likely tokens and/or the smallest
        set whose probability reaches ``top_p``. Rows that emitted ``eos_token_id``
        are padded with it; generation stops when every row has.
        """
        if not self.cfg.lm_head:
            raise ValueError("generate: this model has no LM head (lm_head=False, e.g. loaded "
                             "from a GPT2Model/LlamaModel checkpoint); it returns hidden states")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):
            raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")
        was_training = self.training
        self.eval()
        try:
            cache = self.new_cache(bounded=True) if use_cache else None
            done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
            inp = idx
            for _ in range(max_new_tokens):
                logits = self(inp, cache=cache)[:, -1].float()                  # (B, V)
                nxt = (_sample(logits, temperature, top_k, top_p, generator) if do_sample
                       else logits.argmax(-1))
                if eos_token_id is not None:
                    nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                    done |= nxt == eos_token_id
                idx = torch.cat((idx, nxt[:, None]), dim=1)
                inp = nxt[:, None] if use_cache else idx
                if eos_token_id is not None and bool(done.all()):
                    break
        finally:
            self.train(was_training)
        return idx


def _sample(logits: Tensor, temperature: float, top_k, top_p, generator) -> Tensor:
    """One token per row from ``logits (B, V)``."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs          # mass strictly ahead of each token
        drop_sorted = before >= top_p              # never drops the first token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
