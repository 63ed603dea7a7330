"""Toy translation for the encoder-decoder Transformer: ``reverse`` and ``sort``.

A source sentence is ``min_len..max_len`` symbols drawn uniformly from
``n_symbols``; its translation is the same symbols reversed (``reverse``) or
sorted ascending by symbol (``sort``).

**Two vocabularies.** Ids 0, 1, 2 are ``pad``, ``bos``, ``eos`` in both. Symbol
``s`` (``0 <= s < n_symbols``) is

* source id ``3 + s``,
* target id ``3 + (n_symbols - 1 - s)``: the target vocabulary lists the symbols
  in the opposite order,

so the model has to learn the source-to-target mapping rather than copy ids
(with an odd ``n_symbols`` the middle symbol keeps its id). Both vocabularies
have ``3 + n_symbols`` entries, so the task fits a
:class:`~attnkit.models.Transformer` with shared embeddings
(``vocab_size = src_vocab``; a shared id then means different symbols on the two
sides) as well as one with separate ones (``tgt_vocab_size = tgt_vocab``).

Batches (see :mod:`.base`), ``S = max_len``: ``src (B, S)`` padded with 0 after
the real tokens; ``tgt_in (B, S + 1)`` = BOS + target, padded with 0;
``tgt_out (B, S + 1)`` = target + EOS, ``IGNORE`` on padding; ``src_len (B,)``.
Decode with ``greedy(src, max_len=task.tgt_seq_len)`` (room for the EOS) and
score with :func:`exact_match`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.checks import check_int
from .base import IGNORE, Task, register_task, seed_for

__all__ = ["ToyReverse", "ToySort", "exact_match"]

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3


@dataclass
class _ToyTranslation(Task):
    """Shared generator; subclasses give :meth:`_target_symbols`."""

    n_symbols: int = 16
    min_len: int = 4
    max_len: int = 12
    n_eval: int = 500
    seed: int = 0

    kind = "seq2seq"
    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __post_init__(self):
        check_int("n_symbols", self.n_symbols, minimum=2)
        check_int("min_len", self.min_len, minimum=1)
        check_int("max_len", self.max_len, minimum=self.min_len)
        check_int("n_eval", self.n_eval, minimum=1)
        check_int("seed", self.seed, minimum=0)

    @property
    def src_vocab(self) -> int:
        return N_SPECIAL + self.n_symbols

    @property
    def tgt_vocab(self) -> int:
        return N_SPECIAL + self.n_symbols

    @property
    def src_seq_len(self) -> int:
        """Width of ``src``."""
        return self.max_len

    @property
    def tgt_seq_len(self) -> int:
        """Width of ``tgt_in``/``tgt_out``: the longest target plus BOS or EOS."""
        return self.max_len + 1

    def _target_symbols(self, symbols: Tensor, lengths: Tensor) -> Tensor:
        """``symbols (B, S)`` (valid below ``lengths (B,)``) -> the target's symbols
        ``(B, S)``, valid below the same lengths."""
        raise NotImplementedError

    def _tgt_ids(self, symbols: Tensor) -> Tensor:
        return N_SPECIAL + (self.n_symbols - 1 - symbols)

    def _make_batch(self, symbols: Tensor, lengths: Tensor) -> dict:
        """``symbols (B, S)``, ``lengths (B,)`` -> the batch dict."""
        B, S = symbols.shape
        real = torch.arange(S) < lengths[:, None]                              # (B, S)
        src = torch.where(real, symbols + N_SPECIAL, PAD)                      # (B, S)
        tgt = torch.where(real, self._tgt_ids(self._target_symbols(symbols, lengths)), PAD)
        tgt_in = torch.cat((torch.full((B, 1), BOS), tgt), dim=1)              # (B, S + 1)
        pos = torch.arange(S + 1)[None, :]                                     # (1, S + 1)
        after = torch.where(pos == lengths[:, None], EOS, IGNORE)              # (B, S + 1)
        tgt_out = torch.where(pos < lengths[:, None],
                              torch.cat((tgt, torch.full((B, 1), PAD)), dim=1), after)
        return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out, "src_len": lengths}

    def _sample(self, gen: torch.Generator, n: int) -> dict:
        lengths = torch.randint(self.min_len, self.max_len + 1, (n,), generator=gen)  # (n,)
        symbols = torch.randint(0, self.n_symbols, (n, self.max_len), generator=gen)  # (n, S)
        return self._make_batch(symbols, lengths)

    def batch(self, step: int, batch_size: int) -> dict:
        check_int("step", step, minimum=0)
        check_int("batch_size", batch_size)
        gen = torch.Generator().manual_seed(seed_for(self.seed, "train", step))
        return self._sample(gen, batch_size)

    def eval_batches(self, batch_size: int) -> list[dict]:
        """The ``n_eval`` evaluation sentences (the same ones whatever ``batch_size``)."""
        check_int("batch_size", batch_size)
        gen = torch.Generator().manual_seed(seed_for(self.seed, "eval"))
        full = self._sample(gen, self.n_eval)
        return [{k: v[i:i + batch_size] for k, v in full.items()}
                for i in range(0, self.n_eval, batch_size)]

    def reference(self, src: Tensor) -> list[list[int]]:
        """``src (B, S)`` (ids of this task's source vocabulary, trailing padding) ->
        each row's translation as target ids, without specials."""
        if not isinstance(src, Tensor) or src.dim() != 2 or src.dtype.is_floating_point:
            raise ValueError(f"src: expected an integer tensor (B, S), got "
                             f"{getattr(src, 'shape', type(src).__name__)}")
        src = src.cpu()
        real = src != PAD                                                      # (B, S)
        lengths = real.sum(dim=1)                                              # (B,)
        trailing = torch.arange(src.shape[1]) < lengths[:, None]
        if not torch.equal(real, trailing):
            raise ValueError("src: expected the padding (0) after the real tokens, got a 0 "
                             "between tokens")
        bad = real & ((src < N_SPECIAL) | (src >= self.src_vocab))
        if bool(bad.any()):
            raise ValueError(f"src: expected symbol ids in [{N_SPECIAL}, {self.src_vocab}) or "
                             f"padding 0, got {src[bad][0].item()}")
        symbols = (src - N_SPECIAL).clamp(min=0)
        tgt = self._tgt_ids(self._target_symbols(symbols, lengths))           # (B, S)
        return [row[:n].tolist() for row, n in zip(tgt, lengths.tolist())]


@register_task
class ToyReverse(_ToyTranslation):
    """Target = the source symbols in reverse order."""

    name = "reverse"

    def _target_symbols(self, symbols: Tensor, lengths: Tensor) -> Tensor:
        pos = torch.arange(symbols.shape[1])
        idx = (lengths[:, None] - 1 - pos).clamp(min=0)                        # (B, S)
        return symbols.gather(1, idx)


@register_task
class ToySort(_ToyTranslation):
    """Target = the source symbols sorted ascending (by symbol, not by target id)."""

    name = "sort"

    def _target_symbols(self, symbols: Tensor, lengths: Tensor) -> Tensor:
        real = torch.arange(symbols.shape[1]) < lengths[:, None]
        return symbols.masked_fill(~real, self.n_symbols).sort(dim=1).values  # pads last


def exact_match(pred: Tensor, batch: dict) -> Tensor:
    """``pred (B, L)`` from :meth:`Transformer.greedy` (BOS, tokens, EOS, pads) ->
    ``(B,)`` bool: the tokens between BOS and the first EOS equal the reference
    target (``batch["tgt_out"]`` up to its EOS). A row without EOS is taken whole."""
    tgt_out = batch["tgt_out"]
    if not isinstance(pred, Tensor) or pred.dim() != 2 or pred.shape[0] != tgt_out.shape[0] \
            or pred.shape[1] < 1:
        raise ValueError(f"pred: expected a (B={tgt_out.shape[0]}, L >= 1) tensor from "
                         f"greedy, got {getattr(pred, 'shape', type(pred).__name__)}")
    if not bool((pred[:, 0] == BOS).all()):
        raise ValueError(f"pred: expected every row to start with BOS={BOS} (greedy output), "
                         f"got first tokens {pred[:, 0].tolist()}")
    body = pred[:, 1:]                                                         # (B, L - 1)
    ref = tgt_out.to(pred.device)                                              # (B, T)
    is_eos = body == EOS
    pred_len = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), body.shape[1])
    ref_len = (ref != IGNORE).sum(dim=1) - 1                                   # (B,) no EOS
    W = min(body.shape[1], ref.shape[1])
    scored = torch.arange(W, device=pred.device) < ref_len[:, None]            # (B, W)
    same = ((body[:, :W] == ref[:, :W]) | ~scored).all(dim=1)
    return (pred_len == ref_len) & same
