"""The :class:`ModelSource` protocol of ``attnkit bench --model`` (see :mod:`.source` for
what each method does), its :class:`Outputs`, and :func:`text_windows`, shared by the two
sources (:mod:`.source`: attnkit's ports; :mod:`.source_hf`: transformers models)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from ..engine.variants import Variant

__all__ = ["Outputs", "ModelSource", "text_windows"]


@dataclass
class Outputs:
    hidden: Tensor | None = None        # (B, T, d) final hidden states (encoders)
    embedding: Tensor | None = None     # (B, d) pooled sentence embedding (encoders)
    logits: Tensor | None = None        # (B, T, V) next-token logits (decoders)


class ModelSource(Protocol):
    name: str
    kind: str                   # "encoder" | "decoder"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_tokens: int
    tokenizer_name: str

    def windows(self, text: str, n: int) -> list[Tensor]: ...
    def check(self, variant: Variant, n: int) -> None: ...
    def apply(self, variant: Variant, n: int, layers: list[int] | None = None) -> None: ...
    def run(self, ids: Tensor) -> Outputs: ...
    def attention_inputs(self, ids: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]: ...
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
