"""A Mamba-style selective state-space model in plain PyTorch (Gu & Dao, 2023).

The linear-time comparison point for attention: each channel ``d`` of the inner
stream carries a state ``h (d_state,)`` updated once per token,

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        A = -exp(A_log) < 0
    y_t = C_t . h_t + D * u_t

with ``delta_t (d_inner,)``, ``B_t, C_t (d_state,)`` computed from the input
("selective"). Decoding keeps a constant-size state: the last ``d_conv - 1``
conv inputs and ``h``, whatever the sequence length.

Two scans, same maths:

* :func:`selective_scan_ref` -- a loop over time; the reference.
* :func:`selective_scan_chunked` -- splits time into chunks; within a chunk all
  states come at once from a log-depth (Hillis-Steele) scan over pairs
  ``(segment decay, state)``; the state is carried from chunk to chunk. After the
  scan the decay at position ``t`` is ``exp(S_t)``, ``S_t = sum_{s<=t} delta_s A``
  the chunk-local cumulative log-decay, and ``h_t = scan_t + exp(S_t) h_prev``.

Numerics. The closed form ``h_t = exp(S_t) * cumsum(exp(-S_s) x_s)`` overflows
(``exp(-S)`` with ``S`` in the -1e3s under strong decay), and ``exp(S_t - S_s)``
from two large cumulative sums cancels. Here the decay of a segment
``(s, t]``, ``exp(sum_{s<r<=t} delta_r A)``, is built as the product of its
per-step factors ``exp(delta_r A)`` in (0, 1] -- the exponential of the segment
sum, never of a difference of cumsums -- so nothing overflows (it can only
underflow to 0, which is the right answer) and nothing cancels. Products instead
of log-space sums also save one ``exp`` per doubling step.

Cost: work O(T * log2(chunk) * d_inner * d_state) -- linear in T for a fixed
chunk -- and live memory O(batch * chunk * d_inner * d_state) per chunk in the
forward (autograd keeps ~3 log2(chunk) such tensors per chunk for the backward).
The segsum form (Mamba-2) would need an (chunk, chunk) matrix per (d_inner,
d_state) pair here, since A is diagonal per channel and state, not per head.

Layouts: ``u, delta (B, T, d_inner)``, ``A (d_inner, d_state)``,
``B, C (B, T, d_state)``, ``D (d_inner,)``, state ``h (B, d_inner, d_state)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checks import check_int as _check_int
__all__ = ["selective_scan_ref", "selective_scan_chunked", "SSMConfig", "SSMBlock", "SSM",
           "SSMState"]


# ----------------------------------------------------------------------------- validation
def _check_tensor(name: str, t, shape: tuple, layout: str) -> None:
    """``shape`` holds ints or None (any size)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point dtype, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name}: expected shape {layout} = {want}, got {tuple(t.shape)}")


def _check_scan(u, delta, A, B, C, D, h0) -> None:
    _check_tensor("u", u, (None, None, None), "(B, T, d_inner)")
    Bt, T, Di = u.shape
    _check_tensor("delta", delta, (Bt, T, Di), "(B, T, d_inner)")
    _check_tensor("A", A, (Di, None), "(d_inner, d_state)")
    N = A.shape[1]
    _check_tensor("B", B, (Bt, T, N), "(B, T, d_state)")
    _check_tensor("C", C, (Bt, T, N), "(B, T, d_state)")
    if D is not None:
        _check_tensor("D", D, (Di,), "(d_inner,)")
    if h0 is not None:
        _check_tensor("h0", h0, (Bt, Di, N), "(B, d_inner, d_state)")


# ----------------------------------------------------------------------------- scans
def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None, h0: Tensor | None = None,
                       return_state: bool = False):
    """Sequential reference scan.

    Returns ``y (B, T, d_inner)`` [, ``h_T (B, d_inner, d_state)``].
    """
    _check_scan(u, delta, A, B, C, D, h0)
    Bt, T, Di = u.shape
    h = h0 if h0 is not None else u.new_zeros(Bt, Di, A.shape[1])   # (B, Di, N)
    ys = []
    for t in range(T):
        decay = torch.exp(delta[:, t, :, None] * A)                   # (B, Di, N)
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))                     # (B, Di)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(Bt, 0, Di)     # (B, T, Di)
    if D is not None:
        y = y + u * D
    return (y, h) if return_state else y


