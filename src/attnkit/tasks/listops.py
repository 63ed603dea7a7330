"""ListOps as the Long Range Arena generates it (Tay et al. 2020; the task itself is
Nangia & Bowman 2018): evaluate a nested list of operations on digits.

Grammar (LRA's ``lra_benchmarks/data/listops.py``, re-implemented here)::

    expr  := digit | op expr expr ... ']'      (2 to max_args arguments)
    op    := '[MIN' | '[MAX' | '[MED' | '[SM'
    digit := '0' | ... | '9'

e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. ``MED`` is ``int(np.median(args))``: the
middle value, and for an even count the mean of the two middle values rounded down
(``[MED 1 2 ]`` = 1); ``SM`` is the sum modulo 10.

The random tree (LRA's ``generate_tree(1, max_depth, max_args)``): a node at depth
``d`` (the root has depth 1) is an operator with probability ``VALUE_P`` = 0.25 if
``d < max_depth``, else a digit. A digit is uniform over 0-9; an operator has
``k ~ uniform{2, ..., max_args}`` children (independent subtrees at depth ``d + 1``)
and is uniform over the four operators. LRA draws trees until the length (tokens,
counting ``'[OP'`` and ``']'``, parentheses not counted) falls in its window, and
keeps distinct trees only (it collects them in a ``set``). LRA's setting is
``max_depth = max_args = 10`` and lengths in (500, 2000); the defaults here keep the
grammar and its parameters and shrink the window to [32, 128] tokens for a CPU.

We sample exactly that distribution conditioned on the window, only faster: a draw is
abandoned as soon as the tokens already committed (every pending argument counts at
least one token) exceed ``max_length``, since it could only be rejected. At the
defaults 1.7% of LRA's draws fall in [32, 128] (:attr:`ListOps.window_probability`,
computed exactly by :func:`length_distribution`); 10k examples take about 4 s on one
CPU core (the default 20k train + 1k test about 8 s, once, on first use), and [256, 512]
about 7 s per 10k. ``__post_init__`` rejects a window that LRA's distribution hardly
ever reaches (or that holds too few distinct expressions) instead of hanging.

Vocabulary: ``PAD`` = 0, digits ``'0'..'9'`` = 1..10, ``'[MIN' '[MAX' '[MED' '[SM'``
= 11..14, ``']'`` = 15 (:data:`TOKENS`, :func:`encode`, :func:`decode`).

The label is computed from the tree (:func:`tree_value`); :func:`evaluate` is an
independent evaluator of the token sequence (an explicit stack), which the tests hold
every label against. The grammar's tokens, :func:`encode`/:func:`decode` and
:func:`evaluate` live in :mod:`.listops_eval` and are importable from here.

Format (kind ``lm``, see :mod:`.base`)::

    input  (B, T)  int64, T = seq_len = max_length: the expression's tokens, left-
                   aligned, then PAD (0) on the right
    target (B, T)  int64, IGNORE everywhere except at the last real token
                   (position length - 1), which holds the token id of the answer digit:
                   a causal model that has read the whole expression predicts it there
    length (B,)    int64, the number of real tokens

The training set (``n_train`` examples) is generated once per instance, on first use;
batch ``step`` draws its rows with replacement, seeded by ``(seed, "train", step)``. The
test set (``n_test``) comes from its own seed stream, in a fixed order.

Differences from the LRA code, deliberate: the window is inclusive here
(``min_length <= length <= max_length``; LRA's (500, 2000) is [501, 1999]); the
tokens are the generator's whitespace tokens, ``'[MIN'`` and ``']'`` included (LRA's
released input pipeline used an alphanumeric-only tokenizer that dropped the brackets
and with them the nesting; long-range-arena issue #14); train and test come from
separate seed streams (train skips any expression in the test set) instead of one set
split in hash order; the random numbers are Python's ``random.Random(seed).random()``
per example, so the data are not LRA's files, only drawn from the same distribution.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from .base import IGNORE, Task, register_task, seed_for
from .listops_eval import (DIGITS, END, MAX, MED, MIN, OPERATORS, PAD, SUM_MOD, TOKENS,  # noqa: F401
                           VALUE_P, VOCAB_SIZE, _ID, decode, encode, evaluate)

__all__ = ["ListOps", "TOKENS", "PAD", "VOCAB_SIZE", "OPERATORS", "END", "VALUE_P",
           "encode", "decode", "evaluate", "sample_tree", "tree_tokens", "tree_value",
           "length_distribution"]


# ---------------------------------------------------------------------------
# the generator: random trees, their tokens and values
# ---------------------------------------------------------------------------
# A tree is a digit (int) or (operator, [subtrees]).
Tree = Union[int, tuple]


class _TooLong(Exception):
    """A draw passed max_length: abandon it (it would be rejected anyway)."""


def sample_tree(rng: random.Random, max_depth: int, max_args: int,
                max_length: int) -> tuple[Tree, int] | None:
    """One draw of LRA's ``generate_tree(1, max_depth, max_args)``: ``(tree, length)``,
    or None as soon as the draw is certain to exceed ``max_length`` tokens.

    Every choice is ``floor(u * n)`` for ``u = rng.random()`` (the one stream Python
    promises to keep across versions).
    """
    rand = rng.random
    span = max_args - 1
    committed = 1          # tokens the draw is sure to have: each pending argument counts 1

    def operator(depth: int) -> Tree:
        """An operator node at ``depth`` (its own choice already drawn)."""
        nonlocal committed
        k = 2 + int(rand() * span)                      # uniform{2, ..., max_args}
        committed += 1 + k          # '[OP' and ']' (the node had 1), k arguments >= 1 each
        if committed > max_length:
            raise _TooLong
        child = depth + 1           # each argument: an operator w.p. VALUE_P above max_depth
        args = [operator(child) if child < max_depth and rand() < VALUE_P else int(rand() * 10)
                for _ in range(k)]
        return OPERATORS[int(rand() * 4)], args

    try:
        tree = operator(1) if 1 < max_depth and rand() < VALUE_P else int(rand() * 10)
    except _TooLong:
        return None
    return tree, committed


def tree_tokens(tree: Tree) -> list[str]:
    """Prefix notation: operator, arguments, ``']'`` (LRA's string without parentheses)."""
    if isinstance(tree, int):
        return [DIGITS[tree]]
    op, args = tree
    out = [op]
    for a in args:
        out += tree_tokens(a)
    out.append(END)
    return out


def tree_value(tree: Tree) -> int:
    """The label, computed on the tree."""
    if isinstance(tree, int):
        return tree
    op, args = tree
    vals = sorted(tree_value(a) for a in args)
    if op == MIN:
        return vals[0]
    if op == MAX:
        return vals[-1]
    if op == MED:               # int(np.median): the mean of the middle two, rounded down
        mid = len(vals) // 2
        return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) // 2
    return sum(vals) % 10


