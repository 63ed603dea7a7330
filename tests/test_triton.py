"""The ``triton`` backend on CPU, under Triton's interpreter, against the float64 reference.

The kernels run interpreted (numpy) with 16 x 16 tiles, so small shapes cross many tiles:
EMPTY tiles skipped, FULL unmasked, PARTIAL masked in-kernel (windows) or by gathered
tile masks (everything else), ragged edges. ``TRITON_INTERPRET=1`` is set per test
(monkeypatch); the kernels are decorated for the interpreter by their own loader, so
nothing else in the process changes. Error metric and tolerances as in
``test_engine_properties.py``: max|x - ref| / max(max|ref|, 1); fp32 1e-5 / 2e-5
(forward / gradients), bf16 1e-2 / 2e-2, fp16 2e-3 / 4e-3.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import attnkit  # noqa: E402
from attnkit import masks as M  # noqa: E402
from attnkit.backends.triton import TritonBackend  # noqa: E402  (registers "triton")
from attnkit.kernels.triton import interpreter_unsupported, kernels  # noqa: E402
from attnkit.kernels.triton.configs import TritonConfig  # noqa: E402
from attnkit.kernels.triton.lowering import (MASK_TILES, MASK_WINDOW, lower_bias,  # noqa: E402
                                             lower_mask, recognise_alibi, recognise_window)

if interpreter_unsupported():
    pytest.skip(interpreter_unsupported(), allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.float32: (1e-5, 2e-5), torch.bfloat16: (1e-2, 2e-2), torch.float16: (2e-3, 4e-3)}


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.set_num_threads(1)


def rel(x, ref) -> float:
    ref = ref.detach()
    return float((x.detach().double() - ref).abs().max() / ref.abs().max().clamp_min(1.0))


def check(B, H, Hkv, Tq, Tk, D, Dv=None, *, mask=None, bias=None, bias_grad=False, softcap=None,
          dtype=torch.float32, seed=0, backend="triton"):
    """Forward and gradients (q, k, v and a tensor bias if ``bias_grad``) vs float64."""
    g = torch.Generator().manual_seed(seed)
    Dv = Dv or D
    q = torch.randn(B, H, Tq, D, generator=g).to(dtype).requires_grad_()
    k = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype).requires_grad_()
    v = torch.randn(B, Hkv, Tk, Dv, generator=g).to(dtype).requires_grad_()
    ins = [q, k, v] + ([bias] if bias_grad else [])
    ins64 = [t.detach().double().requires_grad_() for t in ins]
    kw = dict(mask=mask, softcap=softcap)
    ref = attnkit.attention(*ins64[:3], bias=ins64[3] if bias_grad else bias, backend="reference",
                            **kw)
    dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, ins64, dout)
    if isinstance(backend, str):
        out = attnkit.attention(q, k, v, bias=bias, backend=backend, **kw)
    else:
        out = backend.forward(attnkit.make_call(q, k, v, bias=bias, **kw))
    assert out.dtype == dtype and out.shape == (B, H, Tq, Dv)
    grads = torch.autograd.grad(out, ins, dout.to(dtype))
    tf, tb = TOL[dtype]
    assert rel(out, ref) < tf, f"forward: {rel(out, ref):.2e}"
    for name, a, r in zip("q k v bias".split(), grads, ref_grads):
        assert torch.isfinite(a).all(), f"d{name}: not finite"
        assert rel(a, r) < tb, f"d{name}: {rel(a, r):.2e}"
    return out, grads


DOCS = torch.tensor([[0] * 9 + [1] * 20 + [2] * 18, [0] * 30 + [1] * 17])
CASES = {  # name: (B, H, Hkv, Tq, Tk, D, Dv, kwargs)
    "dense": (2, 2, 2, 37, 37, 32, None, {}),
    "causal": (1, 4, 4, 50, 50, 16, None, dict(mask=M.causal())),
    "causal-decode-tq<tk": (2, 4, 2, 7, 45, 16, None, dict(mask=M.causal())),
    "causal-tq>tk-empty-rows": (1, 2, 1, 45, 20, 16, None, dict(mask=M.causal())),
    "window-gqa": (1, 6, 2, 48, 48, 24, None, dict(mask=M.causal() & M.window(9))),
    "window-bidir-mqa": (2, 3, 1, 40, 33, 16, 8, dict(mask=M.window(5, 3))),
    "dilated": (1, 2, 2, 47, 47, 16, None, dict(mask=M.dilated(4, 3))),
    "strided-periodic": (1, 2, 1, 40, 52, 16, None, dict(mask=M.causal() & M.periodic(5))),
    "global|window": (1, 2, 2, 48, 48, 16, None,
                      dict(mask=M.global_tokens([0, 21]) | M.window(4, 4))),
    "document-varlen": (2, 2, 2, 47, 47, 32, None, dict(mask=M.document(DOCS) & M.causal())),
    "padding-kv-q": (3, 2, 1, 35, 40, 16, None,
                     dict(mask=M.padding([40, 17, 0], q_lengths=[35, 20, 3]))),
    "not-causal": (1, 2, 2, 33, 33, 16, None, dict(mask=~M.causal())),
    "bool-tensor-per-head": (2, 3, 3, 20, 36, 16, None,
                             dict(mask=M.from_tensor(torch.rand(2, 3, 20, 36,
                                  generator=torch.Generator().manual_seed(1)) < 0.4))),
    "alibi-softcap": (2, 4, 2, 40, 44, 32, None,
                      dict(mask=M.causal(), bias=attnkit.alibi(4), softcap=4.0)),
    "alibi-npow2-heads": (1, 6, 3, 33, 33, 16, None, dict(bias=attnkit.alibi(6))),
    "alibi+tensor": (1, 2, 2, 30, 30, 16, None,
                     dict(bias=[attnkit.alibi(2), torch.randn(30, 30)], mask=M.window(7, 7))),
    "additive-float-mask": (1, 2, 2, 20, 20, 16, None,
                            dict(mask=torch.where(torch.rand(20, 20, generator=torch.Generator()
                                 .manual_seed(2)) < 0.3, float("-inf"), 0.5))),
    "softcap-dense": (1, 2, 2, 33, 30, 64, None, dict(softcap=2.0)),
    "head-dim-256": (1, 1, 1, 20, 24, 256, 200, dict(mask=M.causal())),
    "head-dim-8": (1, 2, 2, 20, 24, 8, 40, dict(mask=M.window(3, 3))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_reference(name):
    B, H, Hkv, Tq, Tk, D, Dv, kw = CASES[name]
    check(B, H, Hkv, Tq, Tk, D, Dv, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["causal-decode-tq<tk", "document-varlen", "alibi-softcap"])
def test_triton_low_precision(name, dtype):
    B, H, Hkv, Tq, Tk, D, Dv, kw = CASES[name]
    check(B, H, Hkv, Tq, Tk, D, Dv, dtype=dtype, **kw)


@pytest.mark.parametrize("shape", [(21, 35), (2, 21, 35), (2, 1, 21, 35), (1, 2, 21, 35)])
def test_triton_tensor_bias_gradient(shape):
    """Tensor biases that require grad get the exact gradient (broadcast dims summed)."""
    bias = torch.randn(shape, generator=torch.Generator().manual_seed(3)).requires_grad_()
    check(2, 2, 1, 21, 35, 16, mask=M.causal() & M.padding([35, 20]), bias=bias, bias_grad=True)


def test_triton_fully_masked_rows_are_zero_with_zero_gradients():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 2, 30, 16, generator=g).requires_grad_() for _ in range(3))
    mask = M.padding([30, 0], q_lengths=[11, 30]) & M.causal()  # batch 1 sees no key at all
    out = attnkit.attention(q, k, v, mask=mask, backend="triton")
    dq, dk, dv = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert torch.equal(out[0, :, 11:], torch.zeros_like(out[0, :, 11:]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(dq[0, :, 11:], torch.zeros_like(dq[0, :, 11:]))
    assert torch.equal(dq[1], torch.zeros_like(dq[1])) and torch.equal(dk[1], torch.zeros_like(dk[1]))
    assert all(torch.isfinite(t).all() for t in (out, dq, dk, dv))
    assert out[0, :, :11].abs().sum() > 0


def test_triton_strided_inputs_and_other_tiles():
    """Non-contiguous q/k/v (strides passed to the kernels, nothing copied), an expanded
    (stride 0) MQA key head, and non-square tiles of another size."""
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 40, 4, 32, generator=g).transpose(1, 2).requires_grad_()  # (1, 4, 40, 32)
    kv = torch.randn(1, 1, 45, 32, generator=g)
    k = kv.expand(1, 1, 45, 32).requires_grad_()
    v = torch.randn(1, 45, 1, 32, generator=g).transpose(1, 2).requires_grad_()
    mask = M.causal() & M.window(11)
    for be in (TritonBackend(TritonConfig(block_m=32, block_n=16)), TritonBackend()):
        out = be.forward(attnkit.make_call(q, k, v, mask=mask))
        ref = attnkit.attention(q.double(), k.double(), v.double(), mask=mask, backend="reference")
        assert rel(out, ref) < 1e-5
    backend = TritonBackend(TritonConfig(block_m=16, block_n=32))
    check(2, 4, 2, 36, 47, 16, mask=M.document(DOCS) | M.causal(), backend=backend)


def random_mask(r: random.Random, B, Tq, Tk, depth=0):
    """A random composition of specs (windows weighted up: those run in-kernel)."""
    kinds = ["causal", "window", "window", "causal&window", "strided", "dilated", "global",
             "padding", "document", "bool"] + (["and", "or", "not"] * 2 if depth < 2 else [])
    kind = r.choice(kinds)
    if kind in ("and", "or"):
        a, b = random_mask(r, B, Tq, Tk, depth + 1), random_mask(r, B, Tq, Tk, depth + 1)
        return a & b if kind == "and" else a | b
    if kind == "not":
        return ~random_mask(r, B, Tq, Tk, depth + 1)
    gen = torch.Generator().manual_seed(r.randrange(2**31))
    return {
        "causal": lambda: M.causal(),
        "window": lambda: M.window(r.randint(0, 20), r.randint(0, 20)),
        "causal&window": lambda: M.causal() & M.window(r.randint(0, 30)),
        "strided": lambda: M.periodic(r.randint(1, 7)),
        "dilated": lambda: M.dilated(r.randint(0, 6), r.randint(1, 3), causal=r.random() < 0.5),
        "global": lambda: M.global_tokens(r.sample(range(Tk), min(Tk, r.randint(1, 3)))),
        "padding": lambda: M.padding([r.randint(0, Tk) for _ in range(B)],
                                     q_lengths=[r.randint(0, Tq) for _ in range(B)]
                                     if r.random() < 0.3 else None),
        "document": lambda: M.document(torch.sort(torch.randint(0, 3, (B, Tk), generator=gen))
                                       .values, torch.randint(0, 3, (B, Tq), generator=gen)),
        "bool": lambda: M.from_tensor(torch.rand(B, 1, Tq, Tk, generator=gen) < 0.6),
    }[kind]()


def random_problem(seed: int) -> dict:
    r = random.Random(seed)
    B, H = r.randint(1, 2), r.choice([1, 2, 4])
    Hkv = r.choice([d for d in (1, 2, 4) if H % d == 0])
    length = lambda: r.choice([15, 16, 17, 31, 33, 47, 56, r.randint(1, 56)])  # noqa: E731
    Tq, Tk = length(), length()
    D = r.choice([16, 24, 32, 64])
    mask = None if r.random() < 0.15 else random_mask(r, B, Tq, Tk)
    bias = r.choice([None, None, "alibi", "tensor", "sum"])
    bias = {None: None, "alibi": attnkit.alibi(H), "tensor": torch.randn(B, 1, Tq, Tk),
            "sum": [attnkit.alibi(H), torch.randn(Tq, Tk)]}[bias]
    return dict(B=B, H=H, Hkv=Hkv, Tq=Tq, Tk=Tk, D=D, Dv=r.choice([D, 16]), mask=mask,
                bias=bias, softcap=r.choice([None, None, 3.0]), seed=seed,
                dtype=r.choice([torch.float32, torch.float32, torch.bfloat16, torch.float16]))


@pytest.mark.parametrize("seed", range(60))
def test_triton_random_problems(seed):
    """Seeded random problems rather than hypothesis: under the interpreter ~60 cases fit
    the budget, and hypothesis's generation favours the simplest draws (half of its
    examples came out unmasked or tiny), so each case here is a different problem."""
    check(**random_problem(seed))


# ---------------------------------------------------------------------------
# lowering (no kernel runs)
# ---------------------------------------------------------------------------
def _call(Tq, Tk, mask=None, bias=None, B=2, H=2):
    q = torch.zeros(B, H, Tq, 16)
    k = torch.zeros(B, H, Tk, 16)
    return attnkit.make_call(q, k, k, mask=mask, bias=bias)


@pytest.mark.parametrize("spec,Tq,Tk,want", [
    (M.causal(), 40, 40, (0, 40)), (M.causal(), 10, 40, (0, 40)),
    (M.window(7), 30, 30, (0, 7)), (M.window(3, 5), 30, 20, (-5, 3)),
    (M.causal() & M.window(9), 50, 50, (0, 9)), (M.window(9, 9) & M.window(4, 20), 30, 30, (-9, 4)),
    (M.full() & M.causal(), 30, 30, (0, 30)),
    (M.causal() | M.window(3, 3), 30, 30, None), (M.periodic(3), 30, 30, None),
    (M.padding([30, 30]), 30, 30, None), (~M.causal(), 30, 30, None),
])
def test_recognise_window(spec, Tq, Tk, want):
    assert recognise_window(_call(Tq, Tk, spec)) == want


def test_gathered_tiles_follow_partial_tile_count():
    """Document masks: one slot per partial tile, per batch (Bm = B); strided (translation-
    invariant): one slot per diagonal, far fewer than partial tiles; schedules = block map."""
    T = 256
    docs = torch.tensor([[0] * 64 + [1] * 64 + [2] * 64 + [3] * 64, [0] * 96 + [1] * 64 + [2] * 96])
    call = _call(T, T, M.document(docs) & M.causal())
    low = lower_mask(call, 16, 16)
    bm = call.block_map(16, 16)
    n_partial = int((bm == M.PARTIAL).sum())
    assert low.mode == MASK_TILES and low.tiles.shape == (n_partial, 2, 1, 16, 16)
    assert n_partial < bm.numel() // 4  # so memory is a fraction of Tq * Tk * B
    nz = (bm != M.EMPTY)
    assert low.rows.ptr[-1] == nz.sum() and torch.equal(low.rows.ptr.diff().long(), nz.sum(1))
    assert torch.equal(low.cols.ptr.diff().long(), nz.sum(0))
    assert torch.equal(low.rows.kind.long(), bm[nz].long())
    strided = lower_mask(_call(T, T, M.periodic(5)), 16, 16)
    n = T // 16
    assert strided.n_partial == n * n and strided.tiles.shape[0] <= 2 * n - 1
    win = lower_mask(_call(T, T, M.causal() & M.window(20)), 16, 16)
    assert win.mode == MASK_WINDOW and win.tiles is None


def test_recognise_alibi_and_dense_bias():
    call = _call(9, 30, bias=attnkit.alibi(6), H=6)
    assert torch.allclose(recognise_alibi(call), attnkit.call.bias.alibi_slopes(6), rtol=1e-15)
    assert recognise_alibi(_call(1, 1, bias=attnkit.alibi(2))) is not None
    low = lower_bias(_call(9, 30, bias=[attnkit.alibi(2), torch.ones(9, 30)]))
    assert low.dense is not None and low.dense.shape == (1, 2, 9, 30)


# ---------------------------------------------------------------------------
# the contract: refusals, auto, the loader
# ---------------------------------------------------------------------------
def test_triton_refusals(monkeypatch):
    be = attnkit.backends.get_backend("triton")
    q = torch.randn(1, 2, 8, 16)
    assert "dropout" in be.unsupported(attnkit.make_call(q, q, q, dropout_p=0.1))
    assert "float64" in be.unsupported(attnkit.make_call(q.double(), q.double(), q.double()))
    big = torch.randn(1, 1, 4, 300)
    assert "256" in be.unsupported(attnkit.make_call(big, big, big))
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in be.unsupported(attnkit.make_call(q, q, q))
    with pytest.raises(attnkit.UnsupportedCall, match="TRITON_INTERPRET"):
        attnkit.attention(q, q, q, backend="triton")
    assert be.auto_preference(attnkit.make_call(q, q, q, softcap=2.0)) is None  # CPU: never auto


def test_loader_keeps_the_environment():
    before = os.environ.get("TRITON_INTERPRET")
    mod = kernels(True)
    assert mod.INTERPRET and os.environ.get("TRITON_INTERPRET") == before
    assert type(mod.forward.attn_fwd).__name__ == "InterpretedFunction"
    assert kernels(True) is mod


@pytest.mark.slow
def test_gpu_benchmark_dry_run(tmp_path):
    """benchmarks/gpu.py --dry-run: the whole script on CPU under the interpreter, tiny."""
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--dry-run",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| workload" in r.stdout and out.exists()
    if torch.cuda.is_available():
        return
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "CUDA" in r.stderr
