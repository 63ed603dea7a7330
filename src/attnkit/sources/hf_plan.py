"""The transformers path of the model sources: any Hugging Face checkpoint directory.

:func:`plan` checks a directory *before* any weight is read -- config.json readable by
``AutoConfig``, a model class for its ``architectures`` (else for its ``model_type``),
no custom code, the model's own tokenizer or image processor present, and every tensor's
shape in the safetensors headers equal to what the config builds (the model is built on
the ``meta`` device, no memory) -- and :func:`load` then loads it from local files only
(``local_files_only=True``; ``HF_HUB_OFFLINE=1`` is set for the process). Weights the
checkpoint lacks (that transformers would initialise at random) are refused.
:func:`for_logits` swaps a bare decoder for its causal-LM class (next-token logits).

:func:`attention_implementation_for_inspect` is the one place that says how attention
runs and which layers return weights.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from ..core.errors import UsageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt",
                   "spiece.model", "tokenizer.model", "sentencepiece.bpe.model")
_SIZE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "num_hidden_layers", "head_dim", "d_model", "d_ff",
                "d_kv", "num_heads", "num_layers", "num_decoder_layers", "n_embd", "n_head",
                "n_layer", "n_inner", "n_positions", "max_position_embeddings", "embed_dim",
                "image_size", "patch_size", "num_channels", "ffn_dim", "encoder_layers",
                "decoder_layers", "dim", "hidden_dim", "n_heads", "n_layers")


def attention_implementation_for_inspect(layers: list[int] | None,
                                         backend: str = "auto") -> tuple[dict, dict]:
    """How inspect runs a transformers model: ``(from_pretrained kwargs, forward kwargs)``.

    attnkit's implementation inside transformers (``attnkit.hf``): every layer runs on
    attnkit's fast path; the weights are recomputed only for ``layers`` (the forward runs
    inside :func:`attnkit.hf.weights_for`, see :func:`weights_context`)."""
    from ..integrations import hf as hf_api
    name = hf_api.register(None if backend == "auto" else backend)
    return {"attn_implementation": name}, {"output_attentions": True}


def weights_context(layers: list[int] | None):
    """The context a capture runs in: only ``layers`` recompute their weights."""
    from ..integrations import hf as hf_api
    return hf_api.weights_for(layers=layers)


def describe_implementation(backend: str = "auto") -> str:
    load_kw, _ = attention_implementation_for_inspect(None, backend)
    return (f"transformers, attn_implementation={load_kw.get('attn_implementation')!r} "
            "(attnkit inside the transformers model)")


def transformers_module():
    """``import transformers`` offline and quiet, or one UsageError naming pip install."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import transformers
    except ImportError:
        raise UsageError("--model: the transformers path needs the 'transformers' package "
                         "(pip install transformers)") from None
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@dataclasses.dataclass
class Plan:
    directory: Path
    config: object            # the transformers config
    cls: type                 # the model class
    arch: str
    kind: str                 # encoder | decoder | encoder-decoder | image
    n_layers: int             # (encoder) layers
    n_decoder_layers: int
    max_len: int | None       # the model's maximum tokens (None: no hard limit)
    can_generate: bool


def _first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:300]


def _model_class(tf, cfg: dict, d: Path, port_archs) -> tuple[type, str]:
    from transformers.models.auto import modeling_auto as ma
    mt = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs and isinstance(archs[0], str) else None
    known = mt in tf.CONFIG_MAPPING if isinstance(mt, str) else False
    cls = getattr(tf, arch, None) if arch else None
    if not known or (arch and not (isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel))):
        ports = f"attnkit's ports are {', '.join(port_archs)}; " if port_archs else ""
        raise UsageError(f"--model: {d / 'config.json'}: unknown architecture {arch!r} "
                         f"(model_type {mt!r}); {ports}transformers {tf.__version__} has no "
                         f"such {'model type' if not known else 'class'}")
    if cls is None:   # no architectures: the task class of the model type
        for names in (ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                      ma.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, ma.MODEL_MAPPING_NAMES):
            name = names.get(mt)
            if isinstance(name, (tuple, list)):
                name = name[0]
            if name and isinstance(getattr(tf, name, None), type):
                cls = getattr(tf, name)
                break
        if cls is None:
            raise UsageError(f"--model: {d / 'config.json'}: model_type {mt!r} has no model "
                             f"class in transformers {tf.__version__}; set 'architectures'")
    return cls, cls.__name__


