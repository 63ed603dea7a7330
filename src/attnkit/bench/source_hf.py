"""Any Hugging Face ``transformers`` checkpoint as a bench source (:class:`HFSource`).

The directory is checked and loaded by the transformers path of ``attnkit inspect``
(:mod:`attnkit.analysis.hf`: local files only, no custom code, every tensor present) with
the model's own tokenizer, and every attention layer runs through attnkit
(:mod:`attnkit.hf`, ``attn_implementation="attnkit[:variant]"``). Decoders (causal LMs:
GPT-2, Llama, Qwen2, Mistral, ...) give next-token logits; encoders (BERT-like) the final
hidden states and the mean over the real tokens as the sentence embedding.

Variants. All layers: ``model.set_attn_implementation(attnkit.hf.register(variant))``.
Some layers (``--layers``): every attention module carries its own implementation name
in the attribute :data:`ATTR` and the model runs :data:`LAYERWISE`, a name registered
with transformers' attention and mask interfaces whose function,
:func:`layerwise_attention`, hands each call to :func:`attnkit.hf.attnkit_attention_forward`
as if the model were set to that module's name (the module is seen through a view whose
``config._attn_implementation`` is the module's name; nothing is copied from
transformers).

Capture. :meth:`HFSource.attention_inputs` runs the model under :data:`LAYERWISE` while
recording every call the model makes to its attention function: ``q (B, H, T, D)`` and
``k/v (B, Hkv, T, D)`` after RoPE, the mask as the attnkit spec the model made, and the
call's own arguments (scaling, softcap, position bias, sliding window). :meth:`attend`
replays a layer's recorded call on given q/k/v under the applied variant -- the same
function the model calls, so it is the model's attention operation, no projections.
"""
from __future__ import annotations

import dataclasses
import math
import threading

import torch
from torch import Tensor

from ..engine.variants import parse_variant
from .protocol import Outputs, text_windows

__all__ = ["HFSource", "LAYERWISE", "ATTR", "layerwise_attention", "register_layerwise"]

LAYERWISE = "attnkit:bench-layers"   # the model-wide name while layers differ
ATTR = "attnkit_implementation"      # a module's own attnkit name under LAYERWISE
_state = threading.local()           # .calls: the list a capture records into, .outputs
_ARGS = ("dropout", "scaling", "softcap", "is_causal", "position_bias")


class _Config:
    """A module's config as the attention function should see it for one call."""

    def __init__(self, config, implementation: str):
        self._config, self._attn_implementation = config, implementation

    def __getattr__(self, name):
        return getattr(self._config, name)


class _AsLayer:
    """An attention module seen with its own implementation name (everything else its own)."""

    def __init__(self, module, implementation: str):
        self._module, self.config = module, _Config(module.config, implementation)

    def __getattr__(self, name):
        return getattr(self._module, name)


@dataclasses.dataclass
class _Call:
    """One call of the attention function, as the model made it."""
    module: object
    q: Tensor                # (B, H, T, D) after RoPE
    k: Tensor                # (B, Hkv, T, D)
    v: Tensor                # (B, Hkv, T, Dv)
    mask: object             # the attnkit spec (or tensor / None) the model passed
    args: dict               # scaling, softcap, position_bias, sliding_window, ...
    out: Tensor | None       # (B, H, T, Dv) what the function returned (if asked)

    @property
    def position_bias(self):
        return self.args.get("position_bias")


def _implementation_of(module) -> str:
    from ..integrations.hf.names import PREFIX
    return getattr(module, ATTR, None) or PREFIX


def _call_args(args: tuple, kwargs: dict) -> dict:
    """The arguments after ``attention_mask`` as keywords (positional ones bound by name)."""
    out = dict(zip(_ARGS, args))
    out.update(kwargs)
    out.pop("output_attentions", None)
    return out


def layerwise_attention(module, query: Tensor, key: Tensor, value: Tensor,
                        attention_mask=None, *args, **kwargs):
    """:data:`LAYERWISE`'s attention function: ``module``'s own attnkit implementation
    (attribute :data:`ATTR`, default ``"attnkit"``), recorded while a capture runs."""
    from ..integrations.hf import attnkit_attention_forward
    out, w = attnkit_attention_forward(_AsLayer(module, _implementation_of(module)), query,
                                       key, value, attention_mask, *args, **kwargs)
    calls = getattr(_state, "calls", None)
    if calls is not None:
        calls.append(_Call(module, query, key, value, attention_mask, _call_args(args, kwargs),
                           out.transpose(1, 2) if getattr(_state, "outputs", False) else None))
    return out, w


def register_layerwise() -> str:
    """Register :data:`LAYERWISE` with transformers (attention + mask interface)."""
    import transformers as tf

    from ..integrations import hf as hf_api
    from ..integrations.hf import attnkit_mask
    hf_api.register()               # the mask_mod reader, the plain name
    if LAYERWISE not in tf.AttentionInterface():
        tf.AttentionInterface.register(LAYERWISE, layerwise_attention)
        tf.masking_utils.AttentionMaskInterface.register(LAYERWISE, attnkit_mask)
    return LAYERWISE


