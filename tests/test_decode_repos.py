"""Re-positioned (StreamingLLM) sinks: ``attnkit.hf.bounded_cache(model, reposition=True)``.
Before any key is evicted it is the full cache exactly; after, every layer's attention output
equals an independent reference built from the keys *before* RoPE: transformers' own RoPE at
contiguous positions (sinks 0..G-1, window G..G+W-1, the query at G+W), fp64 softmax by
hand. Models without standard RoPE are refused by name. Tiny random Llama / Qwen2 (GQA 4/2)."""
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit.hf  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from hf_models import gpt2, llama, qwen2  # noqa: E402

W, G = 5, 2


def model_of(build, variant=f"longformer:{W}:{G}", seed=0):
    torch.manual_seed(seed)
    return attnkit.hf.use(build().eval(), variant)


def decode(model, ids, cache, record=None):
    """Logits (B, T, V) of ``ids`` fed one token per step; ``record``: per step, per layer,
    the q/k/v projections (before RoPE) and the attention output (o_proj's input)."""
    hooks = []
    if record is not None:
        for i, layer in enumerate(model.model.layers):
            a = layer.self_attn
            for name in ("q_proj", "k_proj", "v_proj"):
                hooks.append(getattr(a, name).register_forward_hook(
                    lambda m, inp, out, i=i, n=name: record[-1].setdefault(i, {}).__setitem__(
                        n, out.detach())))
            hooks.append(a.o_proj.register_forward_hook(
                lambda m, inp, out, i=i: record[-1][i].__setitem__("out", inp[0].detach())))
    out = []
    try:
        with torch.no_grad():
            for t in range(ids.shape[1]):
                if record is not None:
                    record.append({})
                out.append(model(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(out, 1)


def reference(model, record, layer: int, s: int) -> torch.Tensor:
    """Attention output (B, 1, H*D) of the query at cache index s over the kept keys re-RoPE'd
    at contiguous positions: sinks 0..G-1, window s-W..s at G..G+W."""
    cfg = model.config
    H, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = cfg.hidden_size // H
    kept = list(range(G)) + list(range(s - W, s + 1))
    heads = lambda t, n: t.view(t.shape[0], t.shape[1], n, D).transpose(1, 2)  # (B, n, T, D)
    q = heads(record[s][layer]["q_proj"], H)                                  # (B, H, 1, D)
    k = heads(torch.cat([record[j][layer]["k_proj"] for j in kept], 1), Hkv)  # (B, Hkv, G+W+1, D)
    v = heads(torch.cat([record[j][layer]["v_proj"] for j in kept], 1), Hkv)
    pos = torch.arange(G + W + 1)[None]
    cos, sin = model.model.rotary_emb(k, pos)
    apply = sys.modules[type(model.model.layers[0].self_attn).__module__].apply_rotary_pos_emb
    _, k = apply(k, k, cos, sin)
    q, _ = apply(q, q, cos[:, -1:], sin[:, -1:])
    k, v = (x.double().repeat_interleave(H // Hkv, dim=1) for x in (k, v))   # (B, H, Tk, D)
    w = (q.double() @ k.transpose(-1, -2) * D ** -0.5).softmax(-1)           # (B, H, 1, Tk)
    return (w @ v).transpose(1, 2).reshape(q.shape[0], 1, H * D)


@pytest.mark.parametrize("build", [llama, qwen2])
def test_repositioned_sinks_equal_contiguous_rope_reference(build):
    model = model_of(build)
    ids = torch.randint(3, 97, (2, 22), generator=torch.Generator().manual_seed(1))
    rec, orig = [], []
    decode(model, ids, attnkit.hf.bounded_cache(model, reposition=True), rec)
    decode(model, ids, attnkit.hf.bounded_cache(model), orig)
    far = 0.0
    for s in range(G + W + 1, ids.shape[1]):          # past eviction: sinks moved
        for layer in range(len(model.model.layers)):
            ref = reference(model, rec, layer, s).float()
            torch.testing.assert_close(rec[s][layer]["out"], ref, atol=2e-5, rtol=1e-4)
            far = max(far, float((orig[s][layer]["out"] - rec[s][layer]["out"]).abs().max()))
    assert far > 1e-3          # original positions differ: the reference can tell them apart


@pytest.mark.parametrize("build", [llama, qwen2])
def test_repositioned_equals_full_cache_before_eviction(build):
    model = model_of(build)
    ids = torch.randint(3, 97, (3, 4), generator=torch.Generator().manual_seed(2))
    n = G + W + 1 - ids.shape[1]                        # every step sees contiguous keys
    kw = dict(input_ids=ids, max_new_tokens=n, do_sample=False, pad_token_id=0,
              return_dict_in_generate=True, output_logits=True)
    repos = model.generate(**kw, cache=attnkit.hf.bounded_cache(model, reposition=True))
    full = model.generate(**kw, cache=transformers.DynamicCache())
    assert torch.equal(repos.sequences, full.sequences)
    assert all(torch.equal(a, b) for a, b in zip(repos.logits, full.logits))


def test_generate_streams_past_the_window_with_a_bounded_cache():
    model = model_of(llama)
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(3))
    cache = attnkit.hf.bounded_cache(model, reposition=True)
    out = model.generate(input_ids=ids, max_new_tokens=20, do_sample=False, pad_token_id=0,
                         cache=cache)
    assert out.shape == (2, 26)
    assert all(layer.keys.shape[2] == G + W for layer in cache.layers)
    # greedy from generate = greedy from the token-by-token decoding above
    logits = decode(model, out[:, :-1], attnkit.hf.bounded_cache(model, reposition=True))
    assert torch.equal(logits[:, ids.shape[1] - 1:].argmax(-1), out[:, ids.shape[1]:])


def test_refusals():
    with pytest.raises(ValueError, match="no standard RoPE"):
        attnkit.hf.bounded_cache(model_of(gpt2), reposition=True)
    dyn = model_of(lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})))
    with pytest.raises(ValueError, match="rope_type 'dynamic'; expected one of default"):
        attnkit.hf.bounded_cache(dyn, reposition=True)
    partial = model_of(lambda: transformers.Phi3ForCausalLM(transformers.Phi3Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, partial_rotary_factor=0.5)))
    with pytest.raises(ValueError, match="partial or interleaved rotary"):
        attnkit.hf.bounded_cache(partial, reposition=True)
    model = model_of(llama)
    with pytest.raises(ValueError, match="expected the model"):
        attnkit.hf.bounded_cache(model.config, reposition=True)
    with pytest.raises(ValueError, match="keeps no sink tokens"):
        attnkit.hf.bounded_cache(attnkit.hf.use(model_of(llama), "window:4"), reposition=True)
    ids = torch.randint(3, 97, (1, G + W + 2))
    with pytest.raises(ValueError, match=f"at most G \\+ W \\+ 1 = {G + W + 1} tokens"):
        model(input_ids=ids, cache=attnkit.hf.bounded_cache(model, reposition=True))
    model(input_ids=ids[:, :-1], cache=attnkit.hf.bounded_cache(model, reposition=True))
