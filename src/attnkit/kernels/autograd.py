"""First-order-only custom backwards: one clear error on double backward.

``torch.autograd.function.once_differentiable`` only marks a backward's results as
non-differentiable when one of its incoming gradients requires grad. With
``g = grad(attention(q, k, v).sum() + (q ** 2).sum(), q, create_graph=True)`` the incoming
gradient of the attention output is a constant, so ``g`` looks differentiable and a
second backward silently drops attention's second-order term. :func:`first_order_only`
marks the results whenever the backward runs with ``create_graph=True``; reaching them in
a second backward raises ``RuntimeError`` naming the function and what does support it.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["first_order_only", "double_backward_message"]


def double_backward_message(what: str) -> str:
    return (f"attnkit: double backward (a gradient of a gradient, create_graph=True) through "
            f"{what} is not supported: its backward is a custom first-order kernel. Use "
            "backend='reference' (or 'sdpa' with torch's math kernel) for higher-order "
            "gradients")


class _RaiseOnBackward(torch.autograd.Function):
    """Identity on its tensors; its backward raises ``message``."""

    @staticmethod
    def forward(ctx, message, *tensors):
        ctx.message = message
        return tuple(t.clone() for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)


def first_order_only(what: str):
    """Decorate an ``autograd.Function.backward``: it runs under ``no_grad`` with autocast
    off (its kernels keep their own precision), and when called with ``create_graph=True``
    its tensor results carry a node that raises :func:`double_backward_message` if a second
    backward reaches it (never a silently missing second-order term)."""
    message = double_backward_message(what)

    def wrap(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            devices = {g.device.type for g in grads if isinstance(g, torch.Tensor)}
            with torch.no_grad(), _autocast_off(devices):
                results = backward(ctx, *grads)
            if not torch.is_grad_enabled():   # an ordinary (first-order) backward
                return results
            single = not isinstance(results, tuple)
            items = (results,) if single else results
            idx = [i for i, r in enumerate(items) if isinstance(r, torch.Tensor)]
            marked = _RaiseOnBackward.apply(
                message, *(items[i].detach().requires_grad_() for i in idx))
            out = list(items)
            for i, t in zip(idx, marked):
                out[i] = t
            return out[0] if single else tuple(out)
        return wrapper
    return wrap


class _autocast_off:
    """Autocast disabled for the given device types (those autocast knows)."""

    def __init__(self, devices):
        self.contexts = []
        for d in sorted(devices):
            try:
                if torch.is_autocast_enabled(d):
                    self.contexts.append(torch.autocast(d, enabled=False))
            except (RuntimeError, TypeError, ValueError):
                pass

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)
