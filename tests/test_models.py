"""attnkit.models: presets, caches, decoding, training, and error paths."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import masks
from attnkit.models import (BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig, ViT,
                            ViTConfig)
from attnkit.models.gpt import _sample


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- presets: the papers' sizes
@pytest.mark.parametrize("cls,cfg,expected", [
    (GPT, GPTConfig.preset("gpt2"), 124_439_808),                       # GPT-2 small
    (GPT, GPTConfig.preset("llama2-7b"), 6_738_415_616),               # Llama 2 7B
    (GPT, GPTConfig.preset("llama3-8b"), 8_030_261_248),               # Llama 3 8B (GQA 32/8)
    (BERT, BERTConfig.preset("base", mlm_head=False), 109_482_240),    # bert-base-uncased
    (ViT, ViTConfig.preset("base"), 86_567_656),                       # ViT-B/16
])
def test_preset_parameter_counts(cls, cfg, expected):
    with torch.device("meta"):                      # sizes only: no memory, no init cost
        assert n_params(cls(cfg)) == expected


def test_transformer_presets_match_paper():
    cfg = TransformerConfig.preset("base")
    assert (cfg.d_model, cfg.n_heads, cfg.n_enc_layers, cfg.n_dec_layers, cfg.d_ff) == \
        (512, 8, 6, 6, 2048)
    with torch.device("meta"):
        base, big = Transformer(cfg), Transformer(TransformerConfig.preset("big"))
    # Table 3 reports 65M and 213M (vocabulary size not stated exactly): within 5%
    assert abs(n_params(base) / 65e6 - 1) < 0.05 and abs(n_params(big) / 213e6 - 1) < 0.05


def test_preset_errors():
    with pytest.raises(ValueError, match="preset"):
        GPTConfig.preset("gpt5")
    with pytest.raises(TypeError, match="n_layer"):
        GPTConfig.preset("gpt2", n_layer=3)
    with pytest.raises(ValueError, match="positions"):
        GPTConfig(positions="relative")
    with pytest.raises(ValueError, match="patch_size"):
        ViTConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="window"):
        GPTConfig(window=0)


# ---------------------------------------------------------------- GPT
def tiny_gpt(kind="tiny", **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig.preset(kind, **kw)).eval()


@pytest.mark.parametrize("kind,kw", [("tiny", {}), ("tiny-llama", {}),
                                     ("tiny", dict(positions="alibi")),
                                     ("tiny", dict(positions="sinusoidal", n_kv_heads=1))])
def test_gpt_cache_equals_no_cache(kind, kw):
    model = tiny_gpt(kind, **kw)
    idx = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        steps = [model(idx[:, :4], cache=cache)] + [model(idx[:, t:t + 1], cache=cache)
                                                    for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    a = model.generate(idx[:, :3], 12, use_cache=True)
    b = model.generate(idx[:, :3], 12, use_cache=False)
    assert a.shape == (2, 15) and torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = model.generate(idx[:, :3], 12, do_sample=True, top_k=20, top_p=0.9, generator=g1)
    s2 = model.generate(idx[:, :3], 12, do_sample=True, top_k=20, top_p=0.9, generator=g2,
                        use_cache=False)
    assert torch.equal(s1, s2)


def test_gpt_greedy_is_argmax_of_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 256, (1, 4))
    out = model.generate(idx, 5)
    with torch.no_grad():
        for t in range(4, 9):
            assert out[0, t] == model(out[:, :t])[0, -1].argmax()


def test_gpt_sliding_window_generation():
    model = tiny_gpt("tiny-llama", window=4)
    assert model.layers[0].attn.pattern.toeplitz
    idx = torch.randint(0, 256, (2, 6))
    a = model.generate(idx, 20)
    b = model.generate(idx, 20, use_cache=False)
    assert torch.equal(a, b)
    cache = model.new_cache()
    with torch.no_grad():
        model(a, cache=cache)
    assert len(cache[0]) == 3 and cache[0].seen == 26        # memory stays O(window)


def test_gpt_eos_and_padding_mask():
    model = tiny_gpt()
    idx = torch.randint(0, 256, (2, 3))
    first = model.generate(idx, 1)[:, -1]
    out = model.generate(idx, 6, eos_token_id=int(first[0]))
    assert out.shape[1] <= 9 and bool((out[0, 3:] == first[0]).all())
    # right padding: the real tokens' logits do not see the pads
    with torch.no_grad():
        padded = torch.cat((idx, torch.zeros(2, 2, dtype=torch.long)), 1)
        mask = torch.tensor([[1, 1, 1, 0, 0]] * 2)
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, :3], model(idx),
                                   atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 10), p=st.floats(0.05, 1.0))
def test_sampling_respects_top_k_and_top_p(seed, k, p):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 10, generator=g) * 3
    tok = _sample(logits, 1.0, k, p, g)
    probs = logits.softmax(-1)
    order = probs.argsort(-1, descending=True)
    for r in range(4):
        rank = int((order[r] == tok[r]).nonzero())
        assert rank < k                                              # inside the top k
        ahead = probs[r, order[r, :rank]].sum().item()
        assert ahead < p + 1e-6                                      # inside the nucleus
    assert torch.equal(_sample(logits, 1.0, 1, None, g), logits.argmax(-1))
    assert torch.equal(_sample(logits, 1e-4, None, None, g), logits.argmax(-1))  # T -> 0


def test_generate_errors():
    model = tiny_gpt()
    idx = torch.zeros(1, 2, dtype=torch.long)
    for kw, match in ((dict(temperature=0), "temperature"), (dict(top_k=0), "top_k"),
                      (dict(top_p=1.5), "top_p")):
        with pytest.raises(ValueError, match=match):
            model.generate(idx, 3, do_sample=True, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(idx, -1)
    with pytest.raises(ValueError, match="idx"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="position 256"):
        model(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(ValueError, match="cache"):
        model(idx, cache=[])
    with pytest.raises(ValueError, match="tokenizer"):
        model.tokenize("hello")


def test_gpt_set_attention_keeps_causal_and_outputs():
    model = tiny_gpt("tiny-llama")
    idx = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        ref = model(idx)
        for backend in ("reference", "sdpa", "tiled"):
            torch.testing.assert_close(model.set_attention(backend=backend)(idx), ref,
                                       atol=1e-5, rtol=1e-5)
        model.set_attention(pattern=masks.window(2))
        local = model(idx)
    assert repr(model.layers[0].attn.pattern) == "(causal() & window(2, 0))"
    # two layers of window 2 reach 4 tokens back: positions >= 5 cannot see token 0
    with torch.no_grad():
        changed = idx.clone()
        changed[:, 0] = (changed[:, 0] + 1) % 256
        local2 = model(changed)
    torch.testing.assert_close(local[:, 5:], local2[:, 5:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(local[:, 4], local2[:, 4])


# ---------------------------------------------------------------- training: loss falls
def _train(model, loss_fn, steps=12, lr=3e-3):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["tiny", "tiny-llama"])
def test_gpt_trains(kind):
    model = tiny_gpt(kind)
    idx = torch.randint(0, 256, (4, 16))

    def loss():
        return F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    losses = _train(model, loss)
    assert losses[-1] < 0.7 * losses[0]


def test_bert_trains_mlm_and_pads_correctly():
    torch.manual_seed(0)
    model = BERT(BERTConfig.preset("tiny", dropout=0.0))
    ids = torch.randint(5, 256, (4, 12))
    masked = ids.clone()
    masked[:, ::3] = 4                                   # [MASK] every third token

    def loss():
        logits = model.mlm_logits(model(masked))
        return F.cross_entropy(logits[:, ::3].flatten(0, 1), ids[:, ::3].flatten())
    losses = _train(model, loss)
    assert losses[-1] < 0.7 * losses[0]
    model.eval()
    with torch.no_grad():
        pad = torch.cat((ids[:1, :7], torch.zeros(1, 5, dtype=torch.long)), 1)
        mask = torch.tensor([[1] * 7 + [0] * 5])
        h_pad, ws = model(pad, mask, return_weights=True)
        torch.testing.assert_close(h_pad[:, :7], model(ids[:1, :7]), atol=1e-5, rtol=1e-5)
        assert len(ws) == 2 and ws[0].shape == (1, 4, 12, 12)
        assert float(ws[0][..., 7:].abs().max()) == 0.0
        torch.testing.assert_close(model.mean_pool(h_pad, mask), h_pad[:, :7].mean(1))
        assert model.pooled(h_pad).shape == (1, 64)
        e = model.sentence_embeddings(pad, mask)
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(1))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, torch.ones(4, 3))
    with pytest.raises(ValueError, match="input_ids"):
        model(ids.float())
    with pytest.raises(ValueError, match="masked-LM"):
        BERT(BERTConfig.preset("tiny", mlm_head=False)).mlm_logits(h_pad)


def test_vit_forward_backward_and_trains():
    torch.manual_seed(0)
    cfg = ViTConfig.preset("tiny")
    model = ViT(cfg)
    images, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    logits, ws = model(images, return_weights=True)
    assert logits.shape == (6, 10) and len(ws) == 2 and ws[0].shape == (6, 4, 17, 17)
    logits.sum().backward()
    assert model.cls_token.grad is not None and model.pos.grad.abs().sum() > 0
    assert model.patch.weight.grad.abs().sum() > 0
    losses = _train(model, lambda: F.cross_entropy(model(images), labels))
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="images"):
        model(torch.randn(2, 3, 28, 28))
    with torch.no_grad():
        model.eval()
        ref = model(images)
        torch.testing.assert_close(model.set_attention(backend="tiled")(images), ref,
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Transformer
def tiny_transformer():
    torch.manual_seed(0)
    return Transformer(TransformerConfig.preset("tiny"))


def copy_batch(n=8, length=6, vocab=64):
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, vocab, (n, length), generator=g)
    src[-1, 4:] = 0                                      # one padded source
    tgt = torch.cat((torch.ones(n, 1, dtype=torch.long), src, torch.full((n, 1), 2)), 1)
    return src, tgt


def test_transformer_trains_and_decodes():
    model = tiny_transformer()
    src, tgt = copy_batch()

    def loss():
        logits = model(src, tgt[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=0)
    losses = _train(model, loss, steps=15)
    assert losses[-1] < 0.7 * losses[0]
    greedy = model.greedy(src, max_len=10)
    assert greedy.shape[0] == 8 and bool((greedy[:, 0] == 1).all())
    assert torch.equal(greedy, model.greedy(src, max_len=10, use_cache=False))
    assert torch.equal(model.beam_search(src, beam_size=1, max_len=10), greedy)
    beam = model.beam_search(src, beam_size=4, max_len=10)
    assert beam.shape[0] == 8 and bool((beam[:, 0] == 1).all())


def test_beam_search_scores_at_least_greedy():
    """Without a length penalty the best beam's log-probability is >= greedy's."""
    model = tiny_transformer().eval()
    src, _ = copy_batch(4)

    def logprob(seqs):
        with torch.no_grad():
            lp = model(src, seqs[:, :-1]).log_softmax(-1)
        tok = seqs[:, 1:]
        lp = lp.gather(-1, tok[..., None])[..., 0]
        alive = torch.ones_like(tok, dtype=torch.bool)
        alive[:, 1:] = (tok[:, :-1] != 2).cumprod(1).bool()  # up to and including EOS
        return (lp * alive).sum(1)
    g = model.greedy(src, max_len=8)
    b = model.beam_search(src, beam_size=4, max_len=8, length_penalty=0.0)
    L = max(g.shape[1], b.shape[1])                      # pad the shorter one (after EOS)
    g, b = F.pad(g, (0, L - g.shape[1])), F.pad(b, (0, L - b.shape[1]))
    assert bool((logprob(b) >= logprob(g) - 1e-4).all())


def test_beam_search_exact_when_beam_covers_vocab():
    """Beam >= vocab over 2 steps keeps every prefix: it must find the brute-force best."""
    model = tiny_transformer().eval()
    src, _ = copy_batch(1)
    V, eos = 64, 2
    with torch.no_grad():
        memory, keep = model.encode(src)
        lp1 = model.decode(torch.ones(1, 1, dtype=torch.long), memory, keep)[0, -1] \
            .log_softmax(-1)                                                    # (V,)
        prefixes = torch.stack((torch.ones(V, dtype=torch.long), torch.arange(V)), 1)
        lp2 = model.decode(prefixes, memory.expand(V, -1, -1), keep.expand(V, -1))[:, -1] \
            .log_softmax(-1)                                                    # (V, V)
    total = lp1[:, None] + lp2
    total[eos] = float("-inf")
    total[eos, 0] = lp1[eos]                       # EOS first: then pad at no cost
    best = int(total.argmax())
    want = [1, best // V, best % V]
    got = model.beam_search(src, beam_size=V, max_len=2, length_penalty=0.0)[0].tolist()
    assert got == want


def test_transformer_decoding_errors():
    model = tiny_transformer()
    src, _ = copy_batch(2)
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(src, beam_size=0)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy(src, max_len=0)
    with pytest.raises(ValueError, match="token ids"):
        model(src.float(), src)
    with pytest.raises(ValueError, match="tgt_vocab_size"):
        TransformerConfig(share_embeddings=True, tgt_vocab_size=10)
