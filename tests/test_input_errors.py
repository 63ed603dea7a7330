"""Bad input raises ValueError/TypeError naming the argument, the expected and the received."""
import pytest
import torch

import attnkit
from attnkit import masks as M

q = torch.randn(2, 8, 10, 16)
k = torch.randn(2, 2, 12, 16)
v = torch.randn(2, 2, 12, 16)


def raises(exc, *words, fn, **kw):
    with pytest.raises(exc) as e:
        fn(**kw)
    msg = str(e.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


@pytest.mark.parametrize("kw, exc, words", [
    (dict(q=torch.randn(8, 10, 16)), ValueError, ["q:", "4-D", "(B, H, Tq, D)", "(8, 10, 16)"]),
    (dict(k=torch.randn(2, 2, 12, 8)), ValueError, ["k:", "D=16", "D=8"]),
    (dict(k=torch.randn(2, 3, 12, 16), v=torch.randn(2, 3, 12, 16)), ValueError,
     ["Hkv", "dividing H=8", "Hkv=3"]),
    (dict(k=torch.randn(1, 2, 12, 16), v=torch.randn(1, 2, 12, 16)), ValueError,
     ["batch size B=2", "(1, 2, 12, 16)"]),
    (dict(v=torch.randn(2, 2, 11, 16)), ValueError, ["v:", "(2, 2, 12)", "(2, 2, 11, 16)"]),
    (dict(k=k.double()), TypeError, ["one dtype", "float32", "float64"]),
    (dict(q=q.long()), TypeError, ["q:", "floating-point", "int64"]),
    (dict(q=[1, 2]), TypeError, ["q:", "torch.Tensor", "list"]),
    (dict(k=k.to("meta"), v=v.to("meta")), ValueError, ["one device", "cpu", "meta"]),
    (dict(mask=torch.ones(10, 13, dtype=torch.bool)), ValueError,
     ["mask:", "(2, 8, 10, 12)", "(1, 1, 10, 13)"]),
    (dict(mask=torch.ones(3, 1, 10, 12, dtype=torch.bool)), ValueError, ["mask:", "(3, 1, 10, 12)"]),
    (dict(mask="causal"), TypeError, ["mask:", "MaskSpec", "str"]),
    (dict(bias=torch.randn(10, 11)), ValueError, ["bias:", "(2, 8, 10, 12)", "(1, 1, 10, 11)"]),
    (dict(bias=3), TypeError, ["bias:", "BiasSpec", "int"]),
    (dict(bias=attnkit.alibi(4)), ValueError, ["alibi", "4 heads", "H=8"]),
    (dict(backend="flash3"), ValueError, ["backend:", "'flash3'", "tiled", "auto"]),
    (dict(dropout_p=1.0), ValueError, ["dropout_p", "[0, 1)", "1.0"]),
    (dict(dropout_p=-0.1), ValueError, ["dropout_p", "-0.1"]),
    (dict(scale=0.0), ValueError, ["scale", "positive", "0.0"]),
    (dict(scale=float("nan")), ValueError, ["scale", "nan"]),
    (dict(softcap=-1.0), ValueError, ["softcap", "positive", "-1.0"]),
    (dict(mask=M.padding([5, 6, 7])), ValueError, ["kv_lengths", "(2,)", "B=2", "(3,)"]),
    (dict(mask=M.padding([5, 13])), ValueError, ["kv_lengths", "<= 12", "13"]),
    (dict(mask=M.global_tokens([12])), ValueError, ["global_tokens", "< Tk=12", "12"]),
    (dict(mask=M.document(torch.zeros(2, 11, dtype=torch.long))), ValueError,
     ["document", "(2, 12)", "(2, 11)"]),
])
def test_attention_input_errors(kw, exc, words):
    args = dict(q=q, k=k, v=v)
    args.update(kw)
    raises(exc, *words, fn=lambda **a: attnkit.attention(a.pop("q"), a.pop("k"), a.pop("v"), **a),
           **args)


@pytest.mark.parametrize("fn, exc, words", [
    (lambda: M.window(-1), ValueError, ["left", ">= 0", "-1"]),
    (lambda: M.window(3, -2), ValueError, ["right", ">= 0", "-2"]),
    (lambda: M.window(2.5), TypeError, ["left", "int", "2.5"]),
    (lambda: M.periodic(0), ValueError, ["period", ">= 1", "0"]),
    (lambda: M.dilated(3, 0), ValueError, ["dilation", ">= 1", "0"]),
    (lambda: M.global_tokens([-1]), ValueError, ["global_tokens", ">= 0", "-1"]),
    (lambda: M.padding(), ValueError, ["kv_lengths", "q_lengths"]),
    (lambda: M.padding([1.5, 2.0]), TypeError, ["kv_lengths", "integer", "float"]),
    (lambda: M.padding([-1, 2]), ValueError, ["kv_lengths", ">= 0", "-1"]),
    (lambda: M.document(torch.rand(2, 5)), TypeError, ["document", "integer", "float"]),
    (lambda: M.from_tensor(torch.ones(5)), ValueError, ["from_tensor", "2, 3 or 4", "(5,)"]),
    (lambda: M.from_tensor(torch.ones(2, 2, dtype=torch.long)), TypeError,
     ["from_tensor", "bool or floating", "int64"]),
    (lambda: attnkit.alibi_slopes(0), ValueError, ["n_heads", ">= 1", "0"]),
    (lambda: attnkit.TileConfig(block_q=0), ValueError, ["block_q", "positive", "0"]),
    (lambda: attnkit.TileConfig(block_k=64, max_chunk=32), ValueError, ["max_chunk", "block_k"]),
])
def test_spec_errors(fn, exc, words):
    raises(exc, *words, fn=fn)


def test_additive_masks_only_combine_with_and():
    add = torch.zeros(10, 12)
    with pytest.raises(TypeError, match="only be combined with '&'"):
        attnkit.attention(q, k, v, mask=M.from_tensor(add) | M.causal())


@pytest.mark.parametrize("backend, kw, why", [
    ("sdpa", dict(softcap=10.0), "no logit softcap"),
    ("flex", dict(mask=M.causal(), dropout_p=0.1), "FlexAttention has no dropout"),
])

def test_named_backend_that_cannot_serve_says_why(backend, kw, why):
    with pytest.raises(attnkit.UnsupportedCall) as e:
        attnkit.attention(q, k, v, backend=backend, **kw)
    assert f"backend {backend!r} cannot serve this call" in str(e.value) and why in str(e.value)



@pytest.mark.parametrize("kw", [dict(), dict(softcap=10.0), dict(dropout_p=0.1),
                                dict(mask=M.causal() & M.window(3)), dict(bias=attnkit.alibi(8)),
                                dict(mask=torch.zeros(10, 12))])
def test_auto_serves_every_valid_call(kw):
    qg = q.clone().requires_grad_()
    out = attnkit.attention(qg, k, v, **kw)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(qg.grad).all()

