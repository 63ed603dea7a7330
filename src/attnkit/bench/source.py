"""What ``attnkit bench --model`` needs from a model: the :class:`ModelSource` protocol,
and :class:`AttnkitSource`, attnkit's own ports (``attnkit.load(NAME|DIR)``: BERT
encoders, GPT-2/Llama decoders). Any other transformers checkpoint runs as
:class:`~attnkit.bench.source_hf.HFSource` (``attn_implementation="attnkit:<variant>"``);
:func:`open_source` chooses as ``attnkit inspect`` does. A source implements:

* ``windows(text, n)`` -> list of ``ids (1, n)``: the text cut into n-token windows;
* ``check(variant)``: raise ValueError saying why the model cannot take the variant;
* ``apply(variant, layers)``: swap the variant into those attention layers (None: all;
  ``dense``: restore the model as loaded);
* ``run(ids)`` -> :class:`Outputs` (hidden states, sentence embedding or logits);
* ``attention_inputs(ids)`` -> per layer ``(q, k, v)`` of a dense run, as the
  attention operation receives them (after RoPE);
* ``attend(layer, q, k, v)``: that layer's attention operation under the applied
  variant (no projections): ``(B, H, T, Dv)``;
* ``weights(ids, layers)``: the dense run's attention weights ``{layer: (H, T, T)}``;
* ``pattern_mask(layer, n)``: the applied variant's allowed pairs ``(Hm, n, n)`` or None;
* ``served_by(layer, q, k, v)``: which kernel serves the applied variant, and why.

:func:`attnkit.models.common.apply_variant` is the one place where a variant name becomes
model settings.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .protocol import ModelSource, Outputs, text_windows

__all__ = ["Outputs", "ModelSource", "AttnkitSource", "open_source", "text_windows"]


def _attention_modules(model) -> list:
    from ..modules import MultiHeadAttention
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


class AttnkitSource:
    """An attnkit model (``attnkit.load(...)`` or built in Python) as a bench source."""

    def __init__(self, model, name: str | None = None):
        from ..models import BERT, GPT
        if not isinstance(model, (BERT, GPT)):
            raise ValueError(f"model: expected a text encoder (BERT) or decoder (GPT, Llama), "
                             f"got {type(model).__name__}")
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("model: has no tokenizer (a tokenizer.json next to the weights) "
                             "to read the text with")
        self.model = model.eval()
        self.name = name or str(getattr(model, "source", type(model).__name__))
        self.kind = "decoder" if isinstance(model, GPT) else "encoder"
        self.mods = _attention_modules(model)
        m0 = self.mods[0]
        self.n_layers, self.n_heads, self.n_kv_heads = len(self.mods), m0.n_heads, m0.n_kv_heads
        self.head_dim = m0.head_dim
        self.max_tokens = int(model.cfg.max_len)
        self.tokenizer_name = type(model.tokenizer.model).__name__
        self.positions = ("alibi" if m0.alibi is not None else "rope" if m0.rope is not None
                          else "absolute")
        self.device = next(model.parameters()).device

    # -- text ----------------------------------------------------------------
    def windows(self, text: str, n: int) -> list[Tensor]:
        wins, _ = text_windows(self.model.tokenizer, text, n)
        return [torch.tensor([w], dtype=torch.long, device=self.device) for w in wins]

    def count_tokens(self, text: str) -> int:
        self.model.tokenizer.no_truncation()
        return len(self.model.tokenizer.encode(text).ids)

    # -- variants ------------------------------------------------------------
    def apply(self, variant, n: int, layers: list[int] | None = None) -> None:
        from ..models.common import apply_variant
        apply_variant(self.model, variant, n, causal=self.kind == "decoder", layers=layers)

    def check(self, variant, n: int) -> None:
        """Apply ``variant`` and run a short input: the model's own refusal, as ValueError."""
        from ..core.errors import UnsupportedCall
        t = min(n, 16)
        ids = torch.full((1, t), self.model.pad_token_id + 1, dtype=torch.long,
                         device=self.device)
        try:
            self.apply(variant, n)
            with torch.no_grad():
                self.model(ids)
        except (ValueError, TypeError, UnsupportedCall) as e:
            raise ValueError(f"this model cannot take it: {e}") from None
        finally:
            self.apply("dense", n)

    # -- runs ----------------------------------------------------------------
    @torch.no_grad()
    def run(self, ids: Tensor) -> Outputs:
        out = self.model(ids)
        if self.kind == "decoder":
            return Outputs(logits=out)
        return Outputs(hidden=out, embedding=self.model.mean_pool(out))

    @torch.no_grad()
    def attention_inputs(self, ids: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        xs = self._capture(ids)[0]
        out = []
        for m, x in zip(self.mods, xs):
            q = m.project_q(x)                                                  # (B, H, T, D)
            k, v = m.project_kv(x)                                              # (B, Hkv, T, D)
            if m.rope is not None:
                q, k = m.rope(q, k, 0)
            out.append((q, k, v))
        return out

    @torch.no_grad()
    def captured_outputs(self, ids: Tensor) -> list[Tensor]:
        """Each layer's attention output as the model computed it (the input of its output
        projection) ``(B, H, T, Dv)``: checks :meth:`attend` against the model."""
        return self._capture(ids)[1]

    def _capture(self, ids: Tensor):
        xs, outs, hooks = [None] * len(self.mods), [None] * len(self.mods), []
        for i, m in enumerate(self.mods):
            def pre(mod, args, kwargs, i=i):
                xs[i] = args[0] if args else kwargs["x"]

            def o_pre(mod, args, i=i, H=m.n_heads):
                B, T, HD = args[0].shape
                outs[i] = args[0].view(B, T, H, HD // H).transpose(1, 2)
            hooks.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(m.o_proj.register_forward_pre_hook(o_pre))
        try:
            self.model(ids)
        finally:
            for h in hooks:
                h.remove()
        return xs, outs

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The attention operation of ``layer`` as its module runs it (the same call
        :class:`~attnkit.MultiHeadAttention` makes after projecting)."""
        from ..engine.functional import attention
        from ..linear import linear_attention
        m = self.mods[layer]
        if m.linear is not None:
            return linear_attention(q, k, v, m.linear, causal=m.pattern is not None)
        return attention(q, k, v, mask=m.pattern, bias=m.alibi, backend=m.backend)

    def served_by(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> str:
        from ..engine.functional import make_call, select_backend
        m = self.mods[layer]
        if m.linear is not None:
            return "linear_attention (O(T) in PyTorch ops)"
        if m.backend != "auto":
            return m.backend
        name, why = select_backend(make_call(q, k, v, mask=m.pattern, bias=m.alibi))
        return f"{name}: {why}"

    def pattern_mask(self, layer: int, n: int) -> Tensor | None:
        """The applied variant's allowed pairs in ``layer`` ``(Hm, n, n)`` (None: no mask
        or linear attention)."""
        m = self.mods[layer]
        if m.linear is not None or m.pattern is None:
            return None
        return m.pattern.dense(n, n, device=self.device)[0]

    @torch.no_grad()
    def weights(self, ids: Tensor, layers: list[int]) -> dict[int, Tensor]:
        """The dense run's attention weights of ``layers``: ``{layer: (H, T, T)}`` (only
        those layers recompute them)."""
        _, ws = self.model(ids, return_weights=set(layers))
        return {i: ws[i][0].float() for i in layers}


def open_source(name_or_dir: str, device: str = "cpu", via: str = "auto"):
    """A bench source, chosen by ``attnkit inspect``'s rule
    (:func:`attnkit.analysis.sources.open_source`): a registered name or a directory that
    ``attnkit.load`` accepts exactly -> :class:`AttnkitSource` (attnkit's port); any other
    transformers checkpoint -> :class:`~attnkit.bench.source_hf.HFSource` (``via``:
    ``auto``, ``attnkit`` or ``transformers`` forces a path). Raises ValueError (bad
    directory, unsupported architecture, no tokenizer, attention outside transformers'
    AttentionInterface, not a text encoder or decoder)."""
    import re

    from ..analysis.sources import open_source as choose
    from ..core.errors import UsageError
    if via not in ("auto", "attnkit", "transformers"):
        raise ValueError(f"via: expected 'auto', 'attnkit' or 'transformers', got {via!r}")
    try:
        chosen = choose(name_or_dir, via=via)
        if chosen.via == "attnkit":
            return AttnkitSource(chosen.model.to(device), name=str(name_or_dir))
        from .source_hf import HFSource
        return HFSource(chosen.plan, name=str(name_or_dir), device=device, notes=chosen.notes)
    except UsageError as e:   # inspect's wording, as a ValueError (the CLI adds --model)
        raise ValueError(re.sub(r"\binspect\b", "attnkit", str(e).removeprefix("--model: ")))\
            from None