def _causal_or_none(mask) -> bool:
    """Is a call's mask one linear attention serves: none, every pair, or causal?"""
    from ..integrations.hf.mask_view import as_spec
    mask = as_spec(mask)
    if mask is None:
        return True
    if isinstance(mask, Tensor):
        return False
    return mask.is_causal or mask.band() == (-math.inf, math.inf)


def _causal_lm(plan):
    """The plan with the causal-LM class of its model type (a bare decoder has no head)."""
    import transformers as tf
    from transformers.models.auto import modeling_auto as ma
    if plan.cls.__name__ in set(ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return plan
    name = ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(plan.config.model_type)
    cls = getattr(tf, name, None) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{plan.directory}: {plan.arch} has no language-model head and "
                         f"transformers has no causal LM for model_type "
                         f"{plan.config.model_type!r}: bench needs next-token logits")
    return dataclasses.replace(plan, cls=cls, arch=cls.__name__)


class HFSource:
    """A transformers checkpoint (an :class:`attnkit.analysis.hf.Plan`) as a bench source;
    see the module doc. ``notes``: why it runs on transformers (from inspect's rule)."""

    via = "transformers"

    def __init__(self, plan, name: str | None = None, device: str = "cpu", notes=()):
        from ..integrations import hf as hf_api
        from ..analysis import hf, hf_capture
        if plan.kind not in ("encoder", "decoder"):
            raise ValueError(f"{plan.directory}: {plan.arch} is an {plan.kind} model; bench "
                             f"measures text encoders (BERT-like) and decoders (causal LMs)")
        plan = _causal_lm(plan) if plan.kind == "decoder" else plan
        self.plan, self.notes, self.kind = plan, list(notes), plan.kind
        self.tokenizer = hf.load_processor(plan)
        model, load_notes = hf.load_model(plan)
        self.notes += load_notes
        try:
            hf_api.check(model)         # attention outside transformers' interface
        except ValueError as e:
            raise ValueError(f"{plan.directory}: {str(e).removeprefix('model: ')}") from None
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.net = self.model if self.kind == "decoder" else self.model.base_model
        self.name = f"{name or plan.directory} via transformers' {plan.arch}"
        self.tokenizer_name = type(self.tokenizer).__name__
        limit, _ = hf_capture.text_limit(plan, self.tokenizer)
        self.max_tokens = int(limit) if limit else 1 << 20
        register_layerwise()
        self.current = hf_api.register()
        self._calls: list[_Call] = []
        try:
            calls = self._record(self._probe(8))
        except (ValueError, TypeError, KeyError, RuntimeError, IndexError) as e:
            raise ValueError(f"{plan.directory}: {plan.arch} does not run on input_ids alone "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else e!r})")\
                from None
        self.mods = [c.module for c in calls]
        if not calls or len({id(m) for m in self.mods}) != len(calls) or any(
                c.q.shape[2] != c.k.shape[2] for c in calls):
            raise ValueError(f"{plan.directory}: {plan.arch} does not run one self-attention "
                             f"call per layer ({len(calls)} calls on {len(set(map(id, self.mods)))}"
                             f" modules); bench measures self-attention encoders and decoders")
        c0 = calls[0]
        self.n_layers, self.n_heads, self.n_kv_heads = len(calls), c0.q.shape[1], c0.k.shape[1]
        self.head_dim = c0.q.shape[-1]
        cfg = plan.config
        rope = any(getattr(cfg, f, None) for f in ("rope_theta", "rope_parameters",
                                                   "rope_scaling", "rotary_dim"))
        self.positions = ("relative bias" if c0.position_bias is not None else
                          "rope" if rope else "absolute")

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
        """All layers: the model set to ``attnkit:<variant>``; some: :data:`LAYERWISE` with
        those modules' :data:`ATTR` set to it (the others ``attnkit``, dense)."""
        from ..integrations import hf as hf_api
        var = parse_variant(variant) if isinstance(variant, str) else variant
        var.attention_only("variant")
        name = hf_api.register(None if var.is_dense else var.text)
        every = layers is None or var.is_dense
        chosen = set(range(self.n_layers) if every else layers)
        for i, m in enumerate(self.mods):
            setattr(m, ATTR, name if i in chosen else hf_api.register())
        self.current = name if every else LAYERWISE
        self.model.set_attn_implementation(self.current)

    def check(self, variant, n: int) -> None:
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
                       "scores) cannot apply" if c.position_bias is not None
                       else f"caps its scores (softcap {c.args['softcap']:g}), which linear "
                       "attention (no scores) cannot apply" if c.args.get("softcap")
                       else None if _causal_or_none(c.mask)
                       else f"has the mask {c.mask!r}; linear attention serves only a causal "
                       "mask or none")
                if why:
                    raise ValueError(f"this model cannot take it: layer {i} of "
                                     f"{self.plan.arch} {why}")
        try:
            self.apply(var, n)
            with torch.no_grad():
                self._forward(ids)
        except (ValueError, TypeError, KeyError, UnsupportedCall) as e:
            raise ValueError(f"this model cannot take it: {str(e).splitlines()[0]}") from None
        finally:
            self.apply("dense", n)

    # -- runs ----------------------------------------------------------------------
    def _probe(self, t: int) -> Tensor:
        """A short input ``(1, t)`` of valid token ids (for checks, not measurements)."""
        rows = self.model.get_input_embeddings().num_embeddings
        return torch.arange(min(t, self.max_tokens), device=self.device)[None] % rows

    def _forward(self, ids: Tensor, **kw):
        mask = torch.ones_like(ids)
        if self.kind == "decoder":
            return self.model(input_ids=ids, attention_mask=mask, use_cache=False, **kw)
        return self.net(input_ids=ids, attention_mask=mask, **kw)

    @torch.no_grad()
    def run(self, ids: Tensor) -> Outputs:
        out = self._forward(ids)
        if self.kind == "decoder":
            return Outputs(logits=out.logits)
        h = out.last_hidden_state                                            # (B, T, d)
        real = torch.ones_like(ids, dtype=h.dtype)[..., None]                # (B, T, 1)
        return Outputs(hidden=h, embedding=(h * real).sum(1) / real.sum(1))

    @torch.no_grad()
    def _record(self, ids: Tensor, outputs: bool = False) -> list[_Call]:
        """Run once under :data:`LAYERWISE` (each module's own name, i.e. the applied
        variant), recording every attention call; the model is left as it was."""
        old = getattr(_state, "calls", None), getattr(_state, "outputs", False)
        _state.calls, _state.outputs = [], outputs
        self.model.set_attn_implementation(LAYERWISE)
        try:
            self._forward(ids)
            calls = _state.calls
        finally:
            _state.calls, _state.outputs = old
            self.model.set_attn_implementation(self.current)
        self._calls = calls
        return calls

    def attention_inputs(self, ids: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Per layer ``(q (B, H, T, D), k, v (B, Hkv, T, D))`` as the attention function
        received them (after RoPE), from a run of the model as applied (dense in bench)."""
        return [(c.q, c.k, c.v) for c in self._record(ids)]

    def captured_outputs(self, ids: Tensor) -> list[Tensor]:
        """Each layer's attention output as the model computed it ``(B, H, T, Dv)``."""
        return [c.out for c in self._record(ids, outputs=True)]

    def _call(self, layer: int, q: Tensor, k: Tensor) -> _Call:
        if not 0 <= layer < len(self._calls):
            raise ValueError(f"layer: expected 0..{self.n_layers - 1} after attention_inputs()"
                             f", got {layer}")
        c = self._calls[layer]
        if q.shape[2] != c.q.shape[2] or k.shape[2] != c.k.shape[2]:
            raise ValueError(f"q, k: expected the lengths of the last attention_inputs() "
                             f"({c.q.shape[2]}, {c.k.shape[2]}), got ({q.shape[2]}, "
                             f"{k.shape[2]})")
        return c

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``layer``'s attention operation under the applied variant on ``q (B, H, T, D)``,
        ``k/v (B, Hkv, T, D)`` -> ``(B, H, T, Dv)``: its recorded call (mask, scaling,
        softcap, bias) replayed through the function the model calls."""
        from ..integrations.hf import attnkit_attention_forward
        c = self._call(layer, q, k)
        args = dict(c.args, dropout=0.0)
        with torch.no_grad():
            out, _ = attnkit_attention_forward(_AsLayer(c.module, _implementation_of(c.module)),
                                               q, k, v, c.mask, **args)
        return out.transpose(1, 2)

    def _spec(self, module, mask, n: int):
        """(the module's implementation, the mask attnkit gets for ``n`` keys: the variant's
        pattern AND ``mask``), as :func:`attnkit.hf.attnkit_attention_forward` builds it."""
        from ..integrations.hf.attention import variant_mask
        from ..integrations.hf.names import parse_implementation
        impl = parse_implementation(_implementation_of(module))
        return impl, variant_mask(impl, module, mask, n)

    def served_by(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> str:
        from ..engine.functional import make_call, select_backend
        from ..integrations.hf.attention import call_mask
        c = self._call(layer, q, k)
        impl, spec = self._spec(c.module, call_mask(c.mask, c.module, q, k,
                                                    c.args.get("is_causal")), k.shape[2])
        if impl.variant is not None and impl.variant.is_linear:
            return "linear_attention (O(T) in PyTorch ops)"
        if impl.backend != "auto":
            return impl.backend
        name, why = select_backend(make_call(q, k, v, mask=spec, bias=c.position_bias,
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
            atts = self._forward(ids, output_attentions=True).attentions
        if atts is None or len(atts) != self.n_layers:
            raise ValueError(f"{self.plan.arch}: output_attentions gave "
                             f"{0 if atts is None else len(atts)} maps for {self.n_layers} layers")
        return {i: atts[i][0].float() for i in layers}

