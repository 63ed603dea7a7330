"""Llama checkpoints (``LlamaModel``, ``LlamaForCausalLM``) -> :class:`attnkit.models.GPT`
(RoPE "rotate_half", GQA, RMSNorm, SwiGLU).

Measured against transformers 5 (``models/llama/modeling_llama.py``,
``modeling_rope_utils.py``):

* ``LlamaModel`` returns ``last_hidden_state`` (after the final RMSNorm): loaded with
  ``lm_head=False``, ``model(ids)`` returns those hidden states ``(B, T, d)``.
* RoPE parameters: ``rope_scaling`` when set (legacy), else ``rope_parameters``; the
  base is that dict's ``rope_theta``, else the top-level ``rope_theta``, else 10000.
  Only ``rope_type`` ``"default"`` is ported.
* ``attention_bias`` (q/k/v/o) and ``mlp_bias`` (gate/up/down) are independent; attnkit
  has one ``bias`` switch, so when only one is set the other layers get zero biases
  (the same function; listed in ``model.load_notes``).
* ``sliding_window``, ``layer_types``, ``partial_rotary_factor`` and ``pretraining_tp``
  do not change transformers' Llama (tested), so they do not change attnkit's.
"""
from __future__ import annotations

import torch

from ..core.errors import CheckpointError
from ..models import GPT, GPTConfig
from .common import Fields, Plan, lm_head_tying, prefix

ARCHITECTURES = ("LlamaModel", "LlamaForCausalLM")
MODEL_TYPE = "llama"

IMPLEMENTED = {
    "vocab_size": "GPTConfig.vocab_size",
    "hidden_size": "d_model",
    "intermediate_size": "d_ff (SwiGLU width)",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads (GQA/MQA), default n_heads",
    "head_dim": "head_dim, default hidden_size // num_attention_heads",
    "hidden_act": "the gate activation (see common.ACTIVATIONS), default silu",
    "rms_norm_eps": "norm_eps, default 1e-6",
    "rope_parameters": "rope_type 'default' only; its rope_theta is rope_base",
    "rope_scaling": "legacy name of rope_parameters (wins when set, as in transformers)",
    "rope_theta": "rope_base when the RoPE dict has no rope_theta, default 10000",
    "attention_bias": "biases of q/k/v/o",
    "mlp_bias": "biases of gate/up/down",
    "tie_word_embeddings": "tie_embeddings: lm_head is embed_tokens, or its own (default)",
    "max_position_embeddings": "max_len (tokenize's truncation; RoPE has no table)",
    "is_causal": "true only (false refused)",
}
IGNORED = {
    "attention_dropout": "dropout (eval mode)",
    "pretraining_tp": "transformers 5 does not read it (v4 split the same matmuls)",
    "pad_token_id": "a token id (the embedding's padding_idx only affects gradients)",
    "sliding_window": "transformers' Llama does not read it (tested: same outputs)",
    "layer_types": "transformers' Llama does not read it (tested: same outputs)",
    "partial_rotary_factor": "transformers' Llama rotates every channel (tested)",
    "is_decoder": "transformers' Llama does not read it (always causal)",
    "add_cross_attention": "transformers' Llama has no cross-attention and ignores it",
}
REFUSED = {
    "rope_parameters": ({"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                        "RoPE scaling (linear, dynamic, yarn, longrope, llama3) is not ported"),
    "rope_scaling": ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                     "RoPE scaling (linear, dynamic, yarn, longrope, llama3) is not ported"),
    "is_causal": (False, "bidirectional Llama is not ported"),
    "hidden_act": ("gelu_10", "an activation attnkit does not have"),
}


def _rope(f: Fields) -> float:
    key = "rope_scaling" if f.get("rope_scaling") else "rope_parameters"
    rp = f.get(key, {})
    if not isinstance(rp, dict):
        raise CheckpointError(f"{f.file}: field {key!r}: expected an object, got {rp!r}")
    if rp and all(isinstance(v, dict) for v in rp.values()):
        f.refuse(key, "per-layer-type RoPE parameters are not ported")
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind != "default":
        f.refuse(key, f"rope_type {kind!r}: {REFUSED[key][1]}")
    theta = rp.get("rope_theta", f.get("rope_theta", 10000.0))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
        raise CheckpointError(f"{f.file}: rope_theta: expected a number > 1, got {theta!r}")
    return float(theta)


def build(f: Fields, w, arch: str) -> Plan:
    if not f.bool("is_causal", True):
        f.refuse("is_causal", REFUSED["is_causal"][1])
    base = _rope(f)
    names = w.names
    p = prefix(names, ["model.", ""], "embed_tokens.weight")
    emb, head = p + "embed_tokens.weight", "lm_head.weight"
    has_head = arch != "LlamaModel"
    tie, unused, notes = lm_head_tying(f, w, emb, head, has_head,
                                       f.bool("tie_word_embeddings", False), "LlamaModel")
    attn_bias, mlp_bias = f.bool("attention_bias", False), f.bool("mlp_bias", False)
    n_heads = f.int("num_attention_heads")
    try:
        c = GPTConfig(vocab_size=f.int("vocab_size"),
                      max_len=f.int("max_position_embeddings", 2048),
                      d_model=f.int("hidden_size"), n_layers=f.int("num_hidden_layers"),
                      n_heads=n_heads, n_kv_heads=f.int("num_key_value_heads", n_heads),
                      head_dim=f.int("head_dim") if f.get("head_dim") is not None else None,
                      d_ff=f.int("intermediate_size"), positions="rope", rope_base=base,
                      norm="rmsnorm", norm_eps=f.float("rms_norm_eps", 1e-6),
                      activation=f.activation("hidden_act", "silu"), gated=True,
                      bias=attn_bias or mlp_bias, fused_qkv=False,
                      tie_embeddings=tie or not has_head, lm_head=has_head)
        model = GPT(c)
    except ValueError as e:
        raise CheckpointError(f"{f.file}: {e}") from None
    m = {"tok_emb.weight": (emb if emb in names or not has_head or head not in names
                            else head, None),           # tied, only lm_head: HF swaps them
         "norm.weight": (p + "norm.weight", None)}
    if c.lm_head and not c.tie_embeddings:
        m["lm_head.weight"] = (head, None)
    attn = [(f"attn.{x}_proj", f"self_attn.{x}_proj") for x in "qkvo"]
    mlp = [(f"ffn.{x}", f"mlp.{x}_proj") for x in ("gate", "up", "down")]
    fill = {}
    state = model.state_dict()
    for i in range(c.n_layers):
        h, o = f"{p}layers.{i}.", f"layers.{i}."
        m[o + "norm1.weight"] = (h + "input_layernorm.weight", None)
        m[o + "norm2.weight"] = (h + "post_attention_layernorm.weight", None)
        for group, has in ((attn, attn_bias), (mlp, mlp_bias)):
            for ours, theirs in group:
                m[o + ours + ".weight"] = (h + theirs + ".weight", None)
                if has:
                    m[o + ours + ".bias"] = (h + theirs + ".bias", None)
                elif c.bias:
                    fill[o + ours + ".bias"] = torch.zeros_like(state[o + ours + ".bias"])
        unused[h + "self_attn.rotary_emb.inv_freq"] = "a RoPE buffer transformers recomputes"
    unused[p + "rotary_emb.inv_freq"] = "a RoPE buffer transformers recomputes"
    if fill:
        which = "mlp" if attn_bias else "attention"
        notes.append(f"{which} layers have no bias in the file: zero biases (attnkit has one "
                     f"bias switch for both)")
    return Plan(model, m, fill=fill, unused=unused, notes=notes)
