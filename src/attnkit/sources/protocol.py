"""The :class:`ModelSource` protocol that both sources implement
(:class:`~attnkit.sources.port.AttnkitSource`: attnkit's ports;
:class:`~attnkit.sources.hf.HFSource`: transformers models), its :class:`Outputs`, and
:func:`text_windows`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from ..engine.variants import Variant
from .capture import Capture
from .words import Tokens

__all__ = ["Outputs", "ModelSource", "text_windows"]


@dataclass
class Outputs:
    hidden: Tensor | None = None        # (B, T, d) final hidden states (encoders)
    embedding: Tensor | None = None     # (B, d) pooled sentence embedding (encoders)
    logits: Tensor | None = None        # (B, T, V) next-token logits (decoders)

    @classmethod
    def pooled(cls, hidden: Tensor, mask: Tensor | None = None) -> "Outputs":
        """An encoder's outputs: ``hidden (B, T, d)`` and its mean over the real tokens
        (``mask (B, T)``, 1 for a real token; None: all) as the sentence embedding."""
        real = (torch.ones(hidden.shape[:2], device=hidden.device) if mask is None
                else mask)[..., None].to(hidden.dtype)                        # (B, T, 1)
        return cls(hidden=hidden, embedding=(hidden * real).sum(1) / real.sum(1))


class ModelSource(Protocol):
    """One model as the tools see it. Opening it (:func:`attnkit.sources.open_source`)
    reads only what its checks need; :meth:`capture` (inspect) runs it as loaded;
    :meth:`ready` loads it to run variants (bench, adapt), after which the attributes
    below ``n_heads`` and the methods below ``windows`` work."""
    via: str                    # "attnkit" (the port) | "transformers"
    name: str
    arch: str
    kind: str                   # encoder | decoder | encoder-decoder | image
    n_layers: int
    n_decoder_layers: int
    can_generate: bool
    notes: list[str]            # what the terminal and the page must say
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_tokens: int
    tokenizer_name: str
    positions: str              # absolute | rope | alibi | relative bias

    def check_backend(self) -> None: ...
    def tokens(self, text: str, generate: int | None = None) -> Tokens: ...
    def capture(self, text: str, layers: list[int], generate: int | None = None,
                target: str | None = None, image: str | None = None,
                dec_layers: list[int] | None = None) -> Capture: ...
    def ready(self) -> "ModelSource": ...
    # text cut into n-token windows ``ids (1, n)``; the text's token count
    def windows(self, text: str, n: int) -> list[Tensor]: ...
    def count_tokens(self, text: str) -> int: ...
    # swap the variant into those layers (None: all; dense: as loaded); refuse by name
    def apply(self, variant: Variant, n: int, layers: list[int] | None = None) -> None: ...
    def check_variant(self, variant: Variant, n: int) -> None: ...
    def run(self, ids: Tensor) -> Outputs: ...
    # per layer (q, k, v) as the attention operation receives them (after RoPE), and its
    # output (B, H, T, Dv) as the model computed it
    def attention_inputs(self, ids: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]: ...
    def captured_outputs(self, ids: Tensor) -> list[Tensor]: ...
    # the layer's attention operation under the applied variant (no projections)
    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor: ...
    def weights(self, ids: Tensor, layers: list[int]) -> dict[int, Tensor]: ...
    def pattern_mask(self, layer: int, n: int) -> Tensor | None: ...
    def served_by(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> str: ...


def text_windows(tokenizer, text: str, n: int) -> tuple[list[list[int]], int]:
    """Cut ``text`` into consecutive n-token windows, each with the tokenizer's special
    tokens (BERT: ``[CLS] ... [SEP]``); returns (windows, content tokens in the text)."""
    tokenizer.no_truncation()
    enc = tokenizer.encode(text)
    special = enc.special_tokens_mask
    lead = next((i for i, s in enumerate(special) if not s), len(special))
    tail = next((i for i, s in enumerate(reversed(special)) if not s), 0)
    ids = enc.ids
    prefix, suffix, body = ids[:lead], ids[len(ids) - tail:], ids[lead:len(ids) - tail]
    per = n - len(prefix) - len(suffix)
    if per < 1:
        raise ValueError(f"--seq: {n} leaves no room for text next to the tokenizer's "
                         f"{len(prefix) + len(suffix)} special tokens")
    wins = [prefix + body[i:i + per] + suffix for i in range(0, len(body) - per + 1, per)]
    return wins, len(body)
