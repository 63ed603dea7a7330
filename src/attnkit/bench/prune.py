"""Heads removed for real: structural pruning of a transformers model's attention
projections, a smaller checkpoint saved in Hugging Face format, and the pruning curve.

* :func:`prune` slices the removed heads' rows out of the query/key/value projections
  and their columns out of the output projection, in place (a layer keeps at least one
  head: when all go, one stays with its output columns zeroed -- exactly no attention).
  Served: the BERT family (BERT, RoBERTa, ... whose attention module holds
  ``query/key/value`` and whose layer holds ``attention.output.dense``, MiniLM
  included); anything else is refused by name (GQA models need whole key/value groups,
  not done here).
* :func:`save_pruned` writes ``save_pretrained``'s files with the removed heads in
  config.json's ``pruned_heads`` (``{layer: [heads]}``, the key transformers 4 used);
  transformers 5 no longer prunes, so :func:`load_pruned` rebuilds the model from the
  config, applies the same slicing and loads the tensors (strict), attnkit inside.
* :func:`pruning_curve` removes heads in importance order and measures bench's fidelity
  (:mod:`attnkit.bench.fidelity`) on held-out windows at each fraction removed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..integrations.hf import heads as H

__all__ = ["prune", "save_pruned", "load_pruned", "masked", "pruning_curve", "sites",
           "head_means"]


def sites(model) -> list[tuple[nn.Module, nn.Module]]:
    """[(self-attention module with query/key/value, output projection)] per layer."""
    return [(l.attention.self, l.attention.output.dense) for l in _layers(model)]


def _layers(model):
    enc = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = getattr(enc, "layer", None)
    ok = layers is not None and all(
        hasattr(getattr(l, "attention", None), "self") and
        all(isinstance(getattr(l.attention.self, n, None), nn.Linear)
            for n in ("query", "key", "value")) and
        isinstance(getattr(getattr(l.attention, "output", None), "dense", None), nn.Linear)
        for l in layers)
    if not ok:
        raise ValueError(f"model: {type(model).__name__}: structural head pruning serves the "
                         f"BERT family (attention.self.query/key/value, attention.output.dense);"
                         f" this architecture is not served (use head masks: heads.edit)")
    return layers


def _keep(n: int, removed) -> list[int]:
    return [h for h in range(n) if h not in set(removed)]


def _rows(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.index_select(dim, idx).detach().clone()
    b = lin.bias
    if b is not None and dim == 0:
        b = b.index_select(0, idx)
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b.detach())
    return new


def prune(model, removed: dict, means: dict | None = None) -> dict:
    """Remove heads ``{layer: [heads]}`` from the projections, in place; returns the
    heads kept per layer. ``means`` ``{layer: (H, Dv)}``: each removed head's mean output
    is folded into the output projection's bias (exactly mean ablation)."""
    kept = {}
    for li, layer in enumerate(_layers(model)):
        att, out = layer.attention.self, layer.attention.output.dense
        n, d = att.num_attention_heads, att.attention_head_size
        gone = sorted({int(h) for h in removed.get(li, removed.get(str(li), []))})
        if any(not 0 <= h < n for h in gone):
            raise ValueError(f"removed[{li}]: expected heads in 0..{n - 1}, got {gone}")
        keep = _keep(n, gone) or [gone[0]]                       # at least one head stays
        idx = torch.tensor([h * d + i for h in keep for i in range(d)])
        for name in ("query", "key", "value"):
            setattr(att, name, _rows(getattr(att, name), idx, 0))
        new_out = _rows(out, idx, 1)
        if means is not None and gone:
            mu = means[li]                                                 # (H, Dv)
            extra = sum(out.weight[:, h * d:(h + 1) * d].detach() @ mu[h].to(out.weight)
                        for h in gone)
            if new_out.bias is None:
                raise ValueError(f"means: layer {li}'s output projection has no bias to fold "
                                 f"the removed heads' mean into")
            with torch.no_grad():
                new_out.bias += extra
        if not _keep(n, gone):                                   # every head removed
            with torch.no_grad():
                new_out.weight.zero_()
        layer.attention.output.dense = new_out
        att.num_attention_heads = len(keep)
        att.all_head_size = len(keep) * d
        kept[li] = keep
    return kept


