"""Learned attention sinks (``attention(..., sinks=)``, GPT-OSS's ``s_aux``): every row's
softmax gets one more column of logit ``sinks[h]`` and value 0. Checked against an
independent fp64 construction (the sink column concatenated to the scores), forward and
gradients (q, k, v and the sinks), with GQA, masks and a fully masked row."""
import pytest
import torch

import attnkit
from attnkit import masks as M
from attnkit.core.errors import UnsupportedCall

B, H, HKV, TQ, TK, D = 2, 4, 2, 5, 9, 8


def concat_column(q, k, v, sinks, keep, scale):
    """softmax([scores, sink]) without the sink column, @ v, in float64."""
    G = H // HKV
    kk, vv = (t.double().repeat_interleave(G, 1) for t in (k, v))
    s = (q.double() @ kk.transpose(-1, -2)) * scale
    s = s.masked_fill(~keep, float("-inf"))
    col = sinks.double().view(1, H, 1, 1).expand(B, H, TQ, 1)
    w = torch.softmax(torch.cat([s, col], -1), -1)[..., :-1]
    return w @ vv, w


def inputs(seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*s, generator=g) for s in ((B, H, TQ, D), (B, HKV, TK, D),
                                                       (B, HKV, TK, D)))
    s = 2 * torch.randn(H, generator=g)
    return tuple(t.requires_grad_() for t in (q, k, v, s))


def keep_mask(kind):
    """(mask for attnkit, the same as a bool (.., TQ, TK) tensor for the reference)."""
    if kind == "none":
        return None, torch.ones(1, 1, TQ, TK, dtype=torch.bool)
    if kind == "tensor":
        keep = torch.rand(B, 1, TQ, TK, generator=torch.Generator().manual_seed(1)) > 0.4
        keep[1, :, 2] = False                                   # a fully masked row: 0
        return keep, keep
    spec = M.causal() & M.window(3)      # (the mask's semantics are tested elsewhere)
    return spec, spec.dense(TQ, TK, device="cpu")


@pytest.mark.parametrize("backend", ["reference", "tiled", "auto"])
@pytest.mark.parametrize("kind", ["none", "tensor", "window"])
def test_sinks_match_the_concatenated_column(backend, kind):
    q, k, v, s = inputs(0)
    mask, keep = keep_mask(kind)
    out, w = attnkit.attention(q, k, v, mask=mask, sinks=s, backend=backend,
                               return_weights=True)
    ref, ref_w = concat_column(q, k, v, s, keep, D ** -0.5)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(w.double(), ref_w, atol=2e-6, rtol=0)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = attnkit.attention(q, k, v, mask=mask, sinks=s, backend=backend)
    ours = torch.autograd.grad((out * g.float()).sum(), (q, k, v, s))
    theirs = torch.autograd.grad((ref * g).sum(), (q, k, v, s))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.double(), b.double(), atol=5e-6, rtol=0)


def test_backends_without_sinks_refuse_them_by_name():
    q, k, v, s = inputs(0)
    with pytest.raises(UnsupportedCall, match="no learned sinks"):
        attnkit.attention(q, k, v, sinks=s, backend="sdpa")
    with pytest.raises(ValueError, match=r"sinks: expected a floating-point tensor of shape "
                                         r"\(H,\) = \(4,\)"):
        attnkit.attention(q, k, v, sinks=torch.zeros(3))
