"""The ``flex`` backend on CPU: exact against the float64 reference (static-shape compiles),
the torch 2.13 symbolic-int regression (W = 7 -> 5 -> 3 through a parameter named
``window_mask``), its refusals with the reason, its caches and its ``auto`` rule.

Every new configuration compiles (~5 s on a 2-core machine): the fast tests share a few
shapes; the random sweep is marked slow."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks as M
from attnkit.backends import flex as F
from attnkit.call.blocks import Uncacheable, fingerprint

pytest.importorskip("torch.nn.attention.flex_attention")
from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: E402


def rel(x, ref) -> float:
    return float((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0))


def sliding(W):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= W)
    return mask_mod


def test_window_7_5_3_through_a_parameter_named_window_mask():
    """torch 2.13's CPU template renamed a dynamic W's symbol into a tile size: with the
    default ``torch.compile`` W=5 came out off by 1.47. ``compile_flex`` (static shapes,
    what the backend compiles with) must keep all three exact."""
    attn = F.compile_flex(lambda q, k, v, window_mask: flex_attention(q, k, v,
                                                                      block_mask=window_mask))
    T, D = 40, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, T, D, generator=g) for _ in range(3))
    i = torch.arange(T)
    for W in (7, 5, 3):
        bm = create_block_mask(sliding(W), None, None, T, T, device="cpu")
        with torch.no_grad():
            out = attn(q, k, v, bm)
        keep = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] <= W)
        s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(D)
        ref = torch.softmax(s.masked_fill(~keep, -math.inf), -1) @ v.double()
        assert (out.double() - ref).abs().max() < 1e-5, f"W={W}"


def qkv(B=1, H=2, Hkv=2, Tq=40, Tk=40, D=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, Tq, D, generator=g, dtype=dtype),
            torch.randn(B, Hkv, Tk, D, generator=g, dtype=dtype),
            torch.randn(B, Hkv, Tk, D, generator=g, dtype=dtype))


def against_reference(q, k, v, tol=1e-5, **kw):
    with torch.no_grad():
        out = attnkit.attention(q, k, v, backend="flex", **kw)
    ref = attnkit.attention(q.double(), k.double(), v.double(), backend="reference", **kw)
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert rel(out, ref) <= tol, f"{kw}: {rel(out, ref):.2e}"
    return out


def test_backend_windows_7_5_3_and_masks_exact():
    q, k, v = qkv()
    for W in (7, 5, 3):  # the repro's sequence through the backend (Window.allowed)
        against_reference(q, k, v, mask=M.causal() & M.window(W))
    against_reference(q, k, v, mask=M.causal() & M.window(3), softcap=5.0)
    against_reference(q, k, v, mask=M.causal(), bias=attnkit.alibi(2))
    # rows with no visible key give 0, like every backend
    out = against_reference(q, k, v, mask=M.padding([20], q_lengths=[10]))
    assert (out[:, :, 10:] == 0).all()


def test_gqa_and_unequal_lengths_exact():
    q, k, v = qkv(B=2, H=4, Hkv=2, Tq=24, Tk=56, D=16, seed=1)
    against_reference(q, k, v, mask=M.window(9, 4) | M.global_tokens([0, 5]))


def test_user_mask_mods_composed_with_other_masks_exact():
    """A user's mask_mod inside a composition is evaluated on FlexAttention's 0-dim
    indices: it once expanded a 0-dim result to shape (), which Inductor cannot lower
    (InductorError, found by the oracle sweep)."""
    q, k, v = qkv(Tq=24, Tk=40, seed=2)
    mod = M.from_mask_mod(lambda b, h, q_idx, kv_idx: (q_idx + kv_idx) % 4 != 1)
    block = M.from_mask_mod(lambda b, h, q_idx, kv_idx: q_idx // 8 >= kv_idx // 8)
    keys = torch.ones(1, 40, dtype=torch.bool)
    keys[:, 30:] = False
    against_reference(q, k, v, mask=(M.periodic(8) | mod) & M.key_padding(keys))
    against_reference(q, k, v, mask=~(M.padding([30]) & block))


def test_refusals_say_why():
    q, k, v = qkv()
    with pytest.raises(attnkit.UnsupportedCall, match="no dropout"):
        attnkit.attention(q, k, v, backend="flex", dropout_p=0.1)
    qg = q.clone().requires_grad_()
    with pytest.raises(attnkit.UnsupportedCall, match="no CPU backward"):
        attnkit.attention(qg, k, v, backend="flex", mask=M.causal())
    # under no_grad the same inputs are served (forward only)
    with torch.no_grad():
        attnkit.attention(qg, k, v, backend="flex", mask=M.causal() & M.window(3))


def test_new_configurations_refused_past_the_limit(monkeypatch):
    q, k, v = qkv()
    against_reference(q, k, v, mask=M.causal() & M.window(5))      # compiled already
    monkeypatch.setattr(F, "MAX_CONFIGURATIONS", F.compiled_configurations())
    with torch.no_grad():                                          # a known one: served
        attnkit.attention(q, k, v, backend="flex", mask=M.causal() & M.window(5))
        with pytest.raises(attnkit.UnsupportedCall, match="compiles once per configuration"):
            attnkit.attention(q, k, v, backend="flex", mask=M.causal() & M.window(11))
        # auto never lands on a refused backend
        assert attnkit.select_backend(attnkit.make_call(
            q, k, v, mask=M.causal() & M.window(11)))[0] != "flex"


def test_block_mask_cached_per_value_and_rebuilt_after_in_place_change(monkeypatch):
    built = []
    real = create_block_mask

    def counting(*a, **kw):
        built.append(1)
        return real(*a, **kw)
    import torch.nn.attention.flex_attention as fa
    monkeypatch.setattr(fa, "create_block_mask", counting)
    q, k, v = qkv()
    before = len(built)
    for _ in range(2):  # fresh, equal spec objects: one BlockMask
        against_reference(q, k, v, mask=M.causal() & M.window(7))
    assert len(built) - before <= 1
    ids = torch.zeros(1, 40, dtype=torch.long)                   # a tensor the spec holds
    ids[:, 25:] = 1
    against_reference(q, k, v, mask=M.document(ids))
    n = len(built)
    against_reference(q, k, v, mask=M.document(ids))             # same value: cached
    assert len(built) == n
    ids[:, 10:] = 1                                               # in place: a new value
    against_reference(q, k, v, mask=M.document(ids))
    assert len(built) == n + 1


def test_fingerprints():
    a, b = M.causal() & M.window(7), M.causal() & M.window(7)
    assert fingerprint(a) == fingerprint(b) != fingerprint(M.causal() & M.window(5))
    t = torch.zeros(1, 5000, dtype=torch.long)
    f0 = fingerprint(M.document(t))
    t[0, 0] = 1
    assert fingerprint(M.document(t)) != f0                        # version counter
    opaque = M.from_mask_mod(lambda b, h, q, k: q >= k)
    with pytest.raises(Uncacheable):
        fingerprint(opaque)
    assert fingerprint(opaque, False)                              # configurations: identity


def test_auto_rule(monkeypatch):
    q, k, v = qkv()
    opaque = M.from_mask_mod(lambda b, h, qi, ki: (qi >= ki) & (qi - ki <= 6))
    monkeypatch.setattr(F, "AUTO_MIN_PAIRS", 1)
    with torch.no_grad():
        name, why = attnkit.select_backend(attnkit.make_call(q, k, v, mask=opaque))
        assert name == "flex" and "1.10x tiled" in why
        # a structured window: tiled was faster (sdpa at this length)
        assert attnkit.select_backend(attnkit.make_call(
            q, k, v, mask=M.causal() & M.window(6)))[0] != "flex"
    qg = q.clone().requires_grad_()                                # gradients: tiled
    assert attnkit.select_backend(attnkit.make_call(qg, k, v, mask=opaque))[0] != "flex"
    monkeypatch.setattr(F, "AUTO_MIN_PAIRS", 1 << 28)              # short: tiled
    with torch.no_grad():
        assert attnkit.select_backend(attnkit.make_call(q, k, v, mask=opaque))[0] != "flex"


@st.composite
def problems(draw):
    B, Hkv, G = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    Tq, Tk = draw(st.integers(1, 90)), draw(st.integers(1, 90))
    kind = draw(st.sampled_from(["window", "causal", "dilated", "global", "padding", "none"]))
    mask = {"window": lambda: M.causal() & M.window(draw(st.integers(0, 20))),
            "causal": M.causal,
            "dilated": lambda: M.dilated(draw(st.integers(0, 6)), draw(st.integers(1, 3))),
            "global": lambda: M.window(draw(st.integers(0, 9)), 2) | M.global_tokens([0]),
            "padding": lambda: M.padding([draw(st.integers(0, Tk)) for _ in range(B)]),
            "none": lambda: None}[kind]()
    return dict(B=B, H=Hkv * G, Hkv=Hkv, Tq=Tq, Tk=Tk, D=draw(st.sampled_from([8, 16, 64])),
                mask=mask, softcap=draw(st.sampled_from([None, 5.0])),
                alibi=draw(st.booleans()), seed=draw(st.integers(0, 2**31)))


@pytest.mark.slow
@settings(max_examples=24, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_random_problems_exact(p):
    q, k, v = qkv(p["B"], p["H"], p["Hkv"], p["Tq"], p["Tk"], p["D"], p["seed"])
    against_reference(q, k, v, mask=p["mask"], softcap=p["softcap"],
                      bias=attnkit.alibi(p["H"]) if p["alibi"] else None)


def test_compiled_block_masks_equal_eager_ones(monkeypatch):
    """Long inputs build BlockMasks compiled (the eager build materialises Tq x Tk)."""
    from collections import OrderedDict
    q, k, v = qkv()
    for W in (7, 5, 3):
        spec = M.causal() & M.window(W)
        eager = create_block_mask(spec.mask_mod(40, 40), None, None, 40, 40, device="cpu")
        monkeypatch.setattr(F, "COMPILED_MASK_PAIRS", 0)
        monkeypatch.setattr(F, "_block_masks", OrderedDict())
        against_reference(q, k, v, mask=spec)
        (built,) = F._block_masks.values()
        for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
            assert torch.equal(getattr(built, name), getattr(eager, name)), (W, name)
