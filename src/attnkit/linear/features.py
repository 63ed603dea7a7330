"""Feature maps phi: R^D -> R^F for linear attention: ``elu`` (elu(x) + 1, Katharopoulos et
al. 2020), ``relu``, and Performer's FAVOR+ positive orthogonal random features
(Choromanski et al. 2020), an unbiased estimator of ``exp(scale * q.k)``."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["FeatureMap", "EluFeatureMap", "ReluFeatureMap", "FavorPlus", "make_feature_map"]


class FeatureMap:
    """phi: (..., D) -> (..., F), non-negative. ``log_domain`` maps also give
    ``log_features`` (used for stabilisation)."""
    name = "feature map"
    log_domain = False

    def n_features(self, dim: int) -> int:
        return dim

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def check(self, dim: int) -> None:
        """Raise ValueError if this map cannot take inputs of head dim ``dim``."""

    def __repr__(self):
        return self.name


class EluFeatureMap(FeatureMap):
    """elu(x) + 1 (Katharopoulos et al. 2020): positive, F = D."""
    name = "elu"

    def __call__(self, x):
        return torch.nn.functional.elu(x) + 1.0


class ReluFeatureMap(FeatureMap):
    """relu(x): non-negative, F = D; a row can have denominator 0 (see eps)."""
    name = "relu"

    def __call__(self, x):
        return torch.relu(x)


class FavorPlus(FeatureMap):
    """Performer FAVOR+ positive random features for ``exp(scale * q.k)``:

        phi(x) = exp(W x' - |x'|² / 2) / sqrt(m),   x' = x * sqrt(scale),

    so that E[phi(q).phi(k)] = exp(q'.k'). Rows of W (m x dim) are orthogonal in blocks
    of ``dim`` (``orthogonal=True``) with norms drawn from chi(dim), like i.i.d. Gaussian
    rows' norms. ``scale`` defaults to 1/sqrt(dim). ``redraw(seed)`` draws a new W.
    """
    log_domain = True

    def __init__(self, dim: int, n_features: int, *, seed: int = 0, scale: float | None = None,
                 orthogonal: bool = True):
        for name, val in (("dim", dim), ("n_features", n_features), ("seed", seed)):
            if isinstance(val, bool) or not isinstance(val, int):
                raise TypeError(f"FavorPlus: {name} must be an int, got {type(val).__name__}")
        if dim < 1:
            raise ValueError(f"FavorPlus: dim must be >= 1, got {dim}")
        if n_features < 1:
            raise ValueError(f"FavorPlus: n_features must be >= 1, got {n_features}")
        if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)
                                      and scale > 0):
            raise ValueError(f"FavorPlus: scale must be a positive finite number, got {scale!r}")
        self.dim, self.m, self.orthogonal = dim, n_features, bool(orthogonal)
        self.scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
        self.redraw(seed)

    @property
    def name(self):
        return f"favor+({self.m})"

    def redraw(self, seed: int) -> "FavorPlus":
        """Draw a new projection W from ``seed`` (in place); returns self."""
        g = torch.Generator().manual_seed(int(seed))
        d, m = self.dim, self.m
        if self.orthogonal:
            blocks = []
            for _ in range(math.ceil(m / d)):
                Q, R = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
                blocks.append((Q * torch.sign(torch.diagonal(R))).T)   # Haar rows
            norms = torch.randn(m, d, generator=g, dtype=torch.float64).norm(dim=1)
            self.W = torch.cat(blocks)[:m] * norms[:, None]             # (m, d)
        else:
            self.W = torch.randn(m, d, generator=g, dtype=torch.float64)
        self.seed = int(seed)
        return self

    def n_features(self, dim):
        return self.m

    def check(self, dim):
        if dim != self.dim:
            raise ValueError(f"feature_map: FavorPlus was built for head dim {self.dim}, got "
                             f"inputs with D={dim}")

    def log_features(self, x: Tensor) -> Tensor:
        """log phi(x): (..., dim) -> (..., m)."""
        x = x * math.sqrt(self.scale)
        W = self.W.to(device=x.device, dtype=x.dtype)
        return x @ W.T - 0.5 * (x * x).sum(-1, keepdim=True) - 0.5 * math.log(self.m)

    def __call__(self, x):
        return torch.exp(self.log_features(x))


_MAPS = {"elu": EluFeatureMap, "relu": ReluFeatureMap}


def make_feature_map(fm, dim: int) -> FeatureMap:
    """``"elu"``, ``"relu"`` or a FeatureMap, checked for head dim ``dim``."""
    if isinstance(fm, str):
        if fm not in _MAPS:
            raise ValueError(f"feature_map: expected 'elu', 'relu' or a FeatureMap (e.g. "
                             f"FavorPlus(dim, n_features)), got {fm!r}")
        fm = _MAPS[fm]()
    if not isinstance(fm, FeatureMap):
        raise TypeError(f"feature_map: expected 'elu', 'relu' or a FeatureMap, got "
                        f"{type(fm).__name__}")
    fm.check(dim)
    return fm


