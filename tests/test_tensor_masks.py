"""Tensor masks and biases broadcast exactly as torch's SDPA broadcasts ``attn_mask``
(right-aligned, rank 2 to 4, any size-1 dimension), on every backend; NaN and +inf are
refused by name."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import attnkit

B, H, Tq, Tk, D = 2, 3, 5, 7, 8


def broadcast_shapes():
    full = (B, H, Tq, Tk)
    for rank in (2, 3, 4):
        dims = full[4 - rank:]
        for ones in itertools.product((False, True), repeat=rank):
            yield tuple(1 if o else d for o, d in zip(ones, dims))


SHAPES = list(broadcast_shapes())


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for T in (Tq, Tk, Tk)]


def bool_mask(shape, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(shape, generator=g) < 0.6
    m[..., 0] = True                           # every row sees a key (SDPA gives NaN otherwise)
    return m


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled"])
def test_bool_and_float_masks_broadcast_as_sdpa(shape, backend):
    q, k, v = inputs()
    m = bool_mask(shape, seed=len(shape))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    torch.testing.assert_close(attnkit.attention(q, k, v, mask=m, backend=backend), want)
    add = torch.where(m, torch.randn(shape, dtype=torch.float64), float("-inf"))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
    torch.testing.assert_close(attnkit.attention(q, k, v, mask=add, backend=backend), want)
    bias = torch.randn(shape, dtype=torch.float64)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(attnkit.attention(q, k, v, bias=bias, backend=backend), want)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "tiled"])
def test_a_broadcast_bias_with_a_spec_mask(backend):
    q, k, v = inputs()
    bias = torch.randn(1, 1, 1, Tk, dtype=torch.float64)           # per-key bias
    causal = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.masked_fill(~causal, -1e30))
    got = attnkit.attention(q, k, v, mask=attnkit.masks.causal(), bias=bias, backend=backend)
    torch.testing.assert_close(got, want)


def test_three_dims_are_heads_not_batch():
    """(H, Tq, Tk) per torch; with B == H a batch-first reading would differ by ~1."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 3, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    m = torch.rand(3, 6, 6, generator=g) < 0.5
    m[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    torch.testing.assert_close(attnkit.attention(q, k, v, mask=m, backend="tiled"), want)
    batch_first = attnkit.attention(q, k, v, mask=m[:, None], backend="tiled")
    assert (batch_first - want).abs().max() > 0.1


def test_bias_gradients_follow_the_broadcast():
    q, k, v = inputs()
    for shape in [(Tq, Tk), (H, 1, Tk), (B, 1, 1, Tk), (1, 1, Tq, 1)]:
        bias = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).sum(),
                                  bias)[0]
        for be in ("reference", "tiled"):
            got = torch.autograd.grad(attnkit.attention(q, k, v, bias=bias, backend=be).sum(),
                                      bias)[0]
            torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("where, value, what", [("mask", float("nan"), "NaN"),
                                                ("mask", float("inf"), r"\+inf"),
                                                ("bias", float("nan"), "NaN"),
                                                ("bias", float("inf"), r"\+inf")])
def test_nan_and_plus_inf_are_refused_by_name(where, value, what):
    q, k, v = inputs()
    t = torch.zeros(Tq, Tk, dtype=torch.float64)
    t[2, 3] = value
    with pytest.raises(ValueError, match=rf"{where}: expected finite values or -inf.*{what} at "
                                         r"index \(2, 3\)"):
        attnkit.attention(q, k, v, **{where: t})


@pytest.mark.parametrize("shape", [(Tk,), (2, Tq, Tk + 1), (1, 2, Tq, Tk), (B, H, Tq, Tk, 1)])
def test_shapes_that_do_not_broadcast_are_refused(shape):
    q, k, v = inputs()
    with pytest.raises(ValueError, match="mask: expected"):
        attnkit.attention(q, k, v, mask=torch.ones(shape, dtype=torch.bool))