def _kind(tf, cls, config) -> str:
    from transformers.models.auto import modeling_auto as ma
    inp = getattr(cls, "main_input_name", "input_ids")
    if inp == "pixel_values":
        return "image"
    if inp != "input_ids":
        raise UsageError(f"--model: {cls.__name__} takes {inp!r} (audio or other inputs); "
                         f"attnkit runs text and image models")
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    causal = set(ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if cls.__name__ in causal or getattr(config, "is_decoder", False):
        return "decoder"
    base = ma.MODEL_MAPPING_NAMES.get(config.model_type)
    if base == cls.__name__ and config.model_type in ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and \
            config.model_type not in ma.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "decoder"          # a bare decoder (Qwen2Model, LlamaModel): causal maps
    return "encoder"


def _check_shapes(cls, config, cfg: dict, shapes: dict, files: dict, d: Path) -> None:
    """Every tensor the model has that the file names too must have the model's shape."""
    try:
        with torch.device("meta"):
            meta = cls(config)
    except Exception:   # a class that cannot be built on meta: load()'s checks remain
        return
    prefix = getattr(cls, "base_model_prefix", "") or ""
    bad = []
    for k, t in meta.state_dict().items():
        cands = [k, f"{prefix}.{k}"] + ([k[len(prefix) + 1:]] if k.startswith(prefix + ".")
                                        else [])
        for c in cands:
            if c in shapes:
                if tuple(shapes[c]) != tuple(t.shape):
                    bad.append((c, tuple(shapes[c]), tuple(t.shape)))
                break
    if not bad:
        return
    name, got, want = bad[0]
    unset = [f for f in _SIZE_FIELDS if f not in cfg and hasattr(config, f)
             and f not in getattr(config, "attribute_map", {})]
    hint = ""
    if unset:
        hint = ("; config.json does not set " + ", ".join(
            f"{f!r} (default {getattr(config, f)!r} used)" for f in unset[:4]))
    raise UsageError(f"--model: {files.get(name, d)}: tensor {name!r} has shape {got}, "
                     f"{cls.__name__} built from config.json expects {want}"
                     f"{f' (and {len(bad) - 1} more tensors)' if len(bad) > 1 else ''}{hint}")


def plan(d: Path, cfg: dict, shapes: dict, files: dict, port_archs=()) -> Plan:
    """Check ``d`` for the transformers path without loading weights (module doc)."""
    tf = transformers_module()
    if "auto_map" in cfg:
        raise UsageError(f"--model: {d / 'config.json'}: the model needs its own code "
                         f"(auto_map); attnkit never runs code from a checkpoint "
                         f"(trust_remote_code is off)")
    cls, arch = _model_class(tf, cfg, d, port_archs)
    from ..integrations.hf.support import model_refusal
    why = model_refusal(cls)
    if why:   # Bloom: ALiBi added to the mask by the model, its own attention
        raise UsageError(f"--model: {d}: {why}")
    try:
        config = tf.AutoConfig.from_pretrained(str(d), local_files_only=True)
    except Exception as e:   # transformers raises ValueError/KeyError/TypeError/OSError
        raise UsageError(f"--model: {d / 'config.json'}: transformers cannot read it "
                         f"({_first_line(e)})") from None
    kind = _kind(tf, cls, config)
    if kind == "image":
        if not (d / "preprocessor_config.json").is_file():
            raise UsageError(f"--model: {d}: no preprocessor_config.json (the model's image "
                             f"processor, needed to prepare --image)")
    elif not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise UsageError(f"--model: {d}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}"
                         f", ...); attnkit reads text with the model's own tokenizer")
    _check_shapes(cls, config, cfg, shapes, files, d)
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    if not isinstance(n, int):
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        n = getattr(text_cfg, "num_hidden_layers", 0)
    nd = getattr(config, "num_decoder_layers", None) or getattr(config, "decoder_layers", None) or n
    max_len = None
    for f in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(config, f, None)
        if isinstance(v, int) and v > 0:
            max_len = v
            break
    gen = bool(cls.can_generate()) if hasattr(cls, "can_generate") else False
    return Plan(d, config, cls, arch, kind, int(n), int(nd), max_len, gen)


def for_logits(p: Plan) -> Plan:
    """The plan with the causal-LM class of its model type (a bare decoder has no head)."""
    import transformers as tf
    from transformers.models.auto import modeling_auto as ma
    if p.cls.__name__ in set(ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return p
    name = ma.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(p.config.model_type)
    cls = getattr(tf, name, None) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{p.directory}: {p.arch} has no language-model head and "
                         f"transformers has no causal LM for model_type "
                         f"{p.config.model_type!r}: bench needs next-token logits")
    return dataclasses.replace(p, cls=cls, arch=cls.__name__)


def load_model(p: Plan, backend: str = "auto"):
    """(model in eval mode, notes)."""
    transformers_module()
    load_kw, _ = attention_implementation_for_inspect(None, backend)
    try:
        model, info = p.cls.from_pretrained(str(p.directory), local_files_only=True,
                                            output_loading_info=True, dtype=torch.float32,
                                            **load_kw)
    except Exception as e:   # OSError, ValueError, RuntimeError from transformers
        raise UsageError(f"--model: transformers could not load {p.directory} as {p.arch} "
                         f"({_first_line(e)})") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise UsageError(f"--model: {p.directory}: the checkpoint lacks {len(missing)} "
                         f"tensor(s) {p.arch} needs (transformers would initialise them at "
                         f"random): {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
    notes = []
    unused = sorted(info.get("unexpected_keys") or [])
    if unused:
        notes.append(f"{len(unused)} tensor(s) of the checkpoint are not part of {p.arch} "
                     f"and were not used (e.g. {unused[0]})")
    return model.eval(), notes


def load_processor(p: Plan):
    """The model's own tokenizer (text) or image processor (vision), local files only."""
    tf = transformers_module()
    try:
        if p.kind == "image":
            return tf.AutoImageProcessor.from_pretrained(str(p.directory), local_files_only=True)
        return tf.AutoTokenizer.from_pretrained(str(p.directory), local_files_only=True)
    except Exception as e:
        what = "image processor" if p.kind == "image" else "tokenizer"
        raise UsageError(f"--model: {p.directory}: transformers cannot load its {what} "
                         f"({_first_line(e)})") from None
