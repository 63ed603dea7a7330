"""The two losses of ``attnkit adapt`` and its held-out evaluation.

* Stage 1, attention transfer (:func:`transfer_loss`): the teacher runs once, its
  attention modules' inputs and outputs recorded (forward hooks); each student attention
  module then runs on *the teacher's* inputs of its layer, and the loss is the sum over
  layers of ``||out_s - out_t||² / ||out_t||²`` -- layers independent (each sees the
  teacher's activations, never its predecessor's error), so one step fits every layer.
* Stage 2, distillation of the whole model (:func:`distill_loss`): encoders
  ``1 - cos(pooled_s, pooled_t)`` (mean pooling, the sentence-transformers recipe) + the
  mean over layers of the relative hidden-state MSE; decoders ``KL(p_t || p_s)`` per token.
* Evaluation (:func:`evaluate`): bench's metrics (:class:`attnkit.bench.fidelity.Accumulator`)
  on held-out windows -- ``embedding_cosine`` (mean, ``_min`` = worst window), ``cosine``
  (per token); ``kl``, ``top1_agreement``, ``ppl_change`` for decoders; and
  ``worst_layer_error``: a layer's attention-module output on the dense run's inputs of
  that layer, relative Frobenius error (the stage-1 quantity).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from ..bench.fidelity import Accumulator
from ..sources import Outputs

__all__ = ["record_layers", "transfer_loss", "distill_loss", "evaluate"]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@contextlib.contextmanager
def record_layers(mods):
    """While active, each module's call is recorded as ``(args, kwargs, output)``."""
    rec: list = [None] * len(mods)
    hooks = []
    for i, m in enumerate(mods):
        def hook(mod, args, kwargs, out, i=i):
            rec[i] = (args, kwargs, _first(out).detach())
        hooks.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        yield rec
    finally:
        for h in hooks:
            h.remove()


def _teacher_layers(pair, ids: Tensor, **kw):
    with torch.no_grad(), record_layers(pair.t_mods) as rec:
        out = pair.run(pair.teacher, ids, **kw)
    return rec, out


def _layer_errors(pair, rec) -> list[tuple[Tensor, Tensor]]:
    """(student output, teacher output) per layer, the student on the teacher's inputs."""
    return [(_first(m(*args, **kwargs)), t) for m, (args, kwargs, t) in zip(pair.s_mods, rec)]


def _rel(a: Tensor, b: Tensor) -> Tensor:
    return (a.float() - b.float()).pow(2).sum() / b.float().pow(2).sum().clamp_min(1e-12)


def transfer_loss(pair, ids: Tensor) -> Tensor:
    """Stage 1 on a batch ``ids (B, T)``: the sum over layers of the relative error."""
    rec, _ = _teacher_layers(pair, ids)
    return sum(_rel(s, t) for s, t in _layer_errors(pair, rec))


def _pooled(h: Tensor) -> Tensor:
    return h.mean(1)                                                     # (B, d)


def distill_loss(pair, ids: Tensor) -> Tensor:
    """Stage 2 on a batch ``ids (B, T)`` (see the module doc)."""
    with torch.no_grad():
        t = pair.run(pair.teacher, ids, output_hidden_states=pair.kind == "encoder")
    s = pair.run(pair.student, ids, output_hidden_states=pair.kind == "encoder")
    if pair.kind == "decoder":
        lt = t.logits.float().log_softmax(-1)                            # (B, T, V)
        ls = s.logits.float().log_softmax(-1)
        return F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1).mean()
    cos = F.cosine_similarity(_pooled(s.last_hidden_state), _pooled(t.last_hidden_state), -1)
    hid = [_rel(a, b) for a, b in zip(s.hidden_states[1:], t.hidden_states[1:])]
    return (1 - cos).mean() + sum(hid) / len(hid)


@torch.no_grad()
def evaluate(pair, windows: list[Tensor], batch_size: int) -> dict:
    """Held-out fidelity of the student against the teacher (bench's metric names)."""
    acc = Accumulator(pair.kind, len(pair.s_mods))
    for i in range(0, len(windows), batch_size):
        ids = torch.cat(windows[i:i + batch_size])                       # (b, T)
        rec, t = _teacher_layers(pair, ids)
        s = pair.run(pair.student, ids)
        for layer, (so, to) in enumerate(_layer_errors(pair, rec)):
            acc.add_layer(layer, to, so)
        for b in range(ids.shape[0]):
            acc.add_outputs(_outputs(pair, t, b), _outputs(pair, s, b), ids[b:b + 1])
    res = acc.result()
    res.pop("layer_errors", None)
    return res


def _outputs(pair, out, b: int) -> Outputs:
    if pair.kind == "decoder":
        return Outputs(logits=out.logits[b:b + 1])
    h = out.last_hidden_state[b:b + 1]                                   # (1, T, d)
    return Outputs(hidden=h, embedding=_pooled(h))
