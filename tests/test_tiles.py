"""The tiled kernel's machinery, independent of timing: the plan (against a brute-force
walk of the block map), the worker threads (same numbers as inline, caller's thread count
and autograd modes kept, errors re-raised), the block-map cache (in-place changes seen)
and the per-call tile sizes."""
from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks as M
from attnkit.call import make_call
from attnkit.kernels import tiles as T
from attnkit.kernels.tiled import tiled_attention, tiled_forward
from attnkit.kernels.tiles import TileConfig, config_for, plan, run_parallel


def brute_plan(bm, cfg, Tk):
    """The plan by walking every block (the pre-runs algorithm)."""
    bk, nk = cfg.block_k, bm.shape[1]
    per = max(1, cfg.max_chunk // bk)
    out = []
    for row in bm.tolist():
        chunks, j = [], 0
        while j < nk:
            if row[j] == M.EMPTY:
                j += 1
                continue
            s = j
            while j < nk and row[j] != M.EMPTY and j - s < per:
                j += 1
            part, p = [], s
            while p < j:
                if row[p] == M.PARTIAL:
                    a = p
                    while p < j and row[p] == M.PARTIAL:
                        p += 1
                    part.append((a * bk, min(Tk, p * bk)))
                else:
                    p += 1
            chunks.append((s * bk, min(Tk, j * bk), tuple(part)))
        out.append(chunks)
    return out


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 200), st.integers(1, 200), st.sampled_from([4, 8, 16]),
       st.sampled_from([4, 8, 16]), st.sampled_from([1, 2, 3, 8]), st.integers(0, 2**31),
       st.sampled_from(["random", "window", "causal", "none"]))
def test_plan_matches_a_brute_force_walk(Tq, Tk, bq, bk, per, seed, kind):
    g = torch.Generator().manual_seed(seed)
    mask = {"random": lambda: M.from_tensor(torch.rand(Tq, Tk, generator=g) < 0.3),
            "window": lambda: M.window(int(torch.randint(0, 30, (1,), generator=g)), 3),
            "causal": M.causal, "none": lambda: None}[kind]()
    q = torch.zeros(1, 1, Tq, 4)
    k = torch.zeros(1, 1, Tk, 4)
    call = make_call(q, k, k, mask=mask)
    cfg = TileConfig(bq, bk, bk * per)
    bm = call.block_map(bq, bk)
    if bm is None:
        bm = torch.full(((Tq + bq - 1) // bq, (Tk + bk - 1) // bk), M.FULL, dtype=torch.int8)
    got = [[(c.k0, c.k1, c.partial) for c in row] for row in plan(call, cfg)]
    assert got == brute_plan(bm, cfg, Tk)


@pytest.fixture
def two_workers(monkeypatch):
    """Every call parallel, on 2 worker threads."""
    monkeypatch.setattr(T, "MIN_PARALLEL_FLOPS", 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


CASES = [dict(mask=M.causal() & M.window(37)), dict(mask=M.causal(), softcap=5.0),
         dict(mask=M.window(20, 5) | M.global_tokens([3]), bias=attnkit.alibi(4)),
         dict(mask=M.padding([250, 0], q_lengths=[100, 300]))]


@pytest.mark.parametrize("kw", CASES)
def test_workers_give_the_inline_numbers_and_the_reference(two_workers, kw, monkeypatch):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 300, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 2, 300, 16, generator=g, requires_grad=True) for _ in range(2))
    dout = torch.randn(2, 4, 300, 16, generator=g)
    cfg = TileConfig(32, 16, 64)
    par = tiled_attention(make_call(q, k, v, **kw), cfg)[0]
    gpar = torch.autograd.grad(par, (q, k, v), dout)
    monkeypatch.setattr(T, "MIN_PARALLEL_FLOPS", float("inf"))
    inl = tiled_attention(make_call(q, k, v, **kw), cfg)[0]
    ginl = torch.autograd.grad(inl, (q, k, v), dout)
    assert torch.equal(par, inl)                     # one worker computes each tile, alike
    for a, b in zip(gpar, ginl):                     # dk/dv: the workers' sums, re-ordered
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attnkit.attention(qd, kd, vd, backend="reference", **kw)
    torch.testing.assert_close(par.double(), ref, rtol=0, atol=1e-5)
    for a, r in zip(gpar, torch.autograd.grad(ref, (qd, kd, vd), dout.double())):
        torch.testing.assert_close(a.double(), r, rtol=0, atol=2e-5)


def test_dropout_is_reproducible_across_workers(two_workers, monkeypatch):
    q, k, v = (torch.randn(1, 2, 200, 8) for _ in range(3))
    torch.manual_seed(3)
    par = tiled_forward(make_call(q, k, v, mask=M.causal(), dropout_p=0.3), TileConfig(16, 8, 32))
    monkeypatch.setattr(T, "MIN_PARALLEL_FLOPS", float("inf"))
    torch.manual_seed(3)
    inl = tiled_forward(make_call(q, k, v, mask=M.causal(), dropout_p=0.3), TileConfig(16, 8, 32))
    assert torch.equal(par[0], inl[0]) and torch.equal(par[1], inl[1])


def test_caller_keeps_its_thread_count_and_modes(two_workers):
    seen = []

    def job():
        seen.append((torch.get_num_threads(), torch.is_grad_enabled(),
                     torch.is_inference_mode_enabled(), threading.current_thread().name))
    with torch.inference_mode():
        run_parallel([job, job])
        q = torch.randn(1, 2, 100, 8)
        tiled_forward(make_call(q, q, q, mask=M.causal()), TileConfig(16, 16, 32))  # writes
    with torch.no_grad():
        run_parallel([job, job])
    assert torch.get_num_threads() == 2
    assert {s[:3] for s in seen[:2]} == {(1, False, True)}
    assert {s[:3] for s in seen[2:]} == {(1, False, False)}
    assert all(s[3].startswith("attnkit-tiles") for s in seen)


def test_worker_errors_reach_the_caller(two_workers):
    def bad():
        raise KeyError("from a worker")
    with pytest.raises(KeyError, match="from a worker"):
        run_parallel([bad, lambda: None])
    run_parallel([lambda: None, lambda: None])  # the pool still works


def test_block_map_cache_sees_in_place_changes():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 100, 8, generator=g) for _ in range(3))
    keep = torch.rand(100, 100, generator=g) < 0.5       # > 4096 elements: id + version
    spec = M.from_tensor(keep)
    cfg = TileConfig(16, 16, 32)
    for _ in range(2):
        keep[:50] = ~keep[:50]                           # in place, between calls
        out = tiled_forward(make_call(q, k, v, mask=spec), cfg)[0]
        ref = attnkit.attention(q.double(), k.double(), v.double(), mask=spec,
                                backend="reference")
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    lengths = torch.tensor([90])                         # an opaque mask_mod: never cached
    opaque = M.from_mask_mod(lambda b, h, qi, ki: ki < lengths[b])
    for n in (90, 10):
        lengths[0] = n
        out = tiled_forward(make_call(q, k, v, mask=opaque), cfg)[0]
        ref = attnkit.attention(q.double(), k.double(), v.double(), mask=M.padding([n]),
                                backend="reference")
        torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)


