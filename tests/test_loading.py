"""``attnkit.load`` never returns a silently different model: every config field is
implemented, ignored on purpose or refused by name; every tensor is used or named;
every broken file is one line naming it. (Numerical parity: tests/test_parity_hf.py.)

Base checkpoints are tiny random models saved by transformers' ``save_pretrained``
(nothing downloaded); each test copies one and edits its config or tensors.
"""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import attnkit
from attnkit import loading
from attnkit.core.errors import CheckpointError
from attnkit.loading import bert as lbert, gpt2 as lgpt2, llama as lllama
from attnkit.loading.common import COMMON_IGNORED, COMMON_REFUSED, Fields
from attnkit.loading.files import Weights

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FAMILIES = {"bert": lbert, "gpt2": lgpt2, "llama": lllama}
BASE = {  # family -> (HF class, HF config class, sizes)
    "bert": ("BertForPreTraining", "BertConfig", dict(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
        max_position_embeddings=32)),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(n_embd=16, n_layer=2, n_head=2,
                                                   n_positions=32)),
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=20, max_position_embeddings=32)),
}


@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@pytest.fixture(scope="module")
def base(hf, tmp_path_factory):
    """family -> a saved tiny checkpoint directory."""
    root, out = tmp_path_factory.mktemp("base"), {}
    for fam, (cls, cfg_cls, sizes) in BASE.items():
        torch.manual_seed(0)
        cfg = getattr(hf, cfg_cls)(vocab_size=23, bos_token_id=None, eos_token_id=None, **sizes)
        getattr(hf, cls)(cfg).save_pretrained(str(root / fam))
        out[fam] = root / fam
    return out


def copy(src, dst, config=None, drop=(), tensors=None, delete=()):
    """A copy of checkpoint ``src`` with config fields updated/dropped, tensors set/deleted."""
    shutil.copytree(src, dst)
    if config or drop:
        c = json.loads((dst / "config.json").read_text())
        c.update(config or {})
        for k in drop:
            c.pop(k, None)
        (dst / "config.json").write_text(json.dumps(c))
    if tensors or delete:
        t = load_file(str(dst / "model.safetensors"))
        t.update(tensors or {})
        for k in delete:
            del t[k]
        save_file(t, str(dst / "model.safetensors"))
    return dst


def refused(match, fn, *a, **kw):
    """``fn`` raises CheckpointError matching ``match``, on one line."""
    with pytest.raises(CheckpointError, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ the field tables
@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_every_transformers_field_is_classified(hf, fam):
    """Every field transformers 5 writes for this family is in one of the tables."""
    cfg_cls = getattr(hf, BASE[fam][1])
    written = set(cfg_cls(**BASE[fam][2]).to_dict())
    t = loading.fields(fam)
    known = set(t["implemented"]) | set(t["ignored"]) | set(t["refused"])
    assert written - known == set()
    assert set(lbert.IMPLEMENTED).isdisjoint(COMMON_IGNORED)


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_build_reads_only_documented_fields(base, fam):
    """What the mapping reads is exactly documented as implemented or refused."""
    d = base[fam]
    cfg = json.loads((d / "config.json").read_text())
    f = Fields(cfg, d / "config.json")
    mod = FAMILIES[fam]
    arch = cfg["architectures"][0]
    w = Weights(d)
    mod.build(f, w, arch)
    w.close()
    assert f.read - set(mod.IMPLEMENTED) - set(mod.REFUSED) == set()
    assert set(mod.IGNORED).isdisjoint(mod.IMPLEMENTED)


REFUSALS = [(fam, k, v) for fam in sorted(FAMILIES)
            for k, (v, _) in {**COMMON_REFUSED, **FAMILIES[fam].REFUSED}.items()]


@pytest.mark.parametrize("fam,field,value", REFUSALS,
                         ids=[f"{f}-{k}" for f, k, _ in REFUSALS])
def test_each_refused_field_is_named_with_its_value(base, tmp_path, fam, field, value):
    d = copy(base[fam], tmp_path / "x", config={field: value})
    msg = refused(rf"config\.json: {field}=", attnkit.load, d)
    assert repr(value) in msg and "not supported" in msg


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "longrope", "llama3"])
def test_every_rope_scaling_type_refused(base, tmp_path, kind):
    d = copy(base["llama"], tmp_path / "r", config={
        "rope_parameters": {"rope_type": kind, "factor": 2.0, "rope_theta": 10000.0}})
    refused(rf"rope_parameters=.*rope_type '{kind}'.*attnkit\.hf\.register", attnkit.load, d)
    d2 = copy(base["llama"], tmp_path / "s", config={"rope_scaling": {"type": kind,
                                                                     "factor": 2.0}})
    refused(rf"rope_scaling=.*'{kind}'", attnkit.load, d2)        # v4's legacy key too


