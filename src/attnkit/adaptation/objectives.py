"""The two losses of ``attnkit adapt`` and its held-out evaluation.

* Stage 1, attention transfer (:func:`transfer_loss`): the teacher runs once, its
  attention modules' inputs and outputs recorded (forward hooks); each student attention
  module then runs on *the teacher's* inputs of its layer, and the loss is the sum over
  layers of ``||out_s - out_t||² / ||out_t||²`` -- layers independent (each sees the
  teacher's activations, never its predecessor's error), so one step fits every layer.
  For a linear variant, plus ``weights`` x the sum over layers of the *weight-matching*
  term (:func:`weight_kl`, Hedgehog / LoLCATs): the mean over (batch, head, query) of
  ``KL(softmax row || linear row)`` between the teacher's attention weights
  ``softmax(q_t k_t^T * scale + mask)`` -- from *the teacher's own* q and k (after RoPE),
  kept from its run (:func:`attnkit.integrations.hf.calls.record`) -- and the student's
  normalised linear weights ``phi(q) phi(k)^T / sum_j phi(q) phi(k_j)^T``, from the
  features its linear-attention calls multiplied
  (:func:`attnkit.integrations.hf.calls.collect_linear`), both over the call's keys
  (causal, key padding). The teacher's q/k rather than the student's: where stage 1
  trains the q/k projections (``linear:elu``...) the student's drift from the teacher's,
  and a softmax of the student's q/k would be a moving target, not the teacher's weights
  (for ``linear:hedgehog`` only the maps train: both q/k are the same tensors' values).
  :class:`~attnkit.adaptation.config.AdaptConfig` sets ``weights`` (``--stage1-weights``):
  1 for a learnable map, 0 (off) for a fixed one, where it was measured to gain nothing.
  For ``gqa:N`` the student's row is a softmax too (:func:`softmax_kl`): ``softmax(q_s
  pool(k_s)^T * scale + mask)`` from the q/k its attention calls used (recorded with
  ``record`` around its layers' run, in the autograd graph: the gradient reaches the
  pooled K projections), its keys mean-pooled into N heads as the variant pools them,
  against the teacher's rows from its own per-head keys. Sparse variants have no term:
  their rows are the teacher's logits renormalised over the allowed keys, so at the start
  the in-window rows already equal the renormalised teacher rows (the KL over the
  allowed keys is 0; over all keys it is infinite).
  Default weight for gqa: 0 (measured on ``stdlib-lm`` ``gqa:1``: the rows move, the
  model does not; see the README).
* Stage 2, distillation of the whole model (:func:`distill_loss`): encoders
  ``1 - cos(pooled_s, pooled_t)`` (mean pooling, the sentence-transformers recipe) + the
  mean over layers of the relative hidden-state MSE; decoders ``KL(p_t || p_s)`` per token.
* Data parallel (``total``): both losses are ratios of sums over the batch. On a slice
  of the global batch each process divides its numerators by the *global* denominators
  (the teacher's squared norms per layer, the global row count, the weight term's row
  counts per layer), summed over the
  processes by ``total`` (a no-grad all-reduce; one per step) -- so its loss is its
  additive share of the global loss, and the sum of the processes' gradients is the
  global gradient, exactly up to the order of float sums. (Averaging per-process ratios
  would not be: ``mean(a_r / b_r) != sum(a_r) / sum(b_r)``.) ``total=None``: one process.
* Evaluation (:func:`evaluate`): bench's metrics (:class:`attnkit.bench.fidelity.Accumulator`)
  on held-out windows -- ``embedding_cosine`` (mean, ``_min`` = worst window), ``cosine``
  (per token); ``kl``, ``top1_agreement``, ``ppl_change`` for decoders; and
  ``worst_layer_error``: a layer's attention-module output on the dense run's inputs of
  that layer, relative Frobenius error (the stage-1 quantity); for a linear or gqa
  variant also ``attention_kl``: the weight-matching term's mean row KL (:func:`weight_kl`,
  :func:`softmax_kl`), averaged
  over layers.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..bench.fidelity import Accumulator
from ..engine.variants import pool_heads
from ..integrations.hf.calls import collect_linear, record
from ..sources import Outputs

__all__ = ["record_layers", "transfer_loss", "weight_kl", "softmax_kl", "weight_match", "distill_loss",
           "evaluate"]

# the linear row's probabilities are clamped to this before the log (a relu feature map
# can give an exact 0 where the softmax row is positive: a large, finite penalty)
LOG_EPS = 1e-12


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


def _global(total, norms: list[Tensor], ids: Tensor, counts=None):
    """(each ``||t||²`` of ``norms`` summed over the processes, the global row count);
    with ``counts`` (a list of tensors), also each of them summed over the processes, as
    a third item. One all-reduce."""
    counts = [] if counts is None else counts
    x = torch.stack([t.float().pow(2).sum() for t in norms] +
                    [c.float().reshape(()) for c in counts] +
                    [torch.tensor(float(ids.shape[0]), device=ids.device)])
    x = total(x).to(ids.device)
    n = len(norms)
    return list(x[:n].clamp_min(1e-12)), x[-1], list(x[n:-1].clamp_min(1.0))


def _products(a: Tensor, b: Tensor, acc) -> Tensor:
    """``a b^T`` per query head in ``acc``: ``a (B, H, Tq, F)``, ``b (B, Hkv, Tk, F)``,
    query head h reading key head ``h // (H / Hkv)`` -> ``(B, H, Tq, Tk)``."""
    G = a.shape[1] // b.shape[1]
    return a.to(acc) @ b.to(acc).repeat_interleave(G, 1).transpose(-1, -2)


