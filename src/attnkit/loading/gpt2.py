"""GPT-2 checkpoints (``GPT2Model``, ``GPT2LMHeadModel``) -> :class:`attnkit.models.GPT`.

Measured against transformers 5 (``models/gpt2/modeling_gpt2.py``):

* ``GPT2Model`` returns ``last_hidden_state`` (after ``ln_f``): loaded with
  ``lm_head=False``, ``model(ids)`` returns those hidden states ``(B, T, d)``.
* ``GPT2LMHeadModel`` ties ``lm_head`` to ``wte`` unless ``tie_word_embeddings=false``
  or the file holds a different ``lm_head.weight`` (transformers then unties them).
* The attention scale is ``1/sqrt(D)`` (``scale_attn_weights``), divided by
  ``layer_idx + 1`` with ``scale_attn_by_inverse_layer_idx``. attnkit's attention
  always scales by ``1/sqrt(D)``, so a different scale is folded into the query rows
  of ``c_attn`` (weight and bias): the same logits, but those stored weights differ
  from the file's (listed in ``model.load_notes``).
"""
from __future__ import annotations

from ..core.errors import CheckpointError
from ..models import GPT, GPTConfig
from .common import Fields, Plan, lm_head_tying, prefix

ARCHITECTURES = ("GPT2Model", "GPT2LMHeadModel")
MODEL_TYPE = "gpt2"

IMPLEMENTED = {
    "vocab_size": "GPTConfig.vocab_size",
    "n_positions": "max_len (the learned position table); alias max_position_embeddings",
    "n_embd": "d_model; alias hidden_size",
    "n_layer": "n_layers; alias num_hidden_layers",
    "n_head": "n_heads; alias num_attention_heads",
    "n_inner": "d_ff, default 4 * n_embd",
    "activation_function": "activation (see common.ACTIVATIONS), default gelu_new",
    "layer_norm_epsilon": "norm_eps, default 1e-5",
    "scale_attn_weights": "false: scale 1 instead of 1/sqrt(D) (folded into the q rows)",
    "scale_attn_by_inverse_layer_idx": "true: layer i's scale / (i + 1) (folded into q rows)",
    "tie_word_embeddings": "tie_embeddings: lm_head is wte, or its own lm_head.weight",
    "add_cross_attention": "false only (true refused)",
    "is_causal": "true only (false refused)",
    **{alias: "alias (transformers' attribute_map)" for alias in
       ("hidden_size", "max_position_embeddings", "num_hidden_layers", "num_attention_heads")},
}
IGNORED = {
    "resid_pdrop": "dropout (eval mode)", "embd_pdrop": "dropout (eval mode)",
    "attn_pdrop": "dropout (eval mode)",
    "reorder_and_upcast_attn": "only the precision of transformers' eager path (the same "
                               "math; fp32 outputs identical, tested)",
    "n_ctx": "legacy duplicate of n_positions; transformers 5 does not read it",
    "pad_token_id": "a token id (padding is hidden by attention_mask)",
    "is_decoder": "transformers' GPT-2 does not read it (always causal)",
    **{k: "GPT2DoubleHeadsModel's summary head (that architecture is not ported)"
       for k in ("summary_type", "summary_use_proj", "summary_activation",
                 "summary_proj_to_labels", "summary_first_dropout", "summary_last_dropout")},
}
REFUSED = {
    "add_cross_attention": (True, "cross-attention layers (encoder-decoder use) are not "
                                  "ported"),
    "is_causal": (False, "bidirectional GPT-2 is not ported"),
    "activation_function": ("quick_gelu", "an activation attnkit does not have"),
}


def build(f: Fields, w, arch: str) -> Plan:
    if f.bool("add_cross_attention", False):
        f.refuse("add_cross_attention", REFUSED["add_cross_attention"][1])
    if not f.bool("is_causal", True):
        f.refuse("is_causal", REFUSED["is_causal"][1])
    names = w.names
    p = prefix(names, ["transformer.", ""], "wte.weight")
    wte, head = p + "wte.weight", "lm_head.weight"
    has_head = arch != "GPT2Model"
    tie, unused, notes = lm_head_tying(f, w, wte, head, has_head,
                                       f.bool("tie_word_embeddings", True), "GPT2Model")
    d = f.int("n_embd", aliases=("hidden_size",))
    try:
        c = GPTConfig(vocab_size=f.int("vocab_size"),
                      max_len=f.int("n_positions", aliases=("max_position_embeddings",)),
                      d_model=d, n_layers=f.int("n_layer", aliases=("num_hidden_layers",)),
                      n_heads=f.int("n_head", aliases=("num_attention_heads",)),
                      d_ff=f.int("n_inner", 4 * d), positions="learned",
                      norm_eps=f.float("layer_norm_epsilon", 1e-5),
                      activation=f.activation("activation_function", "gelu_new"),
                      fused_qkv=True, tie_embeddings=tie or not has_head, lm_head=has_head)
        model = GPT(c)
    except ValueError as e:
        raise CheckpointError(f"{f.file}: {e}") from None
    D = c.d_model // c.n_heads
    base = (D ** -0.5) if f.bool("scale_attn_weights", True) else 1.0
    inverse = f.bool("scale_attn_by_inverse_layer_idx", False)

    def conv(t):  # GPT-2's Conv1D stores (in, out); nn.Linear wants (out, in)
        return t.t()

    def q_scaled(fn, factor):  # multiply the q rows ([:d] of c_attn's output) by factor
        def go(t):
            t = fn(t) if fn else t
            out = t.float().clone()
            out[:d] *= factor
            return out.to(t.dtype)
        return go

    m = {"tok_emb.weight": (wte if wte in names or not has_head or head not in names
                            else head, None),           # tied, only lm_head: HF swaps them
         "pos_emb.weight": (p + "wpe.weight", None),
         "norm.weight": (p + "ln_f.weight", None), "norm.bias": (p + "ln_f.bias", None)}
    if c.lm_head and not c.tie_embeddings:
        m["lm_head.weight"] = (head, None)
    for i in range(c.n_layers):
        h, o = f"{p}h.{i}.", f"layers.{i}."
        factor = base / (i + 1 if inverse else 1) / D ** -0.5
        for ours, theirs, tr in (("norm1", "ln_1", None), ("norm2", "ln_2", None),
                                 ("attn.qkv_proj", "attn.c_attn", conv),
                                 ("attn.o_proj", "attn.c_proj", conv),
                                 ("ffn.up", "mlp.c_fc", conv), ("ffn.down", "mlp.c_proj", conv)):
            wt, bt = tr, None
            if ours == "attn.qkv_proj" and factor != 1.0:
                wt, bt = q_scaled(conv, factor), q_scaled(None, factor)
                notes.append(f"{o}attn.qkv_proj: q rows scaled by {factor:g} (the attention "
                             f"scale of layer {i} differs from 1/sqrt({D}))")
            m[o + ours + ".weight"] = (h + theirs + ".weight", wt)
            m[o + ours + ".bias"] = (h + theirs + ".bias", bt)
        for buf in ("attn.bias", "attn.masked_bias"):
            unused[h + buf] = "a causal-mask buffer transformers ignores"
    return Plan(model, m, unused=unused, notes=notes)