def test_bert_is_decoder_with_cross_attention_refused(base, tmp_path):
    d = copy(base["bert"], tmp_path / "x", config={"is_decoder": True,
                                                   "add_cross_attention": True})
    refused("add_cross_attention=True", attnkit.load, d)


def test_unknown_field_refused_unless_not_strict(base, tmp_path):
    d = copy(base["gpt2"], tmp_path / "u", config={"attn_logit_softcapping": 30.0,
                                                   "n_ctx": 32})  # n_ctx: ignored on purpose
    msg = refused(r"\['attn_logit_softcapping'\] unknown to attnkit's gpt2 port", attnkit.load, d)
    assert "strict=False" in msg
    model = attnkit.load(d, strict=False)
    assert model.cfg.d_model == 16


# ------------------------------------------------------------------ architectures
def test_unported_architecture_points_to_transformers(base, tmp_path):
    d = copy(base["llama"], tmp_path / "q", config={"architectures": ["Qwen2ForCausalLM"],
                                                    "model_type": "qwen2"})
    msg = refused(r"unknown architecture 'Qwen2ForCausalLM'", attnkit.load, d)
    assert "import attnkit.hf; attnkit.hf.register()" in msg
    assert f"AutoModel.from_pretrained({str(d)!r}, attn_implementation=\"attnkit\")" in msg
    d2 = copy(base["bert"], tmp_path / "r", config={"model_type": "roberta"})
    refused(r"model_type 'roberta' does not match architecture 'BertForPreTraining'",
            attnkit.load, d2)


def test_model_type_only_picks_the_lm_class(base, tmp_path):
    d = copy(base["gpt2"], tmp_path / "g", drop=["architectures"])
    model = attnkit.load(d)
    assert model.architecture == "GPT2LMHeadModel" and model.cfg.lm_head


# ------------------------------------------------------------------ tensors
@pytest.mark.parametrize("fam,name,shape", [
    ("bert", "bert.encoder.layer.0.attention.self.distance_embedding.weight", (63, 8)),
    ("gpt2", "transformer.h.0.crossattention.c_attn.weight", (16, 32)),
    ("llama", "model.layers.0.self_attn.q_norm.weight", (8,))])
def test_unexpected_tensor_named_unless_not_strict(base, tmp_path, fam, name, shape):
    d = copy(base[fam], tmp_path / "t", tensors={name: torch.ones(shape)})
    refused(rf"unexpected tensor\(s\) \[{name!r}\].*strict=False", attnkit.load, d)
    assert attnkit.load(d, strict=False) is not None


def test_headless_architecture_with_a_head_tensor_is_named(base, tmp_path):
    d = copy(base["gpt2"], tmp_path / "h", config={"architectures": ["GPT2Model"],
                                                   "tie_word_embeddings": False},
             tensors={"lm_head.weight": torch.zeros(23, 16)})
    refused(r"unexpected tensor\(s\) \['lm_head.weight'\] for architecture 'GPT2Model'",
            attnkit.load, d)


def test_known_buffers_and_tied_copies_are_accepted(base, tmp_path):
    g = load_file(str(base["gpt2"] / "model.safetensors"))
    bufs = {"transformer.h.0.attn.bias": torch.ones(1, 1, 32, 32, dtype=torch.bool),
            "lm_head.weight": g["transformer.wte.weight"].clone()}       # tied copy, equal
    m = attnkit.load(copy(base["gpt2"], tmp_path / "g", tensors=bufs))
    assert m.lm_head is None and m.load_notes == []
    b = load_file(str(base["bert"] / "model.safetensors"))
    bufs = {"bert.embeddings.position_ids": torch.arange(32)[None],
            "cls.predictions.decoder.weight": b["bert.embeddings.word_embeddings.weight"]}
    m = attnkit.load(copy(base["bert"], tmp_path / "b", tensors=bufs))
    assert m.mlm.decoder is None                                         # still tied
    bufs = {"model.layers.1.self_attn.rotary_emb.inv_freq": torch.ones(4)}
    assert attnkit.load(copy(base["llama"], tmp_path / "l", tensors=bufs)) is not None


