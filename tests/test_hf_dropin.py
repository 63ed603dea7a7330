"""attnkit as a drop-in for transformers (issue 24), each against transformers' own eager
path on tiny random models: static-cache generation (the mask transformers builds ahead of
time and passes back), ``torch.compile(fullgraph=True)`` without recompiling per decoding
step, attention weights in the autograd graph, GPT-OSS's learned sinks, every keyword
served or refused, Bloom refused in every entry point, the supported version range."""
import copy
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402
import hf_models as H  # noqa: E402
from attnkit.core.errors import UnsupportedCall  # noqa: E402
from attnkit.integrations.hf import kwargs as hf_kwargs, support  # noqa: E402
from attnkit.integrations.hf.attention import attnkit_attention_forward  # noqa: E402

NAME = attnkit.hf.register()


def pair(build, other="eager", name=NAME):
    """(the model on ``other``, the same weights on attnkit), eval mode."""
    torch.manual_seed(0)
    base = build().eval()
    ours = copy.deepcopy(base)
    base.set_attn_implementation(other)
    ours.set_attn_implementation(name)
    return base, ours


def padded_batch(T=7):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, H.V, (2, T), generator=g)
    am = torch.ones_like(ids)
    am[1, :3] = 0                                   # left padding
    return ids, am


@pytest.mark.parametrize("name", ["llama", "gpt2", "mistral"])
def test_static_cache_generation_matches_eager(name):
    # the mask generate() precomputes for a static cache comes back as attention_mask:
    # transformers and GPT-2's forward read it as a 4-D tensor (was: AttributeError 'ndim')
    eager, ours = pair(getattr(H, name))
    ids, am = padded_batch()
    kw = dict(input_ids=ids, attention_mask=am, max_new_tokens=5, do_sample=False,
              cache_implementation="static")
    with torch.no_grad():
        assert torch.equal(eager.generate(**kw), ours.generate(**kw))


def test_the_mask_is_a_spec_outside_precomputation_and_dense_inside():
    from attnkit.integrations.hf.mask_view import HFMask
    from attnkit.integrations.hf.masks import attnkit_mask
    from attnkit.masks import MaskSpec
    from transformers import masking_utils as mu
    am = torch.tensor([[0, 1, 1, 1]])
    m = attnkit_mask(1, 4, 4, attention_mask=am)
    assert isinstance(m, HFMask) and isinstance(m.spec, MaskSpec)

    def create_masks_for_generate():          # the name transformers' precompute has
        return attnkit_mask(1, 4, 4, attention_mask=am)
    dense = create_masks_for_generate()
    ref = mu.sdpa_mask(1, 4, 4, attention_mask=am.bool(), allow_is_causal_skip=False)
    assert isinstance(dense, torch.Tensor) and dense.ndim == 4 and torch.equal(dense, ref)


def _block_overlay(ids):
    # transformers < 5.16 has no masking_utils.blockwise_overlay: the same predicate (keys of
    # the query's own non-text block), served through attnkit's reading of an unknown mask_mod
    def inner_mask(batch_idx, head_idx, q_idx, kv_idx):
        q_group, kv_group = ids[batch_idx, q_idx], ids[batch_idx, kv_idx]
        return (q_group == kv_group) & (q_group >= 0)
    return inner_mask


def _hf_mask_fn(kind, w, ids):
    mu = transformers.masking_utils
    block = getattr(mu, "blockwise_overlay", _block_overlay)
    causal_or_block = mu.or_masks(mu.causal_mask_function, block(ids))
    return {"causal": mu.causal_mask_function,
            "sliding": mu.sliding_window_causal_mask_function(w),
            "or": causal_or_block,
            "gemma3_sliding": mu.and_masks(mu.sliding_window_overlay(w), causal_or_block)}[kind]


