"""attnkit.modules: attention, caches, positions, norms, layers -- against independent math."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import masks
from attnkit.modules import (DecoderBlock, Block, FeedForward, KVCache, LayerConfig,
                             LearnedPositions, MultiHeadAttention, RMSNorm, RotaryEmbedding,
                             SinusoidalPositions, SlidingWindowCache, apply_rotary, cache_nbytes,
                             key_padding_mask, sinusoidal_table)

torch.set_default_dtype(torch.float32)


def naive_mha(m: MultiHeadAttention, x, context=None, allowed=None, bias=None):
    """Per-head loop with explicit softmax: shares only the weights with ``m``."""
    ctx = x if context is None else context
    H, Hkv, D = m.n_heads, m.n_kv_heads, m.head_dim
    if m.fused:
        W, b = m.qkv_proj.weight, m.qkv_proj.bias
        Wq, Wk, Wv = W.split((H * D, Hkv * D, Hkv * D))
        bq, bk, bv = b.split((H * D, Hkv * D, Hkv * D))
    else:
        Wq, Wk, Wv = m.q_proj.weight, m.k_proj.weight, m.v_proj.weight
        bq, bk, bv = m.q_proj.bias, m.k_proj.bias, m.v_proj.bias
    outs = []
    for h in range(H):
        j = h // (H // Hkv)                                    # the KV head of query head h
        q = x @ Wq[h * D:(h + 1) * D].T + bq[h * D:(h + 1) * D]
        k = ctx @ Wk[j * D:(j + 1) * D].T + bk[j * D:(j + 1) * D]
        v = ctx @ Wv[j * D:(j + 1) * D].T + bv[j * D:(j + 1) * D]
        s = q @ k.transpose(-1, -2) / math.sqrt(D)
        if bias is not None:
            s = s + bias[h]
        if allowed is not None:
            s = s.masked_fill(~allowed, float("-inf"))
        outs.append(torch.softmax(s, -1) @ v)
    return m.o_proj(torch.cat(outs, -1))


# ---------------------------------------------------------------- MultiHeadAttention
@pytest.mark.parametrize("n_kv,fused", [(None, False), (2, False), (1, True), (4, True)])
def test_self_attention_matches_naive(n_kv, fused):
    torch.manual_seed(0)
    m = MultiHeadAttention(32, 4, n_kv, fused=fused, pattern=masks.causal())
    x = torch.randn(2, 9, 32)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    torch.testing.assert_close(m(x), naive_mha(m, x, allowed=causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_cross_attention_tq_ne_tk(fused):
    torch.manual_seed(1)
    m = MultiHeadAttention(24, 3, fused=fused)
    x, ctx = torch.randn(2, 5, 24), torch.randn(2, 11, 24)
    out, w = m(x, context=ctx, return_weights=True)
    assert out.shape == (2, 5, 24) and w.shape == (2, 3, 5, 11)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(out, naive_mha(m, x, context=ctx), atol=1e-5, rtol=1e-5)
    # a padded context: padded keys get weight 0
    keep = torch.tensor([[True] * 11, [True] * 7 + [False] * 4])
    out, w = m(x, context=ctx, mask=key_padding_mask(keep), return_weights=True)
    assert float(w[1, :, :, 7:].detach().abs().max()) == 0.0
    torch.testing.assert_close(out[1:], m(x[1:], context=ctx[1:, :7]), atol=1e-5, rtol=1e-5)


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(2)
    H, Hkv, D, d = 8, 2, 4, 32
    gqa = MultiHeadAttention(d, H, Hkv, pattern=masks.causal())
    mha = MultiHeadAttention(d, H, pattern=masks.causal())
    rep = lambda t: t.view(Hkv, D, *t.shape[1:]).repeat_interleave(H // Hkv, 0).reshape(  # noqa
        H * D, *t.shape[1:])
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.o_proj.load_state_dict(gqa.o_proj.state_dict())
        for a, b in ((mha.k_proj, gqa.k_proj), (mha.v_proj, gqa.v_proj)):
            a.weight.copy_(rep(b.weight))
            a.bias.copy_(rep(b.bias))
    x = torch.randn(3, 10, d)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("positions", [None, "rope", "alibi"])
@pytest.mark.parametrize("n_kv", [None, 2, 1])
def test_cache_equals_no_cache(positions, n_kv):
    torch.manual_seed(3)
    m = MultiHeadAttention(32, 4, n_kv, positions=positions, pattern=masks.causal())
    x = torch.randn(2, 12, 32)
    full = m(x)
    cache = KVCache()
    steps = [m(x[:, :5], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert len(cache) == 12 and cache.seen == 12 and cache.dropped == 0


def test_alibi_matches_explicit_bias():
    torch.manual_seed(4)
    m = MultiHeadAttention(16, 4, positions="alibi", pattern=masks.causal())
    x = torch.randn(1, 6, 16)
    slopes = [2 ** (-8 * (h + 1) / 4) for h in range(4)]             # Press et al., H = 4
    dist = (torch.arange(6)[:, None] - torch.arange(6)[None]).abs().float()
    bias = torch.stack([-s * dist for s in slopes])
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(m(x), naive_mha(m, x, allowed=allowed, bias=bias),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled"])
def test_backend_switch_keeps_outputs(backend):
    torch.manual_seed(5)
    m = MultiHeadAttention(32, 4, 2, positions="rope", pattern=masks.causal())
    x = torch.randn(2, 7, 32)
    ref = m(x)
    m.set_attention(backend=backend)
    assert m.backend == backend
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)
    m.set_attention(pattern=masks.causal() & masks.window(2))         # a sparse pattern
    allowed = torch.ones(7, 7, dtype=torch.bool).tril() & ~torch.ones(7, 7, dtype=torch.bool) \
        .tril(-3)
    m2 = MultiHeadAttention(32, 4, 2, pattern=masks.causal() & masks.window(2))
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), naive_mha(m2, x, allowed=allowed), atol=1e-5, rtol=1e-5)


def test_mha_gradients_flow():
    m = MultiHeadAttention(16, 4, 2, pattern=masks.causal(), backend="tiled")
    x = torch.randn(2, 5, 16, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=30, n_heads=4), "n_heads"),
    (dict(d_model=32, n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(d_model=32, n_heads=0), "n_heads"),
    (dict(d_model=32, n_heads=4, positions="xpos"), "positions"),
    (dict(d_model=32, n_heads=4, backend="nope"), "backend"),
    (dict(d_model=32, n_heads=4, dropout=1.5), "dropout"),
    (dict(d_model=32, n_heads=4, pattern="causal"), "pattern"),
])
def test_mha_constructor_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MultiHeadAttention(**kwargs)


def test_mha_forward_errors():
    m = MultiHeadAttention(16, 4)
    with pytest.raises(ValueError, match="x: expected a tensor"):
        m(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="context: expected batch size 2"):
        m(torch.randn(2, 5, 16), context=torch.randn(3, 4, 16))
    with pytest.raises(TypeError, match="cache"):
        m(torch.randn(2, 5, 16), cache=[])
    with pytest.raises(ValueError, match="self-attention only"):
        MultiHeadAttention(16, 4, positions="rope")(torch.randn(1, 2, 16),
                                                    context=torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.randn(2, 5, 16), mask=key_padding_mask(torch.ones(2, 4)))
    with pytest.raises(ValueError, match="attention_mask"):
        key_padding_mask(torch.ones(2, 1, 4))
    cross = KVCache()
    cross.cross = True                                  # a cross cache that was reset/empty
    with pytest.raises(ValueError, match="context: expected the encoder output"):
        m(torch.randn(2, 5, 16), cache=cross)
    own = KVCache()
    m(torch.randn(2, 5, 16), cache=own)                 # a self-attention cache ...
    with pytest.raises(ValueError, match="its own KVCache"):
        m(torch.randn(2, 5, 16), context=torch.randn(2, 3, 16), cache=own)


# ---------------------------------------------------------------- caches
def test_kv_cache_update_and_bytes():
    c = KVCache()
    k, v = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
    ka, va = c.update(k, v)
    assert ka is k and c.nbytes == 2 * 2 * 3 * 4 * 8 * 4
    ka, va = c.update(k[:, :, :1], v[:, :, :1])
    assert ka.shape == (2, 3, 5, 8) and torch.equal(ka[:, :, 4], k[:, :, 0])
    c.reorder(torch.tensor([1, 1]))
    assert torch.equal(c.k[0], c.k[1])
    with pytest.raises(ValueError, match="k: expected"):
        c.update(torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8))
    with pytest.raises(ValueError, match="v: expected"):
        c.update(torch.randn(2, 3, 1, 8), torch.randn(2, 3, 2, 8))
    c.reset()
    assert len(c) == 0 and c.nbytes == 0 and c.seen == 0


@settings(max_examples=25, deadline=None)
@given(window=st.integers(1, 6), chunks=st.lists(st.integers(1, 4), min_size=1, max_size=6))
def test_sliding_cache_keeps_last_w(window, chunks):
    c = SlidingWindowCache(window)
    seq = []
    for n in chunks:
        k = torch.arange(len(seq), len(seq) + n, dtype=torch.float32).view(1, 1, n, 1)
        ka, _ = c.update(k, k.clone())
        seq += k.flatten().tolist()
        first = max(0, len(seq) - n - window)                # returned: stored + new
        assert ka.flatten().tolist() == seq[first:]
        assert c.k.flatten().tolist() == seq[-window:]
    assert c.seen == len(seq) and c.dropped == max(0, len(seq) - window)


def test_sliding_cache_decode_exact_and_guarded():
    torch.manual_seed(6)
    w = 4
    m = MultiHeadAttention(16, 4, positions="rope", pattern=masks.window(w - 1))
    x = torch.randn(1, 15, 16)
    full = m(x)
    cache = SlidingWindowCache(w - 1)
    steps = [m(x[:, :6], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(6, 15)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert len(cache) == w - 1
    # a pattern that looks further back than the cache keeps: refused, not wrong
    m.set_attention(pattern=masks.causal())
    with pytest.raises(ValueError, match="dropped"):
        m(x[:, :1], cache=cache)
    with pytest.raises(ValueError, match="window"):
        SlidingWindowCache(0)


def test_gqa_and_mqa_cache_saving_on_decode():
    """32 query heads: 8 KV heads store 4x less than 32, 1 KV head 32x less."""
    from attnkit.models import GPT, GPTConfig
    sizes = {}
    for n_kv in (32, 8, 1):
        torch.manual_seed(0)
        cfg = GPTConfig(vocab_size=50, max_len=64, d_model=128, n_layers=2, n_heads=32,
                        n_kv_heads=n_kv, positions="rope", norm="rmsnorm", activation="silu",
                        gated=True, bias=False, fused_qkv=False, tie_embeddings=False)
        model = GPT(cfg).eval()
        cache = model.new_cache()
        with torch.no_grad():
            idx = torch.randint(0, 50, (2, 5))
            model(idx, cache=cache)
            for _ in range(11):
                model(idx[:, :1], cache=cache)
        assert len(cache[0]) == 16
        sizes[n_kv] = cache_nbytes(cache)
    assert sizes[32] == 2 * 2 * 2 * 32 * 16 * 4 * 4          # layers*kv*B*H*T*D*fp32
    assert sizes[32] / sizes[8] == 4 and sizes[32] / sizes[1] == 32


# ---------------------------------------------------------------- positions
def test_sinusoidal_matches_paper_formula():
    t = sinusoidal_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert t[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert t[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    sp = SinusoidalPositions(50, 16)
    assert torch.equal(sp(torch.tensor([3, 4])), t[3:5])
    with pytest.raises(ValueError, match="position 50"):
        sp(torch.tensor([50]))
    with pytest.raises(ValueError, match="d_model"):
        sinusoidal_table(10, 7)


def test_learned_positions_bounds():
    lp = LearnedPositions(8, 4)
    assert lp(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ValueError, match="position 8"):
        lp(torch.arange(9))


def test_rope_interleaved_matches_complex_rotation():
    torch.manual_seed(7)
    D, T = 8, 6
    rope = RotaryEmbedding(D, style="interleaved")
    x = torch.randn(1, 1, T, D, dtype=torch.float64)
    cos, sin = rope.angles(torch.arange(T))
    got = apply_rotary(x.float(), cos, sin, "interleaved")
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    z = torch.view_as_complex(x.view(1, 1, T, D // 2, 2).contiguous())
    rot = torch.polar(torch.ones(T, D // 2, dtype=torch.float64),
                      torch.arange(T, dtype=torch.float64)[:, None] * theta)
    want = torch.view_as_real(z * rot).flatten(-2)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_rope_half_equals_interleaved_after_permutation():
    """HF's Llama conversion permutes q/k rows: pair (2i, 2i+1) -> (i, i + D/2)."""
    torch.manual_seed(8)
    D = 8
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    q, k = torch.randn(2, 3, 5, D), torch.randn(2, 3, 5, D)
    qi, ki = RotaryEmbedding(D, style="interleaved")(q, k, offset=3)
    qh, kh = RotaryEmbedding(D, style="half")(q[..., perm], k[..., perm], offset=3)
    torch.testing.assert_close(qh, qi[..., perm])
    torch.testing.assert_close(kh, ki[..., perm])


