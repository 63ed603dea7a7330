"""What attnkit supports of transformers: the version range, the private parts of
``masking_utils`` :mod:`.masks` reads (checked, not assumed), and the models it cannot
serve (their attention, or their mask, is computed in their own code).

* :data:`SUPPORTED` -- the transformers versions tested (``pyproject.toml``'s ``hf``
  extra says the same); :func:`check_transformers` raises one line outside it.
* :func:`mask_reader_problem` -- the closure variables :mod:`.masks` reads from
  transformers' mask functions (``sliding_window``, ``padding_mask``, ...) must exist
  under those names: a release that renames one makes ``register`` refuse, never a
  silently wrong mask.
* :func:`model_refusal` -- a model class whose attention does not go through
  transformers' ``AttentionInterface`` (Bloom: it adds ALiBi to the mask tensor itself,
  then runs its own attention): why attnkit cannot serve it.
"""
from __future__ import annotations

import functools

from ...core.errors import UnsupportedCall

__all__ = ["SUPPORTED", "FACTORIES", "factory_codes", "check_transformers", "mask_reader_problem", "model_refusal",
           "refuse_model"]

# [low, high): tested at both ends (5.4.0 and 5.25.0). Before 5.4 the mask interface
# received cache_position, not q_length/q_offset.
SUPPORTED = ((5, 4), (5, 26))

# kind -> (masking_utils factory, example arguments, the closure variables .masks reads,
# required: a factory some supported releases lack is read only where present)
FACTORIES = {
    "sliding": ("sliding_window_overlay", (1,), {"sliding_window"}, True),
    "sliding_bidirectional": ("sliding_window_bidirectional_overlay", (1,), {"sliding_window"},
                              False),
    "chunked": ("chunked_overlay", (1, "long1"), {"chunk_size", "left_padding"}, True),
    "padding": ("padding_mask_function", ("bool",), {"padding_mask"}, True),
    "packed": ("packed_sequence_mask_function", ("long",), {"packed_sequence_mask"}, True),
    "blockwise": ("blockwise_overlay", ("long",), {"block_sequence_ids"}, False),
    "remap": ("remap_positions_for_packed_sequence", ("fn", "long"),
              {"mask_function", "position_ids"}, False),
    "offsets": ("add_offsets_to_mask_function", ("fn", 0, 0),
                {"mask_function", "q_offset", "kv_offset"}, True),
    "and": ("and_masks", ("fn",), {"mask_functions"}, True),
    "or": ("or_masks", ("fn",), {"mask_functions"}, True),
}


def _examples(mu) -> dict:
    import torch
    return {"bool": torch.zeros(1, 1, dtype=torch.bool), "long": torch.zeros(1, 1,
            dtype=torch.long), "long1": torch.zeros(1, dtype=torch.long),
            "fn": mu.causal_mask_function}


def factory_codes() -> dict:
    """kind -> the code object of transformers' mask functions of that kind (closures
    share one per factory), for the factories this release has."""
    from transformers import masking_utils as mu
    ex = _examples(mu)
    codes = {"causal": mu.causal_mask_function.__code__,
             "bidirectional": mu.bidirectional_mask_function.__code__}
    for kind, (name, args, _, _) in FACTORIES.items():
        factory = getattr(mu, name, None)
        if factory is not None:
            codes[kind] = factory(*(ex[a] if isinstance(a, str) else a for a in args)).__code__
    return codes


def _version(text: str) -> tuple[int, int]:
    parts = (text.split("+")[0].split(".") + ["0"])[:2]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


def check_transformers(tf) -> None:
    """One ImportError line when the installed transformers is outside :data:`SUPPORTED`."""
    (lo_a, lo_b), (hi_a, hi_b) = SUPPORTED
    v = _version(tf.__version__)
    if not (lo_a, lo_b) <= v < (hi_a, hi_b):
        raise ImportError(f"transformers: attnkit.hf supports transformers >={lo_a}.{lo_b},"
                          f"<{hi_a}.{hi_b}, got {tf.__version__} (pip install "
                          f"'transformers>={lo_a}.{lo_b},<{hi_a}.{hi_b}')")


@functools.lru_cache(maxsize=None)
def mask_reader_problem() -> str | None:
    """None if every closure variable :mod:`.masks` reads exists in this transformers, else
    one line naming what is missing."""
    from transformers import masking_utils as mu
    ex = _examples(mu)
    for name, args, needs, required in FACTORIES.values():
        factory = getattr(mu, name, None)
        if factory is None:
            if required:
                return f"transformers.masking_utils has no {name}"
            continue
        fn = factory(*(ex[a] if isinstance(a, str) else a for a in args))
        missing = needs - set(fn.__code__.co_freevars)
        if missing:
            return (f"transformers.masking_utils.{name} no longer keeps "
                    f"{', '.join(sorted(missing))} (attnkit reads it to build its mask specs)")
    return None


@functools.lru_cache(maxsize=None)
def model_refusal(cls) -> str | None:
    """Why attnkit cannot serve a transformers model class, or None."""
    can = getattr(cls, "_can_set_attn_implementation", None)
    if can is not None and not can():
        return (f"{cls.__name__} computes attention in its own code (and may add to the mask "
                "itself, as Bloom adds ALiBi), not through transformers' AttentionInterface, "
                "so attnkit cannot serve it: use attn_implementation='eager' or 'sdpa'")
    return None


@functools.lru_cache(maxsize=None)
def _class_for(config_cls) -> type | None:
    """The base model class of a config class (``MODEL_MAPPING``), or None."""
    try:
        from transformers.models.auto import modeling_auto as ma
        import transformers as tf
        name = ma.MODEL_MAPPING_NAMES.get(getattr(config_cls, "model_type", None))
        name = name[0] if isinstance(name, (tuple, list)) else name
        return getattr(tf, name, None) if name else None
    except (ImportError, AttributeError):
        return None


def refuse_model(config) -> None:
    """Raise :class:`UnsupportedCall` when the model of ``config`` cannot be served (the
    mask function calls it: it runs first, in every model, even one that then computes
    attention in its own code)."""
    cls = _class_for(type(config)) if config is not None else None
    why = model_refusal(cls) if cls is not None else None
    if why:
        raise UnsupportedCall(f"attn_implementation 'attnkit': {why}")
