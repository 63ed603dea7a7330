"""The two losses of ``attnkit adapt`` and its held-out evaluation.

* Stage 1, attention transfer (:func:`transfer_loss`): the teacher runs once, its
  attention modules' inputs and outputs recorded (forward hooks); each student attention
  module then runs on *the teacher's* inputs of its layer, and the loss is the sum over
  layers of ``||out_s - out_t||² / ||out_t||²`` -- layers independent (each sees the
  teacher's activations, never its predecessor's error), so one step fits every layer.
* Stage 2, distillation of the whole model (:func:`distill_loss`): encoders
  ``1 - cos(pooled_s, pooled_t)`` (mean pooling, the sentence-transformers recipe) + the
  mean over layers of the relative hidden-state MSE; decoders ``KL(p_t || p_s)`` per token.
* Data parallel (``total``): both losses are ratios of sums over the batch. On a slice
  of the global batch each process divides its numerators by the *global* denominators
  (the teacher's squared norms per layer, the global row count), summed over the
  processes by ``total`` (a no-grad all-reduce; one per step) -- so its loss is its
  additive share of the global loss, and the sum of the processes' gradients is the
  global gradient, exactly up to the order of float sums. (Averaging per-process ratios
  would not be: ``mean(a_r / b_r) != sum(a_r) / sum(b_r)``.) ``total=None``: one process.
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


def _sq(a: Tensor, b: Tensor) -> Tensor:
    return (a.float() - b.float()).pow(2).sum()


def _global(total, norms: list[Tensor], ids: Tensor) -> tuple[list[Tensor], Tensor]:
    """(each ``||t||²`` of ``norms`` summed over the processes, the global row count)."""
    x = torch.stack([t.float().pow(2).sum() for t in norms] +
                    [torch.tensor(float(ids.shape[0]), device=ids.device)])
    x = total(x).to(ids.device)
    return list(x[:-1].clamp_min(1e-12)), x[-1]


def transfer_loss(pair, ids: Tensor, total=None) -> Tensor:
    """Stage 1 on a batch ``ids (B, T)``: the sum over layers of the relative error
    (``total``: see the module doc)."""
    rec, _ = _teacher_layers(pair, ids)
    errs = _layer_errors(pair, rec)
    if total is None:
        return sum(_rel(s, t) for s, t in errs)
    dens, _ = _global(total, [t for _, t in errs], ids)
    return sum(_sq(s, t) / d for (s, t), d in zip(errs, dens))


def _pooled(h: Tensor) -> Tensor:
    return h.mean(1)                                                     # (B, d)


def distill_loss(pair, ids: Tensor, total=None) -> Tensor:
    """Stage 2 on a batch ``ids (B, T)`` (see the module doc; ``total`` too)."""
    with torch.no_grad():
        t = pair.run(pair.teacher, ids, output_hidden_states=pair.kind == "encoder")
    s = pair.run(pair.student, ids, output_hidden_states=pair.kind == "encoder")
    if pair.kind == "decoder":
        lt = t.logits.float().log_softmax(-1)                            # (B, T, V)
        ls = s.logits.float().log_softmax(-1)
        kl = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1)  # (B, T)
        if total is None:
            return kl.mean()
        _, rows = _global(total, [], ids)
        return kl.sum() / (rows * ids.shape[1])
    cos = F.cosine_similarity(_pooled(s.last_hidden_state), _pooled(t.last_hidden_state), -1)
    pairs = list(zip(s.hidden_states[1:], t.hidden_states[1:]))
    if total is None:
        hid = [_rel(a, b) for a, b in pairs]
        return (1 - cos).mean() + sum(hid) / len(hid)
    dens, rows = _global(total, [b for _, b in pairs], ids)
    hid = [_sq(a, b) / d for (a, b), d in zip(pairs, dens)]
    return (1 - cos).sum() / rows + sum(hid) / len(hid)


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
