"""Composable attention masks: specs, not tensors.

A mask is a predicate over (batch, head, query, key), composed with ``&``, ``|``, ``~``
(or :func:`and_masks` / :func:`or_masks`). Each spec gives a dense boolean mask
``spec.dense(Tq, Tk)`` ``(Bm, Hm, Tq, Tk)``, a block map ``spec.block_map(Tq, Tk, bq, bk)``
classifying each tile EMPTY / PARTIAL / FULL (kernels skip empty tiles and mask only
partial ones) and a FlexAttention ``spec.mask_mod(Tq, Tk)``. The protocol a new spec
implements is documented in :mod:`attnkit.masks.spec`.

Position convention. When ``Tq < Tk`` (decoding against a cache) queries are aligned
to the *end* of the keys, as in FlashAttention >= 2.1: query ``i`` sits at position
``i + (Tk - Tq)``. Position-based specs (causal, window, periodic, dilated, global
tokens, ALiBi) use that aligned position; index-based specs (padding, key padding,
document ids, tensors, mask_mods) use raw indices.

=====================  ========================================================
:mod:`.spec`           the protocol, the algebra, length-dependent specs
:mod:`.position`       full, causal, window, periodic, dilated, global_tokens
:mod:`.pattern`        Pattern: a spec with exact pair counts and components (the
                       pieces ``tiled`` runs a pattern as, at its pair cost)
:mod:`.tensor`         padding, key_padding, document, from_tensor (as SDPA broadcasts)
:mod:`.mask_mod`       from_mask_mod: FlexAttention / Hugging Face predicates
=====================  ========================================================
"""
from .mask_mod import (MaskModSpec, from_mask_mod, register_mask_mod_reader,
                       unregister_mask_mod_reader)
from .pattern import Pattern
from .position import (Dilated, FullMask, GlobalTokens, Periodic, Window, causal, dilated, full,
                       global_tokens, periodic, window)
from .spec import (EMPTY, FULL, PARTIAL, AndMask, MaskSpec, NotMask, OrMask, PerLength,
                   and_masks, or_masks, reduce_dense)
from .tensor import (AdditiveMask, Document, KeyPadding, Padding, TensorMask, as_mask,
                     check_additive, document, from_tensor, key_padding, padding, split_additive)

__all__ = ["MaskSpec", "causal", "padding", "key_padding", "window", "periodic", "dilated",
           "global_tokens", "document", "from_tensor", "from_mask_mod", "full", "as_mask",
           "and_masks", "or_masks", "split_additive", "register_mask_mod_reader",
           "unregister_mask_mod_reader", "EMPTY",
           "PARTIAL", "FULL", "AndMask", "OrMask", "NotMask", "PerLength", "Window", "Periodic",
           "Dilated", "GlobalTokens", "FullMask", "Padding", "KeyPadding", "Document",
           "TensorMask", "AdditiveMask", "MaskModSpec", "reduce_dense", "check_additive",
           "Pattern"]
