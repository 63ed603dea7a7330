"""Variants with parameters of their own inside transformers models (``linear:hedgehog``:
per-head feature maps, :class:`attnkit.linear.HedgehogFeatureMap`).

Where they live: each attention module (the one transformers hands to the attention
function, with its ``layer_idx``) carries its map as the sub-module :data:`ATTR`, so it
trains, moves and counts like any weight. On disk (an ``attnkit adapt`` directory) they
are a separate safetensors file, :data:`FILE`, with tensors ``layers.<i>.<name>``, and
``config.json`` records the variant and the file under :data:`CONFIG_KEY`; the model's own
``model.safetensors`` stays exactly what its transformers class expects.

Loading never gives a silently different model: the file's tensors must be exactly one
map per attention layer (a missing or an unused tensor is refused by name), and a module
without a map is refused rather than run with an untrained one.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ...linear import HedgehogFeatureMap

__all__ = ["ATTR", "FILE", "CONFIG_KEY", "feature_map", "install", "attention_modules",
           "save_learned", "load_learned", "record"]

ATTR = "attnkit_feature_map"
FILE = "attnkit_attention.safetensors"
CONFIG_KEY = "attnkit_adapted"
_NAMES = ("q_weight", "q_bias", "k_weight", "k_bias")


def record(config) -> dict | None:
    """The adaptation record in a model's config (None for a model never adapted)."""
    rec = getattr(config, CONFIG_KEY, None)
    return rec if isinstance(rec, dict) else None


def attention_modules(model) -> list:
    """The modules that call the attention function, by ``layer_idx``: the innermost
    modules with a layer index (self-attention only: cross-attention modules skipped)."""
    def indexed(m):
        return isinstance(getattr(m, "layer_idx", None), int)
    mods = [m for m in model.modules() if indexed(m) and hasattr(m, "config")
            and not getattr(m, "is_cross_attention", False)
            and not any(indexed(c) for c in m.modules() if c is not m)]
    return sorted(mods, key=lambda m: m.layer_idx)


def install(model, heads: int, kv_heads: int, dim: int) -> list[HedgehogFeatureMap]:
    """Give every attention module of ``model`` a fresh (identity) map; returns them."""
    out = []
    for m in attention_modules(model):
        fm = HedgehogFeatureMap(heads, kv_heads, dim)
        ref = next(m.parameters())
        m.add_module(ATTR, fm.to(device=ref.device, dtype=ref.dtype))
        out.append(fm)
    return out


def save_learned(model, directory) -> dict:
    """Write every module's map to ``directory/FILE``; returns {tensor name: shape}."""
    tensors = {}
    for m in attention_modules(model):
        fm = getattr(m, ATTR, None)
        if fm is None:
            raise ValueError(f"model: attention layer {m.layer_idx} has no learned feature map")
        for n in _NAMES:
            tensors[f"layers.{m.layer_idx}.{n}"] = getattr(fm, n).detach().cpu().contiguous()
    save_file(tensors, str(Path(directory) / FILE))
    return {k: list(v.shape) for k, v in tensors.items()}


def _read(directory, n_layers: int) -> dict:
    path = Path(directory) / FILE
    if not path.is_file():
        raise ValueError(f"{directory}: config.json records learned attention parameters in "
                         f"{FILE}, which is missing")
    tensors = load_file(str(path))
    want = {f"layers.{i}.{n}" for i in range(n_layers) for n in _NAMES}
    missing, unused = sorted(want - set(tensors)), sorted(set(tensors) - want)
    if missing or unused:
        raise ValueError(f"{path}: does not fit the model's {n_layers} attention layers "
                         f"(missing {missing[:4]}, unused {unused[:4]})")
    return tensors


def _build(tensors: dict, idx: int, ref: torch.Tensor) -> HedgehogFeatureMap:
    t = {n: tensors[f"layers.{idx}.{n}"] for n in _NAMES}
    fm = HedgehogFeatureMap(t["q_weight"].shape[0], t["k_weight"].shape[0],
                            t["q_weight"].shape[1])
    fm.load_state_dict(t, strict=True)
    return fm.to(device=ref.device, dtype=ref.dtype)


def load_learned(model, directory) -> None:
    """Attach the maps of ``directory/FILE`` to ``model``'s attention modules (checked)."""
    mods = attention_modules(model)
    tensors = _read(directory, len(mods))
    for m in mods:
        m.add_module(ATTR, _build(tensors, m.layer_idx, next(m.parameters())))


def feature_map(module, name: str, ref: torch.Tensor) -> HedgehogFeatureMap:
    """The map of ``module`` (bench's per-layer view: the module it wraps); a model loaded
    with ``AutoModel.from_pretrained(DIR, attn_implementation=name)`` gets its maps from
    ``DIR`` at the first call."""
    target = getattr(module, "_module", module)
    fm = getattr(target, ATTR, None)
    if fm is not None:
        return fm
    cfg = module.config
    rec = record(cfg)
    if rec is None or not rec.get("learned"):
        raise ValueError(f"attn_implementation {name!r}: attention layer "
                         f"{getattr(module, 'layer_idx', '?')} has no learned feature map "
                         f"(adapt the model first: attnkit adapt --variant "
                         f"{name.split(':', 1)[-1]})")
    if rec.get("implementation") != name:
        raise ValueError(f"attn_implementation {name!r}: this model was adapted for "
                         f"{rec.get('implementation')!r}; its learned tensors would not fit")
    n_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    tensors = _read(cfg._name_or_path, n_layers)
    fm = _build(tensors, target.layer_idx, ref)
    target.add_module(ATTR, fm)
    return fm
