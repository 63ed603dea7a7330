"""Bounded caches inside transformers' ``generate`` (``attnkit.hf.cache``): a window, sinks +
window and linear variant decode from a cache that keeps only what the variant reads, with
exactly the tokens of the same variant over a full cache (or, for linear attention, of a
recomputation over the whole sequence); GQA caches hold only the KV heads; bad input is
refused by name. Tiny random Llama / Mistral / Qwen2 decoders with GQA (4 heads, 2 KV)."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit.hf  # noqa: E402
from attnkit.integrations.hf.cache_layers import (  # noqa: E402
    LinearStateLayer, SinkWindowLayer, StaticSinkWindowLayer)
from attnkit.integrations.hf.cache import static_bounded_cache  # noqa: E402

V, L, HKV, D = 97, 2, 2, 8


def decoder(arch: str, sliding_window=None):
    t = transformers
    kw = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=L,
              num_attention_heads=4, num_key_value_heads=HKV, max_position_embeddings=128)
    cls, cfg = {"llama": (t.LlamaForCausalLM, t.LlamaConfig),
                "mistral": (t.MistralForCausalLM, t.MistralConfig),
                "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config)}[arch]
    if arch == "mistral":
        kw["sliding_window"] = sliding_window
    torch.manual_seed({"llama": 0, "mistral": 1, "qwen2": 2}[arch])
    return cls(cfg(**kw)).eval()


def prompts(B: int, T: int, seed: int):
    """B prompts of T tokens, row b left-padded by 2b tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    mask = torch.ones_like(ids)
    for b in range(B):
        mask[b, :2 * b] = 0
        ids[b, :2 * b] = 0
    return ids, mask


def generate(model, ids, mask, n=20, **kw):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                         pad_token_id=0, return_dict_in_generate=True, **kw)
    return out.sequences, out.cache


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("variant", ["window:6", "longformer:6:2"])
def test_bounded_cache_greedy_equals_full_cache(arch, variant):
    model = attnkit.hf.use(decoder(arch, sliding_window=64), variant)
    for B, T, seed in [(1, 9, 0), (3, 12, 1), (2, 5, 2)]:
        ids, mask = prompts(B, T, seed)
        seq, cache = generate(model, ids, mask)
        ref, full = generate(model, ids, mask, cache=transformers.DynamicCache())
        assert torch.equal(seq, ref), (arch, variant, B, T)
        kind = SinkWindowLayer if variant.startswith("longformer") else \
            transformers.cache_utils.DynamicSlidingWindowLayer
        assert all(type(layer) is kind for layer in cache.layers)
        kept = 6 + (2 if kind is SinkWindowLayer else 0)   # W keys (+ G sinks)
        per_layer = 2 * B * HKV * kept * D * 4              # keys + values, fp32, KV heads
        assert attnkit.hf.cache_bytes(cache) == [per_layer] * L
        assert attnkit.hf.cache_bytes(full) == [2 * B * HKV * (seq.shape[1] - 1) * D * 4] * L


def test_sinks_keep_the_first_keys_and_the_last_window():
    model = attnkit.hf.use(decoder("llama"), "longformer:5:3")
    ids, mask = prompts(2, 7, 3)
    _, cache = generate(model, ids, mask, n=15)
    _, full = generate(model, ids, mask, n=15, cache=transformers.DynamicCache())
    for b, f in zip(cache.layers, full.layers):   # the same keys: original positions (RoPE)
        assert torch.allclose(b.keys, torch.cat([f.keys[:, :, :3], f.keys[:, :, -5:]], 2), atol=1e-6)
        assert torch.allclose(b.values, torch.cat([f.values[:, :, :3], f.values[:, :, -5:]], 2), atol=1e-6)


def test_mistral_window_is_the_tighter_of_model_and_variant():
    model = attnkit.hf.use(decoder("mistral", sliding_window=4), "window:8")
    ids, mask = prompts(2, 9, 4)
    seq, cache = generate(model, ids, mask)
    ref, _ = generate(model, ids, mask, cache=transformers.DynamicCache())
    assert torch.equal(seq, ref)
    assert [layer.sliding_window for layer in cache.layers] == [4] * L


