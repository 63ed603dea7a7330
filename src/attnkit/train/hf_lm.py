"""The ``llama`` model of ``attnkit train --task lm``: transformers' own
``LlamaForCausalLM`` (RMSNorm, SwiGLU, RoPE, GQA) with its attention running through
attnkit (``attn_implementation="attnkit"``; dense: the export could not record a
variant), initialised by transformers (N(0, initializer_range = 0.02)) from the
current torch RNG.

The trainer sees :class:`CausalLM`, a wrapper whose ``forward(ids)`` returns the logits
``(B, T, V)`` (the ``lm`` objective of :mod:`.build`); its checkpoints hold the wrapped
model's tensors. When the run ends, :func:`export` writes ``RUN/model/``: a Hugging Face
directory (``config.json``, ``model.safetensors``, ``generation_config.json``, the
tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``) that loads with
``AutoModelForCausalLM.from_pretrained``, ``attnkit.hf.from_pretrained``,
``attnkit.load`` and ``PreTrainedTokenizerFast``/``AutoTokenizer.from_pretrained``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch import Tensor, nn


__all__ = ["CausalLM", "build_llama", "export", "MODEL_SUBDIR", "llama_config"]

MODEL_SUBDIR = "model"


def _ffn(cfg) -> int:
    """The SwiGLU width: ``cfg.ffn``, else 8/3 x width rounded up to a multiple of 32
    (Llama's rule)."""
    return cfg.ffn or 32 * math.ceil(8 * cfg.width / 3 / 32)


def llama_config(cfg, task):
    """The ``LlamaConfig`` of TrainConfig ``cfg`` for the prepared lm ``task``."""
    from transformers import LlamaConfig
    from ..tasks.text import EOS
    eos = task.tokenizer_object.token_to_id(EOS)
    return LlamaConfig(vocab_size=task.n_vocab, hidden_size=cfg.width,
                       intermediate_size=_ffn(cfg), num_hidden_layers=cfg.layers,
                       num_attention_heads=cfg.heads,
                       num_key_value_heads=cfg.kv_heads or cfg.heads,
                       max_position_embeddings=task.seq_len, rms_norm_eps=1e-6,
                       attention_dropout=cfg.dropout, tie_word_embeddings=cfg.tie_output,
                       bos_token_id=eos, eos_token_id=eos)


class CausalLM(nn.Module):
    """``forward(ids (B, T)) -> logits (B, T, V)`` of the wrapped HF causal LM ``hf``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, ids: Tensor) -> Tensor:
        return self.hf(input_ids=ids, use_cache=False).logits            # (B, T, V)


def build_llama(cfg, task) -> CausalLM:
    """A freshly initialised ``LlamaForCausalLM`` running attention through attnkit."""
    from transformers import LlamaForCausalLM
    from ..integrations import hf as attnkit_hf
    name = attnkit_hf.register()                  # dense (TrainConfig refuses variants)
    hc = llama_config(cfg, task)
    hc._attn_implementation = name
    model = LlamaForCausalLM(hc)
    attnkit_hf.check(model)
    return CausalLM(model)


def export(run_dir, model: CausalLM, task, metrics: dict) -> Path:
    """Write ``run_dir/model/`` (see the module docstring); returns its path."""
    from transformers import PreTrainedTokenizerFast
    from ..tasks.text import EOS
    out = Path(run_dir) / MODEL_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as tf_logging
    hf = model.hf
    impl, bars = hf.config._attn_implementation, tf_logging.is_progress_bar_enabled()
    try:
        hf.config._attn_implementation = "eager"      # the saved config names no attnkit
        tf_logging.disable_progress_bar()             # no "Writing model shards" bar
        hf.save_pretrained(out, safe_serialization=True)
    finally:
        hf.config._attn_implementation = impl
        if bars:
            tf_logging.enable_progress_bar()
    tok = PreTrainedTokenizerFast(tokenizer_object=task.tokenizer_object, bos_token=EOS,
                                  eos_token=EOS, model_max_length=task.seq_len)
    tok.save_pretrained(out)
    info = {"task": task.describe(), "files": list(task.text), **task.token_counts(),
            "heldout_loss": metrics.get("heldout_loss"), "heldout_accuracy": metrics.get("accuracy")}
    if info["heldout_loss"] is not None:
        info["heldout_perplexity"] = math.exp(info["heldout_loss"])
    (out / "training.json").write_text(json.dumps(info, indent=1))
    return out