def selective_scan_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, h0: Tensor | None = None,
                           return_state: bool = False, chunk_size: int = 64):
    """Chunked parallel scan, equal to :func:`selective_scan_ref` up to rounding.

    Returns ``y (B, T, d_inner)`` [, ``h_T (B, d_inner, d_state)``].
    """
    _check_int("chunk_size", chunk_size)
    _check_scan(u, delta, A, B, C, D, h0)
    Bt, T, Di = u.shape
    h = h0 if h0 is not None else u.new_zeros(Bt, Di, A.shape[1])   # (B, Di, N)
    du = delta * u                                                    # (B, T, Di)
    ys = []
    for c0 in range(0, T, chunk_size):
        c1 = min(c0 + chunk_size, T)
        L = c1 - c0
        dec = torch.exp(delta[:, c0:c1, :, None] * A)                 # (B, L, Di, N) in (0, 1]
        x = du[:, c0:c1, :, None] * B[:, c0:c1, None, :]              # (B, L, Di, N)
        # Inclusive scan of (dec, x) under (d1, x1) o (d2, x2) = (d1 d2, d2 x1 + x2).
        # Invariant after offset k: position t covers (t - 2k, t]; dec is that segment's decay.
        k = 1
        while k < L:
            x = torch.cat([x[:, :k], torch.addcmul(x[:, k:], dec[:, k:], x[:, :-k])], dim=1)
            dec = torch.cat([dec[:, :k], dec[:, k:] * dec[:, :-k]], dim=1)
            k *= 2
        # Now dec = exp(S_t), S_t the chunk-local cumulative log-decay; add the carried state.
        hs = torch.addcmul(x, dec, h[:, None])                        # (B, L, Di, N)
        ys.append((hs @ C[:, c0:c1, :, None]).squeeze(-1))            # (B, L, Di)
        h = hs[:, -1]
    y = torch.cat(ys, dim=1) if ys else u.new_zeros(Bt, 0, Di)       # (B, T, Di)
    if D is not None:
        y = y + u * D
    return (y, h) if return_state else y


# ----------------------------------------------------------------------------- modules
@dataclass
class SSMConfig:
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 16
    d_conv: int = 4                # causal depthwise conv width
    expand: int = 2                # d_inner = expand * d_model
    dt_rank: int | None = None     # low-rank delta projection; None -> ceil(d_model / 16)
    chunk_size: int = 64
    scan: str = "chunked"          # "chunked" or "ref"
    dt_min: float = 1e-3           # delta's initial range (log-uniform)
    dt_max: float = 0.1
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        return self.dt_rank if self.dt_rank is not None else math.ceil(self.d_model / 16)


class SSMState(NamedTuple):
    conv: Tensor  # (B, d_inner, d_conv - 1): the last conv inputs
    ssm: Tensor   # (B, d_inner, d_state)