@pytest.mark.parametrize("variant", ["window:6", "longformer:6:2"])
def test_mixed_layer_types_share_one_layout(variant):
    """Gemma-2: sliding (4) and full layers alternate; one bounded layout serves both."""
    from hf_models import gemma2
    torch.manual_seed(3)
    model = attnkit.hf.use(gemma2().eval(), variant)
    ids, mask = prompts(2, 9, 10)
    seq, cache = generate(model, ids, mask, n=14)
    ref, _ = generate(model, ids, mask, n=14, cache=transformers.DynamicCache())
    assert torch.equal(seq, ref)
    assert len({type(layer) for layer in cache.layers}) == 1


@pytest.mark.parametrize("variant", ["window:4", "longformer:4:2"])
def test_beam_search_from_a_bounded_cache(variant):
    model = attnkit.hf.use(decoder("qwen2"), variant)
    ids, mask = prompts(2, 8, 5)
    seq, cache = generate(model, ids, mask, n=12, num_beams=3)
    ref, _ = generate(model, ids, mask, n=12, num_beams=3, cache=transformers.DynamicCache())
    assert torch.equal(seq, ref)
    assert type(cache.layers[0]) is not transformers.cache_utils.DynamicLayer
    static, cache = generate(model, ids, mask, n=12, num_beams=3, cache_implementation="static")
    assert torch.equal(static, ref) and "Static" in type(cache.layers[0]).__name__


def recompute_greedy(model, ids, n):
    for _ in range(n):
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    return ids, logits


@pytest.mark.parametrize("arch,fm", [("llama", "elu"), ("qwen2", "favor:16"), ("mistral", "relu")])
def test_linear_state_decoding_equals_recomputation(arch, fm):
    model = attnkit.hf.use(decoder(arch), f"linear:{fm}")
    ids = torch.randint(3, V, (2, 11), generator=torch.Generator().manual_seed(6))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                         do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                         output_scores=True)
    ref, logits = recompute_greedy(model, ids, 16)
    assert torch.equal(out.sequences, ref)
    assert torch.allclose(out.scores[-1], logits, atol=1e-5)
    assert all(isinstance(layer, LinearStateLayer) for layer in out.cache.layers)
    F = 16 if fm.startswith("favor") else D
    state = 2 * HKV * (F * D + F + 1) * 4     # S, z, m per KV head, fp32
    assert attnkit.hf.cache_bytes(out.cache) == [state] * L   # whatever the context


def test_linear_beam_search_runs_and_matches_per_step_reordering():
    model = attnkit.hf.use(decoder("llama"), "linear:elu")
    ids = torch.randint(3, V, (1, 6), generator=torch.Generator().manual_seed(7))
    seq = model.generate(input_ids=ids, max_new_tokens=8, num_beams=3, do_sample=False,
                         pad_token_id=0)
    assert seq.shape == (1, 14)
    with torch.no_grad():   # the chosen beam's score, recomputed over the whole sequence
        logp = model(input_ids=seq, use_cache=False).logits.log_softmax(-1)
    assert torch.isfinite(logp).all()


def test_dense_and_other_variants_keep_transformers_cache():
    model = attnkit.hf.use(decoder("llama"), "bigbird:4")
    ids, mask = prompts(2, 6, 8)
    _, cache = generate(model, ids, mask, n=3)
    assert all(type(layer) is transformers.cache_utils.DynamicLayer for layer in cache.layers)
    with pytest.raises(ValueError, match="reads every key"):
        attnkit.hf.bounded_cache(model)


