"""attention() under PyTorch's tools, each against torch itself:

* torch.compile: no mask and causal() compile with fullgraph=True (inductor, forward and
  backward, equal to eager) and produce no graph break; use_backends still applies inside
  a compiled function; the auto rule's band density needs no tensor (equals the block map);
* torch.autocast: every backend casts as SDPA does (values and output dtype vs
  F.scaled_dot_product_attention under autocast("cpu", bfloat16)); mixed dtypes outside
  autocast raise, as SDPA does;
* empty batch / heads / sequences: the shapes, values (Tk = 0: zeros) and gradients SDPA
  gives;
* double backward: reference and sdpa (math kernel) pass gradgradcheck; tiled, sparse
  patterns, ring and triton raise one clear RuntimeError -- also where torch's
  once_differentiable would have silently dropped the second-order term.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks as M
from attnkit.backends.tiled import band_density
from attnkit.masks import EMPTY

BF16_TOL = 2e-2  # max|x - ref| / max(max|ref|, 1), as test_triton.py uses for bf16


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel(x, ref) -> float:
    ref = ref.detach().double()
    return float((x.detach().double() - ref).abs().max() / ref.abs().max().clamp_min(1.0))


def qkv(B=2, H=4, Hkv=2, Tq=24, Tk=24, D=16, Dv=None, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(B, H, Tq, D, generator=g), torch.randn(B, Hkv, Tk, D, generator=g),
           torch.randn(B, Hkv, Tk, D if Dv is None else Dv, generator=g)]
    return [t.to(dtype).requires_grad_(grad) for t in out]


def causal_bool(Tq, Tk):
    return torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)   # end-aligned, as attnkit


# -- torch.compile ------------------------------------------------------------------------
COMPILED = {
    "dense": lambda q, k, v: attnkit.attention(q, k, v),
    "causal": lambda q, k, v: attnkit.attention(q, k, v, mask=M.causal()),
}


@pytest.mark.slow  # inductor compiles forward and backward: ~25 s for both on 2 cores
@pytest.mark.parametrize("name", list(COMPILED))
def test_compile_fullgraph_matches_eager(name):
    torch._dynamo.reset()
    fn = COMPILED[name]
    compiled = torch.compile(fn, fullgraph=True)  # raises on any graph break
    ins = qkv(grad=True)
    out = compiled(*ins)
    (gq, gk, gv) = torch.autograd.grad(out.square().sum(), ins)
    ref_ins = [t.detach().requires_grad_() for t in ins]
    ref = fn(*ref_ins)
    ref_g = torch.autograd.grad(ref.square().sum(), ref_ins)
    assert rel(out, ref) < 1e-5
    for a, b in zip((gq, gk, gv), ref_g):
        assert rel(a, b) < 1e-5


NO_BREAK = {"dense": dict(), "causal": dict(mask=M.causal()), "alibi": dict(bias=attnkit.alibi(4)),
            "causal-sdpa": dict(mask=M.causal(), backend="sdpa"),
            "causal-reference": dict(mask=M.causal(), backend="reference")}


@pytest.mark.parametrize("name, fullgraph", [("dense", False), ("causal", False)] +
                         [(n, True) for n in NO_BREAK])
def test_compile_no_graph_break(name, fullgraph, capfd):
    """Dynamo only (aot_eager: no code generation, seconds): no graph break counted and no
    graph-break warning printed (fullgraph=True: none raised), forward and backward, GQA,
    Tq == Tk then Tq != Tk (decoding; dynamo then retraces with dynamic shapes)."""
    kw = NO_BREAK[name]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    fn = torch.compile(lambda q, k, v: attnkit.attention(q, k, v, **kw), backend="aot_eager",
                       fullgraph=fullgraph)
    for Tq, Tk in ((24, 24), (5, 24)):
        ins = qkv(Tq=Tq, Tk=Tk, grad=True)
        out = fn(*ins)
        out.sum().backward()
        ref = attnkit.attention(*[t.detach() for t in ins], **kw)
        assert rel(out, ref) < 1e-5
    assert dict(torch._dynamo.utils.counters["graph_break"]) == {}
    err = capfd.readouterr().err
    assert "Graph break" not in err and "graph break" not in err, err


@pytest.mark.parametrize("backend", ["sdpa", "tiled"])
@pytest.mark.parametrize("mask", ["window", "padding"])
def test_compile_masked_paths_still_correct(backend, mask):
    """Masks that need host-side planning may graph-break (documented) but stay exact,
    forward and backward (tiled: its custom autograd Function inside a compiled function)."""
    torch._dynamo.reset()
    spec = M.causal() & M.window(5) if mask == "window" else M.padding([24, 13])
    fn = torch.compile(lambda q, k, v: attnkit.attention(q, k, v, mask=spec, backend=backend),
                       backend="aot_eager")
    ins = qkv(grad=True)
    out = fn(*ins)
    grads = torch.autograd.grad(out.square().sum(), ins)
    ref_ins = [t.detach().requires_grad_() for t in ins]
    ref = attnkit.attention(*ref_ins, mask=spec, backend="reference")
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_ins)
    assert rel(out, ref) < 1e-5
    for a, b in zip(grads, ref_grads):
        assert rel(a, b) < 1e-5


class _Probe(attnkit.Backend):
    name = "citizen-probe"
    description = "test backend: output 7"

    def forward(self, call):
        return call.q.new_full((call.B, call.H, call.Tq, call.Dv), 7.0)


def test_compile_respects_use_backends():
    """The thread-local policy is read at trace time: dynamo guards on it (recompiles)."""
    attnkit.register_backend(_Probe(), replace=True)
    try:
        torch._dynamo.reset()
        fn = torch.compile(lambda q, k, v: attnkit.attention(q, k, v, mask=M.causal()),
                           backend="eager", fullgraph=True)
        ins = qkv()
        ref = attnkit.attention(*ins, mask=M.causal())
        assert rel(fn(*ins), ref) < 1e-6
        with attnkit.use_backends("citizen-probe", override=True):
            assert bool((fn(*ins) == 7).all())
        assert rel(fn(*ins), ref) < 1e-6
    finally:
        attnkit.unregister_backend("citizen-probe")


BANDS = st.sampled_from(["causal", "window", "window2", "causal&window", "full"])


@settings(max_examples=300, deadline=None)
@given(kind=BANDS, Tq=st.integers(1, 90), Tk=st.integers(1, 90), bq=st.integers(1, 24),
       bk=st.integers(1, 24), left=st.integers(0, 40), right=st.integers(0, 40))
def test_band_density_equals_block_map(kind, Tq, Tk, bq, bk, left, right):
    spec = {"causal": M.causal(), "window": M.window(left), "window2": M.window(left, right),
            "causal&window": M.causal() & M.window(left, right), "full": M.full()}[kind]
    ref = float((spec.block_map(Tq, Tk, bq, bk) != EMPTY).double().mean())
    assert band_density(spec.band(), Tq, Tk, bq, bk) == pytest.approx(ref, abs=1e-12)


# -- torch.autocast -----------------------------------------------------------------------
def _backends():
    names = ["auto", "reference", "sdpa", "tiled"]
    try:
        from attnkit.kernels.triton import interpreter_unsupported
        if interpreter_unsupported() is None:
            names.append("triton")
    except ImportError:
        pass
    return names


@pytest.fixture
def interpreter(monkeypatch, request):
    if request.node.callspec.params.get("backend") == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        import attnkit.backends.triton  # noqa: F401  (registers it)


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("case", ["mixed", "fp32", "causal-decode", "alibi"])
def test_autocast_like_sdpa(backend, case, interpreter):
    """Under autocast("cpu", bf16): the output is bf16 like SDPA's and within bf16 tolerance
    of it and of the float64 reference on the bf16-cast inputs; gradients reach fp32
    inputs in fp32."""
    Tq = 7 if case == "causal-decode" else 20
    q, k, v = qkv(Tq=Tq, Tk=29, grad=True)
    if case == "mixed":   # q already bf16, k/v fp32: SDPA accepts it under autocast
        q = q.detach().bfloat16().requires_grad_()
    kw, sdpa_kw = {}, {}
    if case == "causal-decode":
        kw, sdpa_kw = dict(mask=M.causal()), dict(attn_mask=causal_bool(Tq, 29))
    if case == "alibi":
        kw = dict(bias=attnkit.alibi(4))
        sdpa_kw = dict(attn_mask=attnkit.alibi(4).dense(Tq, 29, device="cpu",
                                                        dtype=torch.float32)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_sdpa = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **sdpa_kw)
        out = attnkit.attention(q, k, v, backend=backend, **kw)
    assert out.dtype == ref_sdpa.dtype == torch.bfloat16 and out.shape == ref_sdpa.shape
    ref64 = attnkit.attention(*[t.detach().bfloat16().double() for t in (q, k, v)],
                              backend="reference", **kw)
    assert rel(out, ref64) < BF16_TOL
    assert rel(out, ref_sdpa) < 2 * BF16_TOL
    out.float().sum().backward()
    assert q.grad.dtype == q.dtype and k.grad.dtype == torch.float32
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_autocast_keeps_float64_like_sdpa():
    """autocast leaves float64 alone (SDPA returns float64): so does attnkit."""
    q, k, v = qkv(dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        out = attnkit.attention(q, k, v, backend="tiled")
    assert out.dtype == ref.dtype == torch.float64 and rel(out, ref) < 1e-12


def test_autocast_float16_on_cpu():
    q, k, v = qkv()
    with torch.autocast("cpu", dtype=torch.float16):
        ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        out = attnkit.attention(q, k, v, backend="tiled")
    assert out.dtype == ref.dtype == torch.float16 and rel(out, ref) < 4e-3


def test_mixed_dtypes_outside_autocast_raise_like_sdpa():
    q, k, v = qkv()
    with pytest.raises(RuntimeError, match="same dtype"):
        F.scaled_dot_product_attention(q.bfloat16(), k, v, enable_gqa=True)
    with pytest.raises(TypeError, match="q, k, v: expected one dtype, got q=torch.bfloat16"):
        attnkit.attention(q.bfloat16(), k, v)


# -- empty inputs -------------------------------------------------------------------------
EMPTY_SHAPES = {  # name: (B, H, Hkv, Tq, Tk, Dv)
    "batch0": (0, 4, 2, 5, 6, 8), "heads0": (2, 0, 0, 5, 6, 8), "q-heads0": (2, 0, 2, 5, 6, 8),
    "tq0": (2, 4, 2, 0, 6, 8), "tk0": (2, 4, 2, 5, 0, 8), "dv0": (2, 4, 2, 5, 6, 0),
    "all0": (0, 0, 0, 0, 0, 8),
}


@pytest.mark.parametrize("backend", ["auto", "reference", "sdpa", "tiled"])
@pytest.mark.parametrize("name", list(EMPTY_SHAPES))
@pytest.mark.parametrize("mask", [None, "causal"])
def test_empty_inputs_like_sdpa(name, backend, mask):
    B, H, Hkv, Tq, Tk, Dv = EMPTY_SHAPES[name]
    q, k, v = qkv(B, H, Hkv, Tq, Tk, 8, Dv, grad=True)
    spec = M.causal() if mask else None
    out = attnkit.attention(q, k, v, mask=spec, backend=backend)
    ins = [t.detach().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ins, enable_gqa=True, is_causal=False)
    assert out.shape == ref.shape == (B, H, Tq, Dv) and out.dtype == ref.dtype
    assert torch.equal(out, ref)            # Tk = 0: SDPA's zeros (attnkit's masked rows)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    ref.sum().backward()
    for a, b in zip((q, k, v), ins):
        assert a.grad.shape == a.shape and torch.equal(a.grad, b.grad)
    o2, w = attnkit.attention(q, k, v, mask=spec, backend=backend, return_weights=True)
    assert torch.equal(o2, out) and w.shape == (B, H, Tq, Tk)
    if name == "dv0":     # the weights exist: they are the reference's
        ref_w = attnkit.attention(q, k, torch.zeros(B, Hkv, Tk, 1), mask=spec,
                                  backend="reference", return_weights=True)[1]
        assert torch.allclose(w, ref_w)


def test_empty_errors_stay_clear():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q: expected a head dim D >= 1, got shape "
                                         r"\(2, 4, 24, 0\)"):
        attnkit.attention(q[..., :0], k[..., :0], v)
    with pytest.raises(ValueError, match="Hkv dividing H=4"):
        attnkit.attention(q, k[:, :0], v[:, :0])
    with pytest.raises(attnkit.UnsupportedCall, match="no logit softcap"):
        attnkit.attention(q[:0], k[:0], v[:0], backend="sdpa", softcap=5.0)
    from attnkit import sparse_attention
    from attnkit.sparse import strided
    with pytest.raises(ValueError, match="every dimension must be >= 1"):
        sparse_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], strided(4))


# -- double backward ----------------------------------------------------------------------
def _ins64(Tq=9, Tk=9, seed=0):
    return qkv(1, 2, 1, Tq, Tk, 4, dtype=torch.float64, seed=seed, grad=True)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("mask", [None, "causal", "window"])
def test_double_backward_supported(backend, mask):
    """gradgradcheck (numerical second derivatives, fp64). sdpa under torch's math kernel:
    the CPU flash kernel has no double backward (torch raises, never silently)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    spec = {None: None, "causal": M.causal(), "window": M.causal() & M.window(2)}[mask]
    fn = lambda q, k, v: attnkit.attention(q, k, v, mask=spec, backend=backend)  # noqa: E731
    with sdpa_kernel(SDPBackend.MATH):
        assert torch.autograd.gradgradcheck(fn, _ins64(7, 9))


