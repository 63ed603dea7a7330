"""The training recipe of the models ``attnkit train`` builds from scratch.

The models' own constructors initialise as GPT-2 does (every Linear and Embedding at
N(0, 0.02), the output tied to the token embedding) -- right for loading pretrained
checkpoints, which overwrite it, but a poor start for the small models trained here:
at width 64 the token embeddings are 50x smaller than the unit-variance activations
the pre-norm layers expect, the attention logits start ~0 (uniform attention), and the
tied output cannot move the embeddings without moving the logits. Dense attention
then sits for thousands of steps on the plateau where it answers with the most
frequent value in the context (measured; see the README's quality table).

:func:`apply_recipe` re-initialises a freshly built model after construction (it
never touches :mod:`attnkit.models`, so checkpoint loading is unaffected). The recipe
is part of :class:`~attnkit.train.TrainConfig` (``init``, ``embed_std``,
``tie_output``, ``schedule``, ``min_lr_ratio``, ``target_acc``) and so of every run's
``config.json``.

``init``:

===========  ============================================================================
``scaled``   (default) token (and learned position) embeddings N(0, embed_std = 1);
             every other Linear N(0, 1/fan_in) (LeCun normal: unit-variance inputs give
             unit-variance outputs, so the attention logits start O(1) at any width);
             the residual-branch outputs (attention ``o_proj``, FFN ``down``) further
             divided by sqrt(2 * layers) (GPT-2's scaling, so the residual stream does
             not grow with depth); an untied output layer N(0, 1/d_model) (its input is
             layer-normed, so the first logits are N(0, 1)); biases 0 (norms keep 1)
``normal``   the models' constructor init: N(0, 0.02) everywhere (embed_std 0.02);
             with ``tie_output`` this is the recipe before attnkit 0.x (``legacy``)
``torch``    PyTorch's defaults (``reset_parameters()`` of every module: Embedding
             N(0, 1), Linear kaiming-uniform U(+-1/sqrt(fan_in)))
===========  ============================================================================

Only the GPT is fully re-initialised; the SSM keeps its Mamba initialisation of the
mixer (A, delta, D, conv) and gets the recipe's embedding and output layer; the
Transformer, ViT and GAT keep their constructors' init (``init`` is recorded as
``model`` for them: they learn their tasks under it, see the quality table).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["INITS", "SCHEDULES", "apply_recipe", "describe", "LEGACY"]

INITS = ("scaled", "normal", "torch", "model")
SCHEDULES = ("constant", "cosine")
DEFAULT_EMBED_STD = {"scaled": 1.0, "normal": 0.02, "torch": 1.0, "model": None}

# the values of the recipe fields for a config.json written before they existed
LEGACY = {"init": "normal", "embed_std": 0.02, "tie_output": True, "schedule": "cosine",
          "target_acc": None}

# names of the Linear layers whose output is added to the residual stream
_RESIDUAL_OUT = ("o_proj", "down", "out_proj")


def _linears(model: nn.Module, skip: tuple):
    """(name, Linear) of ``model`` outside the submodules named in ``skip``."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and not any(name.startswith(s) or f".{s}." in f".{name}"
                                                for s in skip):
            yield name, m


def apply_recipe(model: nn.Module, cfg) -> nn.Module:
    """Re-initialise ``model`` (just built for ``cfg``, a TrainConfig) by ``cfg.init``;
    draws from the current torch RNG. Returns ``model``."""
    from ..models import GPT, SSM
    from ..modules import LearnedPositions
    if cfg.init == "model" or not isinstance(model, (GPT, SSM)):
        return model
    if isinstance(model, GPT):
        embeds = [model.tok_emb.weight]                               # (V, d)
        if isinstance(model.pos_emb, LearnedPositions):
            embeds.append(model.pos_emb.weight)                       # (max_len, d)
        head, skip = model.lm_head, ()
    else:                                       # SSM: the mixer keeps Mamba's init
        embeds = [model.embed.weight]
        head, skip = (None if model.cfg.tie_embeddings else model.lm_head), ("mixer",)
    n_layers = len(model.layers)
    with torch.no_grad():
        for w in embeds:
            nn.init.normal_(w, std=cfg.embed_std)
        for name, m in _linears(model, skip):
            if any(m.weight is w for w in embeds):          # a tied output layer
                continue
            if cfg.init == "torch":
                m.reset_parameters()
                continue
            if cfg.init == "normal":
                std = 0.02
            elif m is head:                 # layer-normed input: first logits N(0, 1)
                std = m.in_features ** -0.5
            else:
                std = m.in_features ** -0.5
                if name.rsplit(".", 1)[-1] in _RESIDUAL_OUT:
                    std /= math.sqrt(2 * n_layers)
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def describe(cfg, lrs: list[float] | None = None) -> str:
    """One line: the recipe of ``cfg`` (for logs and the quality table); ``lrs``: the
    learning rates a sweep chose from (instead of ``cfg.lr``)."""
    if cfg.init == "model":
        init = "the model's own init"
    else:
        init = (f"init {cfg.init} (embeddings N(0, {cfg.embed_std:g})), "
                f"{'tied' if cfg.tie_output else 'untied'} output")
    lr = f"{cfg.lr:g}" if not lrs else f"best of {'/'.join(f'{x:g}' for x in lrs)}"
    sched = (f"constant lr {lr}" if cfg.schedule == "constant" else
             f"cosine lr {lr} -> {cfg.min_lr_ratio:g}x")
    stop = f", stop at {cfg.target_acc:g}" if cfg.target_acc is not None else ""
    return (f"{init}, {sched} after {cfg.warmup} warm-up steps, AdamW wd "
            f"{cfg.weight_decay:g}, clip {cfg.grad_clip:g}, batch {cfg.batch_size}{stop}")
