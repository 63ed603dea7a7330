"""The oracle sweep: thousands of random problems, every backend against float64.

Each problem (:func:`oracle_cases.random_case`, drawn from one seed) has random shapes
(T <= 64, D <= 32, Tq != Tk in ~80% of cases, MHA/GQA/MQA), a random composition of
masks with & | ~ (causal, window, periodic, dilated, global tokens, padding with kv and
q lengths, key padding incl. left padding, document ids, bool tensors of every broadcast
layout, mask_mods), sometimes an additive float mask ((B, 1, 1, Tk), (H, Tq, Tk), ...),
a bias (ALiBi, tensors of broadcast layouts, -inf entries, sums), softcap, scale and a
dtype (fp32 / bf16 / fp16). Its float64 reference is computed once and checked against
an independent naive attention (:mod:`oracle_masks` computes every mask and bias from
its definition), then every backend that serves the call is compared with it: forward,
dq, dk, dv, the gradients of bias tensors and additive masks, exact zeros on fully
masked rows and for keys no query sees. Backends that decline (``unsupported(call)``
gives a reason) are counted as refusals, never as passes; the counts per backend and
the refusals are printed at the end of the pytest run (tests/conftest.py).

Why seeded generators rather than hypothesis here (the rest of the suite's properties
use hypothesis): the number of cases per run must be exact and large (>= 10,000) in a
couple of minutes, so one drawn problem serves every backend with one float64 reference
(hypothesis would draw per test function); hypothesis's generation favours the
simplest draws (many unmasked or tiny examples) where here every case is a different
problem; and every failure names its seed, which alone reproduces it:
``PYTHONPATH=src python tests/oracle_cases.py SEED``. What is lost is shrinking: the
failure text gives the case's recipe instead.
"""
from __future__ import annotations

import random
import time

import pytest
import torch

import attnkit
from attnkit.kernels import TileConfig, tiled_attention
from conftest import ORACLE, ORACLE_SECONDS, ORACLE_WORST, REFUSED
from oracle_cases import Case, Refused, random_case, run_backends
from oracle_masks import Geometry

N_BLOCKS, PER_BLOCK = 30, 100          # the main sweep: 3,000 problems
SPARSE_BLOCKS, SPARSE_PER_BLOCK = 4, 150
TRITON_CASES = 40                      # interpreted: ~0.1-0.4 s each
FLEX_CASES = 12                        # CPU flex compiles per shape (2-5 s each): the first
_flex_run = [0]                        # 12 problems it serves, the same ones on any machine


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: one thread is fastest. With torch's default (2 threads here) the
    sweep was killed at 15 minutes on the shared 2-core machine (load average 8); with one
    it takes 2-3 minutes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _kwargs(case: Case, lo):
    return dict(mask=case.mask_arg(lo.add), bias=case.bias_arg(lo.bias), scale=case.scale,
                softcap=case.softcap)


def _refuse_if_unsupported(backend: str, call) -> None:
    why = attnkit.get_backend(backend).unsupported(call)
    if why:
        raise Refused(why if len(why) <= 90 else why[:87] + "...")


def by_name(backend: str):
    """``attnkit.attention(..., backend=name)`` where the backend serves the call."""
    def run(case, lo):
        kw = _kwargs(case, lo)
        _refuse_if_unsupported(backend, attnkit.make_call(lo.q, lo.k, lo.v, **kw))
        return attnkit.attention(lo.q, lo.k, lo.v, backend=backend, **kw)
    return run


def small_tiles(case: Case) -> TileConfig:
    """Tiles of 1-16 rows/keys and chunks of 1-3 blocks, fixed by the case's seed: many
    tiles, EMPTY/PARTIAL/FULL blocks, ragged edges, online-softmax rescaling."""
    r = random.Random(case.seed * 7919 + 1)
    bq, bk = r.choice([1, 3, 4, 7, 8, 16]), r.choice([1, 2, 4, 5, 8, 16])
    return TileConfig(bq, bk, bk * r.randint(1, 3))


def run_small_tiles(case, lo):
    cfg = small_tiles(case)
    return tiled_attention(attnkit.make_call(lo.q, lo.k, lo.v, **_kwargs(case, lo)), cfg)[0]


def run_flex(case, lo):
    """Flex where it serves: with gradients, else forward-only (no grad), else refused.
    CPU compiles cost seconds per new shape, so flex runs the first FLEX_CASES problems it
    serves (a count, not a time budget: a time budget ran different problems on a loaded
    machine, and a bug showed only there)."""
    kw = _kwargs(case, lo)
    be = attnkit.get_backend("flex")
    why = be.unsupported(attnkit.make_call(lo.q, lo.k, lo.v, **kw))
    grad = why is None
    if not grad:
        with torch.no_grad():
            ins = [t.detach() for t in (lo.q, lo.k, lo.v)]
            if be.unsupported(attnkit.make_call(*ins, **kw)) is not None:
                raise Refused(why if len(why) <= 90 else why[:87] + "...")
    if _flex_run[0] >= FLEX_CASES:
        raise Refused(f"not run: the sweep runs flex on its first {FLEX_CASES} problems")
    _flex_run[0] += 1
    if grad:
        return attnkit.attention(lo.q, lo.k, lo.v, backend="flex", **kw)
    with torch.no_grad():
        return attnkit.attention(*ins, backend="flex", **kw)


