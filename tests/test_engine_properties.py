"""Every fast path against the float64 reference (hypothesis), forward and gradients.

Error metric (normwise): max|x - ref| / max(max|ref|, 1), with ref computed in float64
from the same (already rounded) inputs. Inputs are standard normal, so outputs and
gradients are O(1): the error is relative, except for a quantity that vanishes exactly
(e.g. dq when a query sees one key), which is compared absolutely. Tolerances per dtype:
  fp32: 1e-5 forward, 2e-5 gradients (sums of up to 300 products rounded in fp32)
  bf16: 1e-2 forward, 2e-2 gradients (8-bit mantissa: one rounding is 2^-8 = 3.9e-3)
  fp16: 2e-3 forward, 4e-3 gradients (11-bit mantissa)
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import masks as M
from attnkit.backends.tiled import TileConfig, tiled_attention
from conftest import CASES

TOL = {torch.float32: (1e-5, 2e-5), torch.bfloat16: (1e-2, 2e-2), torch.float16: (2e-3, 4e-3)}
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LENGTHS = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 13, 31, 64, 97, 127, 128, 131, 257, 300]),
                    st.integers(1, 300))


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.detach().double() - ref.detach()).abs().max() / ref.abs().max().clamp_min(1.0))


@st.composite
def mask_specs(draw, B: int, Tq: int, Tk: int, depth: int = 0):
    """A random composition of mask specs valid for (B, Tq, Tk)."""
    leaves = ["causal", "window", "strided", "dilated", "global", "padding", "document", "bool"]
    kind = draw(st.sampled_from(leaves + (["and", "or", "not"] if depth < 2 else [])))
    if kind == "and":
        return draw(mask_specs(B, Tq, Tk, depth + 1)) & draw(mask_specs(B, Tq, Tk, depth + 1))
    if kind == "or":
        return draw(mask_specs(B, Tq, Tk, depth + 1)) | draw(mask_specs(B, Tq, Tk, depth + 1))
    if kind == "not":
        return ~draw(mask_specs(B, Tq, Tk, depth + 1))
    if kind == "causal":
        return M.causal()
    if kind == "window":
        return M.window(draw(st.integers(0, 40)), draw(st.integers(0, 40)))
    if kind == "strided":
        return M.periodic(draw(st.integers(1, 9)))
    if kind == "dilated":
        return M.dilated(draw(st.integers(0, 8)), draw(st.integers(1, 4)), causal=draw(st.booleans()))
    if kind == "global":
        return M.global_tokens(draw(st.lists(st.integers(0, Tk - 1), min_size=1, max_size=3)))
    if kind == "padding":
        kv = draw(st.lists(st.integers(0, Tk), min_size=B, max_size=B))
        ql = draw(st.one_of(st.none(), st.lists(st.integers(0, Tq), min_size=B, max_size=B)))
        return M.padding(kv, q_lengths=ql)
    if kind == "document":
        ndoc = draw(st.integers(1, 4))
        ids = torch.sort(torch.randint(0, ndoc, (B, Tk), generator=_gen(draw))).values
        return M.document(ids, torch.randint(0, ndoc, (B, Tq), generator=_gen(draw)))
    # torch's broadcasting: 3-D is (H, Tq, Tk); a per-batch mask is (B, 1, Tq, Tk)
    shape = draw(st.sampled_from([(Tq, Tk), (1, Tq, Tk), (B, 1, Tq, Tk)]))
    return M.from_tensor(torch.rand(shape, generator=_gen(draw)) < 0.7)


def _gen(draw) -> torch.Generator:
    return torch.Generator().manual_seed(draw(st.integers(0, 2**31)))


@st.composite
def problems(draw, max_t: int = 300, dims=(8, 16, 32, 64, 128)):
    B = draw(st.integers(1, 3))
    H = draw(st.integers(1, 8))
    Hkv = draw(st.sampled_from([d for d in range(1, H + 1) if H % d == 0]))
    Tq, Tk = draw(LENGTHS.filter(lambda t: t <= max_t)), draw(LENGTHS.filter(lambda t: t <= max_t))
    D = draw(st.sampled_from(dims))
    Dv = draw(st.sampled_from([D, D, dims[0]]))
    mask = draw(st.one_of(st.none(), mask_specs(B, Tq, Tk)))
    bias = draw(st.sampled_from(["none", "alibi", "tensor"]))
    softcap = draw(st.sampled_from([None, None, 5.0, 30.0]))
    return dict(B=B, H=H, Hkv=Hkv, Tq=Tq, Tk=Tk, D=D, Dv=Dv, mask=mask, bias=bias,
                softcap=softcap, seed=draw(st.integers(0, 2**31)))


def make_inputs(p, dtype, grad_bias=False):
    g = torch.Generator().manual_seed(p["seed"])
    q = torch.randn(p["B"], p["H"], p["Tq"], p["D"], generator=g)
    k = torch.randn(p["B"], p["Hkv"], p["Tk"], p["D"], generator=g)
    v = torch.randn(p["B"], p["Hkv"], p["Tk"], p["Dv"], generator=g)
    dout = torch.randn(p["B"], p["H"], p["Tq"], p["Dv"], generator=g)
    bias = None
    if p["bias"] == "alibi":
        bias = attnkit.alibi(p["H"])
    elif p["bias"] == "tensor":
        bias = torch.randn(1, p["H"], p["Tq"], p["Tk"], generator=g)
    lo = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    hi = [t.detach().double().requires_grad_() for t in lo]
    b_lo = b_hi = bias
    if isinstance(bias, torch.Tensor):
        b_lo = bias.to(dtype).requires_grad_(grad_bias)
        b_hi = b_lo.detach().double().requires_grad_(grad_bias)
    return lo, hi, b_lo, b_hi, dout


def check(p, run, dtype, *, grads=True, grad_bias=False, tag=""):
    """Run ``run(q, k, v, bias)`` in ``dtype`` and the reference in fp64; compare."""
    (q, k, v), (q64, k64, v64), b, b64, dout = make_inputs(p, dtype, grad_bias)
    kw = dict(mask=p["mask"], softcap=p["softcap"])
    ref = attnkit.attention(q64, k64, v64, bias=b64, backend="reference", **kw)
    out = run(q, k, v, b)
    tol_f, tol_g = TOL[dtype]
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert rel(out, ref) <= tol_f, f"forward {rel(out, ref):.2e} > {tol_f}"
    if grads:
        ins = [q, k, v] + ([b] if grad_bias else [])
        ins64 = [q64, k64, v64] + ([b64] if grad_bias else [])
        gs = torch.autograd.grad(out, ins, dout.to(dtype))
        rs = torch.autograd.grad(ref, ins64, dout.double())
        for name, g_, r_ in zip("qkvb", gs, rs):
            assert torch.isfinite(g_).all(), f"d{name} not finite"
            assert rel(g_, r_) <= tol_g, f"d{name} {rel(g_, r_):.2e} > {tol_g}"
    CASES[tag or "other"] += 1


@settings(max_examples=150, **SETTINGS)
@given(problems())
def test_tiled_fp32(p):
    check(p, lambda q, k, v, b: attnkit.attention(q, k, v, bias=b, mask=p["mask"],
                                                  softcap=p["softcap"], backend="tiled"),
          torch.float32, grad_bias=p["bias"] == "tensor", tag="tiled fp32")


@settings(max_examples=100, **SETTINGS)
@given(problems(), st.sampled_from([TileConfig(16, 8, 16), TileConfig(32, 16, 64),
                                    TileConfig(7, 5, 10), TileConfig(64, 32, 32)]))
def test_tiled_small_tiles_fp32(p, cfg):
    """Many tiles and chunks: online-softmax rescaling, empty/partial/full block paths."""
    def run(q, k, v, b):
        call = attnkit.make_call(q, k, v, mask=p["mask"], bias=b, softcap=p["softcap"])
        return tiled_attention(call, cfg)[0]
    check(p, run, torch.float32, grad_bias=p["bias"] == "tensor", tag="tiled small tiles")


@settings(max_examples=120, **SETTINGS)
@given(problems())
def test_sdpa_fp32(p):
    p = {**p, "softcap": None}  # SDPA has no softcap (tested in test_input_errors)
    check(p, lambda q, k, v, b: attnkit.attention(q, k, v, bias=b, mask=p["mask"],
                                                  backend="sdpa"), torch.float32, tag="sdpa fp32")


@settings(max_examples=60, **SETTINGS)
@given(problems())
def test_auto_and_reference_fp32(p):
    run = lambda q, k, v, b: attnkit.attention(q, k, v, bias=b, mask=p["mask"],  # noqa: E731
                                               softcap=p["softcap"])
    check(p, run, torch.float32, tag="auto fp32")
    run = lambda q, k, v, b: attnkit.attention(q, k, v, bias=b, mask=p["mask"],  # noqa: E731
                                               softcap=p["softcap"], backend="reference")
    check(p, run, torch.float32, tag="reference fp32")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ["tiled", "sdpa", "reference"])
@settings(max_examples=12, **SETTINGS)
@given(p=problems(max_t=64, dims=(8, 16, 32)))
def test_low_precision(dtype, backend, p):
    """bf16/fp16 inputs (fp32 accumulation inside); small shapes: no native bf16 here."""
    if backend == "sdpa":
        p = {**p, "softcap": None}
    run = lambda q, k, v, b: attnkit.attention(q, k, v, bias=b, mask=p["mask"],  # noqa: E731
                                               softcap=p["softcap"], backend=backend)
    check(p, run, dtype, tag=f"{backend} {str(dtype)[6:]}")


ALL_MASKED = [M.padding([0, 5]), ~M.full(), M.padding([7, 7], q_lengths=[3, 0]) & M.causal()]


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled", "auto"])
@pytest.mark.parametrize("mask", ALL_MASKED, ids=["kv-len-0", "nothing", "q-len"])
def test_fully_masked_rows_give_zero_output_and_zero_grads(backend, mask):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 9, 16, requires_grad=True)
    k = torch.randn(2, 2, 7, 16, requires_grad=True)
    v = torch.randn(2, 2, 7, 16, requires_grad=True)
    out = attnkit.attention(q, k, v, mask=mask, backend=backend)
    dense = mask.dense(9, 7).expand(2, 4, 9, 7)
    empty = ~dense.any(-1)                                     # (B, H, Tq) rows with no key
    assert empty.any()
    assert torch.isfinite(out).all() and (out[empty] == 0).all()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all()
    assert (dq[empty] == 0).all()
    if not dense.any():
        assert (dk == 0).all() and (dv == 0).all()


@pytest.mark.parametrize("backend", ["tiled", "sdpa", "reference"])
def test_gqa_equals_mha_with_repeated_kv(backend):
    torch.manual_seed(1)
    q = torch.randn(2, 8, 50, 32, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 60, 32, dtype=torch.float64) for _ in range(2))
    spec = M.causal() & M.window(9)
    gqa = attnkit.attention(q, k, v, mask=spec, backend=backend)
    mha = attnkit.attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), mask=spec,
                            backend="reference")
    assert rel(gqa, mha) < 1e-12
