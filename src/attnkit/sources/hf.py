"""Any Hugging Face ``transformers`` checkpoint as a model source (:class:`HFSource`).

The directory is checked before any weight is read (:func:`attnkit.sources.hf_plan.plan`:
local files only, no custom code, every tensor present) and every attention layer runs
through attnkit (:mod:`attnkit.hf`, ``attn_implementation="attnkit[:variant]"``).

``attnkit inspect`` (:meth:`HFSource.capture`) loads the model as its config names it and
reads the weights of the shown layers (:mod:`.hf_views`: text, generation,
encoder-decoders, images). Running variants (``attnkit bench``, ``attnkit adapt``) needs
:meth:`HFSource.ready`: text encoders (final hidden states, the mean over the real tokens
as the sentence embedding) and decoders (a causal LM: next-token logits) only.

Everything about the attention calls comes from the integration itself
(:mod:`attnkit.integrations.hf.calls`): a variant in some layers only is the model set to
``"attnkit"`` with the chosen modules given ``"attnkit:<variant>"``; the q/k/v of a run
(after RoPE) and each call's mask and arguments are what the attention function noted
inside ``calls.record()``; :meth:`HFSource.attend` hands a layer's call, with other q/k/v,
to :func:`attnkit.hf.attnkit_attention_forward` -- the function the model calls, so it
is the model's attention operation, no projections; the per-head outputs of a run come
from :func:`attnkit.integrations.hf.heads.record`.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.errors import UsageError
from ..engine.variants import parse_variant
from . import hf_plan
from .capture import Capture
from .hf_views import encode, text_limit
from .protocol import Outputs, text_windows
from .words import Tokens

__all__ = ["HFSource"]


def _causal_or_none(mask) -> bool:
    """Is a call's mask one linear attention serves: none, every pair, or causal?"""
    from ..integrations.hf.mask_view import as_spec
    mask = as_spec(mask)
    if mask is None:
        return True
    if isinstance(mask, Tensor):
        return False
    return mask.is_causal or mask.band() == (-math.inf, math.inf)


