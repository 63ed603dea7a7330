"""Teacher and student: the teacher is the model as loaded (every layer through
``attn_implementation="attnkit"``, dense and exact), the student a copy of it running the
variant (``"attnkit:<variant>"``), with the variant's own parameters installed.

What stage 1 (attention transfer) trains, per attention layer, the rest frozen:

* ``linear:hedgehog``: the per-head feature maps only (LoLCATs/Hedgehog);
* ``gqa:N``: the key and value projections, first mean-pooled over each group of heads
  (Ainslie et al. 2023: the heads of a group get the group's mean weights, so they stay
  tied -- equal gradients -- and the saved model is a GQA model under any attention);
* every other variant (window, bigbird, linear:elu, ...): the query, key and value
  projections (the variant has no parameters of its own).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..integrations.hf import learned
from ..engine.variants import Variant, parse_variant

__all__ = ["Pair", "open_pair", "projections"]

_NAMES = {"q": ("query", "q_proj", "q"), "k": ("key", "k_proj", "k"),
          "v": ("value", "v_proj", "v")}


@dataclass
class Pair:
    source: object            # the model source (HFSource, ready): tokenizer, windows, plan
    teacher: nn.Module
    student: nn.Module
    t_mods: list              # attention modules by layer, teacher
    s_mods: list              # the same, student
    variant: Variant
    name: str                 # the student's attn_implementation
    kind: str                 # "encoder" | "decoder"
    stage1_params: list
    stage1_what: str

    def run(self, model, ids, **kw):
        """Forward of ``model`` (teacher or student) on unpadded ``ids (B, T)``."""
        return self.source.forward(ids, model=model, **kw)


def projections(module, which: str) -> nn.Linear | None:
    """The module's query/key/value projection (``which`` in q, k, v), or None (fused)."""
    for n in _NAMES[which]:
        lin = getattr(module, n, None)
        if isinstance(lin, nn.Linear):
            return lin
    return None


def _pool_kv(mods, variant: Variant, kv_heads: int, head_dim: int) -> None:
    """gqa:N -- each group's K/V projection rows replaced by the group's mean."""
    N = variant.args[0]
    if N >= kv_heads or kv_heads % N:
        raise ValueError(f"--variant: {variant.text!r} cannot be adapted: the model has "
                         f"{kv_heads} key/value heads per layer, which {N} groups do not "
                         f"divide into fewer")
    for m in mods:
        for which in ("k", "v"):
            lin = projections(m, which)
            if lin is None:
                raise ValueError(f"--variant: {variant.text!r} cannot be adapted: "
                                 f"{type(m).__name__} has no separate key/value projection "
                                 "(a fused one) to pool")
            with torch.no_grad():
                for p in (lin.weight, lin.bias):
                    if p is None:
                        continue
                    g = p.view(N, kv_heads // N, head_dim, *p.shape[1:])
                    p.copy_(g.mean(1, keepdim=True).expand_as(g).reshape(p.shape))


def _stage1(mods, variant: Variant) -> tuple[list, str]:
    if variant.learned and variant.is_linear:
        return [p for m in mods for p in getattr(m, learned.ATTR).parameters()], \
            "the learnable feature maps"
    which = ("k", "v") if variant.is_gqa else ("q", "k", "v")
    lins = [projections(m, w) for m in mods for w in which]
    if any(lin is None for lin in lins):   # fused projections (GPT-2): the whole module
        return [p for m in mods for p in m.parameters()], "the attention modules"
    return [p for lin in lins for p in lin.parameters()], \
        f"the {'/'.join(w.upper() for w in which)} projections"


def open_pair(model: str, variant: str, device: str = "cpu") -> Pair:
    """Load ``model`` (``minilm`` or an HF directory the integration runs) as teacher and
    student; ValueError (one line) for a model or a variant that cannot be adapted."""
    from ..integrations import hf as integration
    from ..core.errors import UsageError
    from ..sources import open_source
    var = parse_variant(variant)
    try:
        src = open_source(model, via="transformers", device=device).ready()
    except (ValueError, UsageError) as e:
        raise ValueError(f"--model: {str(e).removeprefix('--model: ')}") from None
    teacher = src.model.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = copy.deepcopy(teacher)
    name = integration.register(var.text)
    student.set_attn_implementation(name)
    names = {id(m): n for n, m in teacher.named_modules()}
    t_mods = list(src.mods)                  # the modules that call the attention function
    s_mods = [student.get_submodule(names[id(m)]) for m in t_mods]
    if var.learned and var.is_linear and [id(m) for m in learned.attention_modules(
            student)] != [id(m) for m in s_mods]:
        raise ValueError(f"--model: {model}: its attention modules do not carry one layer "
                         f"index each (layer_idx), so learned tensors could not be placed")
    if var.learned and var.is_linear:
        learned.install(student, src.n_heads, src.n_kv_heads, src.head_dim)
    if var.is_gqa:
        _pool_kv(s_mods, var, src.n_kv_heads, src.head_dim)
    params, what = _stage1(s_mods, var)
    for p in student.parameters():
        p.requires_grad_(True)
    pair = Pair(src, teacher, student.eval(), t_mods, s_mods, var, name, src.kind, params, what)
    try:                                     # the variant must run on this model
        with torch.no_grad():
            pair.run(student, torch.arange(8, device=src.device)[None] % 100 + 1)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ValueError(f"--variant: {var.text!r} cannot run on {model}: "
                         f"{str(e).splitlines()[0]}") from None
    return pair