@settings(max_examples=30, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 500),
       style=st.sampled_from(["half", "interleaved"]))
def test_rope_scores_depend_on_relative_position(m, n, shift, style):
    g = torch.Generator().manual_seed(m * 1000 + n)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    rope = RotaryEmbedding(16, style=style)

    def score(a, b):
        return (rope(q, q, a)[0] * rope(k, k, b)[1]).sum().item()
    assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=2e-4)


def test_rope_survives_low_precision_cast():
    """No float buffer: model.to(bfloat16) cannot round the frequencies."""
    rope = RotaryEmbedding(64, base=500000.0)
    assert list(rope.buffers()) == []
    cos, _ = rope.to(torch.bfloat16).angles(torch.tensor([4000]))
    want = math.cos(4000 * 500000.0 ** (-2 * 5 / 64))
    assert cos[0, 5].item() == pytest.approx(want, abs=1e-3)


def test_rope_errors():
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="style"):
        RotaryEmbedding(8, style="neox")
    with pytest.raises(ValueError, match="head_dim"):
        MultiHeadAttention(32, 4, positions=RotaryEmbedding(4))


# ---------------------------------------------------------------- norms, FFN, layers
def test_rmsnorm_formula():
    n = RMSNorm(6, eps=1e-6)
    with torch.no_grad():
        n.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6)
    want = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * torch.arange(1.0, 7.0)
    torch.testing.assert_close(n(x), want)


