"""Bounded caches in attnkit's own models: sinks + window (SinkWindowCache) and linear
attention's recurrent state (LinearStateCache), picked by GPT.new_cache(bounded=True) from
the layer's pattern, exact against a full cache, constant in bytes, guarded."""
import pytest
import torch

from attnkit import masks
from attnkit.models import GPT, GPTConfig
from attnkit.modules import (KVCache, LinearStateCache, MultiHeadAttention, SinkWindowCache,
                             SlidingWindowCache, cache_nbytes)
from attnkit.modules.cache import kept_keys
from attnkit.sparse import bigbird, longformer, strided

G, W = 2, 5     # sinks, window (keys back)
KINDS = [("tiny-llama", {}),                                  # RoPE, GQA 4/2, separate qkv
         ("tiny", {}),                                        # learned positions, fused qkv
         ("tiny", dict(positions="alibi"))]                   # a distance bias on the sinks
SINK_PATTERNS = {"longformer": lambda: longformer(W, G, causal=True),
                 "window|globals": lambda: masks.window(W) | masks.global_tokens(range(G))}


def gpt(kind="tiny-llama", **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig.preset(kind, **kw)).eval()


def ids(B, T, seed):
    return torch.randint(0, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def decode(model, seq, cache, prompt, chunk=1):
    """Logits of ``seq (B, T)`` fed as a prompt then ``chunk`` tokens at a time."""
    with torch.no_grad():
        outs = [model(seq[:, :prompt], cache=cache)]
        outs += [model(seq[:, t:t + chunk], cache=cache)
                 for t in range(prompt, seq.shape[1], chunk)]
    return torch.cat(outs, 1)


# ------------------------------------------------------------------ sinks + window
def test_kept_keys_reads_the_structure():
    assert kept_keys(masks.causal() & longformer(W, G, causal=True)) == (G, W)
    assert kept_keys(masks.causal() & longformer(W, G)) == (G, W)   # bidirectional, AND causal
    assert kept_keys(masks.window(W) | masks.global_tokens([0, 3])) == (4, W)
    assert kept_keys(masks.causal() & masks.window(3)) == (0, 3)
    assert kept_keys(masks.causal())[1] == float("inf")
    assert kept_keys(masks.causal() & strided(4))[1] == float("inf")
    assert kept_keys(bigbird(4, 1, 1, 1, causal=True).at(32))[1] == float("inf")


@pytest.mark.parametrize("kind,kw", KINDS)
@pytest.mark.parametrize("name", sorted(SINK_PATTERNS))
def test_sinks_cache_greedy_and_logits_equal_the_full_cache(kind, kw, name):
    model = gpt(kind, **kw)
    model.set_attention(pattern=SINK_PATTERNS[name]())
    caches = model.new_cache(bounded=True)
    assert all(type(c) is SinkWindowCache and (c.sinks, c.window) == (G, W) for c in caches)
    assert all(type(c) is KVCache for c in model.new_cache())          # unbounded: every key
    for B, T, seed in [(1, 3, 0), (3, 9, 1), (2, G, 2)]:      # prompts < / > G + W; >= G
        prompt = ids(B, T, seed)
        out = model.generate(prompt, 18)
        assert torch.equal(out, model.generate(prompt, 18, use_cache=False)), (B, T)
        full = decode(model, out, model.new_cache(), T)
        bounded = decode(model, out, model.new_cache(bounded=True), T)
        torch.testing.assert_close(bounded, full, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(bounded, model(out), atol=1e-5, rtol=1e-5)


def test_sinks_cache_chunks_after_eviction_and_constant_bytes():
    model = gpt("tiny-llama")
    model.set_attention(pattern=longformer(W, G, causal=True))
    seq = ids(2, 30, 3)
    with torch.no_grad():
        ref = model(seq)
    cache = model.new_cache(bounded=True)
    torch.testing.assert_close(decode(model, seq, cache, 12, chunk=3), ref, atol=1e-5,
                               rtol=1e-5)                     # 3 queries: a partial mask
    cache, sizes = model.new_cache(bounded=True), []
    with torch.no_grad():
        model(seq[:, :G + W], cache=cache)
        for t in range(G + W, 30):
            model(seq[:, t:t + 1], cache=cache)
            sizes.append(cache_nbytes(cache))
    L, Hkv, D = 2, 2, 16
    assert set(sizes) == {L * 2 * 2 * Hkv * (G + W) * D * 4}        # k and v, fp32
    assert all(c.nbytes == sizes[0] // L for c in cache)             # bytes per layer
    assert cache[0].seen == 30 and len(cache[0]) == G + W


def test_sinks_cache_holds_the_first_and_last_keys():
    c = SinkWindowCache(sinks=2, window=3)
    seq = []
    for n in (1, 4, 1, 5, 1, 2):
        k = torch.arange(len(seq), len(seq) + n, dtype=torch.float32).view(1, 1, n, 1)
        ka, _ = c.update(k, k.clone())
        stored_before = seq[:2] + seq[2:][-3:] if len(seq) > 5 else seq
        assert ka.flatten().tolist() == stored_before + k.flatten().tolist()   # + the new
        seq += k.flatten().tolist()
        assert c.k.flatten().tolist() == (seq[:2] + seq[-3:] if len(seq) > 5 else seq)
    assert c.seen == len(seq) and c.dropped == len(seq) - 5


def test_kept_keys_are_masked_at_their_absolute_positions():
    """The bounded cache's weights are the full cache's columns at the kept positions
    (sinks 0..G-1, then the window); the full cache gives the dropped columns weight 0.
    A key-padding mask over all the positions hides the same keys in both."""
    torch.manual_seed(5)
    m = MultiHeadAttention(16, 4, 2, positions="rope",
                           pattern=masks.causal() & (masks.window(W) | masks.global_tokens([1])))
    x = torch.randn(2, 20, 16)
    keep = torch.ones(2, 20, dtype=torch.bool)
    keep[0, [9, 12]] = False                           # two keys inside the window
    keep[1, 0] = False                                 # a left pad: a sink hidden
    full, sinks = KVCache(), SinkWindowCache(G, W)
    with torch.no_grad():
        for cache in (full, sinks):
            m(x[:, :8], cache=cache, mask=masks.key_padding(keep[:, :8]))
        for t in range(8, 20, 2):
            pad = masks.key_padding(keep[:, :t + 2])
            a, wa = m(x[:, t:t + 2], cache=full, mask=pad, return_weights=True)
            b, wb = m(x[:, t:t + 2], cache=sinks, mask=pad, return_weights=True)
            kept = list(range(G)) + list(range(t + 2 - (wb.shape[-1] - G), t + 2))
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(wb, wa[..., kept], atol=1e-6, rtol=1e-5)
            assert wa[..., [j for j in range(t + 2) if j not in kept]].abs().max() == 0
            assert wb[..., 0].abs().max() == 0                        # a kept, unread sink
            assert wb[0][..., [kept.index(j) for j in (9, 12) if j in kept]].abs().sum() == 0


def test_a_pattern_that_reads_a_dropped_key_raises():
    torch.manual_seed(6)
    m = MultiHeadAttention(16, 4, positions="rope", pattern=longformer(W, G, causal=True))
    x = torch.randn(1, 12, 16)
    for cache in (SinkWindowCache(1, W), SinkWindowCache(G, W - 1), SlidingWindowCache(W)):
        m(x[:, :3], cache=cache)          # nothing dropped yet: served
        with pytest.raises(ValueError, match="dropped .* positions that the pattern"):
            for t in range(3, 12):
                m(x[:, t:t + 1], cache=cache)
    m.set_attention(pattern=masks.causal())          # the sinks cache, any causal pattern
    cache = SinkWindowCache(G, W)
    m(x, cache=cache)
    with pytest.raises(ValueError, match="dropped"):
        m(x[:, :1], cache=cache)


def test_sinks_cache_bad_arguments_and_fallbacks():
    for kw, word in [(dict(sinks=4, window=2), "sinks: expected <= window=2"),
                     (dict(sinks=-1, window=2), "sinks: expected an int"),
                     (dict(sinks=1, window=0), "window: expected an int")]:
        with pytest.raises(ValueError, match=word):
            SinkWindowCache(**kw)
    model = gpt("tiny-llama")
    model.set_attention(pattern=longformer(2, 5, causal=True))      # more sinks than window
    assert all(type(c) is KVCache for c in model.new_cache(bounded=True))
    model.set_attention(pattern=masks.window(3))                     # no sinks: a window
    assert all(type(c) is SlidingWindowCache for c in model.new_cache(bounded=True))
    model = gpt("tiny-llama", window=4)                               # the model's own window
    model.set_attention(pattern=longformer(W, G, causal=True))        # is the tighter one
    assert all(type(c) is SlidingWindowCache and c.window == 3
               for c in model.new_cache(bounded=True))


# ------------------------------------------------------------------ linear attention's state
@pytest.mark.parametrize("kind", ["tiny-llama", "tiny"])
@pytest.mark.parametrize("fm", ["elu", "relu"])
def test_linear_state_decoding_equals_recomputation(kind, fm):
    model = gpt(kind)
    model.set_attention(linear=fm)
    assert all(type(c) is LinearStateCache for c in model.new_cache(bounded=True))
    for B, T, seed in [(1, 4, 0), (3, 7, 1)]:
        prompt = ids(B, T, seed)
        out = model.generate(prompt, 16)
        assert torch.equal(out, model.generate(prompt, 16, use_cache=False)), (B, T)
        with torch.no_grad():
            ref = model(out)
        for chunk in (1, 4):
            got = decode(model, out, model.new_cache(bounded=True), T, chunk=chunk)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_linear_state_bytes_are_independent_of_the_context():
    model = gpt("tiny-llama")
    model.set_attention(linear="elu")
    seq, cache, sizes = ids(2, 40, 4), model.new_cache(bounded=True), []
    with torch.no_grad():
        model(seq[:, :3], cache=cache)
        for t in range(3, 40):
            sizes.append([c.nbytes for c in cache])
            model(seq[:, t:t + 1], cache=cache)
    B, Hkv, F, Dv = 2, 2, 16, 16
    assert all(s == [B * Hkv * (F * Dv + F + 1) * 4] * 2 for s in sizes)  # S, z, m in fp32
    assert cache[0].seen == 40 and tuple(cache[0].state.S.shape) == (B, Hkv, F, Dv)
    assert cache_nbytes(cache) == 2 * sizes[0][0]
    cache[0].reorder(torch.tensor([1, 1]))
    assert torch.equal(cache[0].state.S[0], cache[0].state.S[1])
    cache[0].reset()
    assert cache[0].nbytes == 0 and cache[0].seen == 0


def test_linear_state_cache_refusals():
    torch.manual_seed(7)
    soft = MultiHeadAttention(16, 4, pattern=masks.causal())
    lin = MultiHeadAttention(16, 4, pattern=masks.causal()).set_attention(linear="elu")
    x = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="cache: a LinearStateCache holds linear attention"):
        soft(x, cache=LinearStateCache())
    with pytest.raises(ValueError, match="cache: linear attention decodes from its recurrent"):
        lin(x, cache=KVCache())
    with pytest.raises(ValueError, match="mask: a LinearStateCache decodes causal"):
        lin.set_attention(pattern=None)(x, cache=LinearStateCache())
    with pytest.raises(ValueError, match="cross-attention needs a KVCache"):
        lin(x, context=x, cache=LinearStateCache())
    with pytest.raises(TypeError, match="holds no keys"):
        LinearStateCache().update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4))
