"""Fidelity of a variant to the dense model, measured inside the model on real text.

Encoders (per token, then per window):

* ``cosine``: mean over tokens of the cosine between the variant's and the dense
  model's final hidden state of that token (``cosine_min``: the worst token);
* ``embedding_cosine``: cosine of the pooled sentence embeddings (mean over the
  window's tokens, the sentence-transformers recipe), mean over windows (``_min``).

Decoders (per next-token prediction):

* ``kl``: mean KL(p_dense || p_variant) in nats per token;
* ``top1_agreement``: fraction of positions where both predict the same next token;
* ``ppl_dense``, ``ppl``: perplexity of the text's actual next tokens; ``ppl_change``:
  ``ppl / ppl_dense - 1`` (+0.05 = 5% worse).

Both: ``layer_errors[l]`` = ``||A_v - A_d||_F / ||A_d||_F`` where ``A`` is layer l's
attention output on the *dense run's* q/k/v of that layer (so each layer is judged on
real activations, without the drift of earlier layers); ``worst_layer_error`` is the
largest, at ``worst_layer``.

All in float64. The cosine is computed as ``1 - |a/|a| - b/|b||^2 / 2``: exactly 1 for
identical vectors, and accurate near 1; dense against itself is exact (cosine 1, KL 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Accumulator", "cosine_rows", "passes"]


def cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine of ``(..., d)`` tensors, in float64."""
    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    return 1.0 - 0.5 * (a - b).pow(2).sum(-1)


class Accumulator:
    """Sums over windows for one variant at one length; :meth:`result` -> metrics."""

    def __init__(self, kind: str, n_layers: int):
        if kind not in ("encoder", "decoder"):
            raise ValueError(f"kind: expected 'encoder' or 'decoder', got {kind!r}")
        self.kind = kind
        self.tok_cos: list[Tensor] = []
        self.emb_cos: list[float] = []
        self.kl_sum = self.agree = self.count = 0.0
        self.nll_dense = self.nll = 0.0
        self.nll_count = 0
        self.err_num = [0.0] * n_layers
        self.err_den = [0.0] * n_layers
        self.windows = 0

    def add_outputs(self, dense, var, ids: Tensor) -> None:
        """One window's model outputs (:class:`~attnkit.sources.Outputs`)."""
        self.windows += 1
        if self.kind == "encoder":
            self.tok_cos.append(cosine_rows(var.hidden[0], dense.hidden[0]))    # (T,)
            self.emb_cos.append(float(cosine_rows(var.embedding, dense.embedding)[0]))
            return
        lp_d = dense.logits[0].double().log_softmax(-1)                        # (T, V)
        lp_v = var.logits[0].double().log_softmax(-1)
        kl = (lp_d.exp() * (lp_d - lp_v)).sum(-1)                              # (T,)
        self.kl_sum += float(kl.clamp_min(0).sum())
        self.agree += float((lp_d.argmax(-1) == lp_v.argmax(-1)).sum())
        self.count += kl.shape[0]
        nxt = ids[0, 1:]
        self.nll_dense -= float(lp_d[:-1].gather(1, nxt[:, None]).sum())
        self.nll -= float(lp_v[:-1].gather(1, nxt[:, None]).sum())
        self.nll_count += nxt.shape[0]

    def add_layer(self, layer: int, dense_out: Tensor, var_out: Tensor) -> None:
        """One window's attention output of one layer, dense and variant (same q/k/v)."""
        d = dense_out.double()
        self.err_num[layer] += float((var_out.double() - d).pow(2).sum())
        self.err_den[layer] += float(d.pow(2).sum())

    def result(self) -> dict:
        errs = [(num / den) ** 0.5 if den > 0 else 0.0
                for num, den in zip(self.err_num, self.err_den)]
        worst = max(range(len(errs)), key=errs.__getitem__) if errs else None
        out = {"windows": self.windows, "layer_errors": errs,
               "worst_layer_error": errs[worst] if errs else None, "worst_layer": worst}
        if self.kind == "encoder":
            tc = torch.cat(self.tok_cos)
            out.update(cosine=float(tc.mean()), cosine_min=float(tc.min()),
                       embedding_cosine=sum(self.emb_cos) / len(self.emb_cos),
                       embedding_cosine_min=min(self.emb_cos))
        else:
            ppl_d = float(torch.tensor(self.nll_dense / self.nll_count).exp())
            ppl = float(torch.tensor(self.nll / self.nll_count).exp())
            out.update(kl=self.kl_sum / self.count, top1_agreement=self.agree / self.count,
                       ppl_dense=ppl_d, ppl=ppl, ppl_change=ppl / ppl_d - 1.0)
        return out


def passes(fid: dict, kind: str, *, min_cosine: float, max_kl: float) -> tuple[bool, str]:
    """Does ``fid`` meet the bound? And the sentence saying so, with the number."""
    if kind == "encoder":
        worst = min(fid["cosine"], fid["embedding_cosine"])
        which = "cosine" if fid["cosine"] <= fid["embedding_cosine"] else "embedding cosine"
        ok = worst >= min_cosine
        return ok, f"{which} {worst:.4f} {'>=' if ok else '<'} {min_cosine:g}"
    ok = fid["kl"] <= max_kl
    return ok, f"KL {fid['kl']:.2e} {'<=' if ok else '>'} {max_kl:g} nats/token"
