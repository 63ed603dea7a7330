"""The original encoder-decoder Transformer (Vaswani et al. 2017).

Embeddings scaled by ``sqrt(d_model)`` plus sinusoidal positions; post-norm layers
(``norm_first=True`` gives the pre-norm variant); ReLU FFN; the decoder's
self-attention is causal, its cross-attention reads the encoder output; source
and target embeddings and the output projection share one matrix (section 3.4)
when ``share_embeddings``. Padding (``pad_id``) is masked from every key.

Decoding: :meth:`Transformer.greedy` and :meth:`Transformer.beam_search` (beam
width, GNMT length penalty ``((5 + len) / 6) ** alpha`` as in the paper, alpha 0.6),
both with self-attention KV caches and cross-attention caches filled once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks
from ..modules import Block, DecoderBlock, KVCache, LayerConfig, SinusoidalPositions
from ..modules.attention import UNSET
from .common import preset_config, set_attention

__all__ = ["TransformerConfig", "Transformer"]

PRESETS = {
    "base": dict(),
    "big": dict(d_model=1024, n_heads=16, d_ff=4096, dropout=0.3),
    "tiny": dict(vocab_size=64, d_model=32, n_heads=4, n_enc_layers=2, n_dec_layers=2,
                 d_ff=64, max_len=128, dropout=0.0),
}


@dataclass
class TransformerConfig:
    vocab_size: int = 37000          # shared source/target BPE vocabulary (WMT en-de)
    d_model: int = 512
    n_heads: int = 8
    n_enc_layers: int = 6
    n_dec_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    max_len: int = 1024
    norm_first: bool = False         # the paper is post-norm
    norm_eps: float = 1e-5
    share_embeddings: bool = True    # src embedding = tgt embedding = output projection
    tgt_vocab_size: int | None = None  # only when not sharing; default vocab_size
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    backend: str = "auto"

    def __post_init__(self):
        if self.share_embeddings and self.tgt_vocab_size not in (None, self.vocab_size):
            raise ValueError(f"tgt_vocab_size: shared embeddings need tgt_vocab_size == "
                             f"vocab_size={self.vocab_size}, got {self.tgt_vocab_size}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "TransformerConfig":
        """``base`` (d 512, 8 heads, 6+6 layers, FFN 2048), ``big``, ``tiny``."""
        return preset_config(cls, PRESETS, name, overrides)


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        tgt_vocab = cfg.tgt_vocab_size or cfg.vocab_size
        self.src_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.tgt_emb = self.src_emb if cfg.share_embeddings else nn.Embedding(tgt_vocab,
                                                                              cfg.d_model)
        self.pos = SinusoidalPositions(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        lc = LayerConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, d_ff=cfg.d_ff,
                         norm_eps=cfg.norm_eps, norm_first=cfg.norm_first, activation="relu",
                         dropout=cfg.dropout, attn_dropout=cfg.dropout, backend=cfg.backend)
        self.encoder = nn.ModuleList(Block(lc) for _ in range(cfg.n_enc_layers))
        self.decoder = nn.ModuleList(DecoderBlock(lc, masks.causal())
                                     for _ in range(cfg.n_dec_layers))
        norm = (lambda: nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)) if cfg.norm_first \
            else nn.Identity
        self.enc_norm, self.dec_norm = norm(), norm()
        for p in self.parameters():               # the paper's implementation: Xavier
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        nn.init.normal_(self.src_emb.weight, std=cfg.d_model ** -0.5)
        if not cfg.share_embeddings:
            nn.init.normal_(self.tgt_emb.weight, std=cfg.d_model ** -0.5)

    def set_attention(self, *, backend=UNSET, pattern=UNSET, linear=UNSET) -> "Transformer":
        """Swap the backend everywhere; a ``pattern`` applies to the encoder and (AND-ed
        with causal) to the decoder self-attention, never to cross-attention; so does
        ``linear`` (the encoder then refuses padded sources: linear attention takes no mask)."""
        set_attention(self.encoder, backend=backend, pattern=pattern, linear=linear)
        set_attention([layer.cross_attn for layer in self.decoder], backend=backend)
        dec = UNSET if pattern is UNSET else masks.causal() if pattern is None \
            else masks.causal() & pattern
        set_attention([layer.attn for layer in self.decoder], backend=backend, pattern=dec,
                      linear=linear)
        return self

    def _embed(self, emb: nn.Embedding, ids: Tensor, offset: int = 0) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
            raise ValueError(f"token ids: expected an integer tensor (B, T), got "
                             f"{getattr(ids, 'shape', type(ids).__name__)}")
        pos = self.pos(torch.arange(offset, offset + ids.shape[1], device=ids.device))
        return self.drop(emb(ids) * math.sqrt(self.cfg.d_model) + pos)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """``src (B, S)`` -> ``memory (B, S, d)`` and its key mask ``(B, S)`` (non-pad)."""
        src_keep = src != self.cfg.pad_id
        mask = masks.key_padding(src_keep)
        x = self._embed(self.src_emb, src)
        for layer in self.encoder:
            x = layer(x, mask=mask)
        return self.enc_norm(x), src_keep

    def decode(self, tgt: Tensor, memory: Tensor, src_keep: Tensor,
               caches: list[tuple[KVCache, KVCache]] | None = None) -> Tensor:
        """``tgt (B, T)`` (shifted right) -> ``logits (B, T, tgt_vocab)``. ``caches``: one
        (self, cross) pair per decoder layer, for step-by-step decoding."""
        offset = 0 if caches is None else caches[0][0].seen
        x = self._embed(self.tgt_emb, tgt, offset)
        cmask = masks.key_padding(src_keep)
        for i, layer in enumerate(self.decoder):
            c_self, c_cross = (None, None) if caches is None else caches[i]
            x = layer(x, memory, context_mask=cmask, cache=c_self, cross_cache=c_cross)
        return F.linear(self.dec_norm(x), self.tgt_emb.weight)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher forcing: ``src (B, S)``, ``tgt (B, T)`` -> ``logits (B, T, tgt_vocab)``."""
        memory, keep = self.encode(src)
        return self.decode(tgt, memory, keep)

    def new_cache(self) -> list[tuple[KVCache, KVCache]]:
        return [(KVCache(), KVCache()) for _ in self.decoder]

    @torch.no_grad()
    def greedy(self, src: Tensor, max_len: int = 64, use_cache: bool = True) -> Tensor:
        """``src (B, S)`` -> ``(B, <= 1 + max_len)``: BOS, then argmax tokens; a row that
        emitted EOS is padded with ``pad_id``. ``use_cache=False`` re-decodes the whole
        prefix every step (same tokens)."""
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len: expected an int >= 1, got {max_len!r}")
        cfg = self.cfg
        was_training = self.training
        self.eval()
        try:
            memory, keep = self.encode(src)
            caches = self.new_cache() if use_cache else None
            seqs = torch.full((src.shape[0], 1), cfg.bos_id, dtype=torch.long, device=src.device)
            done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
            for _ in range(max_len):
                inp = seqs[:, -1:] if use_cache else seqs
                tok = self.decode(inp, memory, keep, caches)[:, -1].argmax(-1)
                tok = torch.where(done, torch.full_like(tok, cfg.pad_id), tok)
                seqs = torch.cat((seqs, tok[:, None]), dim=1)
                done |= tok == cfg.eos_id
                if bool(done.all()):
                    break
            return seqs
        finally:
            self.train(was_training)

    @torch.no_grad()
    def beam_search(self, src: Tensor, beam_size: int = 4, max_len: int = 64,
                    length_penalty: float = 0.6) -> Tensor:
        """Best of ``beam_size`` hypotheses by ``log p / ((5 + len) / 6) ** length_penalty``.

        Returns ``(B, <= 1 + max_len)`` like :meth:`greedy` (width 1 gives its tokens).
        """
        if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size: expected an int >= 1, got {beam_size!r}")
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len: expected an int >= 1, got {max_len!r}")
        cfg, K = self.cfg, beam_size
        was_training = self.training
        self.eval()
        try:
            memory, keep = self.encode(src)
            B = memory.shape[0]
            memory = memory.repeat_interleave(K, 0)                          # (B*K, S, d)
            keep = keep.repeat_interleave(K, 0)
            caches = self.new_cache()
            seqs = torch.full((B * K, 1), cfg.bos_id, dtype=torch.long, device=src.device)
            scores = torch.full((B, K), float("-inf"), device=src.device)
            scores[:, 0] = 0.0                       # one live beam at the start
            done = torch.zeros(B * K, dtype=torch.bool, device=src.device)
            lengths = torch.zeros(B * K, device=src.device)
            for _ in range(max_len):
                logp = self.decode(seqs[:, -1:], memory, keep, caches)[:, -1].float()
                logp = logp.log_softmax(-1)                                  # (B*K, V)
                V = logp.shape[-1]
                # a finished beam continues with pad at no cost
                fin = torch.full_like(logp, float("-inf"))
                fin[:, cfg.pad_id] = 0.0
                logp = torch.where(done[:, None], fin, logp)
                cand = (scores.view(B * K, 1) + logp).view(B, K * V)
                scores, flat = cand.topk(K, dim=-1)                          # (B, K)
                beam = (flat // V + torch.arange(B, device=src.device)[:, None] * K).view(-1)
                tok = (flat % V).view(-1)
                for c_self, _ in caches:
                    c_self.reorder(beam)
                seqs = torch.cat((seqs[beam], tok[:, None]), dim=1)
                lengths = lengths[beam] + (~done[beam]).float()
                done = done[beam] | (tok == cfg.eos_id)
                if bool(done.all()):
                    break
            lp = ((5.0 + lengths) / 6.0) ** length_penalty
            best = (scores.view(-1) / lp).view(B, K).argmax(-1)
            return seqs.view(B, K, -1)[torch.arange(B), best]
        finally:
            self.train(was_training)