@pytest.mark.parametrize("fam,head", [("gpt2", "lm_head.weight"), ("llama", "lm_head.weight"),
                                      ("bert", "cls.predictions.decoder.weight")])
def test_untied_config_without_its_head_tensor(base, tmp_path, fam, head):
    present = head in load_file(str(base[fam] / "model.safetensors"))   # llama: untied
    d = copy(base[fam], tmp_path / "u", config={"tie_word_embeddings": False},
             delete=[head] if present else [])
    refused(rf"missing tensor {head!r} \(tie_word_embeddings is false", attnkit.load, d)


def test_missing_and_misshapen_tensors_named(base, tmp_path):
    d = copy(base["llama"], tmp_path / "m", delete=["model.layers.1.mlp.up_proj.weight"])
    refused(r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(needed for "
            r"layers.1.ffn.up.weight\)", attnkit.load, d)
    d = copy(base["gpt2"], tmp_path / "s",
             tensors={"transformer.h.1.attn.c_attn.weight": torch.zeros(16, 16)})
    refused(r"model.safetensors: tensor 'transformer.h.1.attn.c_attn.weight' has shape "
            r"\(16, 16\), expected \(48, 16\) from config.json", attnkit.load, d)
    d = copy(base["bert"], tmp_path / "i",
             tensors={"bert.pooler.dense.bias": torch.zeros(16, dtype=torch.int64)})
    refused(r"'bert.pooler.dense.bias' has dtype torch.int64", attnkit.load, d)


def test_zero_bias_fill_and_scale_fold_are_noted(base, tmp_path):
    hfm = pytest.importorskip("transformers")
    cfg = hfm.LlamaConfig(vocab_size=23, attention_bias=True, **BASE["llama"][2])
    hfm.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "l"))
    m = attnkit.load(tmp_path / "l")
    assert m.cfg.bias and float(m.layers[0].ffn.up.bias.detach().abs().max()) == 0.0
    assert any("zero biases" in n for n in m.load_notes)
    g = attnkit.load(copy(base["gpt2"], tmp_path / "g",
                          config={"scale_attn_by_inverse_layer_idx": True}))
    assert [n.split(":")[0] for n in g.load_notes] == ["layers.1.attn.qkv_proj"]


def test_causal_bert_stays_causal_through_set_attention(base, tmp_path):
    enc = attnkit.load(base["bert"])
    dec = attnkit.load(copy(base["bert"], tmp_path / "d", config={"is_decoder": True}))
    ids = torch.randint(0, 23, (2, 9))
    with torch.no_grad():
        h = dec(ids)
        h2 = dec.set_attention(pattern=None, backend="tiled")(ids)
        h3 = dec(torch.cat((ids[:, :5], torch.zeros(2, 4, dtype=torch.long)), 1))
        assert (h - h2).abs().max() < 1e-5                    # pattern=None: still causal
        assert (h[:, :5] - h3[:, :5]).abs().max() < 1e-5      # the future changes nothing
        assert (enc(ids) - h).abs().max() > 1e-2


def test_dtype_none_keeps_the_checkpoint_dtype(base, tmp_path):
    t = {k: v.to(torch.bfloat16) for k, v in
         load_file(str(base["llama"] / "model.safetensors")).items()}
    d = copy(base["llama"], tmp_path / "h", tensors=t)
    assert attnkit.load(d, dtype=None).tok_emb.weight.dtype == torch.bfloat16
    assert attnkit.load(d).tok_emb.weight.dtype == torch.float32
    with pytest.raises(TypeError, match="dtype"):
        attnkit.load(d, dtype="half")


