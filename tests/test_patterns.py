"""Named sparse patterns: masks vs direct definitions, exact pair counts, disjoint
components, and sparse_attention (forward + gradients) vs the fp64 reference."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks, sparse as P
from attnkit.backends.tiled import TileConfig
from attnkit.kernels.pieces import PiecesFunction
from attnkit.masks import EMPTY, FULL
from attnkit.sparse import OffsetPiece as _OffsetPiece, TiledPiece as _TiledPiece

SET = settings(deadline=None, max_examples=40)


# ---------------------------------------------------------------------------
# direct definitions (numpy, one pair at a time in vectorised form)
# ---------------------------------------------------------------------------
def grid(n):
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return i, j, i - j


def direct(kind, n, **a):
    i, j, d = grid(n)
    if kind == "local":
        return (d >= 0) & (d <= a["w"]) if a["causal"] else np.abs(d) <= a["w"]
    if kind == "strided":
        s = a["s"]
        return (d >= 0) & ((d < s) | (d % s == 0))
    if kind == "fixed":
        s, c = a["s"], a["c"]
        return (j <= i) & ((i // s == j // s) | (j % s >= s - c))
    if kind == "dilated":
        dd = d if a["causal"] else np.abs(d)
        return (dd >= 0) & (dd % a["dil"] == 0) & (dd <= a["w"] * a["dil"])
    if kind == "longformer":
        g = np.zeros(n, bool)
        g[a["globals"]] = True
        m = (np.abs(d) <= a["w"]) | g[i] | g[j]
        return m & (d >= 0) if a["causal"] else m
    if kind == "log":
        return (d == 0) | ((d > 0) & ((d & (d - 1)) == 0))
    raise AssertionError(kind)


def build(kind, **a):
    return {"local": lambda: P.window(a["w"], 0 if a["causal"] else a["w"]),
            "strided": lambda: P.strided(a["s"]),
            "fixed": lambda: P.fixed(a["s"], a["c"]),
            "dilated": lambda: P.dilated(a["w"], a["dil"], causal=a["causal"]),
            "longformer": lambda: P.longformer(a["w"], a["globals"], causal=a["causal"]),
            "log": lambda: P.log_sparse()}[kind]()


@st.composite
def pattern_case(draw, max_n=200):
    n = draw(st.integers(1, max_n))
    kind = draw(st.sampled_from(["local", "strided", "fixed", "dilated", "longformer", "log"]))
    a = dict(w=draw(st.integers(0, 40)), causal=draw(st.booleans()),
             s=draw(st.integers(1, 30)), dil=draw(st.integers(1, 6)))
    a["c"] = draw(st.integers(1, a["s"]))
    a["globals"] = sorted(set(draw(st.lists(st.integers(0, n - 1), max_size=4))))
    return kind, n, a


def dense(p, n):
    return p.at(n).dense(n, n)[0, 0].numpy()


@SET
@given(pattern_case())
def test_dense_mask_matches_definition_and_pairs(case):
    kind, n, a = case
    p = build(kind, **a)
    m = dense(p, n)
    np.testing.assert_array_equal(m, direct(kind, n, **a))
    assert p.pairs(n) == int(m.sum())
    assert p.density(n) == pytest.approx(m.sum() / n**2)


def bigbird_direct(p, n):
    """Window blocks | global rows/cols | the drawn random blocks, at token level."""
    b, nb = p.block, math.ceil(n / p.block)
    qb, kb = np.meshgrid(np.arange(n) // b, np.arange(n) // b, indexing="ij")
    causal = np.tril(np.ones((n, n), bool)) if p.causal else np.ones((n, n), bool)
    window = (np.abs(qb - kb) <= p.window_blocks) & causal
    glob = ((qb < p.global_blocks) | (kb < p.global_blocks)) & causal
    R = p.random_blocks(n).numpy()
    rand_blocks = np.zeros((nb, nb), bool)
    for row in range(nb):
        for c in R[row]:
            if c >= 0:
                rand_blocks[row, c] = True
    return window, glob, rand_blocks[qb, kb] & causal


@SET
@given(n=st.integers(1, 300), block=st.integers(1, 24), wb=st.integers(0, 2),
       g=st.integers(0, 2), r=st.integers(0, 3), seed=st.integers(0, 5), causal=st.booleans())
def test_bigbird_three_parts(n, block, wb, g, r, seed, causal):
    p = P.bigbird(block, wb, g, r, seed, causal=causal)
    if g * block > n:
        with pytest.raises(ValueError, match="global"):
            p.pairs(n)
        return
    window, glob, rand = bigbird_direct(p, n)
    m = dense(p, n)
    np.testing.assert_array_equal(m, window | glob | rand)
    every = np.tril(np.ones((n, n), bool)) if causal else np.ones((n, n), bool)
    G = g * block                                                  # global rows and columns
    assert (m[:G] == every[:G]).all() and (m[:, :G] == every[:, :G]).all()
    # random blocks: distinct, new (not window/global; causal: earlier), as many as
    # the candidates allow
    nb = math.ceil(n / block)
    R = p.random_blocks(n)
    for i in range(g, nb):
        cand = {j for j in range(nb) if abs(i - j) > wb and j >= g and (j < i or not causal)}
        got = [int(c) for c in R[i] if c >= 0]
        assert len(set(got)) == len(got) == min(r, len(cand)) and set(got) <= cand
    assert p.pairs(n) == int(m.sum())
    np.testing.assert_array_equal(P.bigbird(block, wb, g, r, seed, causal=causal)
                                  .random_blocks(n), R)


def test_bigbird_seed_changes_random_blocks():
    a, b = P.bigbird(8, 1, 1, 3, seed=0), P.bigbird(8, 1, 1, 3, seed=1)
    assert not torch.equal(a.random_blocks(512), b.random_blocks(512))
    assert torch.equal(a.random_blocks(512), P.bigbird(8, 1, 1, 3, seed=0).random_blocks(512))


def test_pair_counts_scale_as_advertised():
    n = 1 << 14
    s = math.isqrt(n)
    assert P.strided(s).pairs(n) == pytest.approx(n * s + n * n / (2 * s), rel=0.01)
    assert P.log_sparse().pairs(n) == sum(n - d for d in [0] + [2**j for j in range(14)])
    assert P.window(255).pairs(n) == pytest.approx(256 * n, rel=0.01)
    assert P.bigbird(64, 1, 1, 2).pairs(n) <= (3 + 2 * 1 + 2) * 64 * n  # window, global, random


# ---------------------------------------------------------------------------
# components: disjoint, union = pattern, block maps sound
# ---------------------------------------------------------------------------
def component_masks(p, n):
    for c in p.components(n):
        m = np.zeros((n, n), bool)
        if isinstance(c, _OffsetPiece):
            for d in c.offsets:
                if d < n:
                    m[np.arange(d, n), np.arange(0, n - d)] = True
            yield c, m
            continue
        qi = np.arange(n) if c.q_index is None else c.q_index.numpy()
        ki = np.arange(n) if c.k_index is None else c.k_index.numpy()
        if len(qi) and len(ki):
            local = c.spec.dense(len(qi), len(ki))[0, 0].numpy()
            m[np.ix_(qi, ki)] = local
        yield c, m


def check_block_map(spec, Tq, Tk, bq, bk):
    bm = spec.block_map(Tq, Tk, bq, bk)
    d = spec.dense(Tq, Tk)[0, 0]
    for i in range(bm.shape[0]):
        for j in range(bm.shape[1]):
            t = d[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            if bm[i, j] == EMPTY:
                assert not t.any(), (spec, i, j)
            elif bm[i, j] == FULL:
                assert t.all(), (spec, i, j)


@SET
@given(pattern_case(max_n=120), st.integers(1, 20), st.integers(1, 20))
def test_components_partition_the_pattern(case, bq, bk):
    kind, n, a = case
    p = build(kind, **a)
    total = np.zeros((n, n), int)
    for c, m in component_masks(p, n):
        total += m
        if isinstance(c, _TiledPiece) and not c.empty:
            Tq = n if c.q_index is None else len(c.q_index)
            Tk = n if c.k_index is None else len(c.k_index)
            check_block_map(c.spec, Tq, Tk, bq, bk)
    assert total.max() <= 1                                        # disjoint
    np.testing.assert_array_equal(total.astype(bool), direct(kind, n, **a))
    check_block_map(p.at(n), n, n, bq, bk)                         # natural-order map


# ---------------------------------------------------------------------------
# execution: forward and gradients vs the fp64 reference with the dense mask
# ---------------------------------------------------------------------------
def rel(a, b):
    """Relative error; the floor covers exact-zero references (e.g. dq when n == 1)."""
    a, b = a.detach().double(), b.detach()
    return float((a - b).norm() / max(float(b.norm()), 0.1 * math.sqrt(b.numel())))


def run_both(p, n, H, Hkv, D, cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, H, n, D, generator=g)
    k = torch.randn(2, Hkv, n, D, generator=g)
    v = torch.randn(2, Hkv, n, D + 1, generator=g)
    w = torch.randn(2, H, n, D + 1, generator=g)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attnkit.sparse_attention(*x, p, cfg=cfg)
    grads = torch.autograd.grad((out * w).sum(), x)
    y = [t.double().requires_grad_() for t in (q, k, v)]
    mask = p.at(n).dense(n, n)
    ref = attnkit.attention(*y, mask=mask, backend="reference")
    rgrads = torch.autograd.grad((ref * w.double()).sum(), y)
    assert out.dtype == torch.float32
    assert rel(out, ref) < 1e-5
    for a, b in zip(grads, rgrads):
        assert rel(a, b) < 1e-5


@settings(deadline=None, max_examples=60)
@given(pattern_case(max_n=160), st.sampled_from([(8, 8), (16, 8), (32, 16), (128, 64)]),
       st.sampled_from([(2, 2), (4, 2), (2, 1)]))
def test_sparse_attention_matches_reference(case, tiles, heads):
    kind, n, a = case
    cfg = TileConfig(tiles[0], tiles[1], max(tiles[1], 32))
    run_both(build(kind, **a), n, heads[0], heads[1], 8, cfg)


@settings(deadline=None, max_examples=10)
@given(n=st.integers(16, 160), block=st.sampled_from([4, 8, 16]), r=st.integers(0, 3),
       seed=st.integers(0, 3), causal=st.booleans())
def test_bigbird_execution_matches_reference(n, block, r, seed, causal):
    run_both(P.bigbird(block, 1, 1, r, seed, causal=causal), n, 4, 2, 8, None)


@pytest.mark.parametrize("rows", [1, 3, 16])
def test_offset_piece_row_blocks(rows):
    """Log-sparse runs its diagonals over blocks of query rows; small blocks agree too."""
    n = 45
    piece = _OffsetPiece(P.log_sparse().offsets(n), rows=rows)
    x = [torch.randn(1, h, n, 8, dtype=torch.float64, requires_grad=True) for h in (4, 2, 2)]
    out = PiecesFunction.apply(*x, [piece], attnkit.make_call(*x, scale=8 ** -0.5), None)
    ref = attnkit.attention(*x, mask=P.log_sparse().at(n).dense(n, n), backend="reference")
    w = torch.randn_like(out)
    for a, b in zip([out, *torch.autograd.grad((out * w).sum(), x)],
                    [ref, *torch.autograd.grad((ref * w).sum(), x)]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_patterns_are_plain_masks_for_attention():
    n = 70
    q, k, v = torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
    for p in (P.strided(8), P.log_sparse(), P.bigbird(8, 1, 1, 2)):
        ref = attnkit.attention(q, k, v, mask=p, backend="reference")
        assert rel(attnkit.attention(q, k, v, mask=p, backend="tiled"), ref.double()) < 1e-5
        assert rel(attnkit.sparse_attention(q, k, v, p), ref.double()) < 1e-5
    # bigbird composes through .at(n); decoding (Tq < Tk) aligns to the end
    pad = masks.padding(torch.tensor([50]))
    m = P.bigbird(8, 1, 1, 2).at(n) & pad
    want = P.bigbird(8, 1, 1, 2).at(n).dense(n, n) & pad.dense(n, n)
    assert torch.equal(m.dense(n, n), want)
    # a pattern fixed for n serves every prefix (cached decoding: query t, keys 0..t)
    fixed = P.bigbird(8, 1, 1, 2, causal=True).at(n)
    full = attnkit.attention(q, k, v, mask=fixed, backend="reference")
    for t in (0, 9, 33, n - 1):
        step = attnkit.attention(q[:, :, t:t + 1], k[:, :, :t + 1], v[:, :, :t + 1],
                                 mask=fixed, backend="tiled")
        assert rel(step, full[:, :, t:t + 1].double()) < 1e-5, t
    assert torch.equal(fixed.dense(40, 40), fixed.dense(n, n)[..., :40, :40])
    with pytest.raises(ValueError, match=r"built for n=70 positions.*got Tk=71"):
        attnkit.attention(q, torch.randn(1, 2, n + 1, 8), torch.randn(1, 2, n + 1, 8),
                          mask=fixed)
    out = attnkit.attention(q[:, :, -5:], k, v, mask=P.strided(8), backend="tiled")
    full = attnkit.attention(q, k, v, mask=P.strided(8), backend="reference")
    assert rel(out, full[:, :, -5:].double()) < 1e-5


# ---------------------------------------------------------------------------
# bad parameters
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, match", [
    (lambda: P.window(-1), ValueError, "left"),
    (lambda: P.window(2.5), TypeError, "left"),
    (lambda: P.strided(0), ValueError, "stride"),
    (lambda: P.fixed(4, summary=5), ValueError, "summary"),
    (lambda: P.fixed(0), ValueError, "stride"),
    (lambda: P.dilated(3, 0), ValueError, "dilation"),
    (lambda: P.longformer(-2), ValueError, "window"),
    (lambda: P.longformer(2, globals=[-1]), ValueError, "globals"),
    (lambda: P.bigbird(block=0), ValueError, "block"),
    (lambda: P.bigbird(random_blocks=-1), ValueError, "random_blocks"),
    (lambda: P.window(3).pairs(0), ValueError, "n"),
])
def test_bad_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_too_many_globals_and_wrong_calls():
    q = torch.randn(1, 1, 5, 4)
    with pytest.raises(ValueError, match="globals"):
        attnkit.sparse_attention(q, q, q, P.longformer(1, globals=10))
    with pytest.raises(ValueError, match="globals"):
        P.longformer(1, globals=6).pairs(5)
    with pytest.raises(ValueError, match="global"):
        attnkit.sparse_attention(q, q, q, P.bigbird(block=4, global_blocks=2))
    with pytest.raises(ValueError, match="Tq == Tk"):
        attnkit.sparse_attention(q[:, :, :3], q, q, P.window(2))
    with pytest.raises(TypeError, match="pattern"):
        attnkit.sparse_attention(q, q, q, "local")
    with pytest.raises(TypeError, match="at\\(n\\)"):
        (P.bigbird(4) & masks.causal()).dense(8, 8)


# ---------------------------------------------------------------------------
# attention(mask=pattern): the one fast path (auto -> tiled -> the pattern's pieces)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, n_pieces", [
    (lambda: P.strided(8), 2), (lambda: P.fixed(8, 2), 2), (lambda: P.dilated(4, 3), 1),
    (lambda: P.dilated(4, 3, causal=False), 1), (lambda: P.log_sparse(), 1)])
def test_attention_runs_a_pattern_at_its_pair_cost(make, n_pieces):
    from attnkit.kernels.pieces import layout
    p, n = make(), 96
    g = torch.Generator().manual_seed(3)
    q, k, v, w = (torch.randn(1, 2, n, 8, generator=g) for _ in range(4))
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    call = attnkit.make_call(*x, mask=p)
    name, reason = attnkit.select_backend(call)
    assert name == "tiled" and "pair cost" in reason, reason
    pieces = layout(call)                       # not the natural order: permuted or diagonal
    assert len(pieces) == n_pieces and not all(c.natural for c in pieces)
    out = attnkit.attention(*x, mask=p)
    y = [t.double().requires_grad_() for t in (q, k, v)]
    ref = attnkit.attention(*y, mask=p.at(n).dense(n, n), backend="reference")
    assert rel(out, ref) < 1e-5
    for a, b in zip(torch.autograd.grad((out * w).sum(), x),
                    torch.autograd.grad((ref * w.double()).sum(), y)):
        assert rel(a, b) < 1e-5


def test_a_pattern_with_bias_softcap_or_decoding_stays_exact():
    """Pieces serve self-attention without a bias (softcap too, on tiled pieces); ALiBi
    and decoding (Tq < Tk) need the natural positions: tiled runs the same mask there."""
    from attnkit.kernels.pieces import layout
    p, n = P.strided(5), 40
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 4, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    cases = [dict(bias=attnkit.alibi(4)), dict(softcap=2.0), dict(q=q[:, :, -3:])]
    for kw in cases:
        qq = kw.pop("q", q)
        served = layout(attnkit.make_call(qq, k, v, mask=p, **kw))
        assert (served is not None) == ("softcap" in kw)
        out = attnkit.attention(qq, k, v, mask=p, backend="tiled", **kw)
        ref = attnkit.attention(qq, k, v, mask=p, backend="reference", **kw)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-11)


def test_one_window_and_one_dilated():
    """One function and one type each: the mask spec is the pattern."""
    assert P.window is masks.window and P.dilated is masks.dilated
    n = 30
    for p, kind, a in [(P.window(4), "local", dict(w=4, causal=True)),
                       (P.window(3, 3), "local", dict(w=3, causal=False)),
                       (P.dilated(3, 2, causal=False), "dilated", dict(w=3, dil=2, causal=False))]:
        assert isinstance(p, masks.MaskSpec) and isinstance(p, masks.Pattern)
        m = p.dense(n, n)[0, 0].numpy()
        np.testing.assert_array_equal(m, direct(kind, n, **a))
        assert p.pairs(n) == int(m.sum())


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_drawn_for_n_counts_its_prefixes(causal):
    """at(n) is a pattern too: its pairs at m <= n count the prefix it serves (decoding)."""
    d = P.bigbird(8, 1, 1, 2, seed=1, causal=causal).at(100)
    for m in (100, 57, 8, 1):
        assert d.pairs(m) == int(d.dense(m, m).sum())
    with pytest.raises(ValueError, match="at most 100 tokens"):
        d.pairs(101)