@functools.lru_cache(maxsize=32)
def length_distribution(max_depth: int, max_args: int, max_length: int) -> np.ndarray:
    """``p[L]`` = probability that LRA's tree has ``L`` tokens, for ``L <= max_length``.

    By depth, bottom up: a node at the last level is a digit (length 1); above it,
    ``p = 0.75 [L = 1] + 0.25 / (max_args - 1) * sum_k (p_child ^ *k)[L - 2]``
    (``*k``: k-fold convolution). The convolutions run by FFT, long enough that sums of
    up to ``max_args`` lengths do not wrap around (absolute error ~1e-16).
    """
    n = max_length + 1
    size = 1 << (max_args * n).bit_length()             # > max_args * (n - 1): no wrap
    p = np.zeros(n)
    p[1] = 1.0                                          # depth max_depth: a digit
    for _ in range(max_depth - 1):
        f = np.fft.rfft(p, size)
        power, total = f * f, np.zeros_like(f)
        for _k in range(2, max_args + 1):
            total += power
            power = power * f
        sums = np.clip(np.fft.irfft(total, size)[:n], 0.0, None)   # lengths of k args
        p = np.zeros(n)
        p[1] = 1.0 - VALUE_P
        p[2:] = VALUE_P / (max_args - 1) * sums[:n - 2]            # + '[OP' and ']'
    p.setflags(write=False)     # cached: shared by every caller
    return p


