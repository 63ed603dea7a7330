"""Ring attention (attnkit.distributed): sharding, global masks, the ring on 2 and 4
gloo processes against single-process attention, rank failures."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit.models import GPT
from attnkit import masks
from attnkit.backends.tiled import TileConfig
from attnkit.distributed import (ShiftedMask, local_positions, padded_length, positions, ring,
                                 ring_attention, ring_context, ring_work, shard, unshard)

sys.path.insert(0, str(Path(__file__).parent))
import ring_worker  # noqa: E402

WORKER = Path(__file__).with_name("ring_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(mode: str, world: int, d: Path, deadline_s: float, wait_for=None):
    """Start one process per rank, wait (up to ``deadline_s``) for the ranks in ``wait_for``
    (default all), kill any left; return [(returncode, exit_time, stderr)] per rank."""
    wait_for = range(world) if wait_for is None else wait_for
    port, env = _free_port(), dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(WORKER), mode, str(r), str(world), str(port),
                               str(d)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(d / f"err{r}.txt", "w")) for r in range(world)]
    ends = [None] * world
    t_end = time.time() + deadline_s
    try:
        while time.time() < t_end and any(ends[r] is None for r in wait_for):
            for r, p in enumerate(procs):
                if ends[r] is None and p.poll() is not None:
                    ends[r] = time.time()
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, e, (d / f"err{r}.txt").read_text())
            for r, (p, e) in enumerate(zip(procs, ends))]


# ---------------------------------------------------------------------------
# the cases run on the ring
# ---------------------------------------------------------------------------
def _cases(world: int) -> list[dict]:
    Tn = {2: 37, 4: 50}[world]          # not divisible by world (nor 2 * world)
    base = dict(B=1, H=4, Hkv=2, D=8, T=Tn, causal=False, layout="zigzag",
                dtype=torch.float32)
    specs = [
        dict(name="full_zigzag_gqa", T=48),
        dict(name="causal_zigzag_gqa", causal=True),
        dict(name="causal_contiguous", causal=True, layout="contiguous", H=2),
        dict(name="full_contiguous_mqa", layout="contiguous", Hkv=1),
        dict(name="causal_padding_mask", causal=True, B=2, mask="padding"),
        dict(name="padding_q_rows", layout="contiguous", B=2, mask="padding_q"),
        dict(name="window_contiguous", layout="contiguous", mask="window", w=5),
        dict(name="window_both_zigzag", mask="window2", w=4),
        dict(name="document_causal", causal=True, B=2, mask="document"),
        dict(name="softcap_causal", causal=True, softcap=5.0),
        dict(name="default_tiles_causal", causal=True, small=False, T=300),
        dict(name="fp64_causal_gqa", causal=True, dtype=torch.float64, H=6, Hkv=3),
    ]
    g = torch.Generator().manual_seed(world)
    cases = []
    for sp in specs:
        c = dict(base, **sp)
        B, H, Hkv, T, D, dt = c["B"], c["H"], c["Hkv"], c["T"], c["D"], c["dtype"]
        c["q"] = torch.randn(B, H, T, D, generator=g).to(dt)
        c["k"] = torch.randn(B, Hkv, T, D, generator=g).to(dt)
        c["v"] = torch.randn(B, Hkv, T, D, generator=g).to(dt)
        c["dout"] = torch.randn(B, H, T, D, generator=g).to(dt)
        cases.append(c)
    return cases


def _spec(c):
    m = ring_worker.make_mask(c)
    return masks.causal() & m if c["causal"] and m is not None else (
        masks.causal() if c["causal"] else m)


def _reference(c):
    """Single-process attention on the full sequence, in float64."""
    q, k, v = (c[n].double().requires_grad_() for n in ("q", "k", "v"))
    out = attnkit.attention(q, k, v, mask=_spec(c), softcap=c.get("softcap"),
                            backend="reference")
    out.backward(c["dout"].double())
    return dict(out=out.detach(), dq=q.grad, dk=k.grad, dv=v.grad)


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"P{w}")
def ring_run(request, tmp_path_factory):
    world = request.param
    d = tmp_path_factory.mktemp(f"ring{world}")
    cases = _cases(world)
    lay = "zigzag" if world == 2 else "contiguous"
    g = torch.Generator().manual_seed(7)
    model = dict(idx=torch.randint(0, 11, (2, 23), generator=g), layout=lay,
                 w=torch.randn(2, 23, 11, generator=g, dtype=torch.float64))
    torch.save(dict(cases=cases, model=model), d / "inputs.pt")
    res = _launch("cases", world, d, deadline_s=90)
    for r, (rc, _, err) in enumerate(res):
        assert rc == 0, f"rank {r} failed:\n{err[-3000:]}"
    ranks = [torch.load(d / f"rank{r}.pt") for r in range(world)]
    return world, {c["name"]: c for c in cases}, model, ranks


CASE_NAMES = [c["name"] for c in _cases(2)]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_ring_matches_single_process(ring_run, name):
    world, cases, _, ranks = ring_run
    c = cases[name]
    ref = _reference(c)
    tol = dict(rtol=1e-10, atol=1e-12) if c["dtype"] == torch.float64 else \
        dict(rtol=1e-5, atol=1e-6)
    for key in ("out", "dq", "dk", "dv"):
        got = unshard([rk[name][key] for rk in ranks], c["layout"], length=c["T"])
        assert got.dtype == c["dtype"]
        torch.testing.assert_close(got, ref[key].to(c["dtype"]), **tol,
                                   msg=lambda m: f"{name} {key} P={world}: {m}")


def test_ring_on_subgroups(ring_run):
    """With 4 processes: rings on the subgroups {0, 1} and {2, 3} (group= argument)."""
    world, cases, _, ranks = ring_run
    if world != 4:
        pytest.skip("subgroups are run with 4 processes")
    c = cases["causal_zigzag_gqa"]
    ref = _reference(c)
    for pair in ([0, 1], [2, 3]):
        for key in ("out", "dq", "dk", "dv"):
            got = unshard([ranks[r]["subgroup"][key] for r in pair], "zigzag", length=c["T"])
            torch.testing.assert_close(got, ref[key].float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["causal_contiguous", "window_contiguous",
                                  "causal_zigzag_gqa", "full_zigzag_gqa"])
def test_invisible_steps_are_not_computed(ring_run, name):
    """Kernel calls per rank == the plan's pairs, and causal/window plans skip pairs."""
    world, cases, _, ranks = ring_run
    c = cases[name]
    spec = _spec(c)
    nseg = 2 if c["layout"] == "zigzag" else 1
    work = ring.ring_work(c["T"], world, c["layout"], mask=spec, cfg=ring_worker.SMALL)
    for r in range(world):
        assert ranks[r][name]["calls"] == work[r]["calls"]
        if name == "full_zigzag_gqa":
            assert work[r]["calls"] == world * nseg * nseg
    calls = [rk[name]["calls"] for rk in ranks]
    if name == "causal_contiguous":
        assert calls == list(range(1, world + 1))        # rank r sees shards 0..r
    if name == "window_contiguous":                      # window 5 < shard: own + previous
        assert calls == [1] + [2] * (world - 1)


