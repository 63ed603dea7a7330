"""attnkit's own ports as a model source (:class:`AttnkitSource`): ``attnkit.load(NAME|DIR)``
gives BERT encoders and GPT-2/Llama decoders; any other model runs as
:class:`~attnkit.sources.hf.HFSource`. The protocol both implement is
:class:`~attnkit.sources.protocol.ModelSource`.

:func:`attnkit.models.common.apply_variant` is the one place where a variant name becomes
the port's settings; the port's attention modules (:class:`~attnkit.MultiHeadAttention`)
give q/k/v and the per-head outputs through forward pre-hooks and the weights through
``return_weights``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..core.errors import UnsupportedCall, UsageError
from .capture import Capture, View, assemble, piece_tokens, stack
from .protocol import Outputs, text_windows
from .words import Tokens, from_offsets

__all__ = ["AttnkitSource"]


def _attention_modules(model) -> list:
    from ..modules import MultiHeadAttention
    return [m for m in model.modules() if isinstance(m, MultiHeadAttention)]


class AttnkitSource:
    """An attnkit model (``attnkit.load(...)`` or built in Python) as a model source;
    ``backend``: the one its attention runs on (``attnkit.load(..., backend=)``)."""
    via = "attnkit"

    def __init__(self, model, name: str | None = None, backend: str = "auto", notes=()):
        from ..models import BERT, GPT
        if not isinstance(model, (BERT, GPT)):
            raise ValueError(f"model: expected a text encoder (BERT) or decoder (GPT, Llama), "
                             f"got {type(model).__name__}")
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("model: has no tokenizer (a tokenizer.json next to the weights) "
                             "to read the text with")
        self.model = model.eval()
        self.name = name or str(getattr(model, "source", type(model).__name__))
        self.backend, self.notes = backend, list(notes)
        cfg = getattr(model, "hf_config", {}) or {}
        self.arch = (cfg.get("architectures") or [type(model).__name__])[0]
        self.kind = "decoder" if isinstance(model, GPT) else "encoder"
        self.can_generate = self.kind == "decoder"
        self.mods = _attention_modules(model)
        m0 = self.mods[0]
        self.n_layers, self.n_heads, self.n_kv_heads = len(self.mods), m0.n_heads, m0.n_kv_heads
        self.n_decoder_layers = self.n_layers
        self.head_dim = m0.head_dim
        self.max_tokens = int(model.cfg.max_len)           # positions (inspect: the tokenizer's)
        self.tokenizer_name = type(model.tokenizer.model).__name__
        self.positions = ("alibi" if m0.alibi is not None else "rope" if m0.rope is not None
                          else "absolute")
        self.device = next(model.parameters()).device

    def ready(self) -> "AttnkitSource":
        """The model is loaded and runs variants (nothing left to do for a port)."""
        return self

    def check_backend(self) -> None:
        pass    # attnkit.load checked the backend

    # -- text ----------------------------------------------------------------
    def windows(self, text: str, n: int) -> list[Tensor]:
        wins, _ = text_windows(self.model.tokenizer, text, n)
        return [torch.tensor([w], dtype=torch.long, device=self.device) for w in wins]

    def count_tokens(self, text: str) -> int:
        self.model.tokenizer.no_truncation()
        return len(self.model.tokenizer.encode(text).ids)

    def tokens(self, text: str, generate: int | None = None) -> Tokens:
        """The tokens :meth:`capture` would read (truncated as it would)."""
        return self._encode(text, [], generate + 1 if generate else 0)[1]

    def _encode(self, text: str, notes, reserve=0):
        tok, limit = self.model.tokenizer, self.model.max_tokens   # the tokenizer's limit
        tok.no_truncation()
        full = tok.encode(text)
        enc = full
        if limit is not None and len(full.ids) > limit - reserve:
            if limit - reserve < 1:
                raise UsageError(f"--generate: leaves no room for the text ({limit} positions)")
            tok.enable_truncation(limit - reserve)
            enc = tok.encode(text)
            tok.no_truncation()
            notes.append(f"text truncated to its first {limit - reserve} of {len(full.ids)} "
                         f"tokens (the model's maximum: {limit} tokens"
                         f"{f', {reserve} kept for generation' if reserve else ''})")
        return torch.tensor([enc.ids]), from_offsets(text, enc.tokens, enc.offsets,
                                                     enc.special_tokens_mask)

    # -- variants ------------------------------------------------------------
    def apply(self, variant, n: int, layers: list[int] | None = None) -> None:
        """Swap ``variant`` into those attention layers (None: all; ``dense``: restore)."""
        from ..models.common import apply_variant
        apply_variant(self.model, variant, n, causal=self.kind == "decoder", layers=layers)

    def check_variant(self, variant, n: int) -> None:
        """Apply ``variant`` and run a short input: the model's own refusal, as ValueError."""
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

    # -- inspect ---------------------------------------------------------------
    def capture(self, text, layers, generate=None, target=None, image=None,
                dec_layers=None) -> Capture:
        """``attnkit inspect``'s views of ``text`` (``generate``: greedy tokens with the
        KV cache, one row of weights per step); weights only for ``layers``."""
        m = self.model
        notes = list(self.notes)
        ids, toks = self._encode(text, notes, generate + 1 if generate else 0)
        ids = ids.to(self.device)
        want = set(layers)
        views, generated = [], None
        try:
            with torch.no_grad():
                if self.kind == "encoder":
                    _, ws = m(ids, torch.ones_like(ids), return_weights=want)
                    views.append(View("self", "self-attention (tokens x tokens)", toks, toks,
                                      stack(ws, layers), layers, False))
                elif not generate:
                    _, ws = m(ids, return_weights=want)
                    views.append(View("self", "causal self-attention (tokens x tokens)", toks,
                                      toks, stack(ws, layers), layers, True))
                else:
                    views, generated = self._generate(ids, toks, layers, generate, notes)
        except UnsupportedCall as e:
            raise UsageError(f"--backend {self.backend}: {e}") from None
        return Capture(self.name, self.arch, "attnkit", self.kind, text, views,
                       f"attnkit port, backend {self.backend}", notes, self.n_layers,
                       generated=generated)

    def _generate(self, ids, toks, layers, n, notes):
        m, tok = self.model, self.model.tokenizer
        eos = (getattr(m, "hf_config", {}) or {}).get("eos_token_id")
        eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        cache, want = m.new_cache(), set(layers)
        logits, ws = m(ids, cache=cache, return_weights=want)
        prompt = stack(ws, layers)                                        # (L, H, T, T)
        new, rows = [], []
        nxt = int(logits[0, -1].argmax())
        while True:
            new.append(nxt)
            logits, ws = m(torch.tensor([[nxt]], device=ids.device), cache=cache,
                           return_weights=want)
            rows.append([ws[i][0] for i in layers])                       # (H, 1, k)
            if len(new) == n or nxt in eos:
                break
            nxt = int(logits[0, -1].argmax())
        if len(new) < n:
            notes.append(f"generation stopped at the end-of-sequence token after {len(new)} "
                         f"of {n} tokens")
        special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        raw = [tok.id_to_token(i) or f"<{i}>" for i in new]
        dec = [tok.decode([i], skip_special_tokens=False) for i in new]
        gen = piece_tokens(raw, dec, [i in special for i in new], like=toks)
        T = ids.shape[1]
        return [View("self", "causal self-attention of the prompt (tokens x tokens)", toks,
                     toks, prompt, layers, True),
                View("generation", f"{len(new)} generated tokens (greedy, KV cache) x prompt "
                     f"+ generated tokens", gen, toks + gen, assemble(rows, T + len(new)),
                     layers, True)], gen.labels
