"""The variant parser behind `attnkit bench --variants` and `attnkit train --attention`."""
import pytest
import torch

import attnkit
from attnkit.bench.runner import parse_seqs, parse_size, recommend
from attnkit.bench.timing import fit_exponent
from attnkit.engine.variants import parse_variant, parse_variants

SOFTMAX = ["dense", "window:16", "strided", "strided:7", "fixed:8:2", "dilated:4:3",
           "longformer:8:2", "bigbird:32", "logsparse"]


@pytest.mark.parametrize("text", SOFTMAX)
@pytest.mark.parametrize("causal", [True, False])
def test_softmax_variants_are_exact_for_their_pattern(text, causal):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 257, 16, dtype=torch.float64) for _ in range(3))
    var = parse_variant(text)
    out = var.attend(q, k, v, causal=causal)
    spec = var.pattern(257, causal)
    ref = attnkit.attention(q, k, v, mask=spec, backend="reference")
    assert float((out - ref).abs().max()) < 1e-12
    spec = spec.at(257) if hasattr(spec, "at") else spec          # a sparse pattern's mask
    dense = spec.dense(257, 257) if spec is not None else torch.ones(1, 1, 257, 257, dtype=bool)
    assert var.pairs(257, causal) == int(dense.sum())


@pytest.mark.parametrize("text", ["linear:elu", "linear:relu", "linear:favor:32"])
def test_linear_variants_run_causal_and_not(text):
    q, k, v = (torch.randn(2, 4, 100, 16) for _ in range(3))
    var = parse_variant(text)
    for causal in (True, False):
        out = var.attend(q, k, v, causal=causal)
        assert out.shape == (2, 4, 100, 16) and torch.isfinite(out).all()
    assert var.pairs(100, True) is None and var.kind == "linear"


@pytest.mark.parametrize("text, words", [
    ("nope", ["unknown name", "'nope'", "dense"]),
    ("window", ["takes 1", "got 0"]),
    ("window:x", ["expected an integer", "'x'"]),
    ("window:0", [">= 1", "got 0"]),
    ("dilated:3", ["takes 2"]),
    ("linear", ["elu|relu|favor", "nothing"]),
    ("linear:tanh", ["elu|relu|favor", "tanh"]),
    ("dense:3", ["takes 0"]),
    ("", ["expected a name"]),
])
def test_bad_variants_name_the_problem(text, words):
    with pytest.raises(ValueError) as e:
        parse_variant(text)
    for w in words:
        assert w in str(e.value)


def test_variant_lists():
    assert [v.text for v in parse_variants("dense, window:8 ,linear:elu")] == \
        ["dense", "window:8", "linear:elu"]
    with pytest.raises(ValueError, match="given twice"):
        parse_variants("dense,dense")
    with pytest.raises(ValueError, match="comma-separated"):
        parse_variants(" , ")
    with pytest.raises(ValueError, match="is a model"):
        parse_variant("ssm").attend(*(torch.randn(1, 1, 4, 8) for _ in range(3)), causal=True)


def test_sizes_lengths_and_exponent_fit():
    assert parse_seqs("1k,4K,512,1k") == [512, 1024, 4096]
    assert parse_size("8GB") == 8 * 2**30 and parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5g") == int(1.5 * 2**30) and parse_size("100") == 100
    for bad in ("1x", "0", "-3", "k"):
        with pytest.raises(ValueError, match="--seq"):
            parse_seqs(bad)
    with pytest.raises(ValueError, match="--memory-budget"):
        parse_size("lots")
    ns = [1024, 2048, 4096, 8192]
    assert abs(fit_exponent(ns, [[3e-9 * n ** 2] for n in ns])["exponent"] - 2.0) < 1e-9
    assert abs(fit_exponent(ns, [[5e-6 * n] * 2 for n in ns])["exponent"] - 1.0) < 1e-9
    assert fit_exponent([1024], [[1.0, 2.0]]) is None


def _result(rows):
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r.get("rel_error"))
    return {"rows": rows, "variants": {k: {"exponent": None, "rel_error": max(
        (e for e in v if e is not None), default=None)} for k, v in by.items()}}


def test_recommendation_follows_error_and_memory():
    rows = [dict(variant="dense", n=4096, median_s=1.0, peak_bytes=10 * 2**20, rel_error=0.0,
                 speedup_vs_dense=1.0),
            dict(variant="window:256", n=4096, median_s=0.1, peak_bytes=5 * 2**20, rel_error=0.5,
                 speedup_vs_dense=10.0),
            dict(variant="bigbird", n=4096, median_s=0.3, peak_bytes=30 * 2**20, rel_error=0.01,
                 speedup_vs_dense=3.3)]
    best, why = recommend(_result(rows), error_bound=0.05)
    assert best == "bigbird" and "window:256 (error 5.0e-01 > 0.05)" in why
    best, why = recommend(_result(rows), error_bound=0.05, memory_budget=20 * 2**20)
    assert best == "dense" and "bigbird (memory" in why
    best, _ = recommend(_result(rows), error_bound=1.0)
    assert best == "window:256"


def test_gqa_pools_key_value_heads_exactly():
    """gqa:N: query head h reads the mean of its group's K/V heads, against the fp64
    reference with the groups written out by hand; learned variants say so."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 10, 8, generator=g, dtype=torch.float64) for _ in range(3))
    var = parse_variant("gqa:2")
    assert var.kind == "gqa" and var.learned and var.pairs(10, False) == 100
    kk = torch.stack([k[:, :2].mean(1), k[:, 2:].mean(1)], 1).repeat_interleave(2, 1)
    vv = torch.stack([v[:, :2].mean(1), v[:, 2:].mean(1)], 1).repeat_interleave(2, 1)
    want = attnkit.attention(q, kk, vv, mask=attnkit.masks.causal(), backend="reference")
    assert torch.allclose(var.attend(q, k, v, causal=True), want, atol=1e-10)
    with pytest.raises(ValueError, match="which 3 groups do not divide"):
        parse_variant("gqa:3").attend(q, k, v, causal=False)
    hh = parse_variant("linear:hedgehog")
    assert hh.learned and not parse_variant("linear:elu").learned
    with pytest.raises(ValueError, match="fit them with `attnkit adapt`"):
        hh.feature_map(8)