def test_refusals():
    model = attnkit.hf.use(decoder("llama"), "longformer:2:4")
    ids, mask = prompts(1, 6, 9)
    with pytest.raises(ValueError, match="sinks G=4 larger than the window W=2"):
        generate(model, ids, mask, n=2)
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
        decoder_start_token_id=0, relative_attention_num_buckets=8)).eval()
    attnkit.hf.use(t5, "window:4")
    with pytest.raises(ValueError, match="encoder-decoder.*cross-attention"):
        attnkit.hf.bounded_cache(t5)
    lin = attnkit.hf.use(decoder("llama"), "linear:elu")
    with pytest.raises(ValueError, match="recurrent state"):   # a full KV cache: refused
        lin.generate(input_ids=ids, max_new_tokens=2, cache=transformers.DynamicCache())


def _chunked_logits(model, ids, mask, more, cache):
    """The prompt, then ``more`` in chunks of 4 tokens, through ``cache``: all logits."""
    am, logits = mask, []
    with torch.no_grad():
        logits.append(model(input_ids=ids, attention_mask=am, cache=cache).logits)
        for chunk in more.split(4, 1):
            am = torch.cat([am, torch.ones_like(chunk)], 1)
            logits.append(model(input_ids=chunk, attention_mask=am, cache=cache).logits)
    return torch.cat(logits, 1)


@pytest.mark.parametrize("variant", ["window:5", "longformer:5:2", "linear:elu"])
def test_chunks_after_eviction_match_the_full_cache(variant):
    """Forward by hand with past keys: several tokens per call once keys were dropped."""
    model = attnkit.hf.use(decoder("llama"), variant)
    B = 1 if variant.startswith("linear") else 2
    ids, mask = prompts(B, 8, 11)
    more = torch.randint(3, V, (B, 12), generator=torch.Generator().manual_seed(12))
    caches = [attnkit.hf.bounded_cache(model)]
    if not variant.startswith("linear"):
        caches.append(transformers.DynamicCache())
    outs = []
    for cache in caches:
        outs.append(_chunked_logits(model, ids, mask, more, cache))
    if len(outs) == 1:   # linear: the whole sequence at once, no cache
        with torch.no_grad():
            outs.append(model(input_ids=torch.cat([ids, more], 1), use_cache=False).logits)
    real = torch.cat([mask, torch.ones_like(more)], 1).bool()
    assert torch.allclose(outs[0][real], outs[1][real], atol=1e-5)


def test_a_static_cache_too_short_for_the_prompt_is_refused():
    model = attnkit.hf.use(decoder("llama"), "window:4")
    ids, mask = prompts(1, 12, 13)
    short = transformers.StaticCache(config=model.config, max_cache_len=8)
    with pytest.raises(ValueError, match="max_cache_len=8 is too short.*expected >= 21"):
        generate(model, ids, mask, n=10, cache=short)


def test_attnkit_gpt_generate_keeps_only_the_window():
    """attnkit's own GPT: generate's cache keeps the last w keys of a window(w) pattern."""
    from attnkit.models import GPT, GPTConfig
    from attnkit.modules import SlidingWindowCache
    from attnkit.sparse import window
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny-llama", n_kv_heads=2)).eval()
    model.set_attention(pattern=window(5))
    idx = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(14))
    fast = model.generate(idx, 14)
    assert torch.equal(fast, model.generate(idx, 14, use_cache=False))
    caches = model.new_cache(bounded=True)
    assert all(isinstance(c, SlidingWindowCache) and c.window == 5 for c in caches)
    assert all(type(c).__name__ == "KVCache" for c in model.new_cache())   # inspect: all keys


@pytest.mark.parametrize("arch,variant", [("llama", "window:6"), ("mistral", "window:6"),
                                          ("qwen2", "window:3")])
