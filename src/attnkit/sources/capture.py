"""What ``attnkit inspect`` captured from a model, whichever path loaded it.

A :class:`Capture` holds one or more :class:`View` s -- a set of attention maps
``weights (L, H, Tq, Tk)`` with the query and key tokens -- and the notes the page and
the terminal must state (truncation, generation stops, image resizing). Views:

* ``self``: self-attention of a text encoder or decoder (the prompt), Tq == Tk;
* ``encoder`` / ``decoder`` / ``cross``: an encoder-decoder's three maps (cross is
  rectangular: decoder tokens x encoder tokens);
* ``generation``: how generated tokens attend (rectangular: one row per generated token,
  one column per prompt or generated token; zero where a key did not exist yet);
* ``patches``: a vision transformer's [CLS] + patch tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from .words import Tokens, detect_scheme, from_pieces


@dataclasses.dataclass
class View:
    name: str                 # self | encoder | decoder | cross | generation | patches
    about: str                # one line for the page ("decoder tokens x encoder tokens")
    q: Tokens                 # query tokens (rows)
    k: Tokens                 # key tokens (columns)
    weights: Tensor           # (L, H, Tq, Tk) float32, CPU
    layers: list[int]         # the model's layer number of each of the L maps
    causal: bool = False

    def __post_init__(self):
        L, H, Tq, Tk = self.weights.shape
        if (Tq, Tk) != (len(self.q), len(self.k)) or L != len(self.layers):
            raise ValueError(f"view {self.name!r}: weights {tuple(self.weights.shape)} do not "
                             f"match {len(self.layers)} layers, {len(self.q)} query and "
                             f"{len(self.k)} key tokens")


@dataclasses.dataclass
class Capture:
    model: str                # as the user named it (--model)
    arch: str                 # the architecture (config.json's architectures[0])
    via: str                  # "attnkit" or "transformers"
    kind: str                 # encoder | decoder | encoder-decoder | image
    text: str                 # the input text (or the image path)
    views: list[View]
    attention: str            # how the weights were computed ("eager", "attnkit tiled" ...)
    notes: list[str] = dataclasses.field(default_factory=list)
    n_layers: int = 0
    image: dict | None = None  # {"png": bytes, "grid": (rows, cols), "first": index}
    generated: list[str] | None = None

    def view(self, name: str) -> View:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def main(self) -> View:
        """The view ranking and the PNGs use: the first square one."""
        return next((v for v in self.views if len(v.q) == len(v.k)), self.views[0])


def parse_layers(text: str | None, n_layers: int, what: str = "the model") -> list[int]:
    """``'0,5'`` (or ``'-1'`` for the last, ``'2-4'`` for a range) -> sorted layer numbers."""
    if not text:
        return list(range(n_layers))
    import re
    out = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            out.update(range(int(m.group(1)), int(m.group(2)) + 1))
        elif re.fullmatch(r"-?\d+", part):
            x = int(part)
            out.add(x + n_layers if x < 0 else x)
        else:
            raise ValueError(f"--layers: expected layer numbers like '0,5', '2-4' or '-1', "
                             f"got {text!r}")
    bad = sorted(x for x in out if not 0 <= x < n_layers)
    if bad:
        raise ValueError(f"--layers: {what} has layers 0..{n_layers - 1}, got {text!r}")
    return sorted(out)


def stack(per_layer: Sequence[Tensor | None], layers: list[int]) -> Tensor:
    """Per-layer weights ``(B, H, Tq, Tk)`` (None where not computed) -> the chosen
    layers of batch row 0, ``(L, H, Tq, Tk)`` float32 on the CPU."""
    missing = [i for i in layers if per_layer[i] is None]
    if missing:
        raise RuntimeError(f"the model returned no attention weights for layers {missing}")
    return torch.stack([per_layer[i][0].detach().float().cpu() for i in layers])


def assemble(steps: list[list[Tensor]], tk: int) -> Tensor:
    """Decoding steps -> one rectangular map. ``steps[s][l]`` is layer l's ``(H, 1, k_s)``
    row at step s (k_s keys existed then); the result is ``(L, H, S, tk)``, zero where a
    key did not exist yet."""
    L, H = len(steps[0]), steps[0][0].shape[0]
    out = torch.zeros(L, H, len(steps), tk)
    for s, rows in enumerate(steps):
        for li, r in enumerate(rows):
            if r.dim() != 3 or r.shape[1] != 1 or r.shape[0] != H or r.shape[2] > tk:
                raise ValueError(f"step {s} layer {li}: expected an (H={H}, 1, <= {tk}) row, "
                                 f"got {tuple(r.shape)}")
            out[li, :, s, :r.shape[2]] = r[:, 0].float().cpu()
    return out


def looks_causal(w: Tensor) -> bool:
    """True if every weight above the (end-aligned) diagonal is exactly zero."""
    Tq, Tk = w.shape[-2:]
    if Tq < 2:
        return False
    above = torch.ones(Tq, Tk, dtype=torch.bool).triu(1 + Tk - Tq)
    return bool((w[..., above] == 0).all())


def piece_tokens(raw: list[str], decoded: list[str] | None, special: list[bool],
                 like: Tokens | None = None) -> Tokens:
    """Tokens without offsets (generated ones); ``like``: the prompt, whose tokenizer
    scheme (byte-level/SentencePiece vs WordPiece) decides word starts."""
    scheme = detect_scheme(like.raw + raw) if like is not None else None
    return from_pieces(raw, decoded, special, scheme=scheme)