def _rows_kl(p_t: Tensor, logp_t: Tensor, logp_s: Tensor, rows: Tensor
             ) -> tuple[Tensor, Tensor]:
    """(sum over the counted rows of KL(p_t || p_s), their number); ``rows (B, 1, Tq)``."""
    kl = (p_t * (logp_t - logp_s)).sum(-1)                                 # (B, H, Tq)
    rows = rows.expand_as(kl)
    return (kl * rows).sum(), rows.sum()


def _teacher_rows(q: Tensor, k: Tensor, scale: float, causal: bool, keep: Tensor | None):
    """The teacher's side of a row KL: ``(allowed (B, 1, Tq, Tk), rows (B, 1, Tq), p_t,
    log p_t (B, H, Tq, Tk), accumulation dtype)``, no gradient; masked keys have
    ``p_t = log p_t = 0``, a row that is not counted is a harmless uniform one."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, T = q.shape[0], q.shape[2]
    allowed = torch.ones(T, T, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed.expand(B, 1, T, T)                                  # (B, 1, Tq, Tk)
    rows = torch.ones(B, 1, T, dtype=torch.bool, device=q.device)
    if keep is not None:
        keep = keep.to(torch.bool)
        allowed = allowed & keep[:, None, None, :]
        rows = rows & keep[:, None, :]
    rows = rows & allowed.any(-1)                                          # (B, 1, Tq)
    with torch.no_grad():
        s = _products(q, k, acc) * scale
        s = s.masked_fill(~allowed, -math.inf).masked_fill(~rows[..., None], 0.0)
        logp_t = s.log_softmax(-1)
        p_t = logp_t.exp() * allowed                                       # (B, H, Tq, Tk)
        logp_t = logp_t.masked_fill(~allowed, 0.0)
    return allowed, rows, p_t, logp_t, acc


def weight_kl(q: Tensor, k: Tensor, scale: float, fq: Tensor, fk: Tensor, causal: bool,
              keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(sum of KL(p_t || p_s) over the rows, number of rows)`` in float32 (float64 for
    float64 inputs): ``p_t = softmax(q k^T * scale + mask)`` per row (no gradient: the
    teacher's), ``p_s = fq fk^T / sum_j fq fk_j^T`` over the same keys (gradient to ``fq``,
    ``fk``).

    ``q (B, H, T, D)``, ``k (B, Hkv, T, D)``, features ``fq (B, H, T, F)``, ``fk (B, Hkv,
    T, F)`` (GQA: query head h reads key head ``h // (H / Hkv)``, as transformers'
    ``repeat_kv``). Mask: ``causal`` (key j <= query i), ``keep (B, T)`` (True = a real
    key). A row counts when its query is a real token (``keep``) and sees a key; O(T²)
    memory per head. ``log p_s`` is ``log(max(p_s, LOG_EPS))``; masked keys add 0."""
    allowed, rows, p_t, logp_t, acc = _teacher_rows(q, k, scale, causal, keep)
    a = _products(fq, fk, acc) * allowed                                   # (B, H, Tq, Tk)
    p_s = a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(acc).tiny)
    return _rows_kl(p_t, logp_t, p_s.clamp_min(LOG_EPS).log(), rows)


