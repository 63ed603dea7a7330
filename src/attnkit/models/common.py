"""What every attnkit model shares: presets, backend/pattern switching, tokenization."""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..modules.attention import UNSET, MultiHeadAttention

__all__ = ["preset_config", "set_attention", "TextModel", "init_weights", "apply_variant"]


def preset_config(cls, presets: dict, name: str, overrides: dict):
    """``cls(**presets[name], **overrides)`` with errors that list the choices."""
    if name not in presets:
        raise ValueError(f"preset: expected one of {sorted(presets)}, got {name!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise TypeError(f"{cls.__name__}: unknown field(s) {bad}; fields are {sorted(fields)}")
    return cls(**{**presets[name], **overrides})


def set_attention(modules, *, backend=UNSET, pattern=UNSET, linear=UNSET) -> None:
    """Set backend/pattern/linear on every :class:`MultiHeadAttention` in ``modules``."""
    for m in modules:
        for sub in m.modules():
            if isinstance(sub, MultiHeadAttention):
                sub.set_attention(backend=backend, pattern=pattern, linear=linear)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT/BERT-style init: N(0, std) for linear and embedding weights, zero biases."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)


class TextModel(nn.Module):
    """Mixin: ``tokenizer`` (a ``tokenizers.Tokenizer`` set by :func:`attnkit.load`,
    or None) and :meth:`tokenize`."""

    tokenizer = None
    max_tokens: int | None = None  # truncation length used by tokenize
    pad_token_id: int = 0

    def tokenize(self, texts, max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """``texts`` (str or list of str) -> ``input_ids, attention_mask (B, T)`` (int64),
        padded on the right to the longest text, truncated to ``max_length`` tokens."""
        if self.tokenizer is None:
            raise ValueError("tokenizer: this model has none (load a checkpoint directory with "
                             "a tokenizer.json, or set model.tokenizer)")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts or \
                not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts: expected a str or a non-empty list of str, got "
                            f"{type(texts).__name__}")
        tok = self.tokenizer
        limit = max_length or self.max_tokens
        if limit:
            tok.enable_truncation(limit)
        else:
            tok.no_truncation()
        enc = tok.encode_batch(list(texts))
        T = max(len(e.ids) for e in enc)
        ids = torch.full((len(enc), T), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(enc), T, dtype=torch.long)
        for i, e in enumerate(enc):  # honours a tokenizer's own padding, if it has one
            ids[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, :len(e.ids)] = torch.tensor(e.attention_mask, dtype=torch.long)
        return ids, mask


def wants_weights(return_weights, layer: int) -> bool:
    """``return_weights`` is a bool or a collection of layer indices: does ``layer`` return
    its attention weights? (Only those layers pay for recomputing them.)"""
    if isinstance(return_weights, bool):
        return return_weights
    return layer in return_weights

def apply_variant(model, variant, n: int, *, causal: bool, layers: list[int] | None = None) -> None:
    """Swap an attention variant (a :class:`~attnkit.engine.variants.Variant` or its name) into an
    attnkit model built for sequences of ``n`` tokens: every attention layer, or only
    ``layers`` (indices into its MultiHeadAttention modules; the others dense). ``dense``
    restores the model's own attention; a causal model keeps its causal mask (AND-ed with
    the pattern by ``model.set_attention``). The one place where a variant name becomes
    attnkit model settings (bench and train call it)."""
    from ..engine.variants import Variant, parse_variant
    var = variant if isinstance(variant, Variant) else parse_variant(variant)
    var.attention_only("variant")
    mods = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if var.is_linear:
        pattern, linear = None, var.feature_map(mods[0].head_dim)
    else:
        spec = None if var.is_dense else var.pattern(n, causal)
        pattern, linear = (None if spec is None else spec.at(n)), None
    model.set_attention(pattern=pattern, linear=linear)
    if layers is None or var.name == "dense":
        return
    chosen = [(mods[i].pattern, mods[i].linear) for i in layers]   # this variant's settings
    model.set_attention(pattern=None, linear=None)                  # every other layer dense
    for i, (p, lin) in zip(layers, chosen):
        mods[i].set_attention(pattern=p, linear=lin)
