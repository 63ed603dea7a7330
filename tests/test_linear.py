"""Linear attention: parallel, chunked-causal and recurrent forms vs a direct O(n²)
evaluation of the same kernelised formula (fp64); FAVOR+ vs softmax; bad arguments."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit.linear import (EluFeatureMap, FavorPlus, LinearAttentionState, ReluFeatureMap,
                            linear_attention, linear_attention_naive, linear_attention_step)

D, DV = 6, 5


def inputs(B, H, Hkv, T, seed=0, scale=1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = scale * torch.randn(B, H, T, D, generator=g, dtype=dtype)
    k = scale * torch.randn(B, Hkv, T, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, T, DV, generator=g, dtype=dtype)
    return q, k, v


def direct(fm, q, k, v, causal, eps):
    """out_i = sum_j phi(q_i).phi(k_j) v_j / (sum_j phi(q_i).phi(k_j) + eps), O(n²)."""
    G = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    A = fm(q) @ fm(kk).transpose(-1, -2)                     # (B, H, T, T)
    if causal:
        A = A.tril()
    den = A.sum(-1, keepdim=True) + eps
    return (A @ vv) / torch.where(den == 0, 1.0, den)


def feature_map(name):
    return {"elu": EluFeatureMap(), "relu": ReluFeatureMap(),
            "favor": FavorPlus(D, 11, seed=3)}[name]


# eps = 0 for FAVOR+: its stabilisers cancel exactly only without eps (module doc)
EPS = {"elu": 1e-6, "relu": 1e-6, "favor": 0.0}


@settings(deadline=None, max_examples=40)
@given(name=st.sampled_from(["elu", "relu", "favor"]), causal=st.booleans(),
       T=st.integers(1, 40), chunk=st.integers(1, 50),
       heads=st.sampled_from([(1, 1), (4, 2), (3, 1), (2, 2)]), seed=st.integers(0, 9))
def test_forms_match_direct(name, causal, T, chunk, heads, seed):
    fm = feature_map(name)
    q, k, v = inputs(2, heads[0], heads[1], T, seed)
    out = linear_attention(q, k, v, fm, causal=causal, chunk_size=chunk, eps=EPS[name])
    want = direct(fm, q, k, v, causal, EPS[name])
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-11)


@settings(deadline=None, max_examples=20)
@given(name=st.sampled_from(["elu", "relu", "favor"]), T=st.integers(1, 20),
       split=st.integers(0, 20), seed=st.integers(0, 9))
def test_recurrent_step_equals_parallel(name, T, split, seed):
    fm, eps = feature_map(name), 1e-6  # forms agree exactly, eps included (module doc)
    q, k, v = inputs(1, 4, 2, T, seed)
    want = linear_attention(q, k, v, fm, causal=True, chunk_size=7, eps=eps)
    split = min(split, T)
    # prefill the first `split` tokens in parallel, then decode one token at a time
    state = LinearAttentionState.zeros(fm, 1, 2, D, DV, eps=eps, dtype=torch.float64)
    outs = []
    if split:
        o, state = linear_attention(q[:, :, :split], k[:, :, :split], v[:, :, :split], fm,
                                    causal=True, state=state, return_state=True, eps=eps)
        outs.append(o)
    size = state.S.numel()
    for t in range(split, T):
        o, state = linear_attention_step(state, q[:, :, t:t + 1], k[:, :, t:t + 1],
                                         v[:, :, t:t + 1])
        outs.append(o)
        assert state.S.numel() == size                      # constant-size state
    assert state.t == T
    torch.testing.assert_close(torch.cat(outs, 2), want, rtol=1e-9, atol=1e-11)


def test_default_eps_forms_agree_for_favor():
    """eps is added to the stabilised denominator, defined per row: every chunking gives
    the same numbers; vs the eps-free formula the change is ~ eps / denominator."""
    fm = FavorPlus(D, 32, seed=0)
    q, k, v = inputs(1, 2, 2, 50, scale=3.0)
    a = linear_attention(q, k, v, fm, causal=True, chunk_size=1)
    for chunk in (3, 8, 64):
        b = linear_attention(q, k, v, fm, causal=True, chunk_size=chunk)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a, direct(fm, q, k, v, True, 0.0), rtol=1e-3, atol=1e-3)


def test_gradients_match_direct():
    for fm in (EluFeatureMap(), FavorPlus(D, 9, seed=1)):
        q, k, v = (t.requires_grad_() for t in inputs(1, 2, 1, 17))
        w = torch.randn(1, 2, 17, DV, dtype=torch.float64)
        for causal in (False, True):
            g1 = torch.autograd.grad((linear_attention(q, k, v, fm, causal=causal,
                                                       chunk_size=5, eps=0.0) * w).sum(),
                                     (q, k, v))
            g2 = torch.autograd.grad((direct(fm, q, k, v, causal, 0.0) * w).sum(), (q, k, v))
            for a, b in zip(g1, g2):
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_float32_large_inputs_stay_finite_with_favor():
    """Stabilised FAVOR+ in fp32: inputs whose raw features under/overflow still give
    the fp64 log-space result."""
    fm = FavorPlus(D, 16, seed=0)
    q, k, v = inputs(1, 2, 2, 30, scale=12.0)
    out = linear_attention(q.float(), k.float(), v.float(), fm, causal=True, chunk_size=4,
                           eps=0.0)
    lq, lk = fm.log_features(q), fm.log_features(k)                 # fp64, (1, 2, 30, 16)
    logA = torch.logsumexp(lq[..., :, None, :] + lk[..., None, :, :], -1)   # (1, 2, 30, 30)
    logA = logA.masked_fill(~torch.ones(30, 30, dtype=torch.bool).tril(), -math.inf)
    want = torch.softmax(logA, -1) @ v
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)


def test_relu_zero_denominator_gives_zero():
    q, k, v = inputs(1, 1, 1, 4)
    q = -q.abs()                                      # relu(q) = 0: every product is 0
    out = linear_attention(q, k, v, "relu")
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(linear_attention(q, k, v, "relu", eps=0.0), torch.zeros_like(out))


# ---------------------------------------------------------------------------
# FAVOR+
# ---------------------------------------------------------------------------
def test_favor_kernel_is_unbiased():
    """Mean of phi(q).phi(k) over draws -> exp(scale q.k)."""
    g = torch.Generator().manual_seed(0)
    x, y = 0.5 * torch.randn(2, 8, generator=g, dtype=torch.float64)
    est = torch.stack([FavorPlus(8, 64, seed=s)(x) @ FavorPlus(8, 64, seed=s)(y)
                       for s in range(200)])
    assert float(est.mean()) == pytest.approx(math.exp(float(x @ y) / math.sqrt(8)), rel=0.02)


def test_favor_error_falls_with_features():
    """Relative error vs softmax attention, averaged over 6 seeds, falls ~ 1/sqrt(m)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (a * torch.randn(1, 2, 64, 16, generator=g, dtype=torch.float64)
               for a in (0.3, 0.3, 1.0))
    ref = attnkit.attention(q, k, v, backend="reference")
    means = []
    for m in (8, 32, 128, 512):
        errs = [float((linear_attention(q, k, v, FavorPlus(16, m, seed=s)) - ref).norm()
                      / ref.norm()) for s in range(6)]
        means.append(sum(errs) / len(errs))
    for a, b in zip(means, means[1:]):
        assert b < 0.75 * a, means                    # expected ratio ~ 0.5 per 4x features
    assert means[-1] < 0.05, means


