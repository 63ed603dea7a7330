"""Mask specs against direct definitions; block maps against dense masks; ALiBi slopes.

The direct definitions are plain loops over (b, i, j) written from the documented
semantics, independent of the specs' vectorised code: query i sits at position
p = i + Tk - Tq (aligned to the end).
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import alibi_slopes, masks as M
from attnkit.call.bias import alibi
from attnkit.masks import EMPTY, FULL, PARTIAL
from conftest import CASES

SETTINGS = dict(deadline=None, derandomize=True, database=None, max_examples=80)
SIZES = st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40))  # B, Tq, Tk


def direct(pred, B, Tq, Tk):
    out = np.zeros((B, Tq, Tk), dtype=bool)
    for b in range(B):
        for i in range(Tq):
            p = i + Tk - Tq
            for j in range(Tk):
                out[b, i, j] = pred(b, i, p, j)
    return torch.from_numpy(out)


def dense(spec, B, Tq, Tk):
    return spec.dense(Tq, Tk).expand(B, 1, Tq, Tk)[:, 0]


@settings(**SETTINGS)
@given(SIZES, st.integers(0, 9), st.integers(0, 9))
def test_window(size, left, right):
    B, Tq, Tk = size
    got = dense(M.window(left, right), B, Tq, Tk)
    assert torch.equal(got, direct(lambda b, i, p, j: p - left <= j <= p + right, B, Tq, Tk))
    CASES["mask specs"] += 1


@settings(**SETTINGS)
@given(SIZES)
def test_causal_is_aligned_to_the_end(size):
    B, Tq, Tk = size
    got = dense(M.causal(), B, Tq, Tk)
    assert torch.equal(got, direct(lambda b, i, p, j: j <= p, B, Tq, Tk))
    if Tq <= Tk:
        assert got[:, -1].all()  # the last query sees every key
    CASES["mask specs"] += 1


@settings(**SETTINGS)
@given(SIZES, st.integers(1, 7))
def test_periodic(size, s):
    B, Tq, Tk = size
    got = dense(M.periodic(s), B, Tq, Tk)
    assert torch.equal(got, direct(lambda b, i, p, j: (p - j) % s == 0, B, Tq, Tk))
    CASES["mask specs"] += 1


@settings(**SETTINGS)
@given(SIZES, st.integers(0, 6), st.integers(1, 4), st.booleans())
def test_dilated(size, w, d, causal):
    B, Tq, Tk = size
    allowed = {t * d for t in range(w + 1)}
    pred = (lambda b, i, p, j: (p - j) in allowed) if causal else \
        (lambda b, i, p, j: abs(p - j) in allowed)
    assert torch.equal(dense(M.dilated(w, d, causal=causal), B, Tq, Tk), direct(pred, B, Tq, Tk))
    CASES["mask specs"] += 1


@settings(**SETTINGS)
@given(SIZES, st.data())
def test_global_tokens(size, data):
    B, Tq, Tk = size
    idx = data.draw(st.lists(st.integers(0, Tk - 1), min_size=0, max_size=4))
    g = set(idx)
    got = dense(M.global_tokens(idx), B, Tq, Tk)
    assert torch.equal(got, direct(lambda b, i, p, j: p in g or j in g, B, Tq, Tk))
    CASES["mask specs"] += 1


@settings(**SETTINGS)
@given(SIZES, st.data())
def test_padding(size, data):
    B, Tq, Tk = size
    kv = data.draw(st.lists(st.integers(0, Tk), min_size=B, max_size=B))
    ql = data.draw(st.one_of(st.none(), st.lists(st.integers(0, Tq), min_size=B, max_size=B)))
    got = dense(M.padding(kv, q_lengths=ql), B, Tq, Tk)
    want = direct(lambda b, i, p, j: j < kv[b] and (ql is None or i < ql[b]), B, Tq, Tk)
    assert torch.equal(got, want)
    CASES["mask specs"] += 1


@settings(**SETTINGS)
@given(SIZES, st.data())
def test_document(size, data):
    B, Tq, Tk = size
    Tq = min(Tq, Tk)  # queries take their ids from the last Tq keys
    ids = [sorted(data.draw(st.lists(st.integers(0, 3), min_size=Tk, max_size=Tk)))
           for _ in range(B)]
    got = dense(M.document(torch.tensor(ids)), B, Tq, Tk)
    assert torch.equal(got, direct(lambda b, i, p, j: ids[b][p] == ids[b][j], B, Tq, Tk))
    CASES["mask specs"] += 1


@settings(**SETTINGS)
@given(SIZES, st.data())
def test_from_tensor_bool_and_additive(size, data):
    B, Tq, Tk = size
    t = torch.rand(B, Tq, Tk) < 0.5
    assert torch.equal(dense(M.from_tensor(t[:, None]), B, Tq, Tk), t)   # (B, 1, Tq, Tk)
    add = torch.where(t, torch.randn(B, Tq, Tk), float("-inf"))[:, None]
    spec, parts = M.split_additive(M.from_tensor(add) & M.causal())
    assert torch.equal(dense(spec, B, Tq, Tk), t & direct(lambda b, i, p, j: j <= p, B, Tq, Tk))
    assert len(parts) == 1 and torch.equal(parts[0][:, 0], torch.where(t, add[:, 0], 0.0))


def leaf(data, B, Tq, Tk):
    kind = data.draw(st.sampled_from(["causal", "window", "strided", "global", "padding", "dilated"]))
    if kind == "causal":
        return M.causal()
    if kind == "window":
        return M.window(data.draw(st.integers(0, 6)), data.draw(st.integers(0, 6)))
    if kind == "strided":
        return M.periodic(data.draw(st.integers(1, 5)))
    if kind == "dilated":
        return M.dilated(data.draw(st.integers(0, 4)), data.draw(st.integers(1, 3)))
    if kind == "global":
        return M.global_tokens(data.draw(st.lists(st.integers(0, Tk - 1), max_size=2)))
    return M.padding(data.draw(st.lists(st.integers(0, Tk), min_size=B, max_size=B)))


@settings(**SETTINGS)
@given(SIZES, st.data())
def test_composition_is_the_logical_op(size, data):
    B, Tq, Tk = size
    a, c = leaf(data, B, Tq, Tk), leaf(data, B, Tq, Tk)
    da, dc = dense(a, B, Tq, Tk), dense(c, B, Tq, Tk)
    assert torch.equal(dense(a & c, B, Tq, Tk), da & dc)
    assert torch.equal(dense(a | c, B, Tq, Tk), da | dc)
    assert torch.equal(dense(~a, B, Tq, Tk), ~da)
    assert torch.equal(dense(~(a & c) | a, B, Tq, Tk), ~(da & dc) | da)
    CASES["mask specs"] += 1


def check_block_map(spec, Tq, Tk, bq, bk, exact=False):
    full = spec.dense(Tq, Tk)                                   # (Bm, Hm, Tq, Tk)
    bm = spec.block_map(Tq, Tk, bq, bk)
    assert bm.shape == (math.ceil(Tq / bq), math.ceil(Tk / bk))
    for i in range(bm.shape[0]):
        for j in range(bm.shape[1]):
            tile = full[..., i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            if bm[i, j] == FULL:
                assert tile.all(), (i, j)
            elif bm[i, j] == EMPTY:
                assert not tile.any(), (i, j)
            elif exact:  # analytic specs: PARTIAL means really mixed
                assert tile.any() and not tile.all(), (i, j)


@settings(**SETTINGS)
@given(SIZES, st.integers(1, 12), st.integers(1, 12), st.data())
def test_block_maps_against_dense(size, bq, bk, data):
    B, Tq, Tk = size
    a = leaf(data, B, Tq, Tk)
    spec = data.draw(st.sampled_from([a, a & leaf(data, B, Tq, Tk), a | leaf(data, B, Tq, Tk), ~a]))
    check_block_map(spec, Tq, Tk, bq, bk)
    CASES["block maps"] += 1


@settings(**SETTINGS)
@given(SIZES, st.integers(1, 12), st.integers(1, 12), st.integers(0, 9), st.integers(0, 9))
def test_block_maps_of_causal_and_window_are_exact(size, bq, bk, left, right):
    _, Tq, Tk = size
    check_block_map(M.causal(), Tq, Tk, bq, bk, exact=True)
    check_block_map(M.window(left, right), Tq, Tk, bq, bk, exact=True)
    CASES["block maps"] += 1


def test_block_map_fallback_for_tensor_masks():
    t = torch.rand(1, 1, 50, 70) < 0.02
    t[..., :10, :] = True
    check_block_map(M.from_tensor(t), 50, 70, 8, 16)
    bm = M.from_tensor(t).block_map(50, 70, 8, 16)
    assert (bm[0] == FULL).all() and (bm == PARTIAL).any()


@settings(**SETTINGS)
@given(SIZES, st.data())
def test_mask_mod_equals_dense(size, data):
    B, Tq, Tk = size
    spec = leaf(data, B, Tq, Tk) & leaf(data, B, Tq, Tk)
    mod = spec.mask_mod(Tq, Tk)
    b = torch.arange(B).view(-1, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long)
    q = torch.arange(Tq).view(1, 1, -1, 1)
    k = torch.arange(Tk).view(1, 1, 1, -1)
    got = mod(b, h, q, k).expand(B, 1, Tq, Tk)
    assert torch.equal(got, spec.dense(Tq, Tk).expand(B, 1, Tq, Tk))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_alibi_slopes_power_of_two(n):
    want = torch.tensor([2.0 ** (-8.0 * (i + 1) / n) for i in range(n)], dtype=torch.float64)
    assert torch.allclose(alibi_slopes(n), want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n", [3, 6, 12, 20])
def test_alibi_slopes_other_counts(n):
    """The paper: slopes of the closest lower power of two p, then every other slope of 2p."""
    p = 2 ** int(math.floor(math.log2(n)))
    first = [2.0 ** (-8.0 * (i + 1) / p) for i in range(p)]
    second = [2.0 ** (-8.0 * (i + 1) / (2 * p)) for i in range(2 * p)][0::2][: n - p]
    assert torch.allclose(alibi_slopes(n), torch.tensor(first + second, dtype=torch.float64))
    assert alibi_slopes(12)[8] == 2.0 ** -0.5  # a value from the paper's reference code


def test_alibi_bias_values():
    b = alibi(2).dense(3, 5)                                   # (1, 2, 3, 5), aligned to the end
    m = alibi_slopes(2)
    for h in range(2):
        for i in range(3):
            for j in range(5):
                assert float(b[0, h, i, j]) == pytest.approx(-float(m[h]) * abs(i + 2 - j))
