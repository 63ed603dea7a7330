"""attnkit inside transformers: the parity matrix (``attn_implementation="attnkit"`` vs
``"eager"`` on random checkpoints saved with ``save_pretrained``): outputs and
``output_attentions`` weights within 1e-5 (fp32) on a padded batch of 2, identical greedy
generations with the cache; masks arrive as specs; variants, weights_for and refusals."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402
from attnkit.masks import MaskSpec  # noqa: E402
from hf_models import CASES, batch, save  # noqa: E402

BY_NAME = {c.name: c for c in CASES}
TOL = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {c.name: save(c, root / c.name) for c in CASES}


def skip_if_refused(case):
    """An architecture this transformers release computes in its own code (T5 before
    5.5...) is refused by attnkit.hf.check: nothing to compare (make test-hf-range)."""
    from attnkit.integrations.hf.support import model_refusal
    why = model_refusal(type(case.build()))
    if why:
        pytest.skip(f"transformers {transformers.__version__}: {why}")


def load(path, impl):
    if impl.startswith("attnkit"):
        return attnkit.hf.from_pretrained(path, impl.removeprefix("attnkit").lstrip(":") or None)
    cfg = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, cfg.architectures[0])
    return cls.from_pretrained(path, attn_implementation=impl).eval()


def main_output(out):
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def attention_groups(out):
    return {k: getattr(out, k) for k in ("attentions", "encoder_attentions",
                                         "decoder_attentions", "cross_attentions")
            if getattr(out, k, None)}               # (empty tuples: no such attention)


def max_diff(a, b):
    return float((a - b).abs().max()) if a.numel() else 0.0


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_parity_with_eager(name, checkpoints, monkeypatch):
    from attnkit.integrations.hf import attention as hf_attention
    calls = []
    for fn in ("attention", "weights_output"):   # the fast path, the weights path
        orig = getattr(hf_attention, fn)
        monkeypatch.setattr(hf_attention, fn, lambda *a, _f=orig, **k: calls.append(1) or _f(*a, **k))
    case = BY_NAME[name]
    skip_if_refused(case)
    eager, ours = load(checkpoints[name], "eager"), load(checkpoints[name], "attnkit")
    inputs, real = batch(case)
    with torch.no_grad():
        a = eager(**inputs, output_attentions=True)
        assert not calls
        b = ours(**inputs, output_attentions=True)
    assert len(calls) >= 2                     # every layer went through attnkit
    assert max_diff(main_output(a)[real], main_output(b)[real]) < TOL
    ga, gb = attention_groups(a), attention_groups(b)
    assert ga.keys() == gb.keys() and ga
    enc_real = inputs.get("attention_mask")
    for key in ga:
        assert len(ga[key]) == len(gb[key])
        for wa, wb in zip(ga[key], gb[key]):
            rows = real
            if key == "encoder_attentions":
                rows = enc_real.bool() if enc_real is not None else \
                    torch.ones(wa.shape[0], wa.shape[2], dtype=bool)
            # (B, H, Tq, Tk) -> real query rows (padded queries see no key in eager either)
            assert max_diff(wa.transpose(1, 2)[rows], wb.transpose(1, 2)[rows]) < TOL, key


GENERATE = [c.name for c in CASES if c.kind in ("decoder", "seq2seq", "audio")]


@pytest.mark.parametrize("name", GENERATE)
def test_greedy_generation_with_cache_is_identical(name, checkpoints):
    case = BY_NAME[name]
    skip_if_refused(case)
    eager, ours = load(checkpoints[name], "eager"), load(checkpoints[name], "attnkit")
    inputs, _ = batch(case)
    inputs.pop("decoder_input_ids", None)
    kw = dict(max_new_tokens=6, do_sample=False, use_cache=True)
    with torch.no_grad():
        assert torch.equal(eager.generate(**inputs, **kw), ours.generate(**inputs, **kw))


def test_sliding_window_reaches_tiled_as_a_spec_and_skips_tiles(checkpoints, monkeypatch):
    """Mistral's sliding window arrives as a structured spec (a band), not a dense tensor,
    and the tiled kernel's plan (kernels.tiles.plan, what it runs) holds only the tiles of
    the band."""
    from attnkit.integrations.hf import attention as hf_attention
    from attnkit.kernels.tiles import plan
    seen, calls = [], []
    orig_fwd = hf_attention.attention

    def spy(q, k, v, *, mask=None, **kw):
        seen.append(mask)
        calls.append(attnkit.make_call(q, k, v, mask=mask))
        return orig_fwd(q, k, v, mask=mask, **kw)
    monkeypatch.setattr(hf_attention, "attention", spy)
    model = attnkit.hf.from_pretrained(checkpoints["mistral"], "tiled")
    ids = torch.randint(3, 97, (1, 60))
    with torch.no_grad(), attnkit.use_backends("tiled", override=True):
        attnkit.kernels.tiled.TileConfig  # noqa: B018 (the default tiles are 128 x 64)
        from attnkit.backends import get_backend
        be = get_backend("tiled")
        old = be.config
        be.config = attnkit.TileConfig(8, 8, 8)
        try:
            model(ids)
        finally:
            be.config = old
    assert seen and all(isinstance(m, MaskSpec) and m.band() == (0, 4) for m in seen)
    cfg = attnkit.TileConfig(8, 8, 8)
    visited = [(sum(len(r) for r in p), len(p) * -(-c.Tk // cfg.block_k))
               for c in calls for p in [plan(c, cfg)]]
    done, total = visited[0]
    assert done < total / 3, visited          # a 5-token band over 60 tokens: few tiles


def test_variants_by_name_change_the_model_and_dense_ones_do_not(checkpoints):
    path = checkpoints["llama"]
    inputs = {"input_ids": torch.randint(3, 97, (1, 48), generator=torch.Generator()
                                         .manual_seed(1))}        # one row, 48 tokens
    ref = load(path, "eager")
    with torch.no_grad():
        want = ref(**inputs).logits
        for name, same in [("tiled", True), ("window:64", True), ("window:2", False),
                           ("bigbird:4", False), ("linear:elu", False)]:
            got = load(path, f"attnkit:{name}")(**inputs).logits
            assert (max_diff(got, want) < TOL) == same, name
    # a window covering every key is exact; a 2-token window is the causal band (0, 2)
    m = attnkit.hf.use(load(path, "eager"), "window:2")
    assert m.config._attn_implementation == "attnkit:window:2"


def test_weights_for_chosen_layers_and_heads(checkpoints):
    model = load(checkpoints["llama"], "attnkit")
    inputs, _ = batch(BY_NAME["llama"])
    with torch.no_grad():
        full = model(**inputs, output_attentions=True).attentions
        with attnkit.hf.weights_for(layers=[1], heads=[0, 2]):
            some = model(**inputs, output_attentions=True).attentions
    assert len(full) == len(some) == 2 and some[0].shape[2] == 0  # layer 0: not computed
    # (layer 0 ran the fast path here, the weights path there: float rounding apart)
    torch.testing.assert_close(some[1][:, [0, 2]], full[1][:, [0, 2]], atol=1e-6, rtol=0)
    assert (some[1][:, [1, 3]] == 0).all()


def test_masks_from_mask_mod_read_transformers_functions():
    from transformers import masking_utils as mu
    attnkit.hf.register()
    keep = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    fn = mu.and_masks(mu.sliding_window_causal_mask_function(3), mu.padding_mask_function(keep))
    spec = attnkit.masks.from_mask_mod(fn, batch_size=2)
    assert not spec.resolve(6, 6).opaque
    want = mu.sdpa_mask(batch_size=2, q_length=6, kv_length=6, mask_function=fn,
                        allow_is_causal_skip=False)
    assert torch.equal(spec.resolve(6, 6).dense(6, 6).expand(2, 1, 6, 6), want)


@pytest.mark.parametrize("bad, words", [("window", "takes 1"), ("nope", "unknown name"),
                                        ("ssm", "is a model"), (3, "expected a string")])
def test_bad_names(bad, words):
    with pytest.raises((ValueError, TypeError), match=words):
        attnkit.hf.register(bad)


def test_an_architecture_outside_the_attention_interface_is_refused():
    t = transformers
    model = t.GPT2Model(t.GPT2Config(vocab_size=11, n_embd=8, n_layer=1, n_head=2))

    class OwnAttention(type(model)):
        @classmethod
        def _can_set_attn_implementation(cls):
            return False
    model.__class__ = OwnAttention
    with pytest.raises(ValueError, match="OwnAttention computes attention in its own code"):
        attnkit.hf.check(model)


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_linear_variant_serves_a_padded_batch(checkpoints, name):
    """Padded keys enter no sum: each real row of a padded batch (left padding for the GQA
    decoder, right for the encoder) equals that sequence run alone."""
    model = load(checkpoints[name], "attnkit:linear:elu")
    inputs, real = batch(BY_NAME[name])
    T = real.shape[1]
    pos = torch.arange(T).expand(2, T)
    with torch.no_grad():
        got = main_output(model(**inputs, position_ids=pos))
        idx = real[1].nonzero()[:, 0]
        alone = main_output(model(input_ids=inputs["input_ids"][1:, idx],
                                  position_ids=pos[1:, idx]))
    assert max_diff(got[1, idx], alone[0]) < TOL
    assert not torch.equal(got[1, idx], main_output(model(
        input_ids=inputs["input_ids"][1:], position_ids=pos[1:]))[0, idx])   # padding mattered


def test_dropout_in_training_reaches_attnkit(tmp_path, monkeypatch):
    from attnkit.integrations.hf import attention as hf_attention
    t = transformers
    torch.manual_seed(0)
    m = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         attention_dropout=0.5))
    m.save_pretrained(tmp_path)
    model = attnkit.hf.from_pretrained(tmp_path)
    seen = []
    orig = hf_attention.attention
    monkeypatch.setattr(hf_attention, "attention",
                        lambda *a, **k: seen.append(k["dropout_p"]) or orig(*a, **k))
    ids = torch.randint(0, 50, (1, 12))
    model.train()
    a, b = model(ids).logits, model(ids).logits
    model.eval()
    c, d = model(ids).logits, model(ids).logits
    assert seen == [0.5, 0.5, 0.0, 0.0] and not torch.equal(a, b) and torch.equal(c, d)
    model.set_attn_implementation(attnkit.hf.register("linear:elu"))   # output dropout
    model.train()
    a, b = model(ids).logits, model(ids).logits
    model.eval()
    c, d = model(ids).logits, model(ids).logits
    assert not torch.equal(a, b) and torch.equal(c, d)
