"""Zachary's karate club (``networkx.karate_club_graph()``) as node classification.

34 members, 78 friendships; after the split of the club each member sided with
``'Mr. Hi'`` (label 0, led by node 0) or ``'Officer'`` (label 1, led by node 33),
17 each. As in Kipf & Welling's semi-supervised karate example the features are
the identity (a one-hot node id, ``n_features = 34``).

``edge_index (2, 156)`` int64 lists both directions of every friendship, sorted,
without self loops (the GAT adds them). The train mask holds
``n_train_per_class`` members of each club, always including its leader (node 0,
node 33) as the classic example does, the others chosen by ``seed``; the test mask
is every other member.

The whole graph is one batch: ``batch(step, batch_size)`` returns it whatever the
step and batch size, ``eval_batches`` returns ``[it]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..core.checks import check_int
from .base import Task, register_task, seed_for

__all__ = ["KarateClub"]

CLUBS = ("Mr. Hi", "Officer")      # label 0, label 1
LEADERS = (0, 33)                  # the leader of each club, by label


def _karate() -> tuple[torch.Tensor, torch.Tensor]:
    """``edge_index (2, 156)`` int64 and ``label (34,)`` int64."""
    import networkx as nx

    g = nx.karate_club_graph()
    edges = sorted({e for u, v in g.edges() if u != v for e in ((u, v), (v, u))})
    edge_index = torch.tensor(edges, dtype=torch.long).T.contiguous()         # (2, 156)
    label = torch.tensor([CLUBS.index(g.nodes[n]["club"]) for n in sorted(g.nodes)])
    return edge_index, label


@register_task
@dataclass
class KarateClub(Task):
    n_train_per_class: int = 4
    seed: int = 0

    name = "karate"
    kind = "graph"
    n_features = 34
    n_classes = 2

    def __post_init__(self):
        check_int("n_train_per_class", self.n_train_per_class)
        check_int("seed", self.seed, minimum=0)
        smallest = int(self._graph["label"].bincount().min())                # 17
        if self.n_train_per_class >= smallest:
            raise ValueError(f"n_train_per_class: expected at most {smallest - 1} (a club has "
                             f"{smallest} members and one at least stays in the test set), got "
                             f"{self.n_train_per_class}")

    @cached_property
    def _graph(self) -> dict:
        edge_index, label = _karate()
        return {"x": torch.eye(len(label)), "edge_index": edge_index, "label": label}

    @cached_property
    def _train_mask(self) -> torch.Tensor:
        label = self._graph["label"]
        gen = torch.Generator().manual_seed(seed_for(self.seed, "split"))
        mask = torch.zeros(len(label), dtype=torch.bool)                      # (34,)
        for c, leader in enumerate(LEADERS):
            others = ((label == c) & (torch.arange(len(label)) != leader)).nonzero()[:, 0]
            picks = torch.randperm(len(others), generator=gen)[:self.n_train_per_class - 1]
            mask[leader] = True
            mask[others[picks]] = True
        return mask

    def batch(self, step: int, batch_size: int) -> dict:
        """The whole graph (``step`` and ``batch_size`` are ignored):
        ``x (34, 34)``, ``edge_index (2, 156)``, ``label (34,)``, ``train_mask``,
        ``test_mask (34,)``."""
        out = {k: v.clone() for k, v in self._graph.items()}
        out["train_mask"] = self._train_mask.clone()
        out["test_mask"] = ~self._train_mask
        return out

    def eval_batches(self, batch_size: int) -> list[dict]:
        """``[the whole graph]`` (``batch_size`` is ignored)."""
        return [self.batch(0, batch_size)]
