"""scikit-learn's bundled 8x8 handwritten digits as an image-classification task.

``sklearn.datasets.load_digits()`` ships in the scikit-learn wheel (nothing is
downloaded): 1797 grey images of 8x8 pixels with values 0..16, 10 classes. Pixels
are scaled to [0, 1] (divided by 16), then standardised with the scalar mean and
standard deviation of the *training* split.

The train/test split is stratified and fixed by ``seed``: each class puts
``round(test_fraction * class size)`` of its images, at least 1 and at most all
but 1, in the test split. Training batches sample the train split (without
replacement within a batch); :meth:`Digits.eval_batches` covers the test split in
order. Batches: ``images (B, 1, 8, 8)`` float32, ``label (B,)`` int64.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..core.checks import check_int
from .base import Task, register_task, seed_for

__all__ = ["Digits"]


class _Split(NamedTuple):
    train_idx: np.ndarray        # (n_train,) indices into load_digits(), ascending
    test_idx: np.ndarray         # (n_test,)
    train_images: Tensor         # (n_train, 1, 8, 8) float32, standardised
    train_labels: Tensor         # (n_train,) int64
    test_images: Tensor          # (n_test, 1, 8, 8)
    test_labels: Tensor          # (n_test,)


@register_task
@dataclass
class Digits(Task):
    test_fraction: float = 0.2
    seed: int = 0

    name = "digits"
    kind = "image"
    image_size = 8
    channels = 1
    n_classes = 10

    def __post_init__(self):
        f = self.test_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f < 1.0:
            raise ValueError(f"test_fraction: expected a number in (0, 1), got {f!r}")
        check_int("seed", self.seed, minimum=0)

    @cached_property
    def _split(self) -> _Split:
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = digits.images / 16.0                                          # (1797, 8, 8)
        labels = digits.target                                                 # (1797,)
        rng = np.random.default_rng(seed_for(self.seed, "split"))
        test = []
        for c in range(self.n_classes):
            members = np.flatnonzero(labels == c)
            n_test = min(max(round(self.test_fraction * len(members)), 1), len(members) - 1)
            test.append(rng.permutation(members)[:n_test])
        test_idx = np.sort(np.concatenate(test))
        train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)             # sorted
        mean, std = pixels[train_idx].mean(), pixels[train_idx].std()
        images = torch.from_numpy((pixels - mean) / std).float()[:, None]     # (1797, 1, 8, 8)
        labels = torch.from_numpy(labels).long()
        return _Split(train_idx, test_idx, images[train_idx], labels[train_idx],
                      images[test_idx], labels[test_idx])

    @property
    def n_train(self) -> int:
        return len(self._split.train_idx)

    @property
    def n_test(self) -> int:
        return len(self._split.test_idx)

    @property
    def train_indices(self) -> np.ndarray:
        """Positions in ``load_digits()`` of the train split, ascending."""
        return self._split.train_idx.copy()

    @property
    def test_indices(self) -> np.ndarray:
        """Positions in ``load_digits()`` of the test split, ascending."""
        return self._split.test_idx.copy()

    def batch(self, step: int, batch_size: int) -> dict:
        check_int("step", step, minimum=0)
        check_int("batch_size", batch_size)
        if batch_size > self.n_train:
            raise ValueError(f"batch_size: expected at most n_train={self.n_train} (sampling "
                             f"without replacement), got {batch_size}")
        gen = torch.Generator().manual_seed(seed_for(self.seed, "train", step))
        idx = torch.randperm(self.n_train, generator=gen)[:batch_size]        # (B,)
        return {"images": self._split.train_images[idx], "label": self._split.train_labels[idx]}

    def eval_batches(self, batch_size: int) -> list[dict]:
        check_int("batch_size", batch_size)
        s = self._split
        return [{"images": s.test_images[i:i + batch_size].clone(),           # (B, 1, 8, 8)
                 "label": s.test_labels[i:i + batch_size].clone()}            # (B,)
                for i in range(0, self.n_test, batch_size)]