def softmax_kl(q: Tensor, k: Tensor, scale: float, q_s: Tensor, k_s: Tensor, causal: bool,
               keep: Tensor | None = None, scale_s: float | None = None
               ) -> tuple[Tensor, Tensor]:
    """As :func:`weight_kl`, the student's row a softmax too: ``p_s = softmax(q_s k_s^T *
    scale_s + mask)`` (gradient to ``q_s``, ``k_s``; ``scale_s`` defaults to ``scale``)
    over the same keys -- ``gqa:N``'s rows, ``k_s (B, N, T, D)`` the pooled keys (query
    head h reads ``h // (H / N)``), against the teacher's from its own ``k (B, Hkv, T, D)``.
    ``log p_s`` is a log-softmax (never 0 on an allowed key: no clamp)."""
    allowed, rows, p_t, logp_t, acc = _teacher_rows(q, k, scale, causal, keep)
    s = _products(q_s, k_s, acc) * (scale if scale_s is None else scale_s)  # (B, H, Tq, Tk)
    s = s.masked_fill(~allowed, -math.inf).masked_fill(~rows[..., None], 0.0)
    return _rows_kl(p_t, logp_t, s.log_softmax(-1).masked_fill(~allowed, 0.0), rows)


def _scale(c) -> float:
    scale = c.args.get("scaling")
    return 1.0 / math.sqrt(c.query.shape[-1]) if scale is None else float(scale)


def _causal_keep(c) -> tuple[bool, Tensor | None]:
    """A recorded call's mask as (causal, keep): what the softmax weight matching serves --
    no mask, causal, key padding or both, and no score edits (softcap, bias, sinks)."""
    from ..integrations.hf.attention import _linear_mask, call_mask
    edits = [n for n in ("softcap", "position_bias", "s_aux") if c.args.get(n) is not None]
    spec = call_mask(c.attention_mask, c.module, c.query, c.key, c.args.get("is_causal"))
    served = None if edits else _linear_mask(spec)
    if served is None or c.query.shape[2] != c.key.shape[2]:
        why = f"its {', '.join(edits)}" if edits else f"its mask {spec!r}"
        raise ValueError(f"--stage1-weights: the model's attention calls have {why}; "
                         "softmax weight matching serves causal / key-padding masks only "
                         "(give --stage1-weights 0)")
    return served


def weight_match(pair, calls: list, student: list) -> list[tuple[Tensor, Tensor]]:
    """Per layer ``(sum of row KLs, rows)`` from the teacher's recorded attention calls
    (``calls``: :func:`~attnkit.integrations.hf.calls.record` around its run) and the
    student's calls around its layers' run: for a linear variant its linear-attention
    calls (:func:`~attnkit.integrations.hf.calls.collect_linear`; :func:`weight_kl`), for
    ``gqa:N`` its recorded attention calls (``record``; :func:`softmax_kl` with the
    student's q and its keys mean-pooled into N heads, as the variant pools them)."""
    t_at = {id(m): i for i, m in enumerate(pair.t_mods)}
    s_at = {id(m): i for i, m in enumerate(pair.s_mods)}
    teacher = {t_at[id(c.module)]: c for c in calls if id(c.module) in t_at}
    stud = {s_at[id(c.module)]: c for c in student if id(c.module) in s_at}
    n = len(pair.s_mods)
    linear = pair.variant.is_linear
    if len(teacher) != n or len(stud) != n:
        raise RuntimeError(f"weight matching: expected one attention call per layer ({n}), "
                           f"got {len(teacher)} from the teacher and {len(stud)} "
                           f"{'linear ' if linear else ''}ones from the student")
    out = []
    for i in range(n):
        t, s = teacher[i], stud[i]
        if linear:
            out.append(weight_kl(t.query, t.key, _scale(t), s.query_features,
                                 s.key_features, s.causal, s.keep))
        else:
            causal, keep = _causal_keep(t)
            k_s = pool_heads(s.key, pair.variant.args[0])                # (B, N, T, D)
            out.append(softmax_kl(t.query, t.key, _scale(t), s.query, k_s, causal, keep,
                                  _scale(s)))
    return out


