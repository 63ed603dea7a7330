"""``attnkit adapt`` on tiny random Hugging Face models (an encoder; a GQA decoder) with a
word-level tokenizer trained on the shipped text: adaptation improves held-out fidelity
over zero-shot, stage 1 and stage 2 each do their part (each test fails without it),
SIGKILL + --resume is bit-exact, the adapted directory reloads bit-identically through
attnkit.hf.from_pretrained and AutoModel.from_pretrained, and bad input is refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "src" / "attnkit" / "data" / "bench_text.txt"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
FAST = dict(seq=32, batch_size=4, eval_windows=8, lr1=1e-2, lr2=3e-3, progress=False,
            log=lambda *a: None)


def _tokenizer(path: Path):
    import tokenizers as tk
    tok = tk.Tokenizer(tk.models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tok.train_from_iterator([TEXT.read_text()], tk.trainers.WordLevelTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    tok.post_processor = tk.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]").save_pretrained(path)


def _save(model, path: Path) -> str:
    model.save_pretrained(path)
    _tokenizer(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Random weights with a wide init (0.3), so that attention is peaked and a cheaper
    variant really changes the model."""
    t = transformers
    root = tmp_path_factory.mktemp("adapt")
    torch.manual_seed(0)
    enc = t.BertModel(t.BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=64,
                                   max_position_embeddings=64, initializer_range=0.3))
    dec = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, max_position_embeddings=64,
                                           initializer_range=0.3))
    return {"encoder": _save(enc, root / "enc"), "decoder": _save(dec, root / "dec")}


def _run(model, variant, out, steps=24, **kw):
    return attnkit.adapt(model, variant, str(TEXT), steps, str(out), **{**FAST, **kw})


def _closes(h, share):
    """Did adaptation close ``share`` of the gap between zero-shot and 1 (per-token
    cosine to the dense model on held-out text)?"""
    return 1 - h[-1]["cosine"] <= (1 - share) * (1 - h[0]["cosine"])


@pytest.mark.parametrize("variant", ["window:2", "linear:hedgehog"])
def test_encoder_adaptation_improves_held_out_fidelity(models, tmp_path, variant):
    rec = _run(models["encoder"], variant, tmp_path / "out")
    h = rec["history"]
    assert h[0]["step"] == 0 and h[-1]["step"] == 24 and len(h) == 7     # every 24 // 5
    assert h[0]["cosine"] < 0.99                              # the variant changes the model
    assert _closes(h, 0.4), h


def test_gqa_decoder_adaptation_lowers_kl(models, tmp_path):
    rec = _run(models["decoder"], "gqa:1", tmp_path / "out")
    h = rec["history"]
    assert h[0]["kl"] > 1e-3 and h[-1]["kl"] < 0.7 * h[0]["kl"], h
    assert h[-1]["top1_agreement"] >= h[0]["top1_agreement"]