class SSMBlock(nn.Module):
    """Mamba mixer: ``x (B, T, d_model) -> (B, T, d_model)``.

    in_proj -> (x, z); x -> causal depthwise conv -> SiLU -> (delta, B, C) -> selective
    scan (+ D skip); y * SiLU(z) -> out_proj.
    """

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        for name in ("d_model", "d_state", "d_conv", "expand", "chunk_size"):
            _check_int(f"cfg.{name}", getattr(cfg, name))
        _check_int("cfg.dt_rank", cfg.rank)
        if cfg.scan not in ("chunked", "ref"):
            raise ValueError(f"cfg.scan: expected 'chunked' or 'ref', got {cfg.scan!r}")
        if not 0 < cfg.dt_min <= cfg.dt_max:
            raise ValueError(f"cfg.dt_min, cfg.dt_max: expected 0 < dt_min <= dt_max, got "
                             f"{cfg.dt_min}, {cfg.dt_max}")
        self.cfg = cfg
        Di, N, R = cfg.d_inner, cfg.d_state, cfg.rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * Di, bias=False)
        self.conv = nn.Conv1d(Di, Di, cfg.d_conv, groups=Di)          # weight (Di, 1, K)
        self.x_proj = nn.Linear(Di, R + 2 * N, bias=False)            # -> (dt_low, B, C)
        self.dt_proj = nn.Linear(R, Di)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1).float()).repeat(Di, 1))
        self.D = nn.Parameter(torch.ones(Di))
        self.out_proj = nn.Linear(Di, cfg.d_model, bias=False)
        with torch.no_grad():  # delta = softplus(bias) starts log-uniform in [dt_min, dt_max]
            nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
            dt = torch.exp(torch.rand(Di) * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                           + math.log(cfg.dt_min))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1

    def init_state(self, batch: int) -> SSMState:
        _check_int("batch", batch)
        c, w = self.cfg, self.in_proj.weight
        return SSMState(w.new_zeros(batch, c.d_inner, c.d_conv - 1),
                        w.new_zeros(batch, c.d_inner, c.d_state))

    def _check_state(self, state, batch: int) -> None:
        c = self.cfg
        if not isinstance(state, SSMState):
            raise TypeError(f"state: expected an SSMState (see init_state), got "
                            f"{type(state).__name__}")
        _check_tensor("state.conv", state.conv, (batch, c.d_inner, c.d_conv - 1),
                      "(B, d_inner, d_conv - 1)")
        _check_tensor("state.ssm", state.ssm, (batch, c.d_inner, c.d_state),
                      "(B, d_inner, d_state)")

    def _ssm_params(self, xc: Tensor):
        """xc (..., Di) -> delta (..., Di), B (..., N), C (..., N)."""
        R, N = self.cfg.rank, self.cfg.d_state
        dt, Bm, Cm = self.x_proj(xc).split([R, N, N], dim=-1)
        return F.softplus(self.dt_proj(dt)), Bm, Cm

    def forward(self, x: Tensor, state: SSMState | None = None, return_state: bool = False):
        """``x (B, T, d_model)``; ``state`` continues from an earlier call (prefill in pieces)."""
        _check_tensor("x", x, (None, None, self.cfg.d_model), "(B, T, d_model)")
        Bt, T, _ = x.shape
        if state is None:
            state = self.init_state(Bt)
        self._check_state(state, Bt)
        xi, z = self.in_proj(x).chunk(2, dim=-1)                      # (B, T, Di) each
        seq = torch.cat([state.conv, xi.transpose(1, 2)], dim=-1)     # (B, Di, K-1+T)
        xc = F.silu(F.conv1d(seq, self.conv.weight, self.conv.bias,
                             groups=self.cfg.d_inner)).transpose(1, 2)  # (B, T, Di)
        delta, Bm, Cm = self._ssm_params(xc)
        A = -torch.exp(self.A_log)                                    # (Di, N)
        if self.cfg.scan == "ref":
            y, h = selective_scan_ref(xc, delta, A, Bm, Cm, self.D, state.ssm, True)
        else:
            y, h = selective_scan_chunked(xc, delta, A, Bm, Cm, self.D, state.ssm, True,
                                          chunk_size=self.cfg.chunk_size)
        out = self.out_proj(y * F.silu(z))                            # (B, T, d_model)
        if not return_state:
            return out
        return out, SSMState(seq[:, :, seq.shape[-1] - (self.cfg.d_conv - 1):], h)

    def step(self, x: Tensor, state: SSMState):
        """One token, recurrently: ``x (B, d_model)`` -> ``(y (B, d_model), new state)``."""
        _check_tensor("x", x, (None, self.cfg.d_model), "(B, d_model)")
        self._check_state(state, x.shape[0])
        xi, z = self.in_proj(x).chunk(2, dim=-1)                      # (B, Di)
        window = torch.cat([state.conv, xi[:, :, None]], dim=-1)      # (B, Di, K)
        xc = F.silu((window * self.conv.weight[:, 0]).sum(-1) + self.conv.bias)  # (B, Di)
        delta, Bm, Cm = self._ssm_params(xc)                          # (B, Di), (B, N), (B, N)
        A = -torch.exp(self.A_log)
        h = torch.exp(delta[:, :, None] * A) * state.ssm + (delta * xc)[:, :, None] * Bm[:, None]
        y = (h * Cm[:, None]).sum(-1) + self.D * xc                   # (B, Di)
        return self.out_proj(y * F.silu(z)), SSMState(window[:, :, 1:], h)


