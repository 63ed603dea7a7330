"""What every architecture's mapping shares: the load plan, typed config fields that
name themselves in errors, activations, and the config fields that change nothing.

A family module (``bert.py``, ``gpt2.py``, ``llama.py``) declares three tables:

* ``IMPLEMENTED`` -- config field -> what it becomes in the attnkit model;
* ``IGNORED`` -- config field -> why it cannot change the eval-mode computation;
* ``REFUSED`` -- config field -> (an example refused value, why): loading raises a
  :class:`CheckpointError` naming the field and its value.

and ``build(fields, weights, arch) -> Plan``. Fields in none of the tables (nor in
:data:`COMMON_IGNORED`) are unknown: :func:`attnkit.load` refuses them unless
``strict=False``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import Tensor, nn

from ..core.errors import CheckpointError

__all__ = ["Plan", "Fields", "COMMON_IGNORED", "COMMON_REFUSED", "ACTIVATIONS", "hf_hint",
           "prefix"]


def hf_hint(d) -> str:
    """The transformers path, for what attnkit's own ports do not cover."""
    return (f"; to run it with attnkit attention use transformers: import attnkit.hf; "
            f"attnkit.hf.register(); transformers.AutoModel.from_pretrained({str(d)!r}, "
            f"attn_implementation=\"attnkit\")")


@dataclass
class Plan:
    """How to fill ``model`` from the file.

    ``tensors``: our state-dict name -> (the file's tensor name, transform or None).
    ``fill``: our name -> a tensor not in the file (e.g. a zero bias standing for "no
    bias"). ``unused``: file tensor -> why transformers does not read it either (known
    buffers, tied copies). ``notes``: what the loader did beyond copying.
    """
    model: nn.Module
    tensors: dict[str, tuple[str, Callable[[Tensor], Tensor] | None]]
    fill: dict[str, Tensor] = field(default_factory=dict)
    unused: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# HF activation name -> attnkit's (attnkit.modules.layers.ACTIVATIONS); each pair is the
# same function (gelu_new/fast/accurate are algebraically the tanh approximation), tested
# against transformers' ACT2FN. Every other name (quick_gelu, gelu_10, mish, relu2, ...)
# is refused.
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh", "relu": "relu",
               "silu": "silu", "swish": "silu"}

_GENERATION = ("max_length", "min_length", "do_sample", "early_stopping", "num_beams",
               "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p",
               "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
               "encoder_no_repeat_ngram_size", "encoder_repetition_penalty", "bad_words_ids",
               "num_return_sequences", "output_scores", "return_dict_in_generate",
               "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
               "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
               "epsilon_cutoff", "eta_cutoff", "num_assistant_tokens",
               "num_assistant_tokens_schedule", "assistant_confidence_threshold",
               "assistant_lookbehind", "target_lookbehind", "max_new_tokens")

# fields of transformers' PreTrainedConfig (v4 and v5) that never change a forward pass
COMMON_IGNORED: dict[str, str] = {
    **{k: "a generation default (transformers moves it to generation_config)"
       for k in _GENERATION},
    **{k: "a token id (tokenization / generation, not the forward pass)"
       for k in ("bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id")},
    **{k: "bookkeeping" for k in ("architectures", "model_type", "transformers_version",
                                  "_name_or_path", "name_or_path", "_commit_hash",
                                  "tokenizer_class", "prefix", "task_specific_params",
                                  "finetuning_task", "id2label", "label2id", "num_labels",
                                  "problem_type", "initializer_range", "initializer_factor")},
    **{k: "what the forward pass returns or how it is traced, not its values"
       for k in ("output_attentions", "output_hidden_states", "return_dict", "torchscript",
                 "use_return_dict", "attn_implementation", "_attn_implementation",
                 "_attn_implementation_autoset", "_attn_implementation_internal",
                 "_experts_implementation", "output_past", "xla_device")},
    **{k: "training only (attnkit.load returns an eval-mode model)"
       for k in ("gradient_checkpointing", "use_cache", "tf_legacy_loss", "use_bfloat16")},
    "dtype": "load(dtype=) decides (dtype=None keeps the tensors' own dtype)",
    "torch_dtype": "load(dtype=) decides (dtype=None keeps the tensors' own dtype)",
    "chunk_size_feed_forward": "chunks the FFN over positions: same values (tested)",
    "is_encoder_decoder": "only picks transformers' cache type in these models",
    "tie_encoder_decoder": "encoder-decoder wrappers only",
    "cross_attention_hidden_size": "encoder-decoder wrappers only",
}