def test_static_bounded_cache_greedy_equals_full_cache(arch, variant):
    """cache_implementation="static": transformers' static sliding-window layers of W + 1
    keys (Mistral: its own tighter window of 4 keys), tokens equal to the full dynamic cache's."""
    model = attnkit.hf.use(decoder(arch, sliding_window=4), variant)
    kept = 4 if arch == "mistral" else int(variant.split(":")[1]) + 1
    for B, T, seed in [(1, 9, 0), (3, 12, 1), (2, 5, 2)]:
        ids, mask = prompts(B, T, seed)
        seq, cache = generate(model, ids, mask, cache_implementation="static")
        ref, _ = generate(model, ids, mask, cache=transformers.DynamicCache())
        assert torch.equal(seq, ref), (arch, variant, B, T)
        assert all(type(layer) is transformers.cache_utils.StaticSlidingWindowLayer
                   for layer in cache.layers)
        assert attnkit.hf.cache_bytes(cache) == [2 * B * HKV * kept * D * 4] * L


def test_static_cache_without_a_static_bounded_form_is_refused():
    model = attnkit.hf.use(decoder("llama"), "linear:elu")
    ids, mask = prompts(1, 6, 15)
    with pytest.raises(ValueError, match="no static bounded cache for .*recurrent state"):
        generate(model, ids, mask, n=3, cache_implementation="static")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_static_sinks_cache_greedy_equals_full_cache(arch):
    """cache_implementation="static" with longformer:5:2: G + W + 1 = 8 fixed slots per layer
    (the first 2 keys, then the last 6), written in place; the tokens of the full dynamic
    cache for prompts longer and shorter than the slots, left-padded batches; the bytes
    do not grow with the generated length; the slots hold the full cache's keys."""
    model = attnkit.hf.use(decoder(arch, sliding_window=64), "longformer:5:2")
    for B, T, seed in [(1, 11, 0), (3, 12, 1), (2, 5, 2)]:
        ids, mask = prompts(B, T, seed)
        ref, full = generate(model, ids, mask, cache=transformers.DynamicCache())
        seq, cache = generate(model, ids, mask, cache_implementation="static")
        assert torch.equal(seq, ref), (arch, B, T)
        assert all(type(layer) is StaticSinkWindowLayer for layer in cache.layers)
        per_layer = 2 * B * HKV * (2 + 5 + 1) * D * 4    # keys + values, fp32, KV heads
        assert attnkit.hf.cache_bytes(cache) == [per_layer] * L
        short, early = generate(model, ids, mask, n=4, cache_implementation="static")
        assert attnkit.hf.cache_bytes(early) == [per_layer] * L
        assert torch.equal(short, ref[:, :T + 4])
        for s, f in zip(cache.layers, full.layers):    # original positions: the same keys
            for mine, theirs in ((s.keys, f.keys), (s.values, f.values)):   # first 2, last 6
                kept = torch.cat([theirs[:, :, :2], theirs[:, :, -6:]], 2)
                assert torch.allclose(mine, kept, atol=1e-6)


def test_static_sinks_prompt_shorter_than_the_sinks():
    model = attnkit.hf.use(decoder("qwen2"), "longformer:5:4")
    ids, mask = prompts(2, 3, 17)
    seq, cache = generate(model, ids, mask, n=16, cache_implementation="static")
    ref, _ = generate(model, ids, mask, n=16, cache=transformers.DynamicCache())
    assert torch.equal(seq, ref) and type(cache.layers[0]) is StaticSinkWindowLayer


def test_static_sinks_chunks_after_eviction_and_too_short():
    """Forward by hand: chunks of 4 tokens once keys were evicted (kept + new, as transformers'
    static window does) give the full cache's logits; a static cache with fewer than
    G + W + 1 slots is refused by name when it would have to evict."""
    model = attnkit.hf.use(decoder("llama"), "longformer:5:2")
    ids, mask = prompts(2, 8, 18)
    more = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(19))
    outs = []
    for cache in (static_bounded_cache(model, transformers.StaticCache(
            config=model.config, max_cache_len=20)), transformers.DynamicCache()):
        outs.append(_chunked_logits(model, ids, mask, more, cache))
    real = torch.cat([mask, torch.ones_like(more)], 1).bool()
    assert torch.allclose(outs[0][real], outs[1][real], atol=1e-5)
    tiny = static_bounded_cache(model, transformers.StaticCache(
        config=model.config, max_cache_len=6))
    with pytest.raises(ValueError, match="max_cache_len=6 is too short.*G \\+ W \\+ 1 = 8"):
        model(input_ids=ids, attention_mask=mask, cache=tiny)