@pytest.mark.parametrize("reads_as", ["sdpa", "eager"])
def test_the_mask_object_reads_as_transformers_dense_mask(reads_as):
    # model code and users index the mask the interface returns (Gemma-3's test reads
    # mask[0, 0, 5, 11]; was: TypeError 'OrMask' object is not subscriptable)
    from attnkit.integrations.hf.masks import attnkit_eager_mask, attnkit_mask
    mu = transformers.masking_utils
    ours_fn, ref_fn = ((attnkit_mask, mu.sdpa_mask) if reads_as == "sdpa"
                       else (attnkit_eager_mask, mu.eager_mask))
    g = torch.Generator().manual_seed(0)
    for trial in range(24):
        B, Tq = int(torch.randint(1, 4, (), generator=g)), int(torch.randint(1, 9, (), generator=g))
        past = int(torch.randint(0, 6, (), generator=g))
        Tk, w = Tq + past, int(torch.randint(1, 5, (), generator=g))
        am = torch.ones(B, Tk, dtype=torch.bool)
        if trial % 2:      # left padding, at least one key kept per row
            am[:, :int(torch.randint(0, Tk, (), generator=g))] = False
        ids = torch.randint(-1, 2, (B, Tk), generator=g)
        fn = _hf_mask_fn(("causal", "sliding", "or", "gemma3_sliding")[trial % 4], w, ids)
        args = (B, Tq, Tk, past, 0, fn, am)
        m = ours_fn(*args, dtype=torch.float16)
        ref = ref_fn(*args, allow_is_causal_skip=False, dtype=torch.float16)
        assert m.ndim == 4 and m.shape == ref.shape and m.dtype == ref.dtype
        assert m.device == ref.device and m.dim() == 4 and m.size(2) == Tq
        assert torch.equal(m[...], ref) and torch.equal(m[:, 0, -1], ref[:, 0, -1])
        assert m[0, 0, Tq - 1, Tk - 1].item() == ref[0, 0, Tq - 1, Tk - 1].item()


def test_the_mask_object_refuses_other_tensor_uses_and_stays_lazy():
    from attnkit.integrations.hf.masks import attnkit_mask
    mu = transformers.masking_utils
    am = torch.tensor([[0, 1, 1, 1]])
    m = attnkit_mask(1, 4, 4, attention_mask=am)
    for use in (lambda: m + 1, lambda: torch.zeros(1) * m, lambda: m.to(torch.float32),
                lambda: torch.where(m, 0.0, 1.0), lambda: m.float(), lambda: ~m,
                lambda: m == 1, lambda: bool(m)):
        with pytest.raises(TypeError, match=r"HFMask.*mask\.dense\(\)"):
            use()
    # the attention function takes the spec: the dense mask is never built on that path
    layer = torch.nn.Module()
    layer.is_causal, layer.config = True, transformers.LlamaConfig()
    layer.config._attn_implementation = NAME
    q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    out = attnkit_attention_forward(layer, q, k, v, m, scaling=8 ** -0.5)[0]
    assert m._dense is None
    dense = mu.sdpa_mask(1, 4, 4, attention_mask=am.bool(), allow_is_causal_skip=False)
    ref = attnkit.attention(q, k, v, mask=dense, backend="reference")
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-6, rtol=0)


def test_gemma3_vision_masks_compose_and_read_as_sdpa():
    # transformers' Gemma-3 builds OR(causal, image block) / AND(sliding, ...) masks and
    # reads single entries of them; ours must read as sdpa's (and its model still match)
    from transformers.models.gemma3 import modeling_gemma3 as G
    import inspect
    if not hasattr(G, "create_masks_for_vision_model"):
        pytest.skip(f"transformers {transformers.__version__}: Gemma-3 has no vision-block masks")
    config = H.gemma3().config
    ids = torch.tensor([[-1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, -1]])
    cache_kw = ("cache" if "cache" in inspect.signature(G.create_masks_for_vision_model).parameters
                else "past_key_values")
    kw = {"inputs_embeds": torch.randn(1, 13, config.hidden_size), cache_kw: None,
          "attention_mask": torch.ones(1, 13, dtype=torch.bool),
          "position_ids": torch.arange(13)[None], "block_sequence_ids": ids}
    got = {}
    for impl in (NAME, "sdpa"):
        config._attn_implementation = impl
        got[impl] = G.create_masks_for_vision_model(config=config, **kw)
    for kind in ("full_attention", "sliding_attention"):
        assert torch.equal(got[NAME][kind][:], got["sdpa"][kind])
    full, sliding = got[NAME]["full_attention"], got[NAME]["sliding_attention"]
    assert full[0, 0, 5, 11] and full[0, 0, 11, 5] and not full[0, 0, 11, 12]
    assert sliding[0, 0, 8, 5] and not sliding[0, 0, 11, 5]


