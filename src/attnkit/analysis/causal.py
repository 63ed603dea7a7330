"""Which heads matter for an output: ablation, gradient importance and activation patching
on any transformers model served by attnkit (the per-head edits of
:mod:`attnkit.integrations.hf.heads`, no hooks, no port).

* :func:`head_importance` -- for every (layer, head), the change in a target when the
  head's output is zeroed or replaced by its mean: ``1 - cos`` of the pooled embedding (or
  of one token's final state) for encoders, the drop in the target token's log-probability
  and KL(clean || ablated) of the next-token distribution for decoders. Batched: each
  forward carries up to ``chunk`` ablated copies of the input (one head each), so the whole
  model costs ``ceil(L*H/chunk)`` passes. Beside it Michel et al.'s (2019) head-mask
  gradient and the rank agreement (Spearman) of the two.
* :func:`patch_heads` -- for every head, the share of the clean-vs-corrupted difference in
  the target restored when that head's clean output is patched into the corrupted run
  (optionally per position).

Layers are the attention modules in call order (T5: encoder, decoder, cross-attention
each count); :func:`layer_names` says which is which.
"""
from __future__ import annotations

import dataclasses
import re

import torch
from torch import Tensor

from ..integrations.hf import heads as H

__all__ = ["Target", "Probe", "head_importance", "patch_heads", "layer_names", "spearman"]


@dataclasses.dataclass
class Target:
    """What is measured. ``kind``: ``"embedding"`` (mean-pooled final states, encoders),
    ``"state"`` (the final state at ``position``, encoders), ``"token"`` (log-probability
    of ``token_id`` at the last position, decoders; ``foil_id``: minus that of a foil) or
    ``"sequence"`` (mean log-probability of the text's own next tokens at positions
    ``span = (start, stop)``: minus the loss there, decoders)."""
    kind: str
    label: str
    position: int | None = None
    token_id: int | None = None
    foil_id: int | None = None
    span: tuple[int, int] | None = None


class Probe:
    """A model, one input (batch of 1) and a target: runs edited copies of the input."""

    def __init__(self, model, inputs: dict, target: Target, chunk: int = 64):
        self.model, self.target, self.chunk = model, target, chunk
        self.inputs = {k: v for k, v in inputs.items() if isinstance(v, Tensor)}
        for k, v in self.inputs.items():
            if v.shape[0] != 1:
                raise ValueError(f"inputs[{k!r}]: expected a batch of 1, got {v.shape[0]}")
        with H.record() as rec, torch.no_grad():
            self.clean = self.readout(self.model(**self.inputs))
        if target.kind == "token" and target.token_id is None:      # the model's top token
            target.token_id = int(self.clean[0].argmax())
        if not rec.modules:
            raise ValueError(f"model: {type(model).__name__} made no call to attnkit's "
                             "attention function (attn_implementation not attnkit?)")
        self.modules, self.outputs = rec.modules, rec.outputs           # (1, Tq, H, Dv)
        self.n_heads = [self.outputs[m].shape[2] for m in self.modules]

    def readout(self, out) -> Tensor:
        """(B, D) features: the embedding / state, or next-token log-probs (B, V)."""
        t = self.target
        if t.kind == "token":
            return torch.log_softmax(out.logits[:, -1].double(), -1)
        if t.kind == "sequence":                                             # (B, 1)
            a, b = t.span
            lp = torch.log_softmax(out.logits[:, a:b].double(), -1)          # (B, n, V)
            nxt = self.inputs["input_ids"][:, a + 1:b + 1]
            nxt = nxt.expand(lp.shape[0], *nxt.shape[1:])
            return lp.gather(-1, nxt[..., None])[..., 0].mean(-1, keepdim=True)
        hs = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if t.kind == "state":
            return hs[:, t.position].double()
        mask = self.inputs.get("attention_mask")
        if mask is None:
            return hs.double().mean(1)
        m = mask.to(hs.dtype)[..., None]
        return ((hs * m).sum(1) / m.sum(1)).double()

    def run(self, rows, values) -> Tensor:
        """``rows``: [(layer, head, position or None)] -- one edited copy of the input per
        row (head None: every head of the layer; layer None: every layer), ``values``:
        {layer: what replaces the head (0, (H, Dv), (1, Tq, H, Dv))}; returns (R, D)."""
        outs = []
        for s in range(0, len(rows), self.chunk):
            part = rows[s:s + self.chunk]
            outs.append(self._run(part, values))
        return torch.cat(outs)

    def _run(self, rows, values) -> Tensor:
        R = len(rows)
        Tq = {m: self.outputs[m].shape[1] for m in self.modules}
        masks = {}
        for r, (layer, head, pos) in enumerate(rows):
            for li in (range(len(self.modules)) if layer is None else [layer]):
                m = self.modules[li]
                mk = masks.setdefault(m, torch.zeros(R, Tq[m], self.n_heads[li], dtype=bool))
                mk[r, slice(None) if pos is None else pos,
                   slice(None) if head is None else head] = True
        edits = {m: H.HeadEdit(mask=mk, value=values[self.modules.index(m)])
                 for m, mk in masks.items()}
        batch = {k: v.expand(R, *v.shape[1:]) for k, v in self.inputs.items()}
        with H.edit(edits), torch.no_grad():
            return self.readout(self.model(**batch))

    def metric(self, feats: Tensor) -> Tensor:
        """The scalar target per row (decoders: log-prob of the token minus the foil's)."""
        t = self.target
        if t.kind == "sequence":
            return feats[:, 0]
        v = feats[:, t.token_id]
        return v - feats[:, t.foil_id] if t.foil_id is not None else v

    def values(self, ablate: str) -> list:
        if ablate == "zero":
            return [0.0] * len(self.modules)
        if ablate == "mean":      # the head's mean output over the text's positions
            return [self.outputs[m][0].mean(0) for m in self.modules]          # (H, Dv)
        raise ValueError(f"ablate: expected 'zero' or 'mean', got {ablate!r}")

    def effect(self, feats: Tensor) -> dict:
        """Per row: ``1 - cos`` (encoders) or the drop in the target's log-prob and the KL."""
        c = self.clean
        if self.target.kind == "sequence":
            return {"drop": self.metric(c) - self.metric(feats)}
        if self.target.kind == "token":
            kl = (c.exp() * (c - feats)).sum(-1).clamp_min(0)
            return {"drop": (self.metric(c) - self.metric(feats)), "kl": kl}
        cos = torch.nn.functional.cosine_similarity(feats, c.expand_as(feats), dim=-1)
        return {"drop": 1 - cos}