@pytest.mark.parametrize("variant", [None, "window:6", "longformer:6:2"])
def test_gpt_oss_learned_sinks_decode_from_the_bounded_cache(variant):
    """GPT-OSS (learned per-head sink logits s_aux, random; sliding layers of 4 keys and full
    layers): the bounded cache gives the full cache's tokens (dense: transformers' own
    cache, and eager's tokens), from a dynamic and from a static cache."""
    import copy
    from hf_models import gpt_oss, with_sinks
    torch.manual_seed(4)
    base = with_sinks(gpt_oss()).eval()
    model = attnkit.hf.use(copy.deepcopy(base), variant)
    for B, T, seed in [(1, 9, 0), (3, 12, 1)]:
        ids, mask = prompts(B, T, seed)
        seq, cache = generate(model, ids, mask)
        ref, _ = generate(model, ids, mask, cache=transformers.DynamicCache())
        assert torch.equal(seq, ref), (variant, B)
        if variant is None:
            base.set_attn_implementation("eager")
            assert torch.equal(seq, generate(base, ids, mask)[0])
            continue
        kept = 6 + (2 if variant.startswith("longformer") else 0)   # W keys (+ G sinks)
        assert attnkit.hf.cache_bytes(cache) == [2 * B * HKV * kept * D * 4] * L
        assert torch.equal(generate(model, ids, mask, cache_implementation="static")[0], ref)


def test_a_prompt_shorter_than_the_sinks_decodes():
    """longformer:W:G with a prompt of fewer than G tokens: every key is a sink at first."""
    model = attnkit.hf.use(decoder("llama"), "longformer:5:4")
    ids = torch.randint(3, V, (2, 2), generator=torch.Generator().manual_seed(16))
    mask = torch.ones_like(ids)
    seq, cache = generate(model, ids, mask, n=14)
    ref, _ = generate(model, ids, mask, n=14, cache=transformers.DynamicCache())
    assert torch.equal(seq, ref) and isinstance(cache.layers[0], SinkWindowLayer)
    with torch.no_grad():   # the first step alone (one key): the dense model's logits
        one = model(input_ids=ids[:, :1], use_cache=False).logits
        model.set_attn_implementation(attnkit.hf.register())
        assert torch.allclose(one, model(input_ids=ids[:, :1], use_cache=False).logits)


@pytest.mark.slow
def test_static_sinks_cache_under_torch_compile():
    """torch.compile (dynamo, not fullgraph: the step is not one graph, see the README) of the
    decoding steps on a static sinks cache: the in-place writes trace, the logits are the
    full dynamic cache's."""
    from torch._dynamo.testing import CompileCounter
    model = attnkit.hf.use(decoder("llama"), "longformer:3:2")
    ids, am = prompts(2, 5, 20)

    def decode(f, cache, steps=5):
        a, out = am, []
        pos = (a.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=a, cache=cache, position_ids=pos).logits
        for _ in range(steps):
            out.append(logits[:, -1])
            a, pos = torch.cat([a, torch.ones_like(a[:, :1])], 1), pos[:, -1:] + 1
            logits = f(input_ids=out[-1].argmax(-1)[:, None], attention_mask=a, cache=cache,
                       position_ids=pos).logits
        return torch.stack(out, 1)

    torch._dynamo.reset()
    with torch.no_grad():
        ref = decode(model, transformers.DynamicCache())
        got = decode(torch.compile(model, backend=CompileCounter()),
                     static_bounded_cache(model, transformers.StaticCache(
                         config=model.config, max_cache_len=16)))
    torch._dynamo.reset()
    assert torch.allclose(got, ref, atol=1e-5)
