"""The `attnkit` command: help, exit codes, one-line errors, and a tiny real bench."""
import json
import subprocess
import sys

import pytest


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "attnkit.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


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


def test_tiny_bench_writes_table_json_and_plot(tmp_path):
    r = run("bench", "--seq", "128,256", "--variants", "window:16,linear:elu", "--heads", "2",
            "--head-dim", "16", "--repeats", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Recommendation:" in r.stdout
    res = json.loads((tmp_path / "bench.json").read_text())
    variants = {row["variant"] for row in res["rows"]}
    assert variants == {"dense", "window:16", "linear:elu"}  # dense is always the baseline
    for row in res["rows"]:
        assert row["median_s"] > 0 and "rel_error" in row
        if row["variant"] == "dense":
            assert row["rel_error"] < 1e-5
    assert res["variants"]["dense"]["exponent"] is not None
    assert (tmp_path / "bench.png").stat().st_size > 10_000
    assert "| window:16 |" in (tmp_path / "bench.md").read_text()