def masked(model, removed: dict, means: dict | None = None):
    """The context in which ``model`` runs as if the heads were removed (their outputs
    zeroed -- or replaced by ``means[layer] (H, Dv)`` -- in attnkit's attention function)."""
    edits = {}
    for li, (att, _) in enumerate(sites(model)):
        gone = removed.get(li, removed.get(str(li), []))
        if gone:
            n = att.num_attention_heads
            edits[att] = H.HeadEdit.zero(gone, n) if means is None else \
                H.HeadEdit.replace(gone, n, means[li])
    return H.edit(edits)


def head_means(model, windows: list[dict]) -> dict:
    """``{layer: (H, Dv)}``: every head's output averaged over the windows' positions."""
    mods = [att for att, _ in sites(model)]
    tot: dict = {}
    count = 0
    for w in windows:
        with H.record() as rec, torch.no_grad():
            model(**w)
        for li, m in enumerate(mods):
            o = rec.outputs[m][0]                                           # (T, H, Dv)
            tot[li] = tot.get(li, 0) + o.double().sum(0)
        count += rec.outputs[mods[0]].shape[1]
    return {li: (t / count).float() for li, t in tot.items()}


def save_pruned(model, removed: dict, directory, means: dict | None = None) -> Path:
    """Prune a copy of ``model`` and save it (safetensors) with ``pruned_heads``."""
    import copy
    m = copy.deepcopy(model)
    prune(m, removed, means)
    d = Path(directory)
    m.save_pretrained(d, safe_serialization=True)
    cfg = json.loads((d / "config.json").read_text())
    cfg["pruned_heads"] = {str(k): sorted(int(h) for h in v) for k, v in removed.items() if v}
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def load_pruned(directory, variant: str | None = None):
    """A checkpoint of :func:`save_pruned`, rebuilt and loaded strictly, attnkit inside."""
    import transformers as tf
    from safetensors.torch import load_file

    from ..integrations import hf as integration
    d = Path(directory)
    raw = json.loads((d / "config.json").read_text())
    removed = {int(k): v for k, v in (raw.get("pruned_heads") or {}).items()}
    cfg = tf.AutoConfig.from_pretrained(str(d), local_files_only=True)
    cfg.pruned_heads = {}
    cls = getattr(tf, (cfg.architectures or ["AutoModel"])[0])
    model = cls(cfg)
    prune(model, removed)
    state = {}
    for f in sorted(d.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"directory: {d}: the tensors do not match the pruned "
                         f"{cls.__name__} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return integration.use(model.eval(), variant)


def pruning_curve(model, windows: list[dict], order: list[tuple[int, int]],
                  counts: list[int], means: dict | None = None) -> list[dict]:
    """For each count k: the k first heads of ``order`` removed (masked: zeroed, or
    ``means``), bench's encoder fidelity against the full model on ``windows``."""
    from ..sources import Outputs
    from .fidelity import Accumulator
    with torch.no_grad():                                             # hidden (1, T, D)
        full = [Outputs.pooled(model(**w).last_hidden_state, w["attention_mask"])
                for w in windows]
    L = len(sites(model))
    rows = []
    for k in counts:
        removed: dict = {}
        for li, h in order[:k]:
            removed.setdefault(li, []).append(h)
        acc = Accumulator("encoder", L)
        with masked(model, removed, means), torch.no_grad():
            for w, f in zip(windows, full):
                acc.add_outputs(f, Outputs.pooled(model(**w).last_hidden_state,
                                                  w["attention_mask"]), w["input_ids"])
        r = acc.result()
        rows.append({"removed": k, "fraction": k / len(order), "cosine": r["cosine"],
                     "cosine_min": r["cosine_min"], "embedding_cosine": r["embedding_cosine"],
                     "embedding_cosine_min": r["embedding_cosine_min"]})
    return rows
