"""BERT checkpoints (``BertModel``, ``BertForMaskedLM``, ``BertForPreTraining``,
``BertLMHeadModel``) -> :class:`attnkit.models.BERT`.

Measured against transformers 5 (``models/bert/modeling_bert.py``): ``is_decoder=True``
makes every self-attention causal (``create_causal_mask``) in all four classes, unless
``is_causal=false``; the MLM decoder is tied to the word embeddings unless
``tie_word_embeddings=false`` *or* the file holds a different
``cls.predictions.decoder.weight`` (transformers then unties them, so does attnkit);
the forward pass reads ``cls.predictions.decoder.bias`` when the file has it, else
the tied ``cls.predictions.bias``.
"""
from __future__ import annotations

from ..core.errors import CheckpointError
from ..models import BERT, BERTConfig
from .common import Fields, Plan, prefix, same

ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertLMHeadModel")
MODEL_TYPE = "bert"

IMPLEMENTED = {
    "vocab_size": "BERTConfig.vocab_size",
    "hidden_size": "d_model",
    "num_hidden_layers": "n_layers",
    "num_attention_heads": "n_heads",
    "intermediate_size": "d_ff",
    "hidden_act": "activation of the FFN and the MLM transform (see common.ACTIVATIONS)",
    "max_position_embeddings": "max_len (the position table), default 512",
    "type_vocab_size": "type_vocab_size, default 2",
    "layer_norm_eps": "norm_eps, default 1e-12",
    "pad_token_id": "pad_token_id (what tokenize pads with), default 0",
    "is_decoder": "causal=True: causal self-attention in every layer",
    "is_causal": "with is_decoder: false keeps attention bidirectional (transformers does)",
    "tie_word_embeddings": "tie_embeddings: the MLM decoder is the word embedding, or its own",
    "position_embedding_type": "'absolute' only (others refused)",
    "add_cross_attention": "false only (true refused)",
}
IGNORED = {
    "hidden_dropout_prob": "dropout (eval mode)",
    "attention_probs_dropout_prob": "dropout (eval mode)",
    "classifier_dropout": "dropout of classification heads (not ported; eval mode)",
    "embedding_size": "read by transformers' BERT only to skip a divisibility check",
}
REFUSED = {
    "add_cross_attention": (True, "cross-attention layers (encoder-decoder use) are not "
                                  "ported"),
    "position_embedding_type": ("relative_key", "only absolute positions are ported "
                                "(transformers 5 no longer implements relative ones and "
                                "would silently use absolute)"),
    "hidden_act": ("quick_gelu", "an activation attnkit does not have"),
}


def build(f: Fields, w, arch: str) -> Plan:
    if f.bool("add_cross_attention", False):
        f.refuse("add_cross_attention", REFUSED["add_cross_attention"][1])
    if f.get("position_embedding_type", "absolute") != "absolute":
        f.refuse("position_embedding_type", REFUSED["position_embedding_type"][1], hint=False)
    names = w.names
    p = prefix(names, ["bert.", ""], "embeddings.word_embeddings.weight")
    emb = p + "embeddings.word_embeddings.weight"
    dec_w, dec_b, bias = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                          "cls.predictions.bias")
    has_mlm = arch in ("BertForMaskedLM", "BertForPreTraining", "BertLMHeadModel") or \
        "cls.predictions.transform.dense.weight" in names
    has_nsp = arch == "BertForPreTraining" or "cls.seq_relationship.weight" in names
    tie = f.bool("tie_word_embeddings", True)
    unused, notes = {}, []
    if has_mlm and tie and dec_w in names:
        if emb in names and not same(w, emb, dec_w):
            tie = False
            notes.append(f"{dec_w} differs from {emb} although tie_word_embeddings is true: "
                         f"loaded as an untied decoder, as transformers does")
        elif emb in names:
            unused[dec_w] = f"a tied copy of {emb}"
    causal = f.bool("is_decoder", False) and f.bool("is_causal", True)
    try:
        c = BERTConfig(
            vocab_size=f.int("vocab_size"), max_len=f.int("max_position_embeddings", 512),
            type_vocab_size=f.int("type_vocab_size", 2), d_model=f.int("hidden_size"),
            n_layers=f.int("num_hidden_layers"), n_heads=f.int("num_attention_heads"),
            d_ff=f.int("intermediate_size"), norm_eps=f.float("layer_norm_eps", 1e-12),
            activation=f.activation("hidden_act", "gelu"), dropout=0.0,
            pad_token_id=f.int("pad_token_id", 0, minimum=0),
            pooler=has_nsp or (p + "pooler.dense.weight") in names, mlm_head=has_mlm,
            tie_embeddings=tie or not has_mlm, nsp_head=has_nsp, causal=causal)
        model = BERT(c)
    except ValueError as e:
        raise CheckpointError(f"{f.file}: {e}") from None
    m: dict = {}

    def lin(ours, theirs):
        m[ours + ".weight"] = (theirs + ".weight", None)
        m[ours + ".bias"] = (theirs + ".bias", None)

    # tied and only the decoder copy present: transformers ties the embedding to it
    m["tok_emb.weight"] = (dec_w if has_mlm and tie and emb not in names and dec_w in names
                           else emb, None)
    m["pos_emb.weight"] = (p + "embeddings.position_embeddings.weight", None)
    m["type_emb.weight"] = (p + "embeddings.token_type_embeddings.weight", None)
    lin("emb_norm", p + "embeddings.LayerNorm")
    for i in range(c.n_layers):
        h, o = f"{p}encoder.layer.{i}.", f"layers.{i}."
        for ours, theirs in (("q", "query"), ("k", "key"), ("v", "value")):
            lin(f"{o}attn.{ours}_proj", f"{h}attention.self.{theirs}")
        lin(o + "attn.o_proj", h + "attention.output.dense")
        lin(o + "norm1", h + "attention.output.LayerNorm")
        lin(o + "ffn.up", h + "intermediate.dense")
        lin(o + "ffn.down", h + "output.dense")
        lin(o + "norm2", h + "output.LayerNorm")
    if c.pooler:
        lin("pooler", p + "pooler.dense")
    if has_nsp:
        lin("nsp", "cls.seq_relationship")
    if has_mlm:
        lin("mlm.dense", "cls.predictions.transform.dense")
        lin("mlm.norm", "cls.predictions.transform.LayerNorm")
        if not c.tie_embeddings:
            m["mlm.decoder.weight"] = (dec_w, None)
        # transformers' forward adds decoder.bias; cls.predictions.bias is only the
        # parameter it is tied to when the file lacks decoder.bias
        if dec_b in names or not tie:
            m["mlm.bias"] = (dec_b, None)
            if bias in names:
                unused[bias] = (f"transformers' forward reads {dec_b}, not {bias}")
        else:
            m["mlm.bias"] = (bias, None)
    for buf in ("position_ids", "token_type_ids"):
        unused[f"{p}embeddings.{buf}"] = "a buffer transformers rebuilds (values unused)"
    if not tie and has_mlm and dec_w not in names:
        raise CheckpointError(f"{w.dir}: missing tensor {dec_w!r} (tie_word_embeddings is "
                              f"false, so the MLM decoder is its own tensor)")
    return Plan(model, m, unused=unused, notes=notes)
