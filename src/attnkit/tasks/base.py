"""What every training task shares: the batch formats, seeding, the registry.

A task is a small dataclass of its parameters (vocabulary, length, ...) plus a
``seed``. Data are a pure function of ``(seed, split, index)``: ``batch(step, n)``
returns the same tensors whenever it is asked, in any process, so a resumed or
data-parallel run sees exactly the batches of an uninterrupted single-process one
(the data position is just the step number).

Batch formats (dicts of tensors, batch dimension first, so a data-parallel rank
takes ``t[r * n // P:(r + 1) * n // P]`` of each):

=============  ==============================================================
kind           keys
=============  ==============================================================
``lm``         ``input (B, T)`` int64 tokens; ``target (B, T)`` int64, the token
               expected from the model *at that position* (a causal model reads
               input[:, :t+1]), ``IGNORE`` (-100) where no prediction is scored
``seq2seq``    ``src (B, S)``, ``tgt_in (B, T)`` (BOS + target, padded),
               ``tgt_out (B, T)`` (target + EOS, ``IGNORE`` on padding)
``image``      ``images (B, C, H, W)`` float32; ``label (B,)`` int64
``graph``      one whole graph: ``x (N, F)``, ``edge_index (2, E)``, ``label (N,)``,
               ``train_mask``/``test_mask (N,)`` bool (not split across ranks)
=============  ==============================================================
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["IGNORE", "KINDS", "Task", "seed_for", "register_task", "make_task", "task_names",
           "parse_task_args"]

IGNORE = -100
KINDS = ("lm", "seq2seq", "image", "graph")


def seed_for(*parts: int | str) -> int:
    """A well-mixed 63-bit seed from ints/strings (stable across processes and runs)."""
    ints = [p if isinstance(p, int) else int.from_bytes(p.encode(), "little") % (1 << 63)
            for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Task:
    """Base class. Subclasses are dataclasses with a ``seed`` field and set
    ``name``, ``kind``; they implement :meth:`batch` and :meth:`eval_batches`.

    ``lm`` tasks also give ``vocab_size`` and ``seq_len`` (model input length);
    ``seq2seq`` tasks ``src_vocab``, ``tgt_vocab`` and lengths; ``image`` tasks
    ``image_size``, ``channels``, ``n_classes``; ``graph`` tasks ``n_features``,
    ``n_classes``.
    """

    name: str = "task"
    kind: str = "lm"
    seed: int = 0

    def batch(self, step: int, batch_size: int) -> dict:
        """Training batch number ``step`` (a pure function of seed, step, batch_size)."""
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> list[dict]:
        """The fixed evaluation set (disjoint seed stream from training), in batches."""
        raise NotImplementedError

    def describe(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))
        return f"{self.name}({fields})"


_TASKS: dict[str, type] = {}


def register_task(cls):
    """Class decorator: make ``cls`` available to :func:`make_task` under ``cls.name``."""
    _TASKS[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_TASKS)


def make_task(name: str, **params) -> Task:
    """``make_task("mqar", seq_len=128, n_pairs=8)``: errors name the task and the field."""
    if name not in _TASKS:
        raise ValueError(f"task: expected one of {', '.join(task_names())}, got {name!r}")
    cls = _TASKS[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    bad = sorted(set(params) - set(fields))
    if bad:
        raise ValueError(f"task {name!r}: unknown parameter(s) {', '.join(bad)}; parameters are "
                         f"{', '.join(fields)}")
    return cls(**params)


def parse_task_args(name: str, text: str | None) -> dict:
    """``"seq_len=128,n_pairs=8"`` -> typed values, by the task's field types."""
    if not text:
        return {}
    if name not in _TASKS:
        raise ValueError(f"task: expected one of {', '.join(task_names())}, got {name!r}")
    fields = {f.name: f for f in dataclasses.fields(_TASKS[name])}
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"task args: expected key=value items like 'seq_len=128', got "
                             f"{item!r}")
        if key not in fields:
            raise ValueError(f"task {name!r}: unknown parameter {key!r}; parameters are "
                             f"{', '.join(fields)}")
        default = fields[key].default
        kind = type(default) if default is not dataclasses.MISSING and default is not None \
            else int
        try:
            out[key] = (val.strip().lower() in ("1", "true", "yes")) if kind is bool \
                else kind(val.strip())
        except ValueError:
            raise ValueError(f"task {name!r}: parameter {key}: expected a {kind.__name__}, got "
                             f"{val!r}") from None
    return out