def test_favor_seeded_redraw_and_orthogonal_rows():
    a, b = FavorPlus(8, 20, seed=1), FavorPlus(8, 20, seed=1)
    assert torch.equal(a.W, b.W)
    W0 = a.W.clone()
    assert a.redraw(2) is a and not torch.equal(a.W, W0) and a.seed == 2
    assert torch.equal(a.redraw(1).W, W0)
    U = torch.nn.functional.normalize(a.W[:8], dim=1)       # first block: orthonormal
    torch.testing.assert_close(U @ U.T, torch.eye(8, dtype=torch.float64))


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("call, exc, match", [
    (lambda q, k, v: FavorPlus(D, 0), ValueError, "n_features"),
    (lambda q, k, v: FavorPlus(0, 4), ValueError, "dim"),
    (lambda q, k, v: FavorPlus(D, 4, scale=-1.0), ValueError, "scale"),
    (lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=0), ValueError,
     "chunk_size"),
    (lambda q, k, v: linear_attention(q, k, v, "softmax"), ValueError, "feature_map"),
    (lambda q, k, v: linear_attention(q, k, v, 3), TypeError, "feature_map"),
    (lambda q, k, v: linear_attention(q, k, v, FavorPlus(D + 1, 4)), ValueError, "head dim"),
    (lambda q, k, v: linear_attention(q, k, v, eps=-1.0), ValueError, "eps"),
    (lambda q, k, v: linear_attention(q, k, v, return_state=True), ValueError, "causal"),
    (lambda q, k, v: linear_attention(q, k[:, :1].expand(1, 1, 5, D)[:, :, :4], v),
     ValueError, "k"),
    (lambda q, k, v: linear_attention(q[0], k, v), TypeError, "q"),
    (lambda q, k, v: linear_attention_step(LinearAttentionState.zeros("elu", 1, 3, D, DV),
                                           q[:, :, :1], k[:, :, :1], v[:, :, :1]),
     ValueError, "state"),
    (lambda q, k, v: linear_attention_step(LinearAttentionState.zeros("elu", 1, 2, D, DV),
                                           q, k, v), ValueError, "one token"),
])
def test_bad_arguments(call, exc, match):
    q, k, v = inputs(1, 2, 2, 5, dtype=torch.float32)
    with pytest.raises(exc, match=match):
        call(q, k, v)


