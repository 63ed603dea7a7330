"""From a :class:`TrainConfig` and its task to a model and its objective.

Every task kind has one objective: ``loss(model, batch) -> (sum of losses, count)``
(the caller divides by the count over all processes, so a data-parallel step is the
mean over the global batch) and ``score(model, batch) -> {metric: (hits, total)}``.

==========  ===========  =============================================================
kind        model        objective
==========  ===========  =============================================================
``lm``      GPT or SSM   cross-entropy at the scored positions (``target != IGNORE``);
                         accuracy = argmax at those positions
``seq2seq`` Transformer  teacher-forced cross-entropy; token accuracy and exact match of
                         the greedy decoding
``image``   ViT          cross-entropy; accuracy
``graph``   GAT          cross-entropy on the training nodes; accuracy on the test nodes
==========  ===========  =============================================================

The ``lm`` task (text files) trains the ``llama`` model (:mod:`.hf_lm`), whose
evaluation adds the held-out loss to the accuracy (:func:`objective_for`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import GAT, GATConfig, GPT, GPTConfig, SSM, SSMConfig, Transformer, \
    TransformerConfig, ViT, ViTConfig
from ..tasks import IGNORE
from ..models.common import apply_variant
from .config import TrainConfig
from .recipe import apply_recipe

__all__ = ["build_model", "OBJECTIVES", "objective_for"]


def build_model(cfg: TrainConfig, task) -> nn.Module:
    """The model of ``cfg`` for ``task``, initialised by the recipe of ``cfg``
    (:mod:`.recipe`) from the current torch RNG."""
    return apply_recipe(_construct(cfg, task), cfg)


def _construct(cfg: TrainConfig, task) -> nn.Module:
    ffn = cfg.ffn or 2 * cfg.width
    hd = cfg.width // cfg.heads
    if cfg.model == "llama":
        from .hf_lm import build_llama
        return build_llama(cfg, task)
    if cfg.model == "ssm":
        # the sequential scan: on CPU at these lengths it is the fastest (forward+backward,
        # B 64, T 64, d 64: 0.37 s against 5.4 s for the chunked scan with chunks of 64)
        return SSM(SSMConfig(vocab_size=task.vocab_size, d_model=cfg.width, n_layers=cfg.layers,
                             scan="ref", tie_embeddings=cfg.tie_output))
    if cfg.model == "gpt":
        model = GPT(GPTConfig(vocab_size=task.vocab_size, max_len=task.seq_len, d_model=cfg.width,
                              n_layers=cfg.layers, n_heads=cfg.heads, d_ff=ffn,
                              positions=cfg.positions, dropout=cfg.dropout,
                              tie_embeddings=cfg.tie_output))
        apply_variant(model, cfg.attention, task.seq_len, causal=True)
        return model
    if cfg.model == "transformer":
        model = Transformer(TransformerConfig(
            vocab_size=task.src_vocab, tgt_vocab_size=task.tgt_vocab, share_embeddings=False,
            d_model=cfg.width, n_heads=cfg.heads, n_enc_layers=cfg.layers,
            n_dec_layers=cfg.layers, d_ff=ffn, dropout=cfg.dropout, norm_first=True,
            max_len=task.max_len + 2, pad_id=task.pad_id, bos_id=task.bos_id,
            eos_id=task.eos_id))
        # one pattern for both sides: fixed for the longer one, it serves the other (and
        # every step of cached greedy decoding) as a prefix
        apply_variant(model, cfg.attention, max(task.src_seq_len, task.tgt_seq_len),
                      causal=False)
        return model
    if cfg.model == "vit":
        vc = ViTConfig(image_size=task.image_size, patch_size=cfg.patch, channels=task.channels,
                       n_classes=task.n_classes, d_model=cfg.width, n_layers=cfg.layers,
                       n_heads=cfg.heads, d_ff=ffn, dropout=cfg.dropout)
        model = ViT(vc)
        apply_variant(model, cfg.attention, 1 + vc.n_patches, causal=False)
        return model
    return GAT(GATConfig(in_dim=task.n_features, out_dim=task.n_classes, hidden_dim=hd,
                         heads=cfg.heads, n_layers=cfg.layers,
                         dropout=cfg.dropout if cfg.dropout else 0.6))


# ----------------------------------------------------------------------------- objectives
def _ce_sum(logits: Tensor, target: Tensor) -> tuple[Tensor, int]:
    """Summed cross-entropy over the scored entries of ``target`` (IGNORE elsewhere)."""
    logits = logits.reshape(-1, logits.shape[-1]).float()
    target = target.reshape(-1)
    return (F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum"),
            int((target != IGNORE).sum()))


def _hits(logits: Tensor, target: Tensor) -> tuple[int, int]:
    keep = target != IGNORE
    return int((logits.argmax(-1)[keep] == target[keep]).sum()), int(keep.sum())


class LM:
    @staticmethod
    def loss(model, b):
        return _ce_sum(model(b["input"]), b["target"])                    # logits (B, T, V)

    @staticmethod
    def score(model, b):
        return {"accuracy": _hits(model(b["input"]), b["target"])}


class Seq2Seq:
    @staticmethod
    def loss(model, b):
        return _ce_sum(model(b["src"], b["tgt_in"]), b["tgt_out"])

    @staticmethod
    def score(model, b):
        from ..tasks.translation import exact_match
        module = getattr(model, "module", model)                          # DDP-wrapped or not
        pred = module.greedy(b["src"], max_len=b["tgt_out"].shape[1])     # (B, <= 1 + T)
        em = exact_match(pred, b)
        return {"token_accuracy": _hits(model(b["src"], b["tgt_in"]), b["tgt_out"]),
                "exact_match": (int(em.sum()), em.numel())}


class Image:
    @staticmethod
    def loss(model, b):
        return _ce_sum(model(b["images"]), b["label"])

    @staticmethod
    def score(model, b):
        return {"accuracy": _hits(model(b["images"]), b["label"])}


class Graph:
    @staticmethod
    def loss(model, b):
        y = b["label"].masked_fill(~b["train_mask"], IGNORE)
        return _ce_sum(model(b["x"], b["edge_index"]), y)

    @staticmethod
    def score(model, b):
        logits = model(b["x"], b["edge_index"])
        return {"accuracy": _hits(logits, b["label"].masked_fill(~b["test_mask"], IGNORE)),
                "train_accuracy": _hits(logits, b["label"].masked_fill(~b["train_mask"], IGNORE))}


class TextLM(LM):
    """``lm`` on text (the llama model): the held-out mean loss beside the accuracy."""

    @staticmethod
    def score(model, b):
        logits = model(b["input"])                                        # (B, T, V)
        loss, n = _ce_sum(logits, b["target"])
        return {"accuracy": _hits(logits, b["target"]), "heldout_loss": (float(loss), n)}


OBJECTIVES = {"lm": LM, "seq2seq": Seq2Seq, "image": Image, "graph": Graph}


def objective_for(cfg: TrainConfig, task):
    """The objective of ``cfg``'s model on ``task`` (by the task's kind; the llama model
    on text also reports the held-out loss)."""
    return TextLM if cfg.model == "llama" else OBJECTIVES[task.kind]


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, objective, batches: list[dict], device, all_sum) -> dict:
    """Metrics over ``batches`` (this process's share); ``all_sum`` adds counts over
    processes. Returns ``{metric: hits / total}``."""
    was = model.training
    model.eval()
    totals: dict[str, list[float]] = {}
    try:
        for b in batches:
            for name, (h, n) in objective.score(model, to_device(b, device)).items():
                t = totals.setdefault(name, [0.0, 0.0])
                t[0] += h
                t[1] += n
    finally:
        model.train(was)
    names = sorted(totals)
    summed = all_sum(torch.tensor([totals[n] for n in names], dtype=torch.float64).reshape(-1))
    return {n: float(summed[2 * i] / max(summed[2 * i + 1], 1)) for i, n in enumerate(names)}