RUNNERS = {"reference": by_name("reference"), "sdpa": by_name("sdpa"), "tiled": by_name("tiled"),
           "tiled small tiles": run_small_tiles, "flex": run_flex}


def _sweep(cases, runners, label):
    t0 = time.perf_counter()
    fails = []
    for case in cases:
        fails += run_backends(case, runners, ORACLE, REFUSED, ORACLE_WORST)
    ORACLE_SECONDS[label] += time.perf_counter() - t0
    ORACLE_SECONDS["problems"] += len(cases)
    assert not fails, f"{len(fails)} mismatches, first ones:\n" + "\n".join(fails[:8])


@pytest.mark.parametrize("block", range(N_BLOCKS))
def test_oracle_sweep(block):
    seeds = range(block * PER_BLOCK, (block + 1) * PER_BLOCK)
    _sweep([random_case(s) for s in seeds], RUNNERS, "main")


# ---------------------------------------------------------------------------
# sparse_attention: the named patterns, self-attention (Tq == Tk)
# ---------------------------------------------------------------------------
def random_pattern(r: random.Random, n: int):
    S = attnkit.sparse
    kind = r.choice(["window", "strided", "fixed", "dilated", "longformer", "bigbird",
                     "log_sparse"])
    c = r.random() < 0.5
    if kind == "window":
        w = r.randint(0, 20)
        return S.window(w, 0 if c else w)
    if kind == "strided":
        return S.strided(r.randint(1, 10))
    if kind == "fixed":
        s = r.randint(1, 10)
        return S.fixed(s, r.randint(1, s))
    if kind == "dilated":
        return S.dilated(r.randint(0, 8), r.randint(1, 4), causal=c)
    if kind == "longformer":
        g = r.choice([r.randint(0, min(3, n)), r.sample(range(n), min(n, r.randint(1, 3)))])
        return S.longformer(r.randint(0, 12), g, causal=c)
    if kind == "bigbird":
        b = r.randint(1, 16)
        return S.bigbird(b, r.randint(0, 2), r.randint(0, max(0, min(2, n // b))),
                         r.randint(0, 3), r.randint(0, 99), causal=c)
    return S.log_sparse()


def random_sparse_case(seed: int) -> tuple[Case, TileConfig | None]:
    case = random_case(seed, self_attention=True)
    r = random.Random(seed * 31 + 7)
    case.mask = random_pattern(r, case.Tq)
    # the patterns' dense form is attnkit's own (their definitions are tested against
    # brute force in tests/test_patterns.py); the math around it is still independent
    case.mask_dense = case.mask.at(case.Tq).dense(case.Tq, case.Tq).expand(
        case.B, case.H, case.Tq, case.Tq)
    case.additive = case.bias = case.softcap = None
    case.text = f"pattern={case.mask!r}"
    cfg = None if r.random() < 0.6 else TileConfig(r.choice([1, 4, 8]), r.choice([1, 4, 8]),
                                                   r.choice([8, 16]))
    case.text += f" cfg={cfg}"
    return case, cfg


def test_oracle_sparse_patterns_cover_every_pattern():
    names = {type(random_sparse_case(s)[0].mask).__name__ for s in range(200)}
    assert len(names) == 7, names


@pytest.mark.parametrize("block", range(SPARSE_BLOCKS))
def test_oracle_sparse_attention(block):
    cases = []
    for s in range(block * SPARSE_PER_BLOCK, (block + 1) * SPARSE_PER_BLOCK):
        case, cfg = random_sparse_case(10**6 + s)
        cases.append(case)
        case.cfg = cfg
    run = lambda case, lo: attnkit.sparse_attention(  # noqa: E731
        lo.q, lo.k, lo.v, case.mask, scale=case.scale, cfg=case.cfg)
    _sweep(cases, {"sparse_attention": run}, "sparse")


# ---------------------------------------------------------------------------
# triton under the interpreter (slow: a few tiny problems; tests/test_triton.py has more)
# ---------------------------------------------------------------------------
def test_oracle_triton_interpreted(monkeypatch):
    pytest.importorskip("triton")
    from attnkit.kernels.triton import interpreter_unsupported
    if interpreter_unsupported():
        pytest.skip(interpreter_unsupported())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cases = [random_case(2 * 10**6 + s, max_t=24, dims=(8, 16, 32)) for s in range(TRITON_CASES)]
    _sweep(cases, {"triton": by_name("triton")}, "triton")


def test_generators_cover_what_the_issue_names():
    """The sweep draws what issue 14 asks for, in useful proportions (not a tautology:
    a generator change that drops a family fails here)."""
    cases = [random_case(s) for s in range(N_BLOCKS * PER_BLOCK)]
    text = " ".join(c.text for c in cases)
    for word in ["causal()", "window(", "periodic(", "dilated(", "global_tokens(", "padding(",
                 "q_lengths=[", "key_padding(random", "key_padding(left", "document(",
                 "from_tensor(bool", "mask_mod(", "~(", " | ", " & ", "and_masks(",
                 "additive(", "(2, 1, 1,", "alibi", "tensor[", "list[", "-inf p="]:
        assert word in text, word
    frac = lambda f: sum(map(f, cases)) / len(cases)  # noqa: E731
    assert frac(lambda c: c.Tq != c.Tk) > 0.6
    assert frac(lambda c: 1 < c.Hkv < c.H) > 0.1 and frac(lambda c: c.Hkv == 1 < c.H) > 0.1
    assert frac(lambda c: c.dtype != torch.float32) > 0.3
    assert frac(lambda c: c.softcap is not None) > 0.2
    empty = frac(lambda c: c.mask_dense is not None and bool((~c.mask_dense.any(-1)).any()))
    assert empty > 0.05   # some problems have query rows with no key at all
    assert Geometry(2, 3, 4, 5).d.shape == (1, 1, 4, 5)


# ---------------------------------------------------------------------------
# regressions: bugs the sweep found (minimal repros)
# ---------------------------------------------------------------------------
def _err(x, ref):
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1))


def test_regression_tiled_bias_grad_without_broadcast_dims():
    """A tensor bias of the full shape (B, H, Tq, Tk) with B, H > 1 that requires grad:
    the tiled backward summed its gradient over dim=[] -- every dim in torch -- and
    autograd raised 'invalid gradient ... got [1, 1, 1, 1]' (sweep seed 68)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64).requires_grad_()
               for n in (5, 7, 7))
    bias = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64).requires_grad_()
    dout = torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64)
    want = torch.autograd.grad(attnkit.attention(q, k, v, bias=bias, backend="reference"),
                               (q, k, v, bias), dout)
    for run in (lambda: attnkit.attention(q, k, v, bias=bias, backend="tiled"),
                lambda: tiled_attention(attnkit.make_call(q, k, v, bias=bias),
                                        TileConfig(2, 3, 3))[0]):
        got = torch.autograd.grad(run(), (q, k, v, bias), dout)
        assert got[3].shape == bias.shape
        assert max(_err(a, b) for a, b in zip(got, want)) < 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_regression_sdpa_low_precision_bias_added_in_float32_on_cpu(dtype, tol):
    """sdpa rounded the dense bias to the inputs' dtype: ALiBi + a tensor, at the large
    distances of Tq > Tk, came out 1.7e-2 (bf16) / 3.4e-3 (fp16) off where tiled is
    2.9e-3 / 3.3e-4 (sweep seed 1926). On CPU it now hands SDPA a float32 bias."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 48, 16, generator=g).to(dtype)
    k, v = (torch.randn(1, 8, 4, 16, generator=g).to(dtype) for _ in range(2))
    t = torch.randn(48, 4, generator=g).to(dtype)
    ref = attnkit.attention(q.double(), k.double(), v.double(),
                            bias=[attnkit.alibi(8), t.double()], backend="reference")
    errs = {be: _err(attnkit.attention(q, k, v, bias=[attnkit.alibi(8), t], backend=be), ref)
            for be in ("sdpa", "tiled")}
    assert errs["sdpa"] < tol and errs["sdpa"] < 1.5 * errs["tiled"], errs


@pytest.mark.parametrize("shape", [(9, 1), (1, 1, 9, 1), (1, 6), (2, 1, 1, 6), (1, 1)])
def test_regression_triton_bias_broadcast_over_queries_or_keys(monkeypatch, shape):
    """A tensor bias broadcast over Tk ((Tq, 1)) or Tq ((1, Tk)): the Triton kernels took
    the stride of a size-1 query/key dim as is (not 0) and read past the bias: forward
    off by ~1 (sweep seed 2000021)."""
    pytest.importorskip("triton")
    from attnkit.kernels.triton import interpreter_unsupported
    if interpreter_unsupported():
        pytest.skip(interpreter_unsupported())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 9, 16, generator=g).requires_grad_()
    k, v = (torch.randn(2, 1, 6, 16, generator=g).requires_grad_() for _ in range(2))
    bias = torch.randn(shape, generator=g).requires_grad_()
    ins64 = [t.detach().double().requires_grad_() for t in (q, k, v, bias)]
    ref = attnkit.attention(*ins64[:3], bias=ins64[3], mask=attnkit.masks.padding([6, 4]),
                            backend="reference")
    out = attnkit.attention(q, k, v, bias=bias, mask=attnkit.masks.padding([6, 4]),
                            backend="triton")
    assert _err(out, ref) < 1e-5
    dout = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v, bias), dout.float())
    for a, b in zip(got, torch.autograd.grad(ref, ins64, dout)):
        assert _err(a, b) < 2e-5
