"""The settings of one ``attnkit adapt`` run (:class:`AdaptConfig`), checked on creation:
a bad value raises ValueError naming the option, what was expected and what came."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..engine.variants import parse_variant

__all__ = ["AdaptConfig"]


@dataclass
class AdaptConfig:
    model: str                       # "minilm" or a Hugging Face checkpoint directory
    variant: str                     # the variant grammar: window:64, linear:hedgehog, gqa:4
    text: str                        # training text (a file)
    steps: int                       # optimizer steps, stage 1 + stage 2
    eval_text: str | None = None     # held-out text; None: the last windows of `text`
    seq: int = 128                   # tokens per window (special tokens included)
    batch_size: int = 8              # windows per step
    stage1_steps: int | None = None  # attention transfer steps (default: a quarter)
    lr1: float = 1e-3                # stage 1 (attention transfer)
    lr2: float = 5e-5                # stage 2 (distillation)
    stage1_weights: float | None = None  # linear, gqa variants: weight of stage 1's attention-
    #   weight matching term (0: outputs only); default 1 for a learnable feature map, 0 for
    #   a fixed one and for gqa (measured: no gain there, see the README); refused (> 0)
    #   for sparse variants; set on creation
    eval_every: int | None = None    # held-out fidelity every K steps (default: steps / 5)
    eval_fraction: float = 0.1       # share of `text`'s windows held out (no --eval-text)
    eval_windows: int = 64           # at most this many held-out windows are scored
    ckpt_every: int | None = None    # default: with each evaluation
    seed: int = 0
    threads: int | None = None       # torch threads (kept for resume: sums differ by count)

    def __post_init__(self):
        try:
            v = parse_variant(self.variant)
        except ValueError as e:
            raise ValueError(f"--variant: {e}") from None
        if v.is_model:
            raise ValueError(f"--variant: {v.text!r} is a model, not an attention a "
                             "pretrained model can be adapted to")
        if v.name == "dense":
            raise ValueError("--variant: 'dense' is the teacher itself; nothing to adapt")
        for name in ("steps", "seq", "batch_size", "eval_windows"):
            _int(name, getattr(self, name), 1)
        _int("seed", self.seed, 0)
        for name in ("stage1_steps", "eval_every", "ckpt_every", "threads"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 0 if name == "stage1_steps" else 1)
        if self.stage1_steps is not None and self.stage1_steps > self.steps:
            raise ValueError(f"--stage1-steps: expected at most --steps ({self.steps}), got "
                             f"{self.stage1_steps}")
        for name in ("lr1", "lr2"):
            val = getattr(self, name)
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
                raise ValueError(f"--{name}: expected a positive number, got {val!r}")
        w = self.stage1_weights
        if w is None:
            self.stage1_weights = 1.0 if v.is_linear and v.learned else 0.0
        elif isinstance(w, bool) or not (isinstance(w, (int, float)) and math.isfinite(w)
                                         and w >= 0):
            raise ValueError(f"--stage1-weights: expected a number >= 0, got {w!r}")
        elif w and not (v.is_linear or v.is_gqa):
            raise ValueError(f"--stage1-weights: only a linear or gqa variant's stage 1 "
                             f"matches attention weights; {v.text!r} fits the attention "
                             "outputs only: its rows are the teacher's logits renormalised "
                             "over the allowed keys, equal to the renormalised teacher rows "
                             "from the start (give 0 or leave it out)")
        else:
            self.stage1_weights = float(w)
        if not (0 < self.eval_fraction < 1):
            raise ValueError(f"--eval-fraction: expected a number in (0, 1), got "
                             f"{self.eval_fraction!r}")

    @property
    def stage1(self) -> int:
        """Attention-transfer steps (the first ones); the rest distil the whole model."""
        return self.steps // 4 if self.stage1_steps is None else self.stage1_steps

    @property
    def every(self) -> int:
        return self.eval_every or max(1, self.steps // 5)

    def label(self) -> str:
        return f"adapt {self.variant}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AdaptConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"adapt config: unknown fields {unknown}")
        # a run saved before weight matching existed resumes as it was trained
        return cls(**{**_BEFORE, **d})


_BEFORE = {"stage1_weights": 0.0}   # fields added later: their value in runs saved before


def _int(name: str, val, lo: int) -> None:
    if isinstance(val, bool) or not isinstance(val, int) or val < lo:
        raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= {lo}, got {val!r}")
