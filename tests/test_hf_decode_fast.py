"""The decoding step's plain path (``attnkit.integrations.hf.fast``): a dense decoding step
through transformers' attention interface gives the fp64 reference's output, takes the
plain path only where ``auto`` would run ``sdpa``, and still refuses bad input by name."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
import attnkit.hf  # noqa: E402
from attnkit.integrations.hf import attention as hf_attention  # noqa: E402
from attnkit.integrations.hf import fast  # noqa: E402
from transformers import masking_utils as mu  # noqa: E402


class Layer(torch.nn.Module):
    is_causal, layer_idx, num_key_value_groups = True, 0, 4

    def __init__(self, impl="attnkit"):
        super().__init__()
        self.config = transformers.LlamaConfig(num_attention_heads=8, num_key_value_heads=2)
        self.config._attn_implementation = attnkit.hf.register(impl.split(":", 1)[1]
                                                                if ":" in impl else None)


def step(B=2, N=11, pad=False, dtype=torch.float32, seed=0):
    """One decoding step: q (B, 8, 1, 16) on a cache of N keys (B, 2, N, 16) and its mask."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, h, t, 16, generator=g, dtype=dtype)
               for h, t in ((8, 1), (2, N), (2, N)))
    am = torch.ones(B, N, dtype=torch.bool)
    if pad:
        am[0, :3] = False
    mask = attnkit.hf.attnkit_mask(B, 1, N, N - 1, 0, mu.causal_mask_function, am)
    return q, k, v, am, mask


def reference(q, k, v, am):
    out = attnkit.attention(q.double(), k.double(), v.double(), scale=0.25, backend="reference",
                            mask=attnkit.masks.key_padding(am))
    return out.transpose(1, 2).to(q.dtype)                                    # (B, 1, H, Dv)


def spy(monkeypatch):
    calls = []
    orig = hf_attention.attention
    monkeypatch.setattr(hf_attention, "attention",
                        lambda *a, **k: calls.append(1) or orig(*a, **k))
    return calls


@pytest.mark.parametrize("pad", [False, True])
def test_decoding_step_equals_the_reference(pad, monkeypatch):
    calls = spy(monkeypatch)
    q, k, v, am, mask = step(pad=pad)
    out, w = attnkit.hf.attnkit_attention_forward(Layer(), q, k, v, mask, scaling=0.25)
    assert w is None and out.shape == (2, 1, 8, 16)
    assert torch.allclose(out, reference(q, k, v, am), atol=1e-5)
    assert len(calls) == int(pad)        # no padding: the plain path; padding: attention()
    assert any(v for k, v in fast.plain_choices().items() if k[0] == "cpu")


def test_only_where_auto_runs_sdpa(monkeypatch):
    calls = spy(monkeypatch)
    q, k, v, am, mask = step()
    with attnkit.use_backends("tiled", override=True):     # auto is not sdpa here
        out, _ = attnkit.hf.attnkit_attention_forward(Layer(), q, k, v, mask, scaling=0.25)
    assert calls and torch.allclose(out, reference(q, k, v, am), atol=1e-5)
    calls.clear()
    for impl in ("attnkit:reference", "attnkit:window:4"):   # a named backend, a variant
        attnkit.hf.attnkit_attention_forward(Layer(impl), q, k, v, mask, scaling=0.25)
    assert len(calls) == 2


def test_bad_input_is_still_refused_by_name():
    q, k, v, am, mask = step()
    with pytest.raises(ValueError, match="scale: expected a positive finite number"):
        attnkit.hf.attnkit_attention_forward(Layer(), q, k, v, mask, scaling=-1.0)
    with pytest.raises(TypeError, match="q, k, v: expected one dtype"):
        attnkit.hf.attnkit_attention_forward(Layer(), q, k.double(), v, mask, scaling=0.25)
    with pytest.raises(ValueError, match="k: expected a number of heads Hkv dividing H=8"):
        attnkit.hf.attnkit_attention_forward(Layer(), q, k[:, :1].expand(2, 3, -1, -1)
                                             .contiguous(), v[:, :1].expand(2, 3, -1, -1)
                                             .contiguous(), mask, scaling=0.25)


def test_config_reads_past_the_properties_equal_getattr():
    """config_attr reads two config properties from their instance fields (the hot path);
    on this transformers version they must be what the properties return, set or not."""
    cfg = transformers.LlamaConfig()
    for name in ("_attn_implementation", "output_attentions"):
        assert hf_attention.config_attr(cfg, name) == getattr(cfg, name)
    cfg._attn_implementation = "eager"
    cfg.output_attentions = True
    for name in ("_attn_implementation", "output_attentions"):
        assert hf_attention.config_attr(cfg, name) == getattr(cfg, name)
    assert hf_attention.config_attr(cfg, "output_attentions") is True


def test_validate_at_once_agrees_with_the_checks():
    """The one-line acceptance of validate_qkv accepts only what the full checks accept."""
    from attnkit.call import _valid_at_once, validate_qkv
    shapes = [((2, 8, 1, 16), (2, 2, 5, 16), (2, 2, 5, 8)), ((2, 8, 1, 16), (2, 3, 5, 16),
              (2, 3, 5, 16)), ((2, 8, 1, 16), (1, 2, 5, 16), (1, 2, 5, 16)),
              ((2, 8, 1, 16), (2, 2, 5, 8), (2, 2, 5, 16)), ((2, 8, 0, 16), (2, 2, 5, 16),
              (2, 2, 5, 16)), ((2, 8, 1, 16), (2, 2, 4, 16), (2, 2, 5, 16))]
    for sq, sk, sv in shapes:
        q, k, v = torch.randn(sq), torch.randn(sk), torch.randn(sv)
        for empty in (False, True):
            if _valid_at_once(q, k, v, empty):
                validate_qkv(q, k, v, allow_empty=empty)     # must not raise
            else:
                with pytest.raises((ValueError, TypeError)):   # none has Hkv = 0
                    validate_qkv(q, k, v, allow_empty=empty)
    assert not _valid_at_once(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 3, 4).double(),
                              torch.randn(1, 2, 3, 4), False)