def _count_expressions(max_depth: int, max_args: int, max_length: int,
                       cap: float = 1e30) -> np.ndarray:
    """``c[L]`` = number of distinct expressions of ``L`` tokens (saturating at ``cap``)."""
    n = max_length + 1
    c = np.zeros(n)
    c[1] = 10.0
    for _ in range(max_depth - 1):
        power, total = c, np.zeros(n)
        for _k in range(2, max_args + 1):
            power = np.minimum(np.convolve(power, c)[:n], cap)
            total += power
        c = np.zeros(n)
        c[1] = 10.0
        c[2:] = np.minimum(len(OPERATORS) * total[:n - 2], cap)
    return c


def _max_tree_length(max_depth: int, max_args: int) -> int:
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


# ---------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------
MIN_WINDOW_PROBABILITY = 1e-4   # below this, rejection sampling takes > 10^4 draws/example
_MAX_DUPLICATES = 10_000        # consecutive repeats of seen expressions before giving up
_EXACT_COUNT_LENGTH = 64        # past this every reachable length has > 10^22 expressions


@register_task
@dataclass
class ListOps(Task):
    """ListOps (LRA generator) as a causal-LM task: read the expression, then predict
    its value (a digit token) at the last token. See the module docstring."""

    min_length: int = 32        # tokens, inclusive
    max_length: int = 128       # tokens, inclusive; also seq_len
    max_depth: int = 10         # LRA: 10
    max_args: int = 10          # LRA: 10
    n_train: int = 20000        # fixed training set, generated on first use
    n_test: int = 1000          # evaluation set, its own seed stream
    seed: int = 0

    name = "listops"
    kind = "lm"
    TOKENS = TOKENS
    PAD = PAD
    vocab_size = VOCAB_SIZE
    encode = staticmethod(encode)
    decode = staticmethod(decode)

    def __post_init__(self):
        def need(field, ok, expected):
            if not ok:
                raise ValueError(f"listops: {field}: expected {expected}, got "
                                 f"{getattr(self, field)!r}")

        for f in ("min_length", "max_length", "max_depth", "max_args", "n_train", "n_test",
                  "seed"):
            v = getattr(self, f)
            need(f, isinstance(v, int) and not isinstance(v, bool), "an int")
        need("min_length", self.min_length >= 1, "min_length >= 1")
        need("max_length", self.max_length >= self.min_length,
             f"max_length >= min_length ({self.min_length})")
        need("max_length", self.max_length <= 4096, "max_length <= 4096")
        need("max_depth", 2 <= self.max_depth <= 32,
             "2 <= max_depth <= 32 (LRA: 10; depth 1 is a single digit)")
        need("max_args", 2 <= self.max_args <= 32, "2 <= max_args <= 32 (LRA: 10)")
        need("n_train", self.n_train >= 1, "n_train >= 1")
        need("n_test", self.n_test >= 1, "n_test >= 1")
        need("seed", self.seed >= 0, "seed >= 0")

        window = f"[{self.min_length}, {self.max_length}]"
        longest = _max_tree_length(self.max_depth, self.max_args)
        if self.min_length > longest:
            raise ValueError(f"listops: min_length: expected at most {longest}, the longest "
                             f"expression with max_depth={self.max_depth}, "
                             f"max_args={self.max_args}; got {self.min_length}")
        p = self.window_probability
        if p < MIN_WINDOW_PROBABILITY:
            raise ValueError(
                f"listops: min_length/max_length: expected a window of lengths that LRA's "
                f"trees (max_depth={self.max_depth}, max_args={self.max_args}) reach with "
                f"probability >= {MIN_WINDOW_PROBABILITY:g}, got {window} with probability "
                f"{p:.3g}: widen the window or raise max_depth/max_args")
        if min(self.max_length, longest) <= _EXACT_COUNT_LENGTH:
            counts = _count_expressions(self.max_depth, self.max_args,
                                        min(self.max_length, _EXACT_COUNT_LENGTH))
            distinct = counts[self.min_length:].sum()
            if distinct < self.n_train + self.n_test:
                raise ValueError(
                    f"listops: min_length/max_length: expected a window with at least "
                    f"n_train + n_test = {self.n_train + self.n_test} distinct expressions, "
                    f"got {window} with {int(distinct)} (max_depth={self.max_depth}, "
                    f"max_args={self.max_args})")
        self._data: dict[str, dict] = {}       # split -> tensors, filled on first use

    # ------------------------------------------------------------------ properties
    @property
    def seq_len(self) -> int:
        return self.max_length

    @property
    def window_probability(self) -> float:
        """P(an LRA tree has min_length..max_length tokens): the sampler's acceptance."""
        p = length_distribution(self.max_depth, self.max_args, self.max_length)
        return float(p[self.min_length:].sum())

    # ------------------------------------------------------------------ generation
    def example(self, split: str, index: int, seen: set | frozenset = frozenset()
                ) -> tuple[Tree, list[str]]:
        """Example ``index`` of ``split`` ("train"/"test"): the first draw of its own
        stream whose length is in the window and whose tokens are not in ``seen``."""
        rng = random.Random(seed_for(self.seed, "listops", split, index))
        repeats = 0
        while True:
            draw = sample_tree(rng, self.max_depth, self.max_args, self.max_length)
            if draw is None or draw[1] < self.min_length:
                continue
            tree = draw[0]
            tokens = tree_tokens(tree)
            if tuple(tokens) not in seen:
                return tree, tokens
            repeats += 1
            if repeats > _MAX_DUPLICATES:
                raise ValueError(
                    f"listops: min_length/max_length: the window [{self.min_length}, "
                    f"{self.max_length}] holds too few distinct expressions for "
                    f"n_train={self.n_train} + n_test={self.n_test} (max_depth="
                    f"{self.max_depth}, max_args={self.max_args})")

    def split_data(self, split: str) -> dict:
        """The whole split as tensors, generated once and cached:
        ``tokens (N, T)`` uint8, ``length (N,)`` int64, ``answer (N,)`` int64 (digit)."""
        if split in self._data:
            return self._data[split]
        n = self.n_train if split == "train" else self.n_test
        # LRA keeps distinct expressions; train also avoids every test expression
        seen = set(self.split_data("test")["keys"]) if split == "train" else set()
        keys = []
        tokens = np.full((n, self.max_length), PAD, dtype=np.uint8)    # (N, T)
        length = np.zeros(n, dtype=np.int64)                           # (N,)
        answer = np.zeros(n, dtype=np.int64)                           # (N,)
        for i in range(n):
            tree, toks = self.example(split, i, seen)
            key = tuple(toks)
            seen.add(key)
            keys.append(key)
            tokens[i, :len(toks)] = encode(toks)
            length[i] = len(toks)
            answer[i] = tree_value(tree)
        data = {"tokens": torch.from_numpy(tokens), "length": torch.from_numpy(length),
                "answer": torch.from_numpy(answer), "keys": keys}
        self._data[split] = data
        return data

    def _format(self, data: dict, idx: torch.Tensor) -> dict:
        inp = data["tokens"][idx].long()                   # (B, T)
        length = data["length"][idx]                       # (B,)
        target = torch.full_like(inp, IGNORE)              # (B, T)
        rows = torch.arange(len(idx))
        target[rows, length - 1] = data["answer"][idx] + _ID["0"]   # answer digit's id
        return {"input": inp, "target": target, "length": length}

    # ------------------------------------------------------------------ Task API
    def batch(self, step: int, batch_size: int) -> dict:
        """Training batch ``step``: ``batch_size`` examples drawn (with replacement) from
        the fixed training set by a generator seeded with (seed, "train", step)."""
        _check_count("step", step, 0)
        _check_count("batch_size", batch_size, 1)
        data = self.split_data("train")
        g = torch.Generator().manual_seed(seed_for(self.seed, "train", step))
        idx = torch.randint(self.n_train, (batch_size,), generator=g)   # (B,)
        return self._format(data, idx)

    def eval_batches(self, batch_size: int) -> list[dict]:
        """The whole test set in order, ``batch_size`` at a time (the last may be smaller)."""
        _check_count("batch_size", batch_size, 1)
        data = self.split_data("test")
        return [self._format(data, torch.arange(s, min(s + batch_size, self.n_test)))
                for s in range(0, self.n_test, batch_size)]


def _check_count(field: str, value, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"listops: {field}: expected an int >= {least}, got {value!r}")