def test_tile_sizes_per_call():
    q = torch.zeros(1, 1, 64, 8)
    call = lambda m: make_call(q, q, q, mask=m)  # noqa: E731
    assert config_for(call(M.causal() & M.window(256))).block_q == T.BAND_BLOCK_Q
    q2k = torch.zeros(1, 1, 2048, 8)   # (a band wider than the call is no mask at all)
    assert config_for(make_call(q2k, q2k, q2k, mask=M.window(512, 512))).block_q == \
        T.BAND_BLOCK_Q
    assert call(M.window(512, 512)).mask is None
    assert config_for(call(M.causal() & M.window(2000))) == TileConfig()
    assert config_for(call(M.causal())) == TileConfig() == config_for(call(None))


class _Counted(M.MaskSpec):
    """A spec that counts what planning asks it (tile classes, distance bounds)."""

    def __init__(self, inner, counts):
        self.inner, self._counts = inner, counts

    def allowed(self, b, h, q, k, offset):
        return self.inner.allowed(b, h, q, k, offset)

    def tile_classes(self, q0, q1, k0, k1, offset):
        self._counts["tile_classes"] += 1
        return self.inner.tile_classes(q0, q1, k0, k1, offset)

    def distance_bounds(self):
        self._counts["distance_bounds"] += 1
        return self.inner.distance_bounds()


def test_auto_plans_once_per_call():
    """What auto works out to choose (tile sizes from distance bounds, the block map) is
    what the tiled backend then runs on: asked once per call, not again in the kernel."""
    from collections import Counter
    counts = Counter()
    n = 1337                                 # a size no other test uses: a cache miss
    spec = _Counted(M.causal() & (M.window(20) | M.global_tokens([0])), counts)
    q, k, v = (torch.randn(1, 2, n, 8) for _ in range(3))
    call = make_call(q, k, v, mask=spec)
    assert attnkit.select_backend(call)[0] == "tiled"
    attnkit.backends.get_backend("tiled").forward(call)
    assert counts == {"tile_classes": 1, "distance_bounds": 1}
    out = attnkit.attention(q, k, v, mask=spec)  # a new call: the block map from the cache
    assert counts["tile_classes"] == 1 and counts["distance_bounds"] == 2
    ref = attnkit.attention(q.double(), k.double(), v.double(), mask=spec, backend="reference")
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