class _Residual(nn.Module):
    def __init__(self, cfg: SSMConfig):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = SSMBlock(cfg)

    def forward(self, x, state=None):
        y, state = self.mixer(self.norm(x), state, return_state=True)
        return x + y, state

    def step(self, x, state):
        y, state = self.mixer.step(self.norm(x), state)
        return x + y, state


class SSM(nn.Module):
    """Language model: embedding -> n_layers x (x + SSMBlock(RMSNorm(x))) -> RMSNorm -> LM head.

    ``forward(idx (B, T))`` -> logits ``(B, T, vocab_size)``; ``step`` decodes one token
    with a constant-size state (a list of :class:`SSMState`, one per layer).
    """

    def __init__(self, cfg: SSMConfig):
        super().__init__()
        if not isinstance(cfg, SSMConfig):
            raise TypeError(f"cfg: expected an SSMConfig, got {type(cfg).__name__}")
        _check_int("cfg.vocab_size", cfg.vocab_size)
        _check_int("cfg.n_layers", cfg.n_layers)
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList([_Residual(cfg) for _ in range(cfg.n_layers)])
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _check_idx(self, idx, layout: str, dims: int) -> None:
        if not isinstance(idx, Tensor):
            raise TypeError(f"idx: expected a torch.Tensor {layout} of token ids, got "
                            f"{type(idx).__name__}")
        if idx.dtype != torch.long:
            raise TypeError(f"idx: expected dtype torch.int64 (long), got {idx.dtype}")
        if idx.dim() != dims:
            raise ValueError(f"idx: expected shape {layout}, got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size):
            raise ValueError(f"idx: token ids must lie in [0, {self.cfg.vocab_size}) "
                             f"(vocab_size), got range [{int(idx.min())}, {int(idx.max())}]")

    def init_state(self, batch: int) -> list[SSMState]:
        return [layer.mixer.init_state(batch) for layer in self.layers]

    def forward(self, idx: Tensor, state: list[SSMState] | None = None,
                return_state: bool = False):
        self._check_idx(idx, "(B, T)", 2)
        x = self.embed(idx)                                           # (B, T, d_model)
        states = state if state is not None else [None] * len(self.layers)
        if len(states) != len(self.layers):
            raise ValueError(f"state: expected {len(self.layers)} layer states (n_layers), got "
                             f"{len(states)}")
        new = []
        for layer, s in zip(self.layers, states):
            x, s = layer(x, s)
            new.append(s)
        logits = self.lm_head(self.norm_f(x))                         # (B, T, V)
        return (logits, new) if return_state else logits

    def step(self, idx: Tensor, state: list[SSMState]):
        """``idx (B,)`` -> ``(logits (B, V), new state)``."""
        self._check_idx(idx, "(B,)", 1)
        if len(state) != len(self.layers):
            raise ValueError(f"state: expected {len(self.layers)} layer states (n_layers), got "
                             f"{len(state)}")
        x = self.embed(idx)                                           # (B, d_model)
        new = []
        for layer, s in zip(self.layers, state):
            x, s = layer.step(x, s)
            new.append(s)
        return self.lm_head(self.norm_f(x)), new

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Prefill ``idx (B, T)`` in parallel, then decode recurrently with constant state.

        ``temperature == 0`` is greedy. Returns ``(B, T + max_new_tokens)``.
        """
        _check_int("max_new_tokens", max_new_tokens, minimum=0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or temperature < 0:
            raise ValueError(f"temperature: expected a float >= 0, got {temperature!r}")
        if top_k is not None:
            _check_int("top_k", top_k)
        self._check_idx(idx, "(B, T)", 2)
        if idx.shape[1] == 0:
            raise ValueError("idx: expected a prompt of at least one token, got T = 0")
        logits, state = self.forward(idx, return_state=True)
        logits, out = logits[:, -1], [idx]
        for i in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(-1)                               # (B,)
            else:
                lg = logits / temperature
                if top_k is not None:
                    kth = torch.topk(lg, min(top_k, lg.shape[-1]), dim=-1).values[:, -1:]
                    lg = lg.masked_fill(lg < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(lg, -1), 1, generator=generator).squeeze(1)
            out.append(nxt[:, None])
            if i + 1 < max_new_tokens:
                logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1)
