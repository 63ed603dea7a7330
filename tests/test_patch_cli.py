"""`attnkit inspect --ablate` and `attnkit patch` on a tiny random Qwen2 (GQA decoder with its
own tokenizer): the ranked table and files, numbers checked against single-head edits
through the Python API; bad input is one line and exit code 2."""
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import tiny_checkpoints as tc  # noqa: E402
from attnkit.cli import main  # noqa: E402

CLEAN = "The cat sat on the mat because it was tired."
CORRUPT = "The dog sat on the mat because it was tired."


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("patch_ckpts")
    run = d / "linear_run"
    (run / "ckpt").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "mqar", "attention": "linear:elu"}))
    bloom = d / "bloom"
    torch.manual_seed(0)
    q = tc.qwen2(d / "qwen")
    tok = transformers.AutoTokenizer.from_pretrained(q)
    transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=4)).save_pretrained(bloom)
    tok.save_pretrained(bloom)
    return {"qwen": q, "t5": tc.t5(d / "t5"), "linear": run, "bloom": bloom}


def fails(capsys, argv, *needles):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_ablate_cli_matches_single_head_edit(ckpts, tmp_path, capsys):
    out = tmp_path / "abl"
    assert main(["inspect", CLEAN, "--model", str(ckpts["qwen"]), "--ablate", "zero",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Spearman" in text and max(len(x) for x in text.splitlines()) <= 80
    res = json.loads((out / "ablation.json").read_text())
    assert len(res["rows"]) == 2 * 4 and (out / "ablation.png").stat().st_size > 3000
    top = res["rows"][0]
    # the same head ablated alone through the API: the same drop in log-prob
    import attnkit.hf
    from attnkit.analysis import causal as C
    from attnkit.integrations.hf import heads as H
    model = attnkit.hf.from_pretrained(ckpts["qwen"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(ckpts["qwen"])
    ids = tok(CLEAN, return_tensors="pt")["input_ids"]
    probe = C.Probe(model, {"input_ids": ids}, C.Target("token", "x"))
    assert probe.target.token_id == res["target"]["token_id"]
    mod = probe.modules[top["layer"]]
    with H.edit({mod: H.HeadEdit.zero([top["head"]], 4)}), torch.no_grad():
        lp = torch.log_softmax(model(input_ids=ids).logits[0, -1].double(), -1)
    drop = float(probe.clean[0, probe.target.token_id] - lp[probe.target.token_id])
    assert abs(drop - top["effect"]) < 1e-6


def test_patch_cli_every_head_restores_and_files(ckpts, tmp_path, capsys):
    out = tmp_path / "patch"
    assert main(["patch", CLEAN, CORRUPT, "--model", str(ckpts["qwen"]), "--per-position",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "restores" in text and max(len(x) for x in text.splitlines()) <= 80
    res = json.loads((out / "patching.json").read_text())
    assert abs(res["every_head"] - 1) < 1e-4        # the changed token is not the last
    assert len(res["per_position"]) == 8 and res["changed"]


def test_bad_inputs_one_line_exit_2(ckpts, capsys):
    q = ckpts["qwen"]
    fails(capsys, ["inspect", CLEAN, "--model", q, "--ablate", "zero", "--target",
                   "zzqqxxyy"], "--target", "not one token")
    fails(capsys, ["patch", CLEAN, "The cat sat on the big mat because it was tired.",
                   "--model", q], "CORRUPTED", "CLEAN", "tokens")
    fails(capsys, ["inspect", CLEAN, "--model", ckpts["linear"], "--ablate", "mean"],
          "--model", "linear attention", "attnkit train run")
    fails(capsys, ["inspect", CLEAN, "--model", ckpts["bloom"], "--ablate", "zero"],
          "--model", "Bloom")
    fails(capsys, ["patch", CLEAN, CORRUPT, "--model", ckpts["t5"]], "--model",
          "encoder-decoder")
    fails(capsys, ["inspect", CLEAN, "--model", q, "--ablate", "zero", "--from", "it"],
          "--from")
    fails(capsys, ["inspect", CLEAN, "--model", "minilm", "--ablate", "zero", "--target",
                   "elephant"], "--target", "not a word")