def test_swiglu_ffn_formula():
    torch.manual_seed(9)
    f = FeedForward(LayerConfig(d_model=8, n_heads=2, d_ff=12, activation="silu", gated=True,
                                bias=False))
    x = torch.randn(2, 3, 8)
    want = (F.silu(x @ f.gate.weight.T) * (x @ f.up.weight.T)) @ f.down.weight.T
    torch.testing.assert_close(f(x), want)
    with pytest.raises(ValueError, match="activation"):
        LayerConfig(d_model=8, n_heads=2, d_ff=12, activation="tanh")


def _copy_torch_attn(ours: MultiHeadAttention, theirs: torch.nn.MultiheadAttention):
    ours.qkv_proj.weight.copy_(theirs.in_proj_weight)
    ours.qkv_proj.bias.copy_(theirs.in_proj_bias)
    ours.o_proj.load_state_dict(theirs.out_proj.state_dict())


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(norm_first):
    torch.manual_seed(10)
    cfg = LayerConfig(d_model=16, n_heads=4, d_ff=32, activation="relu", norm_first=norm_first,
                      fused_qkv=True)
    ours = Block(cfg).eval()
    ref = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True,
                                           norm_first=norm_first).eval()
    with torch.no_grad():
        _copy_torch_attn(ours.attn, ref.self_attn)
        ours.ffn.up.load_state_dict(ref.linear1.state_dict())
        ours.ffn.down.load_state_dict(ref.linear2.state_dict())
        ours.norm1.load_state_dict(ref.norm1.state_dict())
        ours.norm2.load_state_dict(ref.norm2.state_dict())
    x = torch.randn(2, 7, 16)
    keep = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    got = ours(x, mask=key_padding_mask(keep))
    want = ref(x, src_key_padding_mask=keep == 0)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, :5], want[1, :5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_matches_torch(norm_first):
    torch.manual_seed(11)
    cfg = LayerConfig(d_model=16, n_heads=4, d_ff=32, activation="relu", norm_first=norm_first,
                      fused_qkv=True)
    ours = DecoderBlock(cfg, masks.causal()).eval()
    ref = torch.nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, batch_first=True,
                                           norm_first=norm_first).eval()
    with torch.no_grad():
        _copy_torch_attn(ours.attn, ref.self_attn)
        _copy_torch_attn(ours.cross_attn, ref.multihead_attn)
        ours.ffn.up.load_state_dict(ref.linear1.state_dict())
        ours.ffn.down.load_state_dict(ref.linear2.state_dict())
        ours.norm1.load_state_dict(ref.norm1.state_dict())
        ours.norm_cross.load_state_dict(ref.norm2.state_dict())
        ours.norm2.load_state_dict(ref.norm3.state_dict())
    x, mem = torch.randn(2, 6, 16), torch.randn(2, 9, 16)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(6)
    want = ref(x, mem, tgt_mask=causal)
    torch.testing.assert_close(ours(x, mem), want, atol=1e-5, rtol=1e-5)
    # step by step with caches
    c_self, c_cross = KVCache(), KVCache()
    steps = [ours(x[:, t:t + 1], mem if t == 0 else None, cache=c_self, cross_cache=c_cross)
             for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), want, atol=1e-5, rtol=1e-5)
    out, (ws, wc) = ours(x, mem, return_weights=True)
    assert ws.shape == (2, 4, 6, 6) and wc.shape == (2, 4, 6, 9)
    assert float(ws.detach().triu(1).abs().max()) == 0.0
