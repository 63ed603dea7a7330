"""ListOps' grammar, vocabulary and independent evaluator (the generator and the task
are in :mod:`.listops`, which re-exports every name here).

Grammar (LRA's ``lra_benchmarks/data/listops.py``)::

    expr  := digit | op expr expr ... ']'      (2 to max_args arguments)
    op    := '[MIN' | '[MAX' | '[MED' | '[SM'
    digit := '0' | ... | '9'

``MED`` is ``int(np.median(args))`` (for an even count the mean of the two middle
values rounded down); ``SM`` is the sum modulo 10.

Vocabulary: ``PAD`` = 0, digits ``'0'..'9'`` = 1..10, ``'[MIN' '[MAX' '[MED' '[SM'``
= 11..14, ``']'`` = 15 (:data:`TOKENS`, :func:`encode`, :func:`decode`).

:func:`evaluate` computes the value of a token sequence with an explicit stack, with
no tree involved: it is the independent check of the generator's labels
(:func:`~attnkit.tasks.listops.tree_value`), and the tests hold every label against it.
"""
from __future__ import annotations

import statistics
from typing import Sequence

__all__ = ["TOKENS", "PAD", "VOCAB_SIZE", "OPERATORS", "END", "DIGITS", "VALUE_P", "MIN",
           "MAX", "MED", "SUM_MOD", "encode", "decode", "evaluate"]

MIN, MAX, MED, SUM_MOD = "[MIN", "[MAX", "[MED", "[SM"
OPERATORS = (MIN, MAX, MED, SUM_MOD)
END = "]"
DIGITS = tuple(str(d) for d in range(10))
VALUE_P = 0.25                  # P(operator) at a node above max_depth (LRA's VALUE_P)

PAD = 0
TOKENS = ["<pad>", *DIGITS, *OPERATORS, END]   # id: <pad> 0, digit d -> d + 1, ...
VOCAB_SIZE = len(TOKENS)                        # 16
_ID = {tok: i for i, tok in enumerate(TOKENS)}


def encode(tokens: Sequence[str]) -> list[int]:
    """``['[SM', '5', '6', ']'] -> [14, 6, 7, 15]``."""
    try:
        return [_ID[t] for t in tokens]
    except KeyError as e:
        raise ValueError(f"listops: unknown token {e.args[0]!r}; tokens are {TOKENS}") from None


def decode(ids) -> list[str]:
    """Token ids (list, array or 1-D tensor) -> token strings (PAD -> ``'<pad>'``)."""
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    bad = [i for i in ids if not 0 <= i < VOCAB_SIZE]
    if bad:
        raise ValueError(f"listops: token ids must be in [0, {VOCAB_SIZE}), got {bad[0]}")
    return [TOKENS[i] for i in ids]


# ---------------------------------------------------------------------------
# the independent evaluator: token sequence -> value, with an explicit stack
# ---------------------------------------------------------------------------
def evaluate(tokens: Sequence[str]) -> int:
    """Value of a ListOps expression given as tokens (no tree involved).

    Each open operator pushes a frame; digits and finished sub-expressions are
    appended to the top frame's arguments; ``']'`` pops the frame and applies it.
    """
    frames: list[tuple[str | None, list[int]]] = [(None, [])]   # bottom: the whole input
    for pos, tok in enumerate(tokens):
        if tok in OPERATORS:
            frames.append((tok, []))
        elif tok == END:
            if len(frames) == 1:
                raise ValueError(f"listops: unmatched ']' at token {pos}")
            op, args = frames.pop()
            if not args:
                raise ValueError(f"listops: {op} without arguments closed at token {pos}")
            if op == MIN:
                value = min(args)
            elif op == MAX:
                value = max(args)
            elif op == MED:
                value = int(statistics.median(args))   # LRA: int(np.median(args))
            else:
                value = sum(args) % 10
            frames[-1][1].append(value)
        elif tok in DIGITS:
            frames[-1][1].append(int(tok))
        else:
            raise ValueError(f"listops: unknown token {tok!r} at position {pos}")
    if len(frames) != 1:
        raise ValueError(f"listops: {len(frames) - 1} operator(s) not closed")
    if len(frames[0][1]) != 1:
        raise ValueError(f"listops: expected one expression, got {len(frames[0][1])} values")
    return frames[0][1][0]
