"""``attnkit bench --model M --text FILE --adapt N`` on the tiny random HF models of
tests/test_adapt.py (a BERT encoder, a GQA Llama decoder, word-level tokenizer): through
the CLI entry point, each variant is adapted (``attnkit.adapt``), the report holds
zero-shot and adapted held-out fidelity side by side -- the adapted numbers exactly what
the adapted directory's history records -- and a curve; the recommendation names the
steps; a variant that cannot be adapted is listed with its reason; a finished run is
reused; bad input is one line, exit 2."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

from test_adapt import TEXT, models  # noqa: E402,F401  (the tiny models' fixture)

from attnkit.bench.adapted import recommend_adapted  # noqa: E402
from attnkit.cli import main  # noqa: E402

FAST = ["--seq", "32", "--max-windows", "1", "--time-budget", "0.2", "--repeats", "1",
        "--adapt-batch-size", "4", "--threads", "1"]
VARIANTS = {"encoder": "window:2,linear:hedgehog,gqa:3", "decoder": "window:2,gqa:1,gqa:3"}


def _bench(model, out, *extra):
    return main(["bench", "--model", model, "--text", str(TEXT), *FAST, "--out", str(out),
                 *extra])


@pytest.fixture(scope="module", params=["encoder", "decoder"])
def report(request, models, tmp_path_factory):  # noqa: F811
    kind = request.param
    out = tmp_path_factory.mktemp(f"bench-adapt-{kind}")
    bound = ["--min-cosine", "0.5"] if kind == "encoder" else ["--max-kl", "10"]
    assert _bench(models[kind], out, "--variants", VARIANTS[kind], "--adapt", "2",
                  *bound) == 0
    return kind, models[kind], out, json.loads((out / "bench.json").read_text())


def test_zero_shot_and_adapted_side_by_side(report):
    kind, _, out, res = report
    A = res["adaptation"]
    assert A["steps"] == 2 and "never trains on" in A["held_out"]
    runs = {r["variant"]: r for r in A["runs"]}
    learned = "linear:hedgehog" if kind == "encoder" else "gqa:1"
    assert set(runs) == {"window:2", learned, "gqa:3"}
    # a learned variant runs only adapted: not in bench's zero-shot rows, timed on its dir
    assert {r["variant"] for r in res["rows"]} == {"dense", "window:2"}
    assert runs[learned]["timing"]["model_speedup"]["ratio"] > 0
    for v in ("window:2", learned):
        r = runs[v]
        assert r["status"] == "adapted" and r["n"] == 32 and r["steps"] == 2
        assert [h["step"] for h in r["history"]] == [0, 1, 2]
        assert r["zero_shot"] == r["history"][0] and r["adapted"] == r["history"][-1]
        saved = json.loads((Path(r["dir"]) / "config.json").read_text())["attnkit_adapted"]
        assert saved["history"] == r["history"]          # what adapt's history says
        assert Path(r["dir"]).parent == out / "adapted"
    assert runs["gqa:3"]["status"] == "not adapted"
    assert "'gqa:3' cannot be adapted" in runs["gqa:3"]["reason"]
    md = (out / "bench.md").read_text()
    assert "After 2 adaptation steps" in md and "adapt_curve.png" in md
    assert "not adapted: --variant: 'gqa:3' cannot be adapted" in md
    png = out / "adapt_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_recommendation_names_variant_length_and_steps(report):
    kind, _, _, res = report
    rec = res["adaptation"]["recommendation"]
    assert rec["keeps"] in ("window:2", "linear:hedgehog", "gqa:1") and rec["n"] == 32
    assert re.search(r"at n=32 keeps the bound after 2 adaptation steps", rec["text"])
    assert "gqa:3 at n=32: not adapted" in rec["text"]
    strict = dict(res, config=dict(res["config"], min_cosine=1.0, max_kl=0.0))
    none = recommend_adapted(strict)
    assert none["variant"] is None
    assert none["text"].startswith("none: no variant keeps the bound after 2 adaptation steps")


def test_finished_runs_are_reused_and_other_settings_refused(report, tmp_path, capsys):
    kind, model, out, res = report
    again = tmp_path / "again"
    assert _bench(model, again, "--variants", "window:2", "--adapt", "2",
                  "--adapt-dir", str(out / "adapted")) == 0
    assert "window:2 at n=32: reusing the finished run" in capsys.readouterr().out
    r = json.loads((again / "bench.json").read_text())["adaptation"]["runs"][0]
    first = next(x for x in res["adaptation"]["runs"] if x["variant"] == "window:2")
    assert r["history"] == first["history"]
    assert _bench(model, tmp_path / "other", "--variants", "window:2", "--adapt", "3",
                  "--adapt-dir", str(out / "adapted")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(--adapt 2 there, 3 now)" in err, err


@pytest.mark.parametrize("args, words", [
    (["--adapt", "0"], "--adapt: expected a number of steps >= 1, got 0"),
    (["--adapt", "-2"], "--adapt: expected a number of steps >= 1, got -2"),
    (["--adapt", "2", "NOTEXT"], "--adapt: needs --text FILE"),
    (["--adapt-every", "2"], "--adapt-every: used with --adapt N only"),
    (["--adapt", "2", "--adapt-every", "0"], "--adapt-every: expected an integer >= 1"),
    (["--adapt", "2", "--layers", "0"], "--layers: not with --adapt"),
    (["--adapt", "2", "--variants", "dense"], "--adapt: no variant to adapt"),
    (["--adapt", "2", "--adapt-batch-size", "1000"],
     "--text: .* a batch of 1000 plus a held-out split needs at least 1001 .*--seq 32"),
])
def test_refusals_one_line_exit_2(models, tmp_path, capsys, args, words):  # noqa: F811
    base = ["bench", "--model", models["encoder"], "--seq", "32"]
    if "NOTEXT" in args:
        args = [a for a in args if a != "NOTEXT"]
    else:
        base += ["--text", str(TEXT)]
    assert main(base + args + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(words, err), err
    assert not (tmp_path / "out").exists()


def test_adapt_with_random_inputs_is_refused(capsys):
    assert main(["bench", "--inputs", "random", "--adapt", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--adapt: used with --model (inputs text) only, not --inputs random")