class HFSource:
    """A transformers checkpoint (an :class:`~attnkit.sources.hf_plan.Plan`) as a model
    source; see the module doc. ``notes``: why it runs on transformers (the rule of
    :func:`attnkit.sources.open_source`)."""
    via = "transformers"

    def __init__(self, plan, name: str | None = None, backend: str = "auto",
                 device: str = "cpu", notes=()):
        self.plan, self.backend, self.notes = plan, backend, list(notes)
        self.name = str(name or plan.directory)
        self.arch, self.kind = plan.arch, plan.kind
        self.n_layers, self.n_decoder_layers = plan.n_layers, plan.n_decoder_layers
        self.can_generate = plan.can_generate and self.kind in ("decoder", "encoder-decoder")
        self.device = torch.device(device)
        self.model = None            # loaded by ready() (inspect loads its own per capture)
        self._proc = None

    def check_backend(self) -> None:
        from ..integrations import hf as hf_api
        if self.backend != "auto":
            try:
                hf_api.implementation_name(self.backend)
            except ValueError as e:
                raise UsageError(f"--backend: {e}") from None

    def processor(self):
        """The model's own tokenizer (text) or image processor (vision)."""
        if self._proc is None:
            self._proc = hf_plan.load_processor(self.plan)
        return self._proc

    @property
    def tokenizer(self):
        return self.processor()

    def load_model(self):
        """(the model as its config names it, attention on ``backend``, in eval mode;
        notes on unused tensors)."""
        return hf_plan.load_model(self.plan, self.backend)

    # -- inspect -----------------------------------------------------------------
    def tokens(self, text: str, generate: int | None = None) -> Tokens:
        """The tokens :meth:`capture` would read (truncated as it would)."""
        reserve = generate + 1 if generate and self.kind == "decoder" else 0
        limit, why = text_limit(self.plan, self.processor(), reserve)
        return encode(self.processor(), text, limit, why, [])[1]

    def capture(self, text, layers, generate=None, target=None, image=None,
                dec_layers=None) -> Capture:
        """``attnkit inspect``'s views (:mod:`.hf_views`) on the model as its config names
        it, loaded for this capture with ``backend``."""
        from . import hf_views
        proc = self.processor()
        model, notes = self.load_model()
        notes = list(self.notes) + notes
        generated, img = None, None
        # only the shown layers recompute their weights (encoder and decoder layers share
        # layer indices in encoder-decoders: there every layer does)
        with hf_plan.weights_context(None if self.kind == "encoder-decoder" else layers):
            if self.kind == "image":
                views, img = hf_views.capture_image(self.plan, model, proc, image, layers,
                                                    notes)
            else:
                views, generated = hf_views.capture_text(
                    self.plan, model, proc, text, layers, dec_layers or layers, generate,
                    target, notes)
        return Capture(self.name, self.arch, "transformers", self.kind,
                       image if self.kind == "image" else text, views,
                       hf_plan.describe_implementation(self.backend), notes, self.n_layers,
                       image=img, generated=generated)

    # -- running variants ----------------------------------------------------------
    def ready(self) -> "HFSource":
        """Load the model to run variants on it (bench, adapt): a text encoder or a causal
        LM, every layer's attention through the integration, one self-attention call per
        layer (found by a short run). ValueError (one line) for a model that cannot."""
        if self.model is not None:
            return self
        from ..integrations import hf as hf_api
        plan = self.plan
        if plan.kind not in ("encoder", "decoder"):
            raise ValueError(f"{plan.directory}: {plan.arch} is an {plan.kind} model; bench "
                             f"measures text encoders (BERT-like) and decoders (causal LMs)")
        plan = hf_plan.for_logits(plan) if plan.kind == "decoder" else plan
        self.plan, self.arch = plan, plan.arch
        try:
            tok = self.processor()
            model, load_notes = self.load_model()
        except UsageError as e:
            raise ValueError(str(e).removeprefix("--model: ")) from None
        self.notes += load_notes
        try:
            hf_api.check(model)         # attention outside transformers' interface
        except ValueError as e:
            raise ValueError(f"{plan.directory}: {str(e).removeprefix('model: ')}") from None
        self.model = model.to(self.device).eval()
        self.name = f"{self.name} via transformers' {plan.arch}"
        self.tokenizer_name = type(tok).__name__
        limit, _ = text_limit(plan, tok)
        self.max_tokens = int(limit) if limit else 1 << 20
        try:
            calls = self._record(self._probe(8))
        except (ValueError, TypeError, KeyError, RuntimeError, IndexError) as e:
            raise ValueError(f"{plan.directory}: {plan.arch} does not run on input_ids alone "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else e!r})")\
                from None
        self.mods = [c.module for c in calls]
        if not calls or len({id(m) for m in self.mods}) != len(calls) or any(
                c.query.shape[2] != c.key.shape[2] for c in calls):
            raise ValueError(f"{plan.directory}: {plan.arch} does not run one self-attention "
                             f"call per layer ({len(calls)} calls on {len(set(map(id, self.mods)))}"
                             f" modules); bench measures self-attention encoders and decoders")
        c0 = calls[0]
        self.n_layers, self.n_heads = len(calls), c0.query.shape[1]
        self.n_kv_heads, self.head_dim = c0.key.shape[1], c0.query.shape[-1]
        cfg = plan.config
        rope = any(getattr(cfg, f, None) for f in ("rope_theta", "rope_parameters",
                                                   "rope_scaling", "rotary_dim"))
        self.positions = ("relative bias" if c0.args.get("position_bias") is not None else
                          "rope" if rope else "absolute")
        return self

    # -- text ----------------------------------------------------------------------
    def windows(self, text: str, n: int) -> list[Tensor]:
        wins = self.text_windows(text, n)
        rows = self.model.get_input_embeddings().num_embeddings
        top = max((max(w) for w in wins), default=0)
        if top >= rows:
            raise ValueError(f"--model: {self.plan.directory}: its tokenizer gives token id "
                             f"{top} but the model's embedding has {rows} rows (tokenizer and "
                             f"weights do not match)")
        return [torch.tensor([w], dtype=torch.long, device=self.device) for w in wins]

    def text_windows(self, text: str, n: int, backend: bool = True) -> list[list[int]]:
        """n-token windows with the tokenizer's special tokens (:func:`text_windows` on its
        ``tokenizers`` backend; a tokenizer without one: the special tokens it puts around
        a one-word text, around each window)."""
        bt = getattr(self.tokenizer, "backend_tokenizer", None) if backend else None
        if bt is not None:
            return text_windows(bt, text, n)[0]
        tok = self.tokenizer
        body = tok(text, add_special_tokens=False)["input_ids"]
        word = tok("a", add_special_tokens=False)["input_ids"]
        shell = tok("a")["input_ids"]
        cut = next((i for i in range(len(shell)) if shell[i:i + len(word)] == word), None)
        if cut is None:
            raise ValueError(f"--model: cannot tell where {type(tok).__name__} puts its "
                             f"special tokens (it encodes 'a' as {word}, {shell} with them)")
        prefix, suffix = shell[:cut], shell[cut + len(word):]
        per = n - len(prefix) - len(suffix)
        if per < 1:
            raise ValueError(f"--seq: {n} leaves no room for text next to the tokenizer's "
                             f"{len(prefix) + len(suffix)} special tokens")
        return [prefix + body[i:i + per] + suffix for i in range(0, len(body) - per + 1, per)]

    def count_tokens(self, text: str) -> int:
        bt = getattr(self.tokenizer, "backend_tokenizer", None)
        if bt is not None:
            bt.no_truncation()
            return len(bt.encode(text).ids)
        return len(self.tokenizer(text)["input_ids"])

    # -- variants ------------------------------------------------------------------
    def apply(self, variant, n: int, layers: list[int] | None = None) -> None:
        """All layers: the model set to ``attnkit:<variant>``; some: the model set to
        ``attnkit`` (dense) and those modules to ``attnkit:<variant>``."""
        from ..integrations import hf as hf_api
        from ..integrations.hf.calls import set_implementation
        var = parse_variant(variant) if isinstance(variant, str) else variant
        var.attention_only("variant")
        name = hf_api.register(None if var.is_dense else var.text)
        every = layers is None or var.is_dense
        for i, m in enumerate(self.mods):
            set_implementation(m, None if every or i not in layers else name)
        self.model.set_attn_implementation(name if every else hf_api.register())

    def check_variant(self, variant, n: int) -> None:
        """Refuse (ValueError) what the model cannot take: linear attention where a layer
        has a mask other than causal/none, a logit softcap or a position bias; then the
        variant on a short input (the integration's own refusals)."""
        from ..core.errors import UnsupportedCall
        var = parse_variant(variant) if isinstance(variant, str) else variant
        ids = self._probe(max(2, min(n, 16)))
        if var.is_linear:
            self.apply("dense", n)
            for i, c in enumerate(self._record(ids)):
                why = ("adds a position bias to its scores, which linear attention (no "
                       "scores) cannot apply" if c.args.get("position_bias") is not None
                       else f"caps its scores (softcap {c.args['softcap']:g}), which linear "
                       "attention (no scores) cannot apply" if c.args.get("softcap")
                       else None if _causal_or_none(c.attention_mask)
                       else f"has the mask {c.attention_mask!r}; linear attention serves only "
                       "a causal mask or none")
                if why:
                    raise ValueError(f"this model cannot take it: layer {i} of "
                                     f"{self.plan.arch} {why}")
        try:
            self.apply(var, n)
            with torch.no_grad():
                self.forward(ids)
        except (ValueError, TypeError, KeyError, UnsupportedCall) as e:
            raise ValueError(f"this model cannot take it: {str(e).splitlines()[0]}") from None
        finally:
            self.apply("dense", n)

    # -- runs ----------------------------------------------------------------------
    def _probe(self, t: int) -> Tensor:
        """A short input ``(1, t)`` of valid token ids (for checks, not measurements)."""
        rows = self.model.get_input_embeddings().num_embeddings
        return torch.arange(min(t, self.max_tokens), device=self.device)[None] % rows

    def forward(self, ids: Tensor, model=None, **kw):
        """The transformers forward on unpadded ``ids (B, T)`` of ``model`` (default: the
        source's; adapt's student is a copy): a decoder's LM (no cache), an encoder's base
        model."""
        model = self.model if model is None else model
        mask = torch.ones_like(ids)
        if self.kind == "decoder":
            return model(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
        return model.base_model(input_ids=ids, attention_mask=mask, **kw)

    @torch.no_grad()
    def run(self, ids: Tensor) -> Outputs:
        out = self.forward(ids)
        if self.kind == "decoder":
            return Outputs(logits=out.logits)
        return Outputs.pooled(out.last_hidden_state)                         # (B, T, d)

    @torch.no_grad()
    def _record(self, ids: Tensor) -> list:
        """Run once as applied, keeping every attention call the model makes
        (:func:`attnkit.integrations.hf.calls.record`)."""
        from ..integrations.hf.calls import record
        with record() as calls:
            self.forward(ids)
        self._calls = calls
        return calls

    def attention_inputs(self, ids: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per layer ``(q (B, H, T, D), k, v (B, Hkv, T, D))`` as the attention function
        received them (after RoPE), from a run of the model as applied (dense in bench)."""
        return [(c.query, c.key, c.value) for c in self._record(ids)]

    @torch.no_grad()
    def captured_outputs(self, ids: Tensor) -> list[Tensor]:
        """Each layer's attention output as the model computed it ``(B, H, T, Dv)``."""
        from ..integrations.hf import heads
        with heads.record() as rec:
            self.forward(ids)
        return [rec.outputs[m].transpose(1, 2) for m in self.mods]

    def _call(self, layer: int, q: Tensor, k: Tensor):
        calls = getattr(self, "_calls", [])
        if not 0 <= layer < len(calls):
            raise ValueError(f"layer: expected 0..{self.n_layers - 1} after attention_inputs()"
                             f", got {layer}")
        c = calls[layer]
        if q.shape[2] != c.query.shape[2] or k.shape[2] != c.key.shape[2]:
            raise ValueError(f"q, k: expected the lengths of the last attention_inputs() "
                             f"({c.query.shape[2]}, {c.key.shape[2]}), got ({q.shape[2]}, "
                             f"{k.shape[2]})")
        return c

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``layer``'s attention operation under the applied variant on ``q (B, H, T, D)``,
        ``k/v (B, Hkv, T, D)`` -> ``(B, H, T, Dv)``: the integration's function on the
        layer's call (mask, scaling, softcap, bias) with these q/k/v."""
        from ..integrations.hf import attnkit_attention_forward
        c = self._call(layer, q, k)
        args = dict(c.args, dropout=0.0)
        args.pop("output_attentions", None)
        with torch.no_grad():
            out, _ = attnkit_attention_forward(c.module, q, k, v, c.attention_mask, **args)
        return out.transpose(1, 2)

    def _spec(self, module, mask, n: int):
        """(the module's implementation, the mask attnkit gets for ``n`` keys: the variant's
        pattern AND ``mask``), as :func:`attnkit.hf.attnkit_attention_forward` builds it."""
        from ..integrations.hf.attention import variant_mask
        from ..integrations.hf.calls import implementation_of
        from ..integrations.hf.names import parse_implementation
        impl = parse_implementation(implementation_of(module))
        return impl, variant_mask(impl, module, mask, n)

    def served_by(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> str:
        from ..engine.functional import make_call, select_backend
        from ..integrations.hf.attention import call_mask
        c = self._call(layer, q, k)
        impl, spec = self._spec(c.module, call_mask(c.attention_mask, c.module, q, k,
                                                    c.args.get("is_causal")), k.shape[2])
        if impl.variant is not None and impl.variant.is_linear:
            return "linear_attention (O(T) in PyTorch ops)"
        if impl.backend != "auto":
            return impl.backend
        name, why = select_backend(make_call(q, k, v, mask=spec, bias=c.args.get("position_bias"),
                                             scale=c.args.get("scaling"),
                                             softcap=c.args.get("softcap")))
        return f"{name}: {why}"

    def pattern_mask(self, layer: int, n: int) -> Tensor | None:
        """The applied variant's allowed pairs in ``layer`` ``(Hm, n, n)`` as the
        integration builds them (None: dense or linear)."""
        impl, spec = self._spec(self.mods[layer], None, n)
        if impl.variant is None or not impl.variant.is_sparse or spec is None:
            return None
        return spec.dense(n, n, device=self.device)[0]

    @torch.no_grad()
    def weights(self, ids: Tensor, layers: list[int]) -> dict[int, Tensor]:
        """The attention weights of ``layers`` from ``output_attentions`` (only those
        layers recompute them: :func:`attnkit.hf.weights_for`): ``{layer: (H, T, T)}``."""
        from ..integrations import hf as hf_api
        idx = [getattr(self.mods[i], "layer_idx", None) for i in layers]
        with hf_api.weights_for(layers=None if None in idx else idx):
            atts = self.forward(ids, output_attentions=True).attentions
        if atts is None or len(atts) != self.n_layers:
            raise ValueError(f"{self.plan.arch}: output_attentions gave "
                             f"{0 if atts is None else len(atts)} maps for {self.n_layers} layers")
        return {i: atts[i][0].float() for i in layers}
