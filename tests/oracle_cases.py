"""The oracle sweep's cases, its independent naive attention and its comparisons.

A case is drawn from one integer seed (``random_case(seed)``): shapes (Tq != Tk most of
the time, GQA/MQA groupings), a boolean mask composition, an additive float mask, a bias,
softcap, scale and dtype. ``compare(case, runners)`` computes the float64 reference once
(``attnkit.attention(..., backend="reference")`` on float64 copies of the rounded
inputs), checks it against :func:`naive_attention` (plain torch on the masks' and biases'
independent dense forms, :mod:`oracle_masks`), then runs every backend in the case's
dtype and compares forward and gradients (q, k, v and the tensor biases / additive
masks marked for grad) to it, plus exact zeros on fully masked rows and on keys no
query sees.

Repro of one case of the main sweep: ``PYTHONPATH=src python tests/oracle_cases.py SEED``
prints the case, its mismatches, what ran and what was refused.

Error metric (as tests/test_engine_properties.py): max|x - ref| / max(max|ref|, 1).
Tolerances (forward, gradients): fp32 1e-5 / 2e-5, bf16 1e-2 / 2e-2, fp16 2e-3 / 4e-3;
the float64 reference against the naive float64 attention: 1e-10.
"""
from __future__ import annotations

import dataclasses
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attnkit  # noqa: E402
from oracle_masks import BiasRecipe, Geometry, MaskGen, random_additive, random_bias  # noqa: E402

TOL = {torch.float32: (1e-5, 2e-5), torch.bfloat16: (1e-2, 2e-2), torch.float16: (2e-3, 4e-3)}
ORACLE_TOL = 1e-10
LENGTHS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 47, 63, 64]


class Refused(Exception):
    """A backend's ``unsupported(call)`` gave a reason: not a pass, not a failure."""


@dataclass
class Case:
    seed: int
    B: int
    H: int
    Hkv: int
    Tq: int
    Tk: int
    D: int
    Dv: int
    dtype: torch.dtype
    mask: object = None                  # a boolean spec (or None)
    mask_dense: Tensor | None = None     # (B, H, Tq, Tk) bool, computed independently
    additive: BiasRecipe | None = None   # an additive float mask, '&'-ed with ``mask``
    bias: BiasRecipe | None = None
    softcap: float | None = None
    scale: float | None = None
    text: str = ""
    cfg: object = None                   # sparse cases: the TileConfig passed (or None)

    def __str__(self):
        return (f"seed={self.seed} B={self.B} H={self.H} Hkv={self.Hkv} Tq={self.Tq} "
                f"Tk={self.Tk} D={self.D} Dv={self.Dv} {str(self.dtype)[6:]} "
                f"softcap={self.softcap} scale={self.scale} {self.text}")

    def mask_arg(self, add_t: list):
        """The ``mask=`` argument, given the additive mask's tensors in some dtype."""
        if self.additive is None:
            return self.mask
        a = self.additive.build(add_t)
        if self.mask is None:
            return a
        return self.mask & (a if not isinstance(a, Tensor) else attnkit.masks.from_tensor(a))

    def bias_arg(self, bias_t: list):
        return None if self.bias is None else self.bias.build(bias_t)


def random_case(seed: int, *, max_t: int = 64, dims=(4, 8, 16, 24, 32),
                self_attention: bool = False, dtypes=None) -> Case:
    r = random.Random(seed)
    B = r.randint(1, 3)
    H = r.choice([1, 2, 3, 4, 6, 8])
    Hkv = r.choice([d for d in range(1, H + 1) if H % d == 0])
    lengths = [t for t in LENGTHS if t <= max_t]
    pick = lambda: r.choice(lengths) if r.random() < 0.6 else r.randint(1, max_t)  # noqa: E731
    Tq = pick()
    Tk = Tq if self_attention or r.random() < 0.2 else pick()
    D = r.choice(dims)
    Dv = D if r.random() < 0.7 else r.choice(dims)
    dtype = r.choice(dtypes or [torch.float32] * 3 + [torch.bfloat16, torch.float16])
    g = Geometry(B, H, Tq, Tk)
    case = Case(seed, B, H, Hkv, Tq, Tk, D, Dv, dtype)
    parts = []
    if r.random() < 0.9:
        case.mask, case.mask_dense, t = MaskGen(r, g).compose()
        parts.append(f"mask={t}")
    if r.random() < 0.2:
        case.additive = random_additive(r, g)
        parts.append(f"additive={case.additive.text}")
    case.bias = random_bias(r, g)
    if case.bias is not None:
        parts.append(f"bias={case.bias.text}")
    case.softcap = r.choice([None] * 5 + [2.0, 5.0, 30.0])
    case.scale = r.choice([None] * 3 + [0.05, 0.2, 0.5])
    if dtype != torch.float32 and case.scale is not None:
        case.scale = min(case.scale, 1 / math.sqrt(D))   # low precision: scores O(1)
    case.text = " ".join(parts)
    return case


