"""``masks.from_mask_mod``: FlexAttention / Hugging Face style predicates as specs -- dense
masks equal the predicate (broadcast and scalar/vmap styles), block maps are sound, known
functions are read into structured specs, opaque ones are said to be evaluated densely."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks as M
from attnkit.masks import EMPTY, FULL


def loop_dense(fn, B, H, Tq, Tk):
    out = torch.zeros(B, H, Tq, Tk, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                for j in range(Tk):
                    out[b, h, i, j] = bool(fn(torch.tensor(b), torch.tensor(h), torch.tensor(i),
                                              torch.tensor(j)))
    return out


def sliding(w):
    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < w)
    return mask_mod


def scalar_style(b, h, q_idx, kv_idx):
    """Written for one (q, k) at a time: torch.where on 0-d tensors, as under vmap."""
    return torch.where(q_idx % 3 == 0, kv_idx <= q_idx, kv_idx == q_idx)


@settings(deadline=None, max_examples=30, derandomize=True)
@given(B=st.integers(1, 2), Tq=st.integers(1, 20), Tk=st.integers(1, 20), w=st.integers(1, 6),
       data=st.data())
def test_dense_equals_the_predicate(B, Tq, Tk, w, data):
    lengths = torch.tensor(data.draw(st.lists(st.integers(0, Tk), min_size=B, max_size=B)))
    keep = torch.arange(Tk)[None] < lengths[:, None]               # (B, Tk)

    def padded_window(b, h, q_idx, kv_idx):                        # reads a tensor by b
        return sliding(w)(b, h, q_idx, kv_idx) & keep[b, kv_idx]

    for fn, Bm in ((sliding(w), 1), (padded_window, B), (scalar_style, 1)):
        spec = M.from_mask_mod(fn, batch_size=None if Bm == 1 else Bm)
        want = loop_dense(fn, Bm, 1, Tq, Tk)
        assert torch.equal(spec.dense(Tq, Tk), want)
        bm = spec.block_map(Tq, Tk, 4, 3)
        for i in range(bm.shape[0]):
            for j in range(bm.shape[1]):
                tile = want[..., i * 4:(i + 1) * 4, j * 3:(j + 1) * 3]
                assert (bm[i, j] != FULL or tile.all()) and (bm[i, j] != EMPTY or not tile.any())


def test_attention_with_a_mask_mod_matches_the_dense_mask_and_says_so():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 50, 8, dtype=torch.float64) for _ in range(3))
    spec = M.from_mask_mod(sliding(7))
    dense = spec.dense(50, 50)
    for be in ("reference", "sdpa", "tiled"):
        out = attnkit.attention(q, k, v, mask=spec, backend=be)
        ref = attnkit.attention(q, k, v, mask=dense, backend="reference")
        torch.testing.assert_close(out, ref)
    name, why = attnkit.select_backend(attnkit.make_call(q, k, v, mask=spec))
    assert "opaque mask_mod" in why and "O(Tq*Tk)" in why
    assert "opaque" not in attnkit.select_backend(attnkit.make_call(q, k, v, mask=M.causal()))[1]
    composed = spec & M.padding([50, 20])                          # composes like any spec
    torch.testing.assert_close(attnkit.attention(q, k, v, mask=composed, backend="tiled"),
                               attnkit.attention(q, k, v, mask=composed.dense(50, 50)
                                                 .expand(2, 1, 50, 50), backend="reference"))


def test_registered_readers_turn_known_functions_into_structured_specs():
    def reader(fn, B, H):
        w = getattr(fn, "window", None)
        return None if w is None else M.causal() & M.window(w - 1)

    def known(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < 5)
    known.window = 5
    M.register_mask_mod_reader(reader)
    M.register_mask_mod_reader(reader)                             # idempotent
    try:
        spec = M.from_mask_mod(known)
        assert not spec.opaque and spec.distance_bounds() == (0, 4)
        assert torch.equal(spec.dense(30, 30), M.from_mask_mod(sliding(5)).dense(30, 30))
    finally:
        M.unregister_mask_mod_reader(reader)


@pytest.mark.parametrize("fn, kw, exc, words", [
    ("not callable", {}, TypeError, "callable"),
    (sliding(3), {"batch_size": 0}, ValueError, "batch_size"),
    (lambda b, h, q, k: q - k, {}, TypeError, "bool tensor"),
])
def test_bad_mask_mods(fn, kw, exc, words):
    with pytest.raises(exc, match=words):
        M.from_mask_mod(fn, **kw).dense(4, 4)


def test_a_batch_dependent_mask_mod_must_match_the_call():
    keep = torch.ones(3, 10, dtype=torch.bool)
    spec = M.from_mask_mod(lambda b, h, q, k: keep[b, k], batch_size=3)
    q = torch.randn(2, 1, 10, 4)
    with pytest.raises(ValueError, match="batch_size=3.*B=2"):
        attnkit.attention(q, q, q, mask=spec)
