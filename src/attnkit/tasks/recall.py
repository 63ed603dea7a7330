"""Recall and copying tasks from the efficient-attention literature (all ``kind = "lm"``).

Every task returns ``{"input": (B, T) int64, "target": (B, T) int64}`` with the ``lm``
convention of :mod:`.base`: ``target[:, t]`` is the token the model must output *after
reading* ``input[:, :t+1]``, and ``IGNORE`` (-100) where nothing is scored. ``T`` is the
task's ``seq_len`` (the model input length) and every token lies in ``[0, vocab_size)``.
Batches are generated vectorised in torch from ``seed_for(seed, "train", step)``; the
evaluation set is ``n_eval`` examples generated in fixed chunks of ``EVAL_CHUNK`` (chunk
``i`` from ``seed_for(seed, "eval", i)``), so it does not depend on the evaluation batch
size and a smaller ``n_eval`` gives a prefix of a larger one.

``mqar`` -- multi-query associative recall (Zoology; Arora, Eyuboglu et al. 2023,
"Zoology: Measuring and improving recall in efficient language models"; generator
``multiquery_ar`` in HazyResearch/zoology)::

    keys   distinct, from 1 .. V//2 - 1          values distinct, from V//2 .. V-1
    input  k1 v1 k2 v2 ... kn vn | query region (T - 2n tokens)          (B, T)
    target IGNORE ...            | v_j at the position of each query k_j  (B, T)

  Each key is queried once, at query-region offset ``2 * gap_j``; the ``n`` gaps are drawn
  without replacement from ``0 .. (T - 2n)/2 - 1`` with ``P(gap = i - 1) ∝ a * i**(a - 1)``
  (``a = power_a``; ``a < 1`` favours short gaps, ``a = 1`` is uniform), in order, gap
  ``j`` going to pair ``j``. The other query-region tokens are uniform over ``[0, V)`` (like
  Zoology's ``random_non_queries``, so they may by chance equal a key; they are never
  scored). Exactly ``n`` targets per example are scored. Needs ``T`` even, ``V > T``,
  ``4n <= T`` (Zoology's asserts).

``assoc_recall`` -- associative recall (H3; Fu, Dao et al. 2023, "Hungry Hungry Hippos";
generator ``generate_assoc_recall`` in HazyResearch/safari ``src/dataloaders/synthetics.py``)::

    token 0 reserved (safari's "." no-op, never emitted)     token V-1  "=>" query marker
    keys 1 .. K, K = (V-2)//2                                 values K+1 .. V-2
    input  k v k v ... k v  =>  q                                         (B, T)
    target IGNORE ...           IGNORE  mapping[q]   (scored at t = T-1 only)

  Per example a random map key -> value (each key's value uniform over the values, so two
  keys may share a value); ``(T-2)/2`` pairs with keys drawn uniformly with replacement
  (repeated keys carry the same value); the query ``q`` is uniform over the keys present
  in the context (safari's default ``allow_dot=False``). Needs ``T`` even, ``T >= 4``.

``induction`` -- induction heads (H3; generator ``generate_induction_head`` in safari)::

    token 0 reserved (never emitted)    tokens 1 .. V-2 ordinary    token V-1 trigger "=>"
    input  x_0 ... x_{p-1}  =>  X  x_{p+2} ... x_{T-2}  =>               (B, T)
    target IGNORE ...                                         X   (scored at t = T-1 only)

  A body of ``T - 1`` uniform ordinary tokens; the trigger overwrites body position ``p``,
  uniform in ``[0, T - 3)`` (safari: ``integers(input_len - 2)``), so ``X`` at ``p + 1``
  never touches the final trigger. The trigger occurs exactly twice. Needs ``T >= 4``.

``selective_copy`` -- selective copying (Mamba; Gu & Dao 2023, Fig. 2 and sec. 4.1.1;
the reference generator is ``torch_copying_data(..., variable=True)`` from state-spaces/s4
``copying.py``, whose alphabet size ``A`` is ``vocab_size`` here)::

    token 0 noise    tokens 1 .. V-2 data    token V-1 marker;  C = context_len, M = n_tokens
    input  [C context tokens: M data tokens at random sorted positions, noise elsewhere]
           [M markers]                                               (B, C + M) = (B, T)
    target IGNORE x C, then d_1 ... d_M                              (B, T)

  Convention: the model outputs data token ``i`` *while reading marker* ``i`` (position
  ``C + i - 1``), as in the reference, where the outputs at the last ``M`` positions are
  the copied tokens; nothing is scored before the first marker. Data tokens are uniform
  over ``1 .. V-2`` (repeats allowed), so the non-noise context tokens are exactly the
  data tokens, in order. ``seq_len = context_len + n_tokens``; needs
  ``1 <= n_tokens <= context_len`` and ``V >= 3``. ``vocab_size`` counts the noise and
  marker tokens (it is the model's vocabulary, like the reference's ``A``): the default 16
  gives 14 data tokens.

Departures from the original generators: every training step is a fresh batch (Zoology and
safari draw a fixed training set up front; safari also de-duplicates it). Training batches
of ``assoc_recall``/``induction`` score only the answer, like the evaluation set (and
safari's test split); ``lm_loss=True`` also scores next-token prediction at every
position, as safari's training split does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.checks import check_int
from .base import IGNORE, Task, register_task, seed_for

__all__ = ["MQAR", "AssociativeRecall", "InductionHeads", "SelectiveCopy", "EVAL_CHUNK"]

EVAL_CHUNK = 256  # examples per evaluation-seed chunk (part of the eval set's definition)


def _fail(field: str, expected: str, got) -> None:
    raise ValueError(f"{field}: expected {expected}, got {field}={got!r}")


class _GeneratedLM(Task):
    """Shared ``batch``/``eval_batches`` for tasks that generate ``n`` examples from a
    ``torch.Generator`` via ``_generate(gen, n) -> (input, target)``."""

    kind = "lm"

    def _generate(self, gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _check_common(self) -> None:
        check_int("n_eval", self.n_eval, 1)
        check_int("seed", self.seed, 0)

    def _from_seed(self, seed: int, n: int) -> dict:
        gen = torch.Generator().manual_seed(seed)
        inp, tgt = self._generate(gen, n)
        return {"input": inp, "target": tgt}

    def batch(self, step: int, batch_size: int) -> dict:
        check_int("step", step, 0)
        check_int("batch_size", batch_size, 1)
        b = self._from_seed(seed_for(self.seed, "train", step), batch_size)
        if getattr(self, "lm_loss", False):      # safari's training split: every next token
            b["target"][:, :-1] = b["input"][:, 1:]
        return b

    def eval_set(self) -> dict:
        """The whole evaluation set: ``n_eval`` examples, independent of any batch size."""
        chunks = [self._from_seed(seed_for(self.seed, "eval", i), EVAL_CHUNK)
                  for i in range(math.ceil(self.n_eval / EVAL_CHUNK))]
        return {k: torch.cat([c[k] for c in chunks])[:self.n_eval] for k in chunks[0]}

    def eval_batches(self, batch_size: int) -> list[dict]:
        check_int("batch_size", batch_size, 1)
        full = self.eval_set()
        return [{k: v[i:i + batch_size] for k, v in full.items()}
                for i in range(0, self.n_eval, batch_size)]


def _sample_distinct(gen: torch.Generator, n: int, pool: int, k: int,
                     ordered: bool = True) -> torch.Tensor:
    """(n, k) indices in [0, pool), distinct within a row: a uniform random k-subset per
    row, in uniformly random order (``ordered``; otherwise in an unspecified order).

    Small ``k`` against the pool: Floyd's algorithm, k vectorised steps over the batch
    (O(n k^2) work instead of n * pool random numbers); else the top k of uniform noise.
    """
    if k * 16 > pool:
        return torch.rand(n, pool, generator=gen).topk(k, dim=1).indices
    sel = torch.empty(n, k, dtype=torch.long)
    for i, j in enumerate(range(pool - k, pool)):
        t = torch.randint(0, j + 1, (n, 1), generator=gen)
        taken = (sel[:, :i] == t).any(dim=1, keepdim=True)
        sel[:, i:i + 1] = torch.where(taken, torch.full_like(t, j), t)
    if ordered:  # Floyd's subset is uniform but its order is not
        sel = sel.gather(1, torch.rand(n, k, generator=gen).argsort(dim=1))
    return sel


@register_task
@dataclass
class MQAR(_GeneratedLM):
    """Multi-query associative recall (Zoology). See the module docstring."""

    name = "mqar"
    vocab_size: int = 256
    seq_len: int = 64
    n_pairs: int = 4
    power_a: float = 0.01
    n_eval: int = 1000
    seed: int = 0

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, 1)
        check_int("seq_len", self.seq_len, 2)
        check_int("n_pairs", self.n_pairs, 1)
        self._check_common()
        if self.seq_len % 2:
            _fail("seq_len", "an even number (key/value slots come in pairs)", self.seq_len)
        if self.vocab_size <= self.seq_len:
            _fail("vocab_size", f"vocab_size > seq_len={self.seq_len}", self.vocab_size)
        if 4 * self.n_pairs > self.seq_len:
            _fail("n_pairs", f"4 * n_pairs <= seq_len={self.seq_len}", self.n_pairs)
        if isinstance(self.power_a, bool) or not isinstance(self.power_a, (int, float)):
            raise TypeError(f"power_a: expected a number > 0, got "
                            f"{type(self.power_a).__name__} {self.power_a!r}")
        if not math.isfinite(self.power_a) or self.power_a <= 0:
            _fail("power_a", "a finite number > 0 (1 = uniform gaps, < 1 favours short gaps)",
                  self.power_a)

    def gap_probs(self) -> torch.Tensor:
        """(space,) float64: probability of each query gap 0 .. space-1 for the first draw."""
        space = (self.seq_len - 2 * self.n_pairs) // 2
        i = torch.arange(1, space + 1, dtype=torch.float64)
        p = self.power_a * i ** (self.power_a - 1)
        return p / p.sum()

    def _generate(self, gen, n):
        V, T, P = self.vocab_size, self.seq_len, self.n_pairs
        ctx = 2 * P
        half = V // 2
        keys = _sample_distinct(gen, n, half - 1, P) + 1                    # (n, P) in 1..half-1
        values = _sample_distinct(gen, n, V - half, P) + half               # (n, P) in half..V-1
        p = self.gap_probs()
        # sequential draws without replacement, draw j for pair j (as numpy's choice)
        gaps = torch.multinomial(p.expand(n, -1), P, replacement=False, generator=gen)  # (n, P)
        qpos = ctx + 2 * gaps                                                # (n, P) positions
        inp = torch.randint(0, V, (n, T), generator=gen)                    # random filler
        inp[:, 0:ctx:2] = keys
        inp[:, 1:ctx:2] = values
        inp.scatter_(1, qpos, keys)
        tgt = torch.full((n, T), IGNORE, dtype=torch.long)
        tgt.scatter_(1, qpos, values)
        return inp, tgt


@dataclass
class _H3Task(_GeneratedLM):
    """The fields and checks H3's synthetic tasks share (safari's training options)."""

    lm_loss: bool = False    # True: train on every next token (safari); eval: the answer
    n_eval: int = 1000
    seed: int = 0
    VOCAB_NEEDS = ""         # what vocab_size >= 4 is for (subclasses)

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, 1)
        check_int("seq_len", self.seq_len, 1)
        self._check_common()
        if self.vocab_size < 4:
            _fail("vocab_size", f"vocab_size >= 4 ({self.VOCAB_NEEDS})", self.vocab_size)
        self._check_length()

    def _check_length(self) -> None:
        raise NotImplementedError


@register_task
@dataclass
class AssociativeRecall(_H3Task):
    """Single-query associative recall (H3 / safari). See the module docstring."""

    name = "assoc_recall"
    vocab_size: int = 20
    seq_len: int = 40
    VOCAB_NEEDS = "no-op, marker, at least one key and one value"

    def _check_length(self):
        if self.seq_len < 4 or self.seq_len % 2:
            _fail("seq_len", "an even number >= 4 (key/value pairs, then marker and query)",
                  self.seq_len)

    @property
    def n_keys(self) -> int:
        return (self.vocab_size - 2) // 2

    @property
    def marker(self) -> int:
        return self.vocab_size - 1

    def _generate(self, gen, n):
        V, T = self.vocab_size, self.seq_len
        K = self.n_keys
        n_values = V - 2 - K
        P = (T - 2) // 2
        mapping = torch.randint(0, n_values, (n, K), generator=gen) + K + 1  # (n, K) values
        kidx = torch.randint(0, K, (n, P), generator=gen)                     # (n, P) key index
        vals = mapping.gather(1, kidx)                                        # (n, P)
        present = torch.zeros(n, K, dtype=torch.bool).scatter_(1, kidx, True)
        score = torch.rand(n, K, generator=gen).masked_fill(~present, -1.0)
        q = score.argmax(1, keepdim=True)                                     # (n, 1) present
        inp = torch.empty(n, T, dtype=torch.long)
        inp[:, 0:2 * P:2] = kidx + 1
        inp[:, 1:2 * P:2] = vals
        inp[:, T - 2] = self.marker
        inp[:, T - 1:] = q + 1
        tgt = torch.full((n, T), IGNORE, dtype=torch.long)
        tgt[:, T - 1:] = mapping.gather(1, q)
        return inp, tgt


@register_task
@dataclass
class InductionHeads(_H3Task):
    """Induction heads (H3 / safari). See the module docstring."""

    name = "induction"
    vocab_size: int = 20
    seq_len: int = 30
    VOCAB_NEEDS = "reserved 0, trigger, at least two ordinary tokens"

    def _check_length(self):
        if self.seq_len < 4:
            _fail("seq_len", "seq_len >= 4 (trigger, its token, final trigger)", self.seq_len)

    @property
    def trigger(self) -> int:
        return self.vocab_size - 1

    def _generate(self, gen, n):
        V, T = self.vocab_size, self.seq_len
        inp = torch.randint(1, V - 1, (n, T), generator=gen)                  # ordinary tokens
        p = torch.randint(0, T - 3, (n, 1), generator=gen)                    # (n, 1) trigger pos
        inp.scatter_(1, p, self.trigger)
        inp[:, T - 1] = self.trigger
        tgt = torch.full((n, T), IGNORE, dtype=torch.long)
        tgt[:, T - 1:] = inp.gather(1, p + 1)
        return inp, tgt


@register_task
@dataclass
class SelectiveCopy(_GeneratedLM):
    """Selective copying (Mamba). See the module docstring."""

    name = "selective_copy"
    vocab_size: int = 16
    n_tokens: int = 8
    context_len: int = 64
    n_eval: int = 1000
    seed: int = 0

    NOISE = 0

    def __post_init__(self):
        check_int("vocab_size", self.vocab_size, 1)
        check_int("n_tokens", self.n_tokens, 1)
        check_int("context_len", self.context_len, 1)
        self._check_common()
        if self.vocab_size < 3:
            _fail("vocab_size", "vocab_size >= 3 (noise 0, data 1..vocab_size-2, marker "
                  "vocab_size-1)", self.vocab_size)
        if self.n_tokens > self.context_len:
            _fail("n_tokens", f"n_tokens <= context_len={self.context_len}", self.n_tokens)

    @property
    def seq_len(self) -> int:
        return self.context_len + self.n_tokens

    @property
    def marker(self) -> int:
        return self.vocab_size - 1

    def _generate(self, gen, n):
        V, C, M = self.vocab_size, self.context_len, self.n_tokens
        data = torch.randint(1, V - 1, (n, M), generator=gen)                 # (n, M)
        pos = _sample_distinct(gen, n, C, M, ordered=False).sort(dim=1).values  # (n, M)
        ctx = torch.full((n, C), self.NOISE, dtype=torch.long).scatter_(1, pos, data)
        inp = torch.cat([ctx, torch.full((n, M), self.marker, dtype=torch.long)], 1)
        tgt = torch.cat([torch.full((n, C), IGNORE, dtype=torch.long), data], 1)
        return inp, tgt