def _second_backward(fn, ins, form):
    out = fn(*ins)
    loss = out.square().sum() if form == "square" else out.sum() + ins[0].square().sum()
    g = torch.autograd.grad(loss, ins[0], create_graph=True)[0]
    g.square().sum().backward()


def _tiled(q, k, v):
    return attnkit.attention(q, k, v, mask=M.causal(), backend="tiled")


def _pattern(name):
    from attnkit import sparse
    # strided: two tiled pieces; log_sparse: diagonals -- both run by SparseFunction
    return sparse.strided(4) if name == "sparse-strided" else sparse.log_sparse()


def _sparse(name):
    from attnkit import sparse_attention
    return lambda q, k, v: sparse_attention(q, k, v, _pattern(name))


def _triton(q, k, v):
    from attnkit.kernels.triton import interpreter_unsupported
    if interpreter_unsupported():
        pytest.skip(interpreter_unsupported())
    import attnkit.backends.triton  # noqa: F401
    return attnkit.attention(q.float(), k.float(), v.float(), mask=M.causal(), backend="triton")


def _ring(q, k, v):
    from attnkit.distributed import ring_attention
    return ring_attention(q, k, v, causal=True)


@pytest.fixture
def world_of_one():
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("form", ["square", "sum+q^2"])
@pytest.mark.parametrize("name, what", [("tiled", "the 'tiled' backend"),
                                        ("sparse-strided", "a sparse pattern's attention"),
                                        ("sparse-log", "a sparse pattern's attention"),
                                        ("triton", "the 'triton' backend"),
                                        ("ring", "ring attention")])
