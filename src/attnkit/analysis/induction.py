"""The induction-head test of Olsson et al. 2022 ("In-context learning and induction
heads", Anthropic): run a causal LM on sequences of random tokens repeated twice and
measure, per head, what its attention does on the repeat.

A sequence is ``[bos] r_1 ... r_L r_1 ... r_L`` (``bos`` optional, then ``off = 1``; the
``r_j`` uniform over the ordinary tokens, i.i.d.). At the position ``p = off + L + j`` of
the second occurrence of ``r_{j+1}`` (0-based ``j``):

* **induction score** of a head: its weight on the token *after* the previous occurrence
  of the current token, ``w[p, off + j + 1]``, averaged over the second half and the
  sequences (TransformerLens' ``induction_score``: the stripe at offset ``1 - L``). An
  induction head attends there and copies that token: it predicts the repeat.
* **previous-token score**: ``w[i, i - 1]`` averaged over every row ``i >= 1``
  (:func:`attnkit.analysis.inspect.head_scores`' ``previous``); the composition of a
  previous-token head and an induction head is the induction circuit.
* **loss by half**: the model's mean cross-entropy predicting ``r_2 .. r_L`` in the first
  half (random: about ``log V`` for a model that has learned nothing about them) and
  predicting every token of the repeat (``r_1 .. r_L`` at the second occurrence): a model
  with induction heads predicts the repeat far better than chance.

Pure functions of the weights and logits (:func:`induction_scores`, :func:`half_losses`)
and a runner for attnkit's decoders (:func:`induction_test`; a model whose
``forward(ids, return_weights=set)`` returns ``(logits, weights per layer)``, as
:class:`attnkit.models.GPT` does).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .inspect import head_scores

__all__ = ["repeated_tokens", "induction_scores", "half_losses", "induction_test",
           "InductionResult"]


def repeated_tokens(vocab: list[int] | Tensor, length: int, n: int, seed: int = 0,
                    bos: int | None = None) -> Tensor:
    """``n`` sequences ``[bos] r r`` with ``r`` ``length`` tokens drawn uniformly from
    ``vocab`` (the ids to draw from) by a generator seeded ``seed``: int64 (n, off + 2L)."""
    vocab = torch.as_tensor(vocab, dtype=torch.int64)
    if vocab.dim() != 1 or len(vocab) < 2:
        raise ValueError(f"vocab: expected a 1-D list of >= 2 token ids, got "
                         f"{tuple(vocab.shape)}")
    for name, v in (("length", length), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 2 - (name == "n"):
            raise ValueError(f"{name}: expected an int >= {2 - (name == 'n')}, got {v!r}")
    g = torch.Generator().manual_seed(seed)
    r = vocab[torch.randint(0, len(vocab), (n, length), generator=g)]    # (n, L)
    parts = ([torch.full((n, 1), bos, dtype=torch.int64)] if bos is not None else []) + [r, r]
    return torch.cat(parts, dim=1)


def induction_scores(weights: Tensor, length: int, offset: int = 1) -> dict[str, Tensor]:
    """``weights (N, L, H, T, T)`` or ``(L, H, T, T)`` on repeated sequences (T = offset
    + 2 length) -> ``{"induction": (L, H), "previous": (L, H)}`` float64, means over the
    sequences (module doc)."""
    w = weights if weights.dim() == 5 else weights.unsqueeze(0)
    N, L, H, T, Tk = w.shape
    if T != Tk or T != offset + 2 * length:
        raise ValueError(f"weights: expected square maps of offset + 2 x length = "
                         f"{offset + 2 * length} tokens, got {tuple(w.shape)}")
    j = torch.arange(length)
    ind = w[..., offset + length + j, offset + j + 1].double().mean(-1)   # (N, L, H)
    prev = torch.stack([head_scores(x, causal=True)["previous"] for x in w])  # (N, L, H)
    return {"induction": ind.mean(0), "previous": prev.mean(0)}


def half_losses(logits: Tensor, ids: Tensor, length: int, offset: int = 1) -> tuple[float,
                                                                                   float]:
    """Mean cross-entropy (nats) of the predictions of the first half's tokens
    ``r_2 .. r_L`` and of the repeat's ``r_1 .. r_L``; ``logits (N, T, V)``, ``ids (N, T)``."""
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).double(), ids[:, 1:],
                         reduction="none")                                # (N, T - 1)
    # ce[:, t] predicts ids[:, t + 1]
    first = ce[:, offset:offset + length - 1]                             # r_2 .. r_L
    second = ce[:, offset + length - 1:offset + 2 * length - 1]           # repeat r_1 .. r_L
    return float(first.mean()), float(second.mean())


@dataclass
class InductionResult:
    length: int
    n: int
    seed: int
    induction: Tensor                 # (L, H) float64
    previous: Tensor                  # (L, H) float64
    loss_first: float                 # nats, first half (random tokens)
    loss_repeat: float                # nats, the repeat
    chance: float                     # log(number of ids drawn from)
    layers: list[int] = field(default_factory=list)

    def heads(self, score: str, threshold: float) -> list[tuple[int, int, float]]:
        """(layer, head, score) of the heads whose ``score`` is >= ``threshold``, best
        first."""
        s = getattr(self, score)
        out = [(self.layers[i], h, float(s[i, h])) for i in range(s.shape[0])
               for h in range(s.shape[1]) if float(s[i, h]) >= threshold]
        return sorted(out, key=lambda x: -x[2])

    def to_json(self) -> dict:
        return {"length": self.length, "sequences": self.n, "seed": self.seed,
                "loss_first_half": self.loss_first, "loss_repeat": self.loss_repeat,
                "chance_loss": self.chance, "layers": self.layers,
                "induction": self.induction.tolist(), "previous": self.previous.tolist()}


@torch.no_grad()
def induction_test(model, vocab: list[int] | Tensor, length: int = 50, n: int = 16,
                   seed: int = 0, bos: int | None = None, batch: int = 8) -> InductionResult:
    """Run the test on ``model`` (an attnkit decoder, see the module doc) with ``n``
    sequences of ``length`` random tokens from ``vocab``, repeated; ``bos`` first if
    given."""
    ids = repeated_tokens(vocab, length, n, seed, bos)                    # (n, T)
    offset = 1 if bos is not None else 0
    max_len = getattr(model, "max_tokens", None)
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"length: {offset} + 2 x {length} = {ids.shape[1]} tokens exceed the "
                         f"model's {max_len} positions")
    was = model.training
    model.eval()
    n_layers = len(model.layers)
    want = set(range(n_layers))
    logits_all, scores = [], []
    try:
        for chunk in ids.split(batch):
            logits, ws = model(chunk, return_weights=want)
            w = torch.stack([ws[i] for i in range(n_layers)], dim=1)      # (b, L, H, T, T)
            s = induction_scores(w, length, offset)
            scores.append((len(chunk), s))
            logits_all.append(logits)
    finally:
        model.train(was)
    ind = sum(k * s["induction"] for k, s in scores) / n
    prev = sum(k * s["previous"] for k, s in scores) / n
    first, second = half_losses(torch.cat(logits_all), ids, length, offset)
    return InductionResult(length, n, seed, ind, prev, first, second,
                           float(torch.log(torch.tensor(float(len(torch.as_tensor(vocab)))))),
                           list(range(n_layers)))