def naive_attention(q, k, v, allowed, bias, scale, softcap):
    """Plain float64 attention: q (B, H, Tq, D), k/v (B, Hkv, Tk, *), allowed bool
    (B, H, Tq, Tk) or None, bias float64 broadcastable or None. Rows with no finite
    score (every key masked, by the mask or by -inf in a bias) give 0."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)      # (B, H, Tk, *)
    s = (q @ k.transpose(-1, -2)) * scale                            # (B, H, Tq, Tk)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    live = torch.isfinite(s).any(-1, keepdim=True)                   # (B, H, Tq, 1)
    w = torch.softmax(torch.where(live, s, 0.0), -1) * live
    return w @ v, ~live.squeeze(-1), s


def rel(x: Tensor, ref: Tensor) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1.0)) if ref.numel() else 0.0


@dataclass
class Inputs:
    q: Tensor
    k: Tensor
    v: Tensor
    add: list
    bias: list
    dout: Tensor

    def leaves(self, case: Case) -> list:
        """The tensors whose gradients are compared: q, k, v, then marked bias tensors."""
        out = [self.q, self.k, self.v]
        for rec, ts in ((case.additive, self.add), (case.bias, self.bias)):
            if rec is not None:
                out += [t for t, gr in zip(ts, rec.grad) if gr]
        return out


def make_inputs(case: Case, gen_seed: int | None = None) -> tuple[Inputs, Inputs]:
    """(low precision, float64 copies of the same rounded values), all leaves."""
    g = torch.Generator().manual_seed(case.seed if gen_seed is None else gen_seed)
    q = torch.randn(case.B, case.H, case.Tq, case.D, generator=g)
    k = torch.randn(case.B, case.Hkv, case.Tk, case.D, generator=g)
    v = torch.randn(case.B, case.Hkv, case.Tk, case.Dv, generator=g)
    dout = torch.randn(case.B, case.H, case.Tq, case.Dv, generator=g)

    def leaves(rec, dtype):
        if rec is None:
            return []
        return [t.to(dtype).requires_grad_(gr) for t, gr in zip(rec.tensors, rec.grad)]
    dt = case.dtype
    lo = Inputs(*(t.to(dt).requires_grad_() for t in (q, k, v)), leaves(case.additive, dt),
                leaves(case.bias, dt), dout.to(dt))
    up = lambda t: t.detach().double().requires_grad_(t.requires_grad)  # noqa: E731
    hi = Inputs(up(lo.q), up(lo.k), up(lo.v), [up(t) for t in lo.add],
                [up(t) for t in lo.bias], lo.dout.double())
    return lo, hi


def grads(out: Tensor, leaves: list, dout: Tensor) -> list[Tensor]:
    gs = torch.autograd.grad(out, leaves, dout, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, leaves)]


def reference(case: Case, hi: Inputs):
    out = attnkit.attention(hi.q, hi.k, hi.v, mask=case.mask_arg(hi.add),
                            bias=case.bias_arg(hi.bias), scale=case.scale,
                            softcap=case.softcap, backend="reference")
    return out, grads(out, hi.leaves(case), hi.dout)


@dataclass
class Truth:
    """What the naive float64 attention says about a case."""
    out: Tensor
    grads: list
    empty: Tensor    # (B, H, Tq) rows with no finite score
    seen: Tensor     # (B, H, Tq, Tk) pairs with a finite score
    scales: list     # per gradient: the magnitude its error is measured against


def naive(case: Case, hi: Inputs) -> Truth:
    q, k, v = (t.detach().requires_grad_() for t in (hi.q, hi.k, hi.v))
    add = [t.detach().requires_grad_(t.requires_grad) for t in hi.add]
    bias = [t.detach().requires_grad_(t.requires_grad) for t in hi.bias]
    # a zero (B, H, Tq, Tk) term: its gradient is dL/dscore, whose broadcast sums are the
    # gradients of the bias tensors
    total = torch.zeros(case.B, case.H, case.Tq, case.Tk, dtype=torch.float64,
                        requires_grad=True)
    zero = total
    for rec, ts in ((case.additive, add), (case.bias, bias)):
        if rec is not None:
            total = total + rec.dense(ts)
    scale = case.scale if case.scale is not None else 1 / math.sqrt(case.D)
    out, empty, s = naive_attention(q, k, v, case.mask_dense, total, scale, case.softcap)
    leaves = Inputs(q, k, v, add, bias, hi.dout).leaves(case)
    *gs, ds = grads(out, leaves + [zero], hi.dout)
    # a bias tensor's gradient sums dL/dscore over its broadcast dimensions, with
    # cancellation (a softmax row's dL/dscore sums to 0): its error is measured against
    # the sum of the magnitudes, the bound of any summation order (Higham, ch. 4)
    scales = [max(float(g.abs().max()), 1.0) if g.numel() else 1.0 for g in gs]
    for i, t in enumerate(leaves[3:], 3):
        s4 = (1,) * (4 - t.dim()) + tuple(t.shape)
        dims = [d for d in range(4) if s4[d] == 1]
        mag = ds.abs().sum(dims, keepdim=True) if dims else ds.abs()
        scales[i] = max(scales[i], float(mag.max()))
    return Truth(out, gs, empty, torch.isfinite(s), scales)


def check_against(name: str, case: Case, out, gs, ref, ref_gs, truth: Truth, tol):
    """Every mismatch of one backend's (out, grads) with the reference, as text, and the
    largest error / tolerance ratio seen (forward and gradients)."""
    bad = []
    tf, tg = tol
    empty, seen = truth.empty, truth.seen
    if out.shape != ref.shape or out.dtype != case.dtype:
        return [f"{name}: output {tuple(out.shape)} {out.dtype}, expected {tuple(ref.shape)} "
                f"{case.dtype}"], math.inf
    e = rel(out, ref)
    worst = e / tf
    if not (torch.isfinite(out).all() and e <= tf):
        bad.append(f"{name}: forward error {e:.2e} > {tf:.0e}")
    if bool(empty.any()) and not bool((out[empty] == 0).all()):
        bad.append(f"{name}: fully masked rows not exactly 0")
    if gs is None:   # a backend that serves this call forward-only (no grad)
        return bad, worst
    names = ["dq", "dk", "dv"] + [f"dbias{i}" for i in range(len(gs) - 3)]
    for n, g, r, sc in zip(names, gs, ref_gs, truth.scales):
        e = float((g.detach().double() - r.detach()).abs().max()) / sc if g.numel() else 0.0
        worst = max(worst, e / tg)
        if not (torch.isfinite(g).all() and e <= tg):
            bad.append(f"{name}: {n} error {e:.2e} > {tg:.0e}")
    if bool(empty.any()) and not bool((gs[0][empty] == 0).all()):
        bad.append(f"{name}: dq of fully masked rows not exactly 0")
    # keys no query of their group sees: dk, dv exactly 0
    G = case.H // case.Hkv
    unseen = ~seen.view(case.B, case.Hkv, G, case.Tq, case.Tk).any(2).any(2)  # (B, Hkv, Tk)
    if bool(unseen.any()) and not (bool((gs[1][unseen] == 0).all())
                                   and bool((gs[2][unseen] == 0).all())):
        bad.append(f"{name}: dk/dv of keys no query sees not exactly 0")
    return bad, worst


def run_backends(case: Case, runners: dict, counts, refused, worst=None) -> list[str]:
    """Compare every runner ``name -> fn(case, lo) -> out`` (raising :class:`Refused`
    when the backend declines) with the float64 reference; return the failures. Counts
    go to ``counts["name dtype"]``, refusals to ``refused["name: reason"]``, the largest
    error / tolerance ratio per "name dtype" to ``worst``."""
    worst = {} if worst is None else worst
    lo, hi = make_inputs(case)
    ref, ref_gs = reference(case, hi)
    truth = naive(case, hi)
    bad, w = check_against("ref", dataclasses.replace(case, dtype=torch.float64), ref, ref_gs,
                           truth.out, truth.grads, truth, (ORACLE_TOL, ORACLE_TOL))
    fails = [f"reference fp64 vs naive: {m.split(': ', 1)[1]}" for m in bad]
    counts["oracle"] += 1
    worst["oracle"] = max(worst.get("oracle", 0.0), w)
    leaves = lo.leaves(case)
    for name, fn in runners.items():
        try:
            out = fn(case, lo)
        except Refused as why:
            refused[f"{name}: {why}"] += 1
            continue
        except Exception as e:  # noqa: BLE001 - a crash is a failure, reported with the case
            fails.append(f"{name}: raised {type(e).__name__}: {e}")
            continue
        gs, label = None, f"{name} {str(case.dtype)[6:]}"
        if out.requires_grad:
            try:
                gs = grads(out, leaves, lo.dout)
            except Exception as e:  # noqa: BLE001
                fails.append(f"{name}: backward raised {type(e).__name__}: {e}")
                continue
        else:
            label += " (forward only)"
        bad, w = check_against(name, case, out, gs, ref, ref_gs, truth, TOL[case.dtype])
        fails += bad
        counts[label] += 1
        worst[label] = max(worst.get(label, 0.0), w)
    return [f"{f}  [{case}]" for f in fails]


if __name__ == "__main__":  # repro: python tests/oracle_cases.py SEED [SEED ...]
    import collections

    import oracle_cases as oc   # the module the test file uses (one Refused class)
    from test_oracle_sweep import RUNNERS, small_tiles
    for s in sys.argv[1:]:
        c = oc.random_case(int(s))
        print(c, f"small tiles: {small_tiles(c)}")
        cnt, ref_ = collections.Counter(), collections.Counter()
        print("\n".join(oc.run_backends(c, RUNNERS, cnt, ref_)) or "no mismatch", dict(cnt),
              dict(ref_))