def test_double_backward_unsupported_raises_clearly(name, what, form, monkeypatch,
                                                    world_of_one):
    """One RuntimeError naming the function. 'sum+q^2': the incoming gradient is a constant,
    where torch's once_differentiable marks nothing and the second derivative of attention
    went missing silently (k.grad stayed None)."""
    if name == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    fn = _sparse(name) if name.startswith("sparse") else \
        {"tiled": _tiled, "triton": _triton, "ring": _ring}[name]
    with pytest.raises(RuntimeError) as e:
        _second_backward(fn, _ins64(16, 16), form)
    msg = str(e.value)
    assert "double backward" in msg and what in msg and "not supported" in msg, msg
    assert "backend='reference'" in msg


@pytest.mark.parametrize("name", ["tiled", "sparse-strided", "sparse-log", "ring"])
def test_first_order_gradients_unchanged_by_create_graph(name, world_of_one):
    """create_graph=True alone (no second backward) still gives the exact first-order
    gradients (those of the reference)."""
    fn = _sparse(name) if name.startswith("sparse") else {"tiled": _tiled, "ring": _ring}[name]
    ins = _ins64(16, 16)
    g1 = torch.autograd.grad(fn(*ins).square().sum(), ins, create_graph=True)
    mask = _pattern(name) if name.startswith("sparse") else M.causal()
    ref_ins = [t.detach().requires_grad_() for t in ins]
    ref = attnkit.attention(*ref_ins, mask=mask, backend="reference")
    g2 = torch.autograd.grad(ref.square().sum(), ref_ins)
    for a, b in zip(g1, g2):
        assert rel(a, b) < 1e-10
