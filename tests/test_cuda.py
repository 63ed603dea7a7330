"""Every backend on a CUDA device against the float64 reference (skipped without a GPU).

Run on a GPU machine with ``pytest tests/test_cuda.py``. Tolerances are relative to
max |reference| (normwise), as in the CPU property tests.
"""
import pytest
import torch

import attnkit
from attnkit import masks as M
from attnkit.backends.tiled import TileConfig, tiled_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}
# fp32 on CUDA: SDPA and matmuls may use TF32 unless disabled; we disable it below.

MASKS = {
    "none": lambda T: None,
    "causal": lambda T: M.causal(),
    "window": lambda T: M.causal() & M.window(37),
    "padding": lambda T: M.padding([T, T // 2]) & M.causal(),
    "global|strided": lambda T: M.global_tokens([0, 3]) | (M.periodic(5) & M.causal()),
}


def _rel(a, b):
    return float((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-6))


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("backend", ["sdpa", "tiled", "flex"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (4, 1)])
def test_cuda_backend_matches_reference(backend, mask, dtype, heads):
    torch.manual_seed(0)
    H, Hkv = heads
    B, Tq, Tk, D = 2, 200, 200, 64
    q = torch.randn(B, H, Tq, D, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, Tk, D, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, Tk, D, device="cuda", dtype=dtype, requires_grad=True)
    spec = MASKS[mask](Tk)
    if backend == "flex" and mask == "window":  # refused: wrong on CUDA with torch 2.11
        with pytest.raises(attnkit.UnsupportedCall, match="window"):
            attnkit.attention(q, k, v, mask=spec, backend=backend)
        return
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attnkit.attention(q64, k64, v64, mask=spec, backend="reference")
    dout = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout)
    out = attnkit.attention(q, k, v, mask=spec, backend=backend)
    assert _rel(out, ref) < TOL[dtype]
    grads = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
    for g, r in zip(grads, ref_grads):
        assert _rel(g, r) < 4 * TOL[dtype]


def test_cuda_tiled_small_tiles_softcap_alibi():
    torch.manual_seed(0)
    q = torch.randn(1, 6, 333, 32, device="cuda", dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 333, 32, device="cuda", dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 333, 32, device="cuda", dtype=torch.float64, requires_grad=True)
    kw = dict(mask=M.causal() & M.window(50), bias=attnkit.alibi(6), softcap=7.0)
    ref = attnkit.attention(q, k, v, backend="reference", **kw)
    out = tiled_attention(attnkit.make_call(q, k, v, **kw), TileConfig(32, 16, 64))[0]
    assert _rel(out, ref.detach()) < 1e-12
    g1 = torch.autograd.grad(out.sum(), (q, k, v))
    g2 = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert _rel(a, b) < 1e-12


# ---------------------------------------------------------------------------
# the triton backend (attnkit.kernels.triton), compiled for the GPU
# ---------------------------------------------------------------------------
TRITON_MASKS = dict(MASKS, **{
    "window-bidir": lambda T: M.window(40, 9),
    "dilated": lambda T: M.dilated(20, 3),
    "strided": lambda T: M.causal() & M.periodic(7),
    "document": lambda T: M.document(torch.arange(T).div(61, rounding_mode="floor")
                                     .unsqueeze(0).repeat(2, 1)) & M.causal(),
    "not-causal": lambda T: ~M.causal(),
})


def _triton_ready():
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed")
    import attnkit.backends.triton  # noqa: F401  (registers "triton")


def _triton_check(q, k, v, tol, **kw):
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attnkit.attention(q64, k64, v64, backend="reference", **kw)
    dout = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), dout)
    out = attnkit.attention(q, k, v, backend="triton", **kw)
    assert torch.isfinite(out).all() and _rel(out, ref) < tol
    grads = torch.autograd.grad(out, (q, k, v), dout.to(q.dtype))
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and _rel(g, r) < 4 * tol


@pytest.mark.parametrize("mask", list(TRITON_MASKS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (4, 1)])
@pytest.mark.parametrize("lengths", [(200, 200), (77, 301), (301, 150)])
def test_cuda_triton_matches_reference(mask, dtype, heads, lengths, monkeypatch):
    _triton_ready()
    monkeypatch.setenv("ATTNKIT_TRITON_AUTOTUNE", "0")  # the fixed fallback: fewer compiles
    torch.manual_seed(0)
    (H, Hkv), (Tq, Tk) = heads, lengths
    spec = TRITON_MASKS[mask](Tk)
    if mask == "document" and Tq > Tk:
        ids = lambda T: torch.arange(T).div(61, rounding_mode="floor").repeat(2, 1)  # noqa: E731
        spec = M.document(ids(Tk), ids(Tq)) & M.causal()
    q = torch.randn(2, H, Tq, 64, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(2, Hkv, Tk, 64, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(2, Hkv, Tk, 64, device="cuda", dtype=dtype, requires_grad=True)
    _triton_check(q, k, v, TOL[dtype], mask=spec)


@pytest.mark.parametrize("dims", [(16, 16), (40, 24), (128, 128), (256, 256), (96, 200)])
@pytest.mark.parametrize("extra", ["alibi-softcap", "tensor-bias", "plain"])
def test_cuda_triton_head_dims_biases_softcap(dims, extra):
    _triton_ready()
    torch.manual_seed(1)
    D, Dv = dims
    dtype = torch.bfloat16
    q = torch.randn(2, 4, 150, D, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(2, 2, 170, D, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(2, 2, 170, Dv, device="cuda", dtype=dtype, requires_grad=True)
    kw = {"alibi-softcap": dict(bias=attnkit.alibi(4), softcap=5.0, mask=M.causal()),
          "tensor-bias": dict(bias=torch.randn(2, 1, 150, 170, device="cuda"),
                              mask=M.padding([170, 90], q_lengths=[150, 40])),
          "plain": dict(mask=M.causal() & M.window(33))}[extra]
    _triton_check(q, k, v, TOL[dtype], **kw)


def test_cuda_triton_fully_masked_rows_and_bias_grad():
    _triton_ready()
    torch.manual_seed(2)
    q, k, v = (torch.randn(2, 4, 130, 64, device="cuda", requires_grad=True) for _ in range(3))
    bias = torch.randn(130, 130, device="cuda", requires_grad=True)
    mask = M.padding([130, 0], q_lengths=[70, 130]) & M.causal()
    out = attnkit.attention(q, k, v, mask=mask, bias=bias, backend="triton")
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.equal(
        out[0, :, 70:], torch.zeros_like(out[0, :, 70:]))
    grads = torch.autograd.grad(out.square().sum(), (q, k, v, bias))
    b64 = bias.detach().double().requires_grad_()
    ins = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = attnkit.attention(*ins, mask=mask, bias=b64, backend="reference")
    ref_grads = torch.autograd.grad(ref.square().sum(), (*ins, b64))
    for g, r in zip(grads, ref_grads):
        assert torch.isfinite(g).all() and _rel(g, r) < 4 * TOL[torch.float32]
