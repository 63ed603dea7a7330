"""BERT (Devlin et al. 2019): bidirectional post-norm encoder, masked-LM head, pooling.

Embeddings = token + learned position + segment (token type), then LayerNorm.
Outputs of :meth:`BERT.forward` are the final hidden states; heads are separate:
:meth:`mlm_logits` (tied to the token embedding, as in the paper, or its own decoder
with ``tie_embeddings=False``), :meth:`pooled` (tanh dense over ``[CLS]``, the
NSP/classification pooler), :meth:`nsp_logits` (next-sentence head, ``nsp_head=True``)
and :meth:`mean_pool` (sentence-transformers mean pooling). :meth:`sentence_embeddings`
is the all-MiniLM-L6-v2 recipe: mean-pool over real tokens, then L2-normalise.
``causal=True`` gives every layer causal self-attention (Hugging Face's
``is_decoder=True``, e.g. ``BertLMHeadModel``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks
from ..modules import Block, LayerConfig, LearnedPositions
from ..modules.attention import UNSET
from .common import TextModel, init_weights, preset_config, set_attention, wants_weights

__all__ = ["BERTConfig", "BERT"]

PRESETS = {
    "base": dict(),
    "large": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "minilm-l6": dict(d_model=384, n_layers=6, n_heads=12, d_ff=1536),   # all-MiniLM-L6-v2
    "tiny": dict(vocab_size=256, max_len=128, d_model=64, n_layers=2, n_heads=4, d_ff=128),
}


@dataclass
class BERTConfig:
    vocab_size: int = 30522
    max_len: int = 512
    type_vocab_size: int = 2
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    norm_eps: float = 1e-12
    activation: str = "gelu"
    dropout: float = 0.1
    pad_token_id: int = 0
    pooler: bool = True               # the [CLS] tanh pooler
    mlm_head: bool = True             # the masked-LM head
    tie_embeddings: bool = True       # MLM decoder = token embedding (False: its own weight)
    nsp_head: bool = False            # next-sentence head over the pooler (BertForPreTraining)
    causal: bool = False              # causal self-attention (HF is_decoder=True)
    backend: str = "auto"

    @classmethod
    def preset(cls, name: str, **overrides) -> "BERTConfig":
        """``base``, ``large``, ``minilm-l6``, ``tiny``; overrides replace fields."""
        return preset_config(cls, PRESETS, name, overrides)


class MLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> (tied) decoder + bias."""

    def __init__(self, cfg: BERTConfig, act):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.act = act
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder = (None if cfg.tie_embeddings                    # untied: (vocab, d)
                        else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        w = emb if self.decoder is None else self.decoder.weight
        return F.linear(self.norm(self.act(self.dense(h))), w, self.bias)


class BERT(TextModel):
    def __init__(self, cfg: BERTConfig):
        super().__init__()
        self.cfg = cfg
        self.pad_token_id = cfg.pad_token_id
        self.max_tokens = cfg.max_len
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = LearnedPositions(cfg.max_len, cfg.d_model)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, cfg.d_model)
        self.emb_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        lc = LayerConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff,
                         norm_eps=cfg.norm_eps, norm_first=False, activation=cfg.activation,
                         dropout=cfg.dropout, attn_dropout=cfg.dropout, backend=cfg.backend)
        self.layers = nn.ModuleList(Block(lc, self._pattern(None)) for _ in range(cfg.n_layers))
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model) if cfg.pooler else None
        if cfg.nsp_head and not cfg.pooler:
            raise ValueError("nsp_head: the next-sentence head reads the pooler; set pooler=True")
        self.nsp = nn.Linear(cfg.d_model, 2) if cfg.nsp_head else None
        ffn = self.layers[0].ffn if cfg.n_layers else None
        self.mlm = MLMHead(cfg, ffn.act if ffn else F.gelu) if cfg.mlm_head else None
        init_weights(self)

    def _pattern(self, extra):
        if not self.cfg.causal:
            return extra
        return masks.causal() if extra is None else masks.causal() & extra

    def set_attention(self, *, backend=UNSET, pattern=UNSET, linear=UNSET) -> "BERT":
        """Swap the backend, a sparse pattern (e.g. ``window(8, 8) | global_tokens([0])``;
        AND-ed with causal when ``causal=True``) and/or linear attention (a feature map;
        no padding mask then)."""
        set_attention(self.layers, backend=backend, linear=linear,
                      pattern=UNSET if pattern is UNSET else self._pattern(pattern))
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, return_weights=False,
                position_ids: Tensor | None = None):
        """``input_ids (B, T)`` -> hidden states ``(B, T, d)``; with ``return_weights``
        also the per-layer attention weights ``[(B, H, T, T)] * n_layers`` (a set of
        layer indices asks for those layers only; the others are None).
        ``attention_mask (B, T)``: 1 = real token, 0 = padding (hidden from keys).
        ``position_ids (T,)`` or ``(B, T)``: default ``0 .. T-1``."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 \
                or input_ids.dtype.is_floating_point:
            raise ValueError(f"input_ids: expected an integer tensor (B, T), got "
                             f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (like "
                             f"input_ids), got {tuple(attention_mask.shape)}")
        T = input_ids.shape[1]
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        pos = torch.arange(T, device=input_ids.device) if position_ids is None else position_ids
        x = self.tok_emb(input_ids) + self.pos_emb(pos) + self.type_emb(types)
        x = self.drop(self.emb_norm(x))                                         # (B, T, d)
        mask = None if attention_mask is None else masks.key_padding(attention_mask)
        weights = []
        for i, layer in enumerate(self.layers):
            want = wants_weights(return_weights, i)
            x = layer(x, mask=mask, return_weights=want)
            if want:
                x, w = x
            weights.append(w if want else None)
        return (x, weights) if return_weights else x

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """``(B, T, d)`` -> ``(B, T, vocab)``."""
        if self.mlm is None:
            raise ValueError("mlm_logits: this model has no masked-LM head (mlm_head=False)")
        return self.mlm(hidden, self.tok_emb.weight)

    def pooled(self, hidden: Tensor) -> Tensor:
        """``tanh(dense(hidden[:, 0]))`` -> ``(B, d)``."""
        if self.pooler is None:
            raise ValueError("pooled: this model has no pooler (pooler=False)")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def nsp_logits(self, hidden: Tensor) -> Tensor:
        """Next-sentence logits over the pooled ``[CLS]``: ``(B, T, d)`` -> ``(B, 2)``."""
        if self.nsp is None:
            raise ValueError("nsp_logits: this model has no next-sentence head (nsp_head=False)")
        return self.nsp(self.pooled(hidden))

    @staticmethod
    def mean_pool(hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean over real tokens: ``(B, T, d)`` -> ``(B, d)``."""
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask.to(hidden.dtype)[..., None]                          # (B, T, 1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)

    def sentence_embeddings(self, texts_or_ids, attention_mask: Tensor | None = None,
                            normalize: bool = True) -> Tensor:
        """Texts (needs a tokenizer) or ``input_ids (B, T)`` -> ``(B, d)`` mean-pooled,
        L2-normalised embeddings."""
        if isinstance(texts_or_ids, Tensor):
            ids = texts_or_ids
        else:
            ids, attention_mask = self.tokenize(texts_or_ids)
        e = self.mean_pool(self(ids, attention_mask), attention_mask)
        return F.normalize(e, dim=-1) if normalize else e
