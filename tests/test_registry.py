"""The backend contract: registry, return_weights, the documented auto rule, dropout."""
import pytest
import torch

import attnkit
from attnkit import masks as M
from attnkit.backends import Backend, base
from attnkit.backends.tiled import TileConfig, tiled_attention


class Doubling(Backend):
    name = "test-doubling"
    description = "reference times two (a test backend)"

    def unsupported(self, call):
        return "only fp64" if call.dtype != torch.float64 else None

    def forward(self, call):
        return 2 * attnkit.get_backend("reference").forward(call)


@pytest.fixture
def doubling():
    b = attnkit.register_backend(Doubling())
    yield b
    attnkit.unregister_backend(b.name)


def test_register_and_use_a_backend(doubling):
    assert "test-doubling" in attnkit.available_backends()
    q = torch.randn(1, 2, 5, 8, dtype=torch.float64)
    out = attnkit.attention(q, q, q, backend="test-doubling")
    assert torch.allclose(out, 2 * attnkit.attention(q, q, q, backend="reference"))
    with pytest.raises(attnkit.UnsupportedCall, match="only fp64"):
        attnkit.attention(q.float(), q.float(), q.float(), backend="test-doubling")
    with pytest.raises(ValueError, match="already registered"):
        attnkit.register_backend(Doubling())


def test_registry_refuses_bad_entries():
    class Auto(Doubling):
        name = "auto"
    with pytest.raises(ValueError, match="reserved"):
        attnkit.register_backend(Auto())
    with pytest.raises(TypeError, match="named Backend"):
        attnkit.register_backend(object())


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled", "auto"])
def test_return_weights_from_every_backend(backend):
    torch.manual_seed(0)
    Tq = 30
    q = torch.randn(2, 4, Tq, 16)
    k, v = torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    spec = M.padding([40, 20], q_lengths=[30, 25]) & M.causal()
    with torch.no_grad():
        out, w = attnkit.attention(q, k, v, mask=spec, backend=backend, return_weights=True)
        ref_out, ref_w = attnkit.attention(q, k, v, mask=spec, backend="reference",
                                           return_weights=True)
    assert w.shape == (2, 4, Tq, 40) and w.dtype == q.dtype
    assert torch.allclose(w, ref_w, atol=1e-6) and torch.allclose(out, ref_out, atol=1e-5)
    visible = spec.dense(Tq, 40).expand(2, 4, Tq, 40)
    sums = w.sum(-1)
    assert torch.allclose(sums[~visible.any(-1)], torch.zeros(1))    # fully masked rows: 0
    assert torch.allclose(sums[visible.any(-1)], torch.ones(1), atol=1e-6)
    assert (~visible.any(-1)).any() and (w[~visible] == 0).all()


def call(T, **kw):
    x = torch.empty(1, 8, T, 64)
    return attnkit.make_call(x, x, x, **kw)


@pytest.mark.parametrize("kw, T, want", [
    (dict(), 4096, "sdpa"),
    (dict(mask=M.causal()), 4096, "sdpa"),
    (dict(mask=M.causal() & M.window(256)), 16384, "tiled"),     # sparse: tiled skips tiles
    (dict(softcap=30.0), 1024, "tiled"),                          # SDPA has no softcap
    (dict(mask=M.periodic(3) | M.causal()), 1024, "sdpa"),          # dense-ish, small mask
    (dict(mask=M.periodic(3) | M.causal()), 16384, "tiled"),        # mask would be 2+ GiB
    (dict(bias=attnkit.alibi(8)), 512, "sdpa"),
])
def test_auto_rule(kw, T, want):
    name, why = attnkit.select_backend(call(T, **kw))
    assert name == want, why
    assert why


def test_tiled_dropout_is_reproducible_and_matches_its_expectation():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    spec = M.causal()
    torch.manual_seed(1)
    a = attnkit.attention(q, k, v, mask=spec, dropout_p=0.3, backend="tiled")
    torch.manual_seed(1)
    b = attnkit.attention(q, k, v, mask=spec, dropout_p=0.3, backend="tiled")
    c = attnkit.attention(q, k, v, mask=spec, dropout_p=0.3, backend="tiled")
    assert torch.equal(a, b) and not torch.equal(a, c)
    # E[dropout(w) v] = w v. The mean of 400 draws has a standard error of about
    # sqrt(p/(1-p)/400) * |w v| ~ 0.03 |.|; 0.1 absolute is > 3 standard errors.
    mean = torch.stack([attnkit.attention(q, k, v, mask=spec, dropout_p=0.3, backend="tiled")
                        for _ in range(400)]).mean(0)
    exact = attnkit.attention(q, k, v, mask=spec, backend="reference")
    assert (mean - exact).abs().max() < 0.1


def test_tiled_dropout_gradients_match_its_forward():
    """gradcheck with the dropout seed fixed: the backward regenerates the same masks."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        torch.manual_seed(123)  # the tiled backend draws its dropout seed from torch's RNG
        c = attnkit.make_call(q, k, v, mask=M.causal(), dropout_p=0.25)
        return tiled_attention(c, TileConfig(4, 2, 4))[0]
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_dropout_in_other_backends_is_unbiased(backend):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 30, 8) for _ in range(3))
    mean = torch.stack([attnkit.attention(q, k, v, dropout_p=0.2, backend=backend)
                        for _ in range(400)]).mean(0)
    assert (mean - attnkit.attention(q, k, v, backend="reference")).abs().max() < 0.1