def head_importance(probe: Probe, ablate: str = "zero", gradient: bool = True,
                    means: list | None = None) -> dict:
    """Ablation effect of every head (module doc); ``rows`` sorted by effect. ``mean``
    replaces a head by its mean over this text's positions, or by ``means[layer] (H, Dv)``
    when given (e.g. a mean over other texts: what a pruned model would use)."""
    rows = [(li, h, None) for li, n in enumerate(probe.n_heads) for h in range(n)]
    vals = probe.values(ablate)
    if means is not None:
        if ablate != "mean" or len(means) != len(probe.modules):
            raise ValueError(f"means: expected one (H, Dv) tensor per attention module "
                             f"({len(probe.modules)}) with ablate='mean'")
        vals = list(means)
    eff = probe.effect(probe.run(rows, vals))
    grad = gradient_importance(probe) if gradient else None
    out = []
    for i, (li, h, _) in enumerate(rows):
        r = {"layer": li, "head": h, "effect": float(eff["drop"][i])}
        if "kl" in eff:
            r["kl"] = float(eff["kl"][i])
        if grad is not None:
            r["gradient"] = float(grad[i])
        out.append(r)
    ranked = sorted(out, key=lambda r: -abs(r["effect"]))
    for k, r in enumerate(ranked, 1):
        r["rank"] = k
    res = {"ablate": ablate, "target": dataclasses.asdict(probe.target), "rows": ranked,
           "n_heads": probe.n_heads, "passes": -(-len(rows) // probe.chunk)}
    if grad is not None:
        res["spearman"] = spearman([abs(r["effect"]) for r in out], [r["gradient"] for r in out])
    return res


def gradient_importance(probe: Probe) -> Tensor:
    """Michel et al.'s head importance ``|dL/dxi_h|`` with gates ``xi`` on every head's
    output (1 = the model). Decoders: L = the target's log-prob. Encoders, where the
    cosine to the clean embedding is flat at the clean point, the first-order change
    of the embedding's direction: ``|P_perp dE/dxi_h| / |E|`` (the exact Jacobian, one
    backward per feature dimension, batched), whose square over 2 is the Taylor
    estimate of ``1 - cos`` when the head is removed."""
    mods = probe.modules
    if probe.target.kind in ("token", "sequence"):
        gates = [torch.ones(n, requires_grad=True) for n in probe.n_heads]
        with H.edit({m: H.HeadEdit(scale=g) for m, g in zip(mods, gates)}):
            feats = probe.readout(probe.model(**probe.inputs))
        grads = torch.autograd.grad(probe.metric(feats).sum(), gates)
        return torch.cat(grads).abs().double()
    c = probe.clean[0]
    D = c.shape[0]
    unit = c / c.norm()
    J = []                                                     # (D, sum(H))
    for s in range(0, D, probe.chunk):
        R = min(probe.chunk, D - s)
        gates = [torch.ones(R, 1, n, requires_grad=True) for n in probe.n_heads]
        batch = {k: v.expand(R, *v.shape[1:]) for k, v in probe.inputs.items()}
        with H.edit({m: H.HeadEdit(scale=g) for m, g in zip(mods, gates)}):
            feats = probe.readout(probe.model(**batch))              # (R, D)
        pick = feats[torch.arange(R), torch.arange(s, s + R)].sum()
        grads = torch.autograd.grad(pick, gates)
        J.append(torch.cat([g[:, 0] for g in grads], dim=1).double())
    J = torch.cat(J)
    perp = J - unit[:, None] * (unit @ J)[None]
    return perp.norm(dim=0) / c.norm()


def patch_heads(probe: Probe, corrupted: dict, per_position: bool = False) -> dict:
    """Share of the clean-vs-corrupted difference restored by patching each head's clean
    output into the corrupted run (0: nothing, 1: all of it). The metric is linear: the
    projection of the change onto clean - corrupted (encoders) or the target's log-prob
    (minus the foil's, decoders). Rows ``every head`` and ``layer L, every head`` are the
    ceilings (the changed tokens' own streams carry the rest)."""
    corr = Probe(probe.model, corrupted, probe.target, probe.chunk)
    if len(corr.modules) != len(probe.modules) or corr.n_heads != probe.n_heads:
        raise ValueError("corrupted: the model made different attention calls on it")
    for a, b in zip(probe.modules, corr.modules):
        if probe.outputs[a].shape != corr.outputs[b].shape:
            raise ValueError(f"corrupted: the attention calls differ in shape from clean's "
                             f"({tuple(corr.outputs[b].shape)} vs {tuple(probe.outputs[a].shape)}):"
                             f" it tokenizes to a different length")
    L = len(probe.modules)
    rows = [(li, h, None) for li in range(L) for h in range(probe.n_heads[li])]
    rows += [(li, None, None) for li in range(L)] + [(None, None, None)]
    mapped = [probe.outputs[probe.modules[i]] for i in range(L)]
    share = _share(probe, corr, corr.run(rows, mapped))
    n = sum(probe.n_heads)
    out = [{"layer": li, "head": h, "share": float(share[i])}
           for i, (li, h, _) in enumerate(rows[:n])]
    res = {"target": dataclasses.asdict(probe.target),
           "rows": sorted(out, key=lambda r: -abs(r["share"])),
           "layers": [float(s) for s in share[n:n + L]], "every_head": float(share[-1]),
           "difference": _difference(probe, corr)}
    if per_position:
        T = mapped[0].shape[1]
        prow = [(li, h, p) for li in range(L) for h in range(probe.n_heads[li])
                for p in range(T)]
        ps = _share(probe, corr, corr.run(prow, mapped)).reshape(-1, T)
        res["per_position"] = {f"{li}.{h}": [float(x) for x in ps[i]]
                               for i, (li, h, _) in enumerate(rows[:n])}
    return res


def _difference(clean: Probe, corr: Probe) -> float:
    if clean.target.kind in ("token", "sequence"):
        return float(clean.metric(clean.clean)[0] - clean.metric(corr.clean)[0])
    return float(1 - torch.nn.functional.cosine_similarity(clean.clean, corr.clean)[0])


def _share(clean: Probe, corr: Probe, feats: Tensor) -> Tensor:
    if clean.target.kind in ("token", "sequence"):
        m_c, m_x = clean.metric(clean.clean), clean.metric(corr.clean)
        return (clean.metric(feats) - m_x) / (m_c - m_x)
    d = clean.clean[0] - corr.clean[0]
    return (feats - corr.clean) @ d / (d @ d)


def layer_names(model, modules) -> list[str]:
    """A short name per attention module: ``"3"`` when all modules are one stack, else
    ``"encoder 3"``, ``"decoder 3"``, ``"cross 3"`` (by the module paths)."""
    path = {m: n for n, m in model.named_modules()}
    pats = [re.sub(r"\.\d+\.", ".*.", path.get(m, "?")) for m in modules]
    idx = [int((re.findall(r"\.(\d+)\.", path.get(m, "")) or [i])[0])
           for i, m in enumerate(modules)]
    if len(set(pats)) == 1:
        return [str(i) for i in idx]
    def kind(p):
        pl = p.lower()
        if "encdec" in pl or "cross" in pl or "encoder_attn" in pl:
            return "cross"
        return "decoder" if "decoder" in pl else "encoder" if "encoder" in pl else p
    return [f"{kind(p)} {i}" for p, i in zip(pats, idx)]


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)