def test_model_context_parallel(ring_run):
    world, _, m, ranks = ring_run
    torch.manual_seed(0)
    model = ring_worker.TinyLM().double()
    logits = model(m["idx"])
    (logits * m["w"]).sum().backward()
    for r, rk in enumerate(ranks):
        got = rk["model"]
        torch.testing.assert_close(got["logits"], logits.detach(), rtol=1e-10, atol=1e-12)
        for n, p in model.named_parameters():
            torch.testing.assert_close(got["grads"][n], p.grad, rtol=1e-10, atol=1e-12,
                                       msg=lambda s: f"rank {r} grad {n}: {s}")
        assert got["backend_after"] == "reference"  # the wrapper restores the setting


@pytest.mark.parametrize("name", ["gpt_learned", "gpt_rope_gqa"])
def test_gpt_context_parallel_equals_single_process(ring_run, name):
    """attnkit's GPT under context_parallel (ring backend, positions of each shard)
    gives the single-process logits, whatever the layout and world size."""
    world, _, m, ranks = ring_run
    torch.manual_seed(0)
    gpt = GPT(ring_worker.gpt_configs()[name]).double()
    ref = gpt(m["idx"]).detach()
    for r, rk in enumerate(ranks):
        torch.testing.assert_close(rk[name]["logits"], ref, rtol=1e-10, atol=1e-12,
                                   msg=lambda s: f"rank {r}: {s}")


# ---------------------------------------------------------------------------
# rank failures
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["kill", "hang"])
def test_rank_failure_makes_the_others_exit(mode, tmp_path):
    res = _launch(mode, 3, tmp_path, deadline_s=60, wait_for=(0, 2))
    died = float((tmp_path / "died").read_text())
    for r in (0, 2):
        rc, end, err = res[r]
        assert end is not None, f"rank {r} still running 60 s after start ({mode})"
        assert rc != 0, f"rank {r} exited 0 after rank 1 failed ({mode})"
        assert "ring_attention: rank" in err, err[-2000:]
        assert end - died < ring_worker.TIMEOUT_S + 5, (mode, end - died)
        if mode == "hang":  # nothing breaks: only the process group's timeout ends the wait
            assert "timed out" in err.lower(), err[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_nccl_world1(tmp_path):
    (rc, _, err), = _launch("cuda", 1, tmp_path, deadline_s=120)
    assert rc == 0, err[-3000:]


# ---------------------------------------------------------------------------
# in-process: sharding, shifted masks, work plans, world=1, errors
# ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 40), world=st.integers(1, 5), layout=st.sampled_from(["zigzag",
       "contiguous"]), dim=st.sampled_from([0, 1, -1]))