COMMON_REFUSED: dict[str, tuple[object, str]] = {
    "quantization_config": ({"quant_method": "gptq", "bits": 4},
                            "quantized weights are not dequantized by attnkit"),
    "auto_map": ({"AutoModel": "modeling_custom.CustomModel"},
                 "the checkpoint ships its own modelling code, which attnkit's port may "
                 "not match"),
    "pruned_heads": ({"0": [1]}, "pruned attention heads are not ported"),
    "per_layer_config": ({"0": {"intermediate_size": 8}},
                         "per-layer (heterogeneous) configs are not ported"),
}


class Fields:
    """Typed reads of ``config.json`` whose errors name the file, field and value."""

    def __init__(self, cfg: dict, file: Path):
        self.cfg, self.file, self.dir = cfg, file, file.parent
        self.read: set[str] = set()

    def __contains__(self, key):
        return key in self.cfg

    def get(self, key: str, default=None):
        self.read.add(key)
        v = self.cfg.get(key, default)
        return default if v is None else v

    def refuse(self, key: str, why: str, hint: bool = True):
        v = self.cfg.get(key)
        raise CheckpointError(f"{self.file}: {key}={v!r} is not supported: {why}"
                              f"{hf_hint(self.dir) if hint else ''}")

    def _bad(self, key, expected, v):
        raise CheckpointError(f"{self.file}: field {key!r}: expected {expected}, got {v!r}")

    def int(self, key: str, default=None, *, minimum: int = 1, aliases=()) -> int:
        """An int >= minimum; no default: the field is required."""
        for k in (key, *aliases):
            if self.cfg.get(k) is not None:
                key = k
                break
        v = self.get(key)
        if v is None:
            if default is None:
                raise CheckpointError(f"{self.file}: missing field {key!r}")
            return default
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            self._bad(key, f"an int >= {minimum}", v)
        return v

    def float(self, key: str, default: float) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            self._bad(key, "a finite number >= 0", v)
        return float(v)

    def bool(self, key: str, default: bool) -> bool:
        v = self.get(key, default)
        if not isinstance(v, bool):
            self._bad(key, "true or false", v)
        return v

    def activation(self, key: str, default: str) -> str:
        v = self.get(key, default)
        if not isinstance(v, str) or v not in ACTIVATIONS:
            raise CheckpointError(f"{self.file}: {key}={v!r} is not supported: expected one "
                                  f"of {sorted(ACTIVATIONS)}{hf_hint(self.dir)}")
        return ACTIVATIONS[v]

    def check_common(self) -> None:
        for key in COMMON_REFUSED:
            if self.cfg.get(key):
                self.refuse(key, COMMON_REFUSED[key][1], hint=key != "pruned_heads")

    def unknown(self, implemented, ignored, refused) -> list[str]:
        known = set(implemented) | set(ignored) | set(refused) | set(COMMON_IGNORED) \
            | set(COMMON_REFUSED)
        return sorted(k for k in self.cfg if k not in known)


def prefix(names, candidates, probe: str) -> str:
    """The tensor-name prefix (``"bert."``, ``"transformer."``, ``"model."`` or ``""``)."""
    for p in candidates:
        if p + probe in names:
            return p
    return candidates[0]


def same(weights, a: str, b: str) -> bool:
    """Do tensors ``a`` and ``b`` of the file hold the same values (tied copies)?"""
    x, y = weights.get(a), weights.get(b)
    return x.shape == y.shape and bool((x == y).all())


def lm_head_tying(f, w, emb: str, head: str, has_head: bool, tie: bool,
                  headless: str) -> tuple[bool, dict, list]:
    """Whether the LM head is tied to the embedding ``emb``, as transformers decides it:
    a config that says tied but a file whose ``head`` differs is loaded untied (noted);
    an untied head must be in the file. Returns ``(tie, unused tensors, notes)``;
    ``headless``: the architecture name of the same model without a head (for the error)."""
    names, unused, notes = w.names, {}, []
    if has_head and tie and head in names and emb in names:
        if same(w, emb, head):
            unused[head] = f"a tied copy of {emb}"
        else:
            tie = False
            notes.append(f"{head} differs from {emb} although tie_word_embeddings is true: "
                         f"loaded as an untied head, as transformers does")
    if has_head and not tie and head not in names:
        raise CheckpointError(f"{w.dir}: missing tensor {head!r} (tie_word_embeddings is "
                              f"false, so the LM head is its own tensor; a checkpoint without "
                              f"a head is architectures [\"{headless}\"])")
    return tie, unused, notes