# ------------------------------------------------------------------ broken files (issue 18)
def test_truncated_safetensors(base, tmp_path):
    d = copy(base["gpt2"], tmp_path / "t")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:2000])
    refused(r"model.safetensors: not a readable safetensors file, truncated or corrupt",
            attnkit.load, d)
    f.write_bytes(b"")
    refused(r"model.safetensors: not a readable safetensors file", attnkit.load, d)


@pytest.mark.parametrize("fam,field", [("gpt2", "n_embd"), ("gpt2", "n_layer"),
                                       ("bert", "hidden_size"), ("llama", "vocab_size")])
def test_config_missing_a_size(base, tmp_path, fam, field):
    d = copy(base[fam], tmp_path / "c", drop=[field])
    refused(rf"config.json: missing field {field!r}", attnkit.load, d)


@pytest.mark.parametrize("value,expect", [("32", "an int >= 1"), (0, "an int >= 1"),
                                          (True, "an int >= 1")])
def test_config_field_of_the_wrong_type(base, tmp_path, value, expect):
    d = copy(base["gpt2"], tmp_path / "w", config={"n_embd": value})
    refused(rf"field 'n_embd': expected {expect}, got {value!r}", attnkit.load, d)
    d = copy(base["gpt2"], tmp_path / "h", config={"n_head": 3})   # 16 % 3
    refused(r"config.json: n_heads: expected a divisor of d_model=16", attnkit.load, d)


def test_malformed_json(base, tmp_path):
    d = copy(base["bert"], tmp_path / "j")
    (d / "config.json").write_text('{"hidden_size": 16,')
    refused(r"config.json: not valid JSON", attnkit.load, d)
    (d / "config.json").write_text("[1, 2]")
    refused(r"config.json: expected a JSON object, got list", attnkit.load, d)
    (d / "config.json").write_bytes(b"\xff\xfe{}")
    refused(r"config.json: not valid JSON", attnkit.load, d)


def test_no_weights_and_pickle_only(base, tmp_path):
    d = copy(base["llama"], tmp_path / "n")
    (d / "model.safetensors").unlink()
    refused(r"model.safetensors: missing \(no model.safetensors or "
            r"model.safetensors.index.json", attnkit.load, d)
    torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")    # written, never unpickled
    refused(r"found only pickle weights \['pytorch_model.bin'\]; attnkit reads safetensors",
            attnkit.load, d)


def test_sharded_index_problems(base, tmp_path):
    d = copy(base["llama"], tmp_path / "s")
    t = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(t)
    save_file({k: t[k] for k in names[:5]}, str(d / "a.safetensors"))
    save_file({k: t[k] for k in names[5:]}, str(d / "b.safetensors"))
    wmap = {k: ("a.safetensors" if i < 5 else "b.safetensors") for i, k in enumerate(names)}
    index = d / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": wmap}))
    assert attnkit.load(d).cfg.n_kv_heads == 1                     # sharded loads
    (d / "b.safetensors").unlink()
    refused(r"b.safetensors: missing \(listed in model.safetensors.index.json\)",
            attnkit.load, d)
    index.write_text("{oops")
    refused(r"model.safetensors.index.json: not valid JSON", attnkit.load, d)
    index.write_text(json.dumps({"weights": {}}))
    refused(r"index.json: expected an object with a 'weight_map'", attnkit.load, d)


def test_broken_tokenizer_and_sentence_config(base, tmp_path):
    d = copy(base["bert"], tmp_path / "k")
    (d / "tokenizer.json").write_text('{"not": "a tokenizer"}')
    refused(r"tokenizer.json: not a readable tokenizer", attnkit.load, d)
    (d / "tokenizer.json").unlink()
    (d / "sentence_bert_config.json").write_text('{"max_seq_length": "long"}')
    refused(r"sentence_bert_config.json: max_seq_length: expected an int", attnkit.load, d)


def test_architectures_not_a_list(base, tmp_path):
    d = copy(base["bert"], tmp_path / "a", config={"architectures": "BertModel"})
    refused(r"field 'architectures': expected a list of class names", attnkit.load, d)


def test_public_names_still_work():
    from attnkit.loading import CheckpointError as E, NAMED_MODELS, load, resolve
    assert E is CheckpointError and attnkit.load is load and "minilm" in NAMED_MODELS
    assert callable(resolve) and attnkit.loading.CheckpointError is CheckpointError