def test_shard_unshard_roundtrip(T, world, layout, dim):
    shape = [3, 2, 2]
    shape[dim] = T
    x = torch.randn(shape)
    parts = [shard(x, r, world, layout, dim=dim) for r in range(world)]
    tp = padded_length(T, world, layout)
    assert all(p.shape[dim] == tp // world for p in parts)
    torch.testing.assert_close(unshard(parts, layout, length=T, dim=dim), x, rtol=0, atol=0)
    pos = torch.arange(T).float()
    for r in range(world):  # positions() says where each local entry came from
        p = positions(r, world, T, layout)
        got = shard(pos, r, world, layout, dim=0)
        torch.testing.assert_close(got[p < T], p[p < T].float())
        assert (got[p >= T] == 0).all()        # padding is zeros


def test_zigzag_layout_is_chunk_r_and_mirror():
    x = torch.arange(16)
    assert shard(x, 0, 4, "zigzag", dim=0).tolist() == [0, 1, 14, 15]
    assert shard(x, 1, 4, "zigzag", dim=0).tolist() == [2, 3, 12, 13]
    assert shard(x, 1, 4, "contiguous", dim=0).tolist() == [4, 5, 6, 7]


_MASKS = {
    "none": lambda T: None, "causal": lambda T: masks.causal(),
    "window": lambda T: masks.window(3, 2),
    "padding": lambda T: masks.padding(torch.tensor([T - 1, max(1, T // 3)])),
    "document": lambda T: masks.document(torch.arange(T) // 5),
    "tensor": lambda T: masks.from_tensor(torch.rand(T, T, generator=torch.Generator()
                                                     .manual_seed(T)) > 0.5),
}


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(_MASKS)), T=st.integers(8, 30), qs=st.integers(0, 30),
       ks=st.integers(0, 30), nq=st.integers(1, 12), nk=st.integers(1, 12))
def test_shifted_mask_is_the_global_mask(kind, T, qs, ks, nq, nk):
    inner = _MASKS[kind](T)
    m = ShiftedMask(inner, qs, ks, T)
    dense = m.dense(nq, nk)                                   # (Bm, Hm, nq, nk)
    g = inner.dense(T, T) if inner is not None else torch.ones(1, 1, T, T, dtype=torch.bool)
    glob = torch.zeros(*g.shape[:2], T + 60, T + 60, dtype=torch.bool)  # padding: False
    glob[:, :, :T, :T] = g
    want = glob[:, :, qs:qs + nq, ks:ks + nk]
    assert torch.equal(dense.expand_as(want), want)
    bm = m.block_map(nq, nk, 4, 3)      # analytic classes agree with the dense tiles
    for i in range(bm.shape[0]):
        for j in range(bm.shape[1]):
            t = dense[..., 4 * i:4 * i + 4, 3 * j:3 * j + 3]
            if bm[i, j] == masks.FULL:
                assert t.all()
            elif bm[i, j] == masks.EMPTY:
                assert not t.any()


def test_ring_work_zigzag_balances_causal():
    T, world = 1024, 4
    cfg = TileConfig(block_q=32, block_k=32)
    zz = ring_work(T, world, "zigzag", causal=True, cfg=cfg)
    ct = ring_work(T, world, "contiguous", causal=True, cfg=cfg)
    for w in (zz, ct):  # independent count: causal attends T(T+1)/2 pairs in all
        assert sum(r["pairs"] for r in w) == T * (T + 1) // 2
    zp, cp = [r["pairs"] for r in zz], [r["pairs"] for r in ct]
    assert max(zp) == min(zp)
    c = T // world  # contiguous: rank r attends r full blocks and one triangle
    assert cp == [r * c * c + c * (c + 1) // 2 for r in range(world)]
    assert max(r["tiles"] for r in ct) / min(r["tiles"] for r in ct) > 5
    assert max(r["tiles"] for r in zz) == min(r["tiles"] for r in zz)
    # a window shorter than a shard: only the own and previous shard are visited
    wz = ring_work(T, world, "contiguous", mask=masks.window(100), cfg=cfg)
    assert [r["steps"] for r in wz] == [1, 2, 2, 2]


@pytest.fixture(scope="module")
def single_group():
    """A one-process gloo group in this process (destroyed after the module)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0,
                            world_size=1, timeout=timedelta(seconds=30))
    yield
    dist.destroy_process_group()


def test_no_process_group_errors():
    if dist.is_initialized():
        pytest.skip("a process group is active")
    q = torch.randn(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="not initialised"):
        ring_attention(q, q, q)
    with pytest.raises(attnkit.UnsupportedCall, match="not initialised"):
        attnkit.attention(q, q, q, backend="ring")


@pytest.mark.parametrize("causal,mask,T", [(True, None, 21), (False, "padding", 16),
                                           (True, "window", 19)])
def test_world1_and_ring_backend_match_reference(single_group, causal, mask, T):
    g = torch.Generator().manual_seed(T)
    q = torch.randn(2, 4, T, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, T, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2, T, 8, generator=g, dtype=torch.float64, requires_grad=True)
    spec = {None: None, "padding": masks.padding(torch.tensor([T, 5])),
            "window": masks.window(4)}[mask]
    full = masks.causal() & spec if causal and spec is not None else (
        masks.causal() if causal else spec)
    ref = attnkit.attention(q, k, v, mask=full, backend="reference")
    gref = torch.autograd.grad(ref.sum(), (q, k, v))
    ql, kl, vl = (shard(t, 0, 1) for t in (q, k, v))          # padded to even length
    out = ring_attention(ql, kl, vl, causal=causal, mask=spec, length=T,
                         cfg=TileConfig(4, 4, 8))[:, :, :T]
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out.sum(), (q, k, v)), gref):
        torch.testing.assert_close(a, b)
    assert local_positions(T) is None                 # outside a ring context
    with ring_context(length=T, layout="zigzag"):     # global positions of the local shard
        assert local_positions().tolist() == list(range(T + T % 2))
    if mask != "padding":  # the registered backend (masks global; here world = 1)
        with ring_context(layout="contiguous"):
            out2 = attnkit.attention(q, k, v, mask=full, backend="ring")
        torch.testing.assert_close(out2, ref)


def test_ring_attention_errors(single_group):
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="length"):
        ring_attention(q, q, q, length=9)        # more than T_local * world
    with pytest.raises(ValueError, match="length"):
        ring_attention(q, q, q, length=0)
    with pytest.raises(ValueError, match="layout"):
        ring_attention(q, q, q, layout="striped")
    with pytest.raises(ValueError, match="even T_local"):
        ring_attention(q[:, :, :7], q[:, :, :7], q[:, :, :7])
    with pytest.raises(ValueError, match="same local length"):
        ring_attention(q, q[:, :, :4], q[:, :, :4])
    with pytest.raises(TypeError, match="additive"):
        ring_attention(q, q, q, mask=torch.zeros(8, 8))
    with pytest.raises(TypeError, match="causal"):
        ring_attention(q, q, q, causal=1)
    with pytest.raises(TypeError, match="group"):
        ring_attention(q, q, q, group="world")
    with pytest.raises(ValueError, match="kv_lengths"):
        ring_attention(q, q, q, mask=masks.padding(torch.tensor([9])))
    with pytest.raises(ValueError, match="k: expected a number of heads"):
        ring_attention(q, torch.randn(1, 3, 8, 4), torch.randn(1, 3, 8, 4))
    with pytest.raises(attnkit.UnsupportedCall, match="dropout"):
        attnkit.attention(q, q, q, dropout_p=0.1, backend="ring")


def test_sharding_errors():
    x = torch.randn(2, 2, 8, 4)
    with pytest.raises(ValueError, match="layout"):
        shard(x, 0, 2, "striped")
    with pytest.raises(ValueError, match="rank"):
        shard(x, 2, 2)
    with pytest.raises(ValueError, match="world"):
        shard(x, 0, 0)
    with pytest.raises(ValueError, match="dim"):
        shard(x, 0, 2, dim=4)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        shard([1, 2], 0, 2)
    with pytest.raises(ValueError, match="equal shapes"):
        unshard([x, x[:, :, :4]])
    with pytest.raises(ValueError, match="length"):
        unshard([x, x], length=3)                # 3 pads to 4, not 16
    with pytest.raises(TypeError, match="parts"):
        unshard([])
    with pytest.raises(ValueError, match="length"):
        padded_length(0, 2)
    assert padded_length(37, 2, "zigzag") == 40 and padded_length(37, 2, "contiguous") == 38
    assert len(positions(1, 4, 50)) == 14
