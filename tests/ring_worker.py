"""Worker processes for tests/test_ring.py (one per rank, gloo on CPU).

    python tests/ring_worker.py cases RANK WORLD PORT DIR   # DIR/inputs.pt -> DIR/rank{R}.pt
    python tests/ring_worker.py kill  RANK WORLD PORT DIR   # rank 1 dies mid-ring
    python tests/ring_worker.py hang  RANK WORLD PORT DIR   # rank 1 stops answering
    python tests/ring_worker.py cuda  0 1 PORT DIR          # NCCL, CUDA tensors, world of one

The parent builds the inputs, computes the single-process reference and compares;
the workers only shard, run the ring and save their local results.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import attnkit
from attnkit.models import GPT, GPTConfig
from attnkit import masks
from attnkit.backends.tiled import TileConfig
from attnkit.distributed import context_parallel, ring, ring_attention, shard

SMALL = TileConfig(block_q=8, block_k=4, max_chunk=8)  # many tiles on short sequences
TIMEOUT_S = 5.0  # process-group timeout of the failure modes


def make_mask(case: dict):
    """The global mask of a case (None, or a boolean spec over (T, T))."""
    kind, T = case.get("mask"), case["T"]
    if kind is None:
        return None
    if kind == "padding":
        return masks.padding(torch.tensor([T - 5, T // 2]))
    if kind == "padding_q":
        return masks.padding(torch.tensor([T - 3, T // 3]), q_lengths=torch.tensor([T, T // 2]))
    if kind == "window":
        return masks.window(case["w"])
    if kind == "window2":
        return masks.window(case["w"], case["w"])
    if kind == "document":
        ids = torch.arange(T) // 7
        return masks.document(torch.stack([ids, ids // 2]))
    raise ValueError(kind)


class TinyLM(nn.Module):
    """Embedding -> causal self-attention (GQA) -> head; picks its backend like attnkit's
    attention modules (a ``backend`` attribute)."""

    def __init__(self, vocab=11, d=16, heads=4, kv_heads=2):
        super().__init__()
        self.h, self.hkv, self.dh = heads, kv_heads, d // heads
        self.emb = nn.Embedding(vocab, d)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * kv_heads * self.dh)
        self.out = nn.Linear(d, vocab)
        self.backend = "reference"

    def forward(self, idx):                                   # (B, T)
        x = self.emb(idx)                                     # (B, T, d)
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.h, self.dh).transpose(1, 2)          # (B, H, T, dh)
        k, v = self.kv(x).view(B, T, 2, self.hkv, self.dh).permute(2, 0, 3, 1, 4)
        y = attnkit.attention(q, k, v, mask=masks.causal(), backend=self.backend)
        return self.out(x + y.transpose(1, 2).reshape(B, T, -1))          # (B, T, vocab)


def _init(rank, world, port, timeout):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout))


def run_cases(rank, world, d):
    data = torch.load(os.path.join(d, "inputs.pt"))
    results = {}
    calls = [0]
    orig = ring.tiled_forward

    def counting(*a, **kw):  # counts kernel calls: skipped pairs must not reach the kernel
        calls[0] += 1
        return orig(*a, **kw)

    ring.tiled_forward = counting
    for c in data["cases"]:
        lay = c["layout"]
        q, k, v, dout = (shard(c[n], rank, world, lay).requires_grad_(n != "dout")
                         for n in ("q", "k", "v", "dout"))
        calls[0] = 0
        out = ring_attention(q, k, v, causal=c["causal"], mask=make_mask(c), layout=lay,
                             length=c["T"], softcap=c.get("softcap"),
                             cfg=SMALL if c.get("small", True) else None)
        out.backward(dout)
        results[c["name"]] = dict(out=out.detach(), dq=q.grad, dk=k.grad, dv=v.grad,
                                  calls=calls[0])
    ring.tiled_forward = orig
    if world == 4:  # two rings of two ranks each ({0, 1} and {2, 3}) on subgroups
        c = next(c for c in data["cases"] if c["name"] == "causal_zigzag_gqa")
        groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        g = groups[rank // 2]
        q, k, v, dout = (shard(c[n], dist.get_rank(g), 2).requires_grad_(n != "dout")
                         for n in ("q", "k", "v", "dout"))
        out = ring_attention(q, k, v, group=g, causal=True, length=c["T"], cfg=SMALL)
        out.backward(dout)
        results["subgroup"] = dict(out=out.detach(), dq=q.grad, dk=k.grad, dv=v.grad)
    # a model run context-parallel: local logits, then gathered; grads summed over ranks
    m = data["model"]
    torch.manual_seed(0)
    model = context_parallel(TinyLM().double(), layout=m["layout"])
    logits = model(m["idx"])                                         # (B, T_local, vocab)
    valid = model.valid()
    w = shard(m["w"], rank, world, m["layout"], dim=1)              # fixed loss weights
    loss = (logits[:, valid] * w[:, valid]).sum()
    loss.backward()
    model.reduce_gradients()
    results["model"] = dict(logits=model.gather(logits),
                            grads={n: p.grad for n, p in model.module.named_parameters()},
                            backend_after=model.module.backend)
    # attnkit's own GPT (learned positions; RoPE + GQA): one setting, no code change
    for name, cfg in gpt_configs().items():
        torch.manual_seed(0)
        gpt = context_parallel(GPT(cfg).double(), layout=m["layout"])
        logits = gpt(m["idx"])                                       # (B, T_local, vocab)
        results[name] = dict(logits=gpt.gather(logits))
    torch.save(results, os.path.join(d, f"rank{rank}.pt"))


def gpt_configs() -> dict:
    """Tiny GPTs for the context-parallel test (the test builds the same ones)."""
    base = dict(vocab_size=11, max_len=64, d_model=16, n_layers=2, n_heads=4, backend="reference")
    return {"gpt_learned": GPTConfig(**base),
            "gpt_rope_gqa": GPTConfig(**base, n_kv_heads=2, positions="rope", norm="rmsnorm",
                                      gated=True, activation="silu", bias=False)}


def run_failure(mode, rank, world, d):
    T = 64 * world
    q = torch.randn(1, 2, T // world, 8, requires_grad=True)
    for it in range(1000):
        if rank == 1 and it == 3:
            with open(os.path.join(d, "died"), "w") as f:  # when the failure starts
                f.write(repr(time.time()))
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)  # hang: never answer again
        ring_attention(q, q, q, causal=True).sum().backward()
    sys.exit(0)  # unreachable in the failure modes: the ring must break first


def run_cuda():
    """World of one on NCCL with CUDA tensors: the ring's device path against the reference."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    for dt, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-2)):
        for c in (dict(causal=True, mask=None), dict(causal=False, mask="padding", T=61),
                  dict(causal=True, mask="window", w=9)):
            c.setdefault("T", 70)
            T = c["T"]
            q = torch.randn(2, 4, T, 16, device=dev, generator=g).to(dt)
            k, v = (torch.randn(2, 2, T, 16, device=dev, generator=g).to(dt) for _ in "kv")
            spec = make_mask(c)
            full = masks.causal() & spec if c["causal"] and spec is not None else (
                masks.causal() if c["causal"] else spec)
            ref_in = [t.double().requires_grad_() for t in (q, k, v)]
            ref = attnkit.attention(*ref_in, mask=full, backend="reference")
            ref.sum().backward()
            loc = [shard(t, 0, 1).requires_grad_() for t in (q, k, v)]
            out = ring_attention(*loc, causal=c["causal"], mask=spec, length=T, cfg=SMALL)
            out.float().sum().backward()
            for a, b in [(out, ref)] + [(x.grad, y.grad) for x, y in zip(loc, ref_in)]:
                a = a[:, :, :T].double()
                err = float((a - b).abs().max() / b.abs().max())
                assert err < tol, (dt, c, err)
            print("cuda ok", dt, c, flush=True)


def main():
    mode, rank, world, port, d = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
    torch.set_num_threads(1)
    if mode == "cases":
        _init(rank, world, port, 60)
        run_cases(rank, world, d)
    elif mode == "cuda":
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=60))
        run_cuda()
    else:
        _init(rank, world, port, TIMEOUT_S)
        run_failure(mode, rank, world, d)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