def matches_weights(pair) -> bool:
    """Does stage 1 of this pair have a weight-matching term (a linear or gqa variant)?"""
    return pair.variant.is_linear or pair.variant.is_gqa


def _student_calls(pair, match: bool):
    """The context that keeps the student's calls weight matching reads (or none)."""
    if not match:
        return contextlib.nullcontext()
    return collect_linear() if pair.variant.is_linear else record()


def transfer_loss(pair, ids: Tensor, total=None, weights: float = 0.0) -> Tensor:
    """Stage 1 on a batch ``ids (B, T)``: the sum over layers of the relative error, plus
    ``weights`` x the sum over layers of the mean row KL for a linear or gqa variant
    (``total``: see the module doc)."""
    match = weights > 0 and matches_weights(pair)
    with record() if match else contextlib.nullcontext() as calls:
        rec, _ = _teacher_layers(pair, ids)
    with _student_calls(pair, match) as student:
        errs = _layer_errors(pair, rec)
    kls = weight_match(pair, calls, student) if match else []
    if total is None:
        loss = sum(_rel(s, t) for s, t in errs)
        wm = [a / c.clamp_min(1) for a, c in kls]
    else:
        dens, _, counts = _global(total, [t for _, t in errs], ids, [c for _, c in kls])
        loss = sum(_sq(s, t) / d for (s, t), d in zip(errs, dens))
        wm = [a / c for (a, _), c in zip(kls, counts)]
    return loss + weights * sum(wm) if wm else loss


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
        _, rows, _ = _global(total, [], ids)
        return kl.sum() / (rows * ids.shape[1])
    cos = F.cosine_similarity(_pooled(s.last_hidden_state), _pooled(t.last_hidden_state), -1)
    pairs = list(zip(s.hidden_states[1:], t.hidden_states[1:]))
    if total is None:
        hid = [_rel(a, b) for a, b in pairs]
        return (1 - cos).mean() + sum(hid) / len(hid)
    dens, rows, _ = _global(total, [b for _, b in pairs], ids)
    hid = [_sq(a, b) / d for (a, b), d in zip(pairs, dens)]
    return (1 - cos).sum() / rows + sum(hid) / len(hid)


@torch.no_grad()
def evaluate(pair, windows: list[Tensor], batch_size: int) -> dict:
    """Held-out fidelity of the student against the teacher (bench's metric names)."""
    acc = Accumulator(pair.kind, len(pair.s_mods))
    match = matches_weights(pair)
    kl = torch.zeros(len(pair.s_mods), 2, dtype=torch.float64)          # (sum, rows) per layer
    for i in range(0, len(windows), batch_size):
        ids = torch.cat(windows[i:i + batch_size])                       # (b, T)
        with record() if match else contextlib.nullcontext() as calls:
            rec, t = _teacher_layers(pair, ids)
        s = pair.run(pair.student, ids)
        with _student_calls(pair, match) as student:
            errs = _layer_errors(pair, rec)
        for layer, (so, to) in enumerate(errs):
            acc.add_layer(layer, to, so)
        if match:
            try:
                kl += torch.tensor([[float(a), float(c)]
                                    for a, c in weight_match(pair, calls, student)],
                                   dtype=torch.float64)
            except ValueError:  # gqa on a mask / score edit the softmax term does not serve
                match = False
        for b in range(ids.shape[0]):
            acc.add_outputs(_outputs(pair, t, b), _outputs(pair, s, b), ids[b:b + 1])
    res = acc.result()
    res.pop("layer_errors", None)
    if match:   # the stage-1 weight-matching quantity: mean row KL, averaged over layers
        res["attention_kl"] = float((kl[:, 0] / kl[:, 1].clamp_min(1)).mean())
    return res


def _outputs(pair, out, b: int) -> Outputs:
    if pair.kind == "decoder":
        return Outputs(logits=out.logits[b:b + 1])
    h = out.last_hidden_state[b:b + 1]                                   # (1, T, d)
    return Outputs(hidden=h, embedding=_pooled(h))