@pytest.mark.parametrize("name", ["elu", "favor"])
@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_zeroes_padded_keys_exactly(name, causal):
    """A padded batch (left padding on row 0, right on row 1; GQA) against the masked
    formula in fp64, and each row against its real keys alone."""
    g = torch.Generator().manual_seed(3)
    B, H, Hkv, T, D = 2, 4, 2, 13, 8
    q, k, v = (torch.randn(B, h, T, D, generator=g, dtype=torch.float64) for h in (H, Hkv, Hkv))
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[0, :3], keep[1, -5:] = False, False
    fm = FavorPlus(D, 16, seed=1) if name == "favor" else name
    got = linear_attention(q, k, v, fm, causal=causal, chunk_size=4, key_padding=keep, eps=0.0)
    want = linear_attention_naive(q, k, v, fm, causal=causal, key_padding=keep, eps=0.0)
    assert torch.allclose(got, want, atol=1e-12, rtol=1e-10)
    row = keep[1].nonzero()[:, 0]           # right padding: the real prefix, run alone
    alone = linear_attention_naive(q[1:, :, row], k[1:, :, row], v[1:, :, row], fm,
                                   causal=causal, eps=0.0)
    assert torch.allclose(got[1:, :, row], alone, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(got, linear_attention(q, k, v, fm, causal=causal, eps=0.0))
    if causal:                              # queries before any real key: output 0
        assert (got[0, :, :3] == 0).all()


def test_key_padding_bad_shape():
    q = torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match=r"key_padding: expected a bool tensor \(B, T\)"):
        linear_attention(q, q, q, key_padding=torch.ones(1, 4, dtype=torch.bool))


def test_hedgehog_map_starts_as_identity_softmax_and_trains():
    from attnkit.linear import GivenFeatures, HedgehogFeatureMap
    fm = HedgehogFeatureMap(4, 2, 8)
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    fq = fm.queries(q)                                                # (1, 4, 6, 16)
    assert torch.allclose(fq, torch.cat([q.softmax(-1), (-q).softmax(-1)], -1))
    out = linear_attention(fq, fm.keys(k), v, GivenFeatures())
    want = linear_attention_naive(fq.double(), fm.keys(k).double(), v.double(), GivenFeatures())
    assert torch.allclose(out.double(), want, atol=1e-5)
    out.sum().backward()
    assert fm.q_weight.grad is not None and fm.k_bias.grad.abs().sum() > 0