def test_stage1_fits_only_the_variant_parameters(models, tmp_path):
    """Attention transfer alone (every step stage 1) lowers the worst layer error, and
    touches nothing but the learned feature maps."""
    rec = _run(models["encoder"], "linear:hedgehog", tmp_path / "out", steps=16,
               stage1_steps=16, lr1=3e-2)
    h = rec["history"]
    assert h[-1]["worst_layer_error"] < 0.8 * h[0]["worst_layer_error"], h
    a, b = load_file(str(Path(models["encoder"]) / "model.safetensors")), \
        load_file(str(tmp_path / "out" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    maps = load_file(str(tmp_path / "out" / "attnkit_attention.safetensors"))
    assert not torch.equal(maps["layers.0.q_weight"], torch.eye(8).repeat(4, 1, 1))


def test_stage2_distils_the_whole_model(models, tmp_path):
    """Distillation alone (no stage 1) raises the pooled-embedding cosine."""
    rec = _run(models["encoder"], "window:2", tmp_path / "out", steps=24, stage1_steps=0)
    h = rec["history"]
    assert all(x["stage"] == "stage 2" for x in h[1:])
    assert _closes(h, 0.4), h


def test_gqa_heads_stay_tied_and_the_model_runs_anywhere(models, tmp_path):
    """gqa:1 on the GQA decoder: the K/V projections of a group are equal after training,
    so the saved model gives the same logits under plain attention (eager) as under
    attnkit:gqa:1."""
    out = tmp_path / "out"
    _run(models["decoder"], "gqa:1", out, steps=8)
    w = load_file(str(out / "model.safetensors"))["model.layers.0.self_attn.k_proj.weight"]
    assert torch.equal(w[:8], w[8:])                           # head_dim 8, 2 heads -> 1
    ids = torch.randint(4, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    ours = attnkit.hf.from_pretrained(out)
    eager = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    with torch.no_grad():
        assert torch.allclose(ours(ids).logits, eager(ids).logits, atol=1e-5)


@pytest.mark.parametrize("variant", ["linear:hedgehog", "window:2"])
def test_adapted_directory_reloads_bit_identically(models, tmp_path, variant):
    out = tmp_path / "out"
    _run(models["encoder"], variant, out, steps=4)
    rec = json.loads((out / "config.json").read_text())["attnkit_adapted"]
    name = rec["implementation"]
    assert name == f"attnkit:{variant}" and rec["variant"] == variant
    a = attnkit.hf.from_pretrained(out)
    attnkit.hf.register(variant)
    b = transformers.AutoModel.from_pretrained(out, attn_implementation=name)
    ids = torch.randint(4, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, -6:] = 0                                        # a padded batch
    with torch.no_grad():
        x = a(input_ids=ids, attention_mask=mask).last_hidden_state
        y = b(input_ids=ids, attention_mask=mask).last_hidden_state
        z = attnkit.hf.from_pretrained(models["encoder"], variant if "window" in variant
                                       else None)(input_ids=ids, attention_mask=mask)
    assert torch.equal(x, y) and not torch.equal(x, z.last_hidden_state)


def test_learned_tensors_missing_or_unused_are_refused(models, tmp_path):
    from safetensors.torch import save_file
    out = tmp_path / "out"
    _run(models["encoder"], "linear:hedgehog", out, steps=2)
    with pytest.raises(ValueError, match="would leave them unused"):
        attnkit.hf.from_pretrained(out, "linear:elu")
    f = out / "attnkit_attention.safetensors"
    t = load_file(str(f))
    extra = dict(t, **{"layers.7.q_bias": t["layers.0.q_bias"].clone()})
    save_file(extra, str(f))
    with pytest.raises(ValueError, match=r"unused \['layers.7.q_bias'\]"):
        attnkit.hf.from_pretrained(out)
    t.pop("layers.1.k_weight")
    save_file(t, str(f))
    with pytest.raises(ValueError, match=r"missing \['layers.1.k_weight'\]"):
        attnkit.hf.from_pretrained(out)
    attnkit.hf.register("linear:hedgehog")           # the lazy path (AutoModel) checks too
    m = transformers.AutoModel.from_pretrained(out, attn_implementation="attnkit:linear:hedgehog")
    with pytest.raises(ValueError, match=r"missing \['layers.1.k_weight'\]"):
        m(input_ids=torch.tensor([[5, 6, 7]]))
    fresh = transformers.AutoModel.from_pretrained(models["encoder"],
                                                   attn_implementation="attnkit:linear:hedgehog")
    with pytest.raises(ValueError, match="has no learned feature map"):
        fresh(input_ids=torch.tensor([[5, 6, 7]]))


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "attnkit", "adapt", *args], env=ENV,
                          capture_output=True, text=True, timeout=kw.get("timeout", 240))


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(models, tmp_path):
    args = ["--model", models["encoder"], "--variant", "linear:hedgehog", "--text", str(TEXT),
            "--steps", "16", "--seq", "32", "--batch-size", "4", "--eval-windows", "4",
            "--eval-every", "8", "--ckpt-every", "2", "--threads", "1", "--no-progress"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    r = _cli(*args, "--out", str(ref))
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen([sys.executable, "-m", "attnkit", "adapt", *args, "--out", str(run)],
                         env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (run / "ckpt" / "latest").exists() and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.01)
    p.kill()
    p.wait()
    assert (run / "ckpt" / "latest").exists() and not (run / "config.json").exists()
    r = _cli("--resume", str(run))
    assert r.returncode == 0, r.stderr
    for f in ("model.safetensors", "attnkit_attention.safetensors"):
        a, b = load_file(str(ref / f)), load_file(str(run / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    ha = json.loads((ref / "config.json").read_text())["attnkit_adapted"]["history"]
    hb = json.loads((run / "config.json").read_text())["attnkit_adapted"]["history"]
    assert ha == hb


@pytest.mark.parametrize("args, words", [
    (["--variant", "nope"], "--variant: variant 'nope': unknown name"),
    (["--variant", "dense"], "'dense' is the teacher itself"),
    (["--variant", "ssm"], "is a model, not an attention"),
    (["--variant", "gqa:3"], "'gqa:3' cannot be adapted: the model has 4 key/value heads"),
    (["--steps", "0"], "--steps: expected an integer >= 1, got 0"),
    (["--stage1-weights", "1"], "--stage1-weights: only a linear or gqa variant's stage 1 "
                                "matches attention weights; 'window:2'"),
    (["--seq", "512"], "--seq: .* takes at most 64 tokens, got 512"),
    (["--batch-size", "1000"], "--text: .* windows of 32 tokens; a batch of 1000 plus a "
                               "held-out split needs at least 1001"),
    (["--eval-text", "SHORT"], "--eval-text: .* is shorter than one 32-token window"),
    (["--text", "SHORT", "--batch-size", "1"], "--text: .* gives 0 windows"),
    (["--model", "/nonexistent"], "--model: .*no such directory"),
    (["--out", "MODEL"], "--out: .* already holds another model"),
    (["--resume", "MODEL"], "--resume: continues with the run's own settings"),
])
def test_refusals_one_line_exit_2(models, tmp_path, capsys, args, words):
    import re

    from attnkit.cli import main
    (tmp_path / "short.txt").write_text("a few words only")
    base = {"--model": models["encoder"], "--variant": "window:2", "--text": str(TEXT),
            "--steps": "3", "--seq": "32", "--out": str(tmp_path / "out")}
    sub = {"SHORT": str(tmp_path / "short.txt"), "MODEL": models["encoder"]}
    base.update({k: sub.get(v, v) for k, v in zip(args[::2], args[1::2])})
    assert main(["adapt", *[x for kv in base.items() for x in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(words, err), err
    assert not (tmp_path / "out").exists()