def _decode(model, f, ids, am, steps=3):
    """Prefill + ``steps`` greedy steps through ``f`` with a static cache: logits per step."""
    cache = transformers.StaticCache(config=model.config, max_cache_len=16)
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    out = f(input_ids=ids, attention_mask=am, past_key_values=cache, use_cache=True,
            position_ids=pos).logits[:, -1]
    logits = [out]
    for _ in range(steps):
        am = torch.cat([am, torch.ones_like(am[:, :1])], 1)
        pos = pos[:, -1:] + 1
        out = f(input_ids=out.argmax(-1)[:, None], attention_mask=am, past_key_values=cache,
                use_cache=True, position_ids=pos).logits[:, -1]
        logits.append(out)
    return torch.stack(logits, 1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2", "gemma2"])   # (llama, mistral, gpt2: the same)
def test_compile_fullgraph_padded_and_static_decoding_without_recompiles(name):
    # dynamo only (CompileCounter: the graph runs eagerly), which is where the failures
    # were: value-dependent branches, get_num_threads, guards on mask ints / code objects
    from torch._dynamo.testing import CompileCounter
    eager, ours = pair(getattr(H, name))
    ids, am = padded_batch()
    torch._dynamo.reset()
    cnt = CompileCounter()
    f = torch.compile(ours, backend=cnt, fullgraph=True)
    with torch.no_grad():                 # (the prefill is the padded batch's forward)
        got = _decode(ours, f, ids, am)
        assert cnt.frame_count == 2       # the prefill, then one graph for every step
        torch.testing.assert_close(got, _decode(eager, eager, ids, am), atol=1e-5, rtol=0)
        _decode(ours, f, ids, am, steps=2)
    assert cnt.frame_count == 2


def test_compile_fullgraph_with_a_float_position_bias():
    # T5 hands its relative position bias (plus padding) to attention as a float mask; the
    # NaN/+inf check of additive masks branched on its values, so transformers' own
    # test_generate_compile_model_forward_fullgraph failed for T5 with attnkit as sdpa
    from torch._dynamo.testing import CompileCounter
    eager, ours = pair(H.t5)
    ids, am = padded_batch()
    dec = ids[:, :4]
    torch._dynamo.reset()
    cnt = CompileCounter()
    f = torch.compile(ours, backend=cnt, fullgraph=True)
    with torch.no_grad():
        got = f(input_ids=ids, attention_mask=am, decoder_input_ids=dec).logits
        ref = eager(input_ids=ids, attention_mask=am, decoder_input_ids=dec).logits
    assert cnt.frame_count == 1
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_attention_weights_are_in_the_autograd_graph():
    # eager's weights receive gradients from the loss; attnkit's did not (recomputed beside)
    eager, ours = pair(H.llama)
    ids, am = padded_batch()
    grads = []
    for m in (eager, ours):
        out = m(input_ids=ids, attention_mask=am, output_attentions=True)
        a = out.attentions[0]
        a.retain_grad()
        out.logits[0, -1].sum().backward()
        grads.append((a.grad, m.model.layers[0].self_attn.q_proj.weight.grad))
    assert grads[1][0] is not None
    for x, y in zip(*grads):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", [None, "tiled", "reference"])
def test_gpt_oss_sinks_match_eager_with_gradients(variant):
    # s_aux used to be dropped: logits 0.2-0.37 off while attnkit.hf.check passed
    build = lambda: H.with_sinks(H.gpt_oss())  # noqa: E731
    eager, ours = pair(build, name=attnkit.hf.register(variant))
    ids, am = padded_batch()
    res = []
    for m in (eager, ours):
        logits = m(input_ids=ids, attention_mask=am).logits
        (logits[am.bool()] ** 2).mean().backward()
        res.append((logits[am.bool()], m.model.layers[0].self_attn.sinks.grad,
                    m.model.layers[1].self_attn.sinks.grad))
    for x, y in zip(*res):
        assert float((y - x).abs().max()) <= 1e-4 * float(x.abs().max()) + 1e-7
    plain = copy.deepcopy(ours)              # the sinks matter: without them, other logits
    for layer in plain.model.layers:
        layer.self_attn.sinks.data.fill_(-float("inf"))
    with torch.no_grad():
        assert (plain(input_ids=ids, attention_mask=am).logits[am.bool()] - res[0][0]).abs(
        ).max() > 1e-2


def test_keywords_are_served_or_refused_by_name():
    _, ours = pair(H.llama)
    attn = ours.model.layers[0].self_attn
    q, k = torch.randn(1, 4, 3, 8), torch.randn(1, 2, 3, 8)
    out, _ = attnkit_attention_forward(attn, q, k, k, None, scaling=0.3, use_cache=True,
                                       position_ids=torch.arange(3)[None], indices=None)
    assert out.shape == (1, 3, 4, 8)
    for key, words in [("indices", "'indices' is not served"),
                       ("some_new_keyword", "'some_new_keyword' is not served")]:
        with pytest.raises(UnsupportedCall, match=words):
            attnkit_attention_forward(attn, q, k, k, None, **{key: torch.zeros(1)})
    # the table in the module doc names every keyword the code knows
    known = hf_kwargs.SERVED | hf_kwargs.BOOKKEEPING | set(hf_kwargs.REFUSED)
    doc = hf_kwargs.__doc__.replace("cu_seq_lens_q/k", "cu_seq_lens_q cu_seq_lens_k").replace(
        "max_length_q/k", "max_length_q max_length_k")
    assert all(f"{k}" in doc for k in known)


def test_bloom_is_refused_in_every_entry_point(tmp_path):
    torch.manual_seed(0)
    H.bloom().save_pretrained(tmp_path)
    model = transformers.BloomForCausalLM.from_pretrained(tmp_path, attn_implementation=NAME)
    with pytest.raises(UnsupportedCall, match="BloomModel computes attention in its own code"):
        model(input_ids=torch.tensor([[5, 6, 7]]))   # was: TypeError Tensor + Window
    with pytest.raises(ValueError, match="BloomForCausalLM computes attention in its own"):
        attnkit.hf.from_pretrained(tmp_path)
    from tiny_checkpoints import _bytelevel
    _bytelevel().save_pretrained(tmp_path)
    r = subprocess.run([sys.executable, "-m", "attnkit.cli", "inspect", "hello there",
                        "--model", str(tmp_path), "--out", str(tmp_path / "view")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ALiBi" in lines[0] and "Traceback" not in r.stderr


def test_supported_transformers_range_and_the_mask_reader_guard(monkeypatch):
    support.check_transformers(transformers)              # the installed one is in range
    old = type("tf", (), {"__version__": "4.57.1"})
    with pytest.raises(ImportError, match=r"supports transformers >=5\.4,<5\.26, got 4\.57\.1"):
        support.check_transformers(old)
    assert support.mask_reader_problem() is None
    from transformers import masking_utils as mu

    def sliding_window_overlay(width):                   # a release that renamed the cell
        def inner(b, h, q, kv):
            return kv > q - width
        return inner
    monkeypatch.setattr(mu, "sliding_window_overlay", sliding_window_overlay)
    support.mask_reader_problem.cache_clear()
    try:
        assert "sliding_window_overlay no longer keeps sliding_window" in \
            support.mask_reader_problem()
    finally:
        monkeypatch.undo()
        support.mask_reader_problem.cache_clear()


def test_every_transformers_kwarg_is_known_and_training_kwargs_pass():
    """Every key of transformers' TransformersKwargs (what a model's **kwargs may carry into
    the attention function) is in the table; a causal LM's training call with
    ``num_items_in_batch`` (transformers' test_causal_lm_can_accept_training_kwargs) runs."""
    from transformers.utils.generic import TransformersKwargs
    known = hf_kwargs.SERVED | hf_kwargs.BOOKKEEPING | set(hf_kwargs.REFUSED)
    assert set(TransformersKwargs.__annotations__) <= known
    ref, ours = pair(H.llama)
    ids = torch.randint(0, 50, (2, 6))
    n = torch.tensor(12)
    a = ref(input_ids=ids, labels=ids, num_items_in_batch=n).loss
    b = ours(input_ids=ids, labels=ids, num_items_in_batch=n).loss   # was: UnsupportedCall
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
