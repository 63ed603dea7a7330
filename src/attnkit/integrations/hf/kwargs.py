"""Every keyword argument transformers passes to an attention function, and what attnkit
does with it: served, or refused by name (:class:`~attnkit.core.errors.UnsupportedCall`) --
never dropped silently. Found by reading the ``attention_interface(...)`` calls of every
model of transformers 5.25 and the keywords their forwards pass on (``**kwargs``).

==========================  ======================================================
keyword                     attnkit
==========================  ======================================================
``attention_mask``          served: a spec from our mask function, a 4-D tensor
                            (bool, or additive float) or None (:func:`call_mask`)
``scaling``                 served: ``scale``
``dropout``                 served: ``dropout_p`` (transformers passes 0 in eval)
``softcap``                 served (Gemma-2): ``softcap``
``position_bias``           served (T5 family): a bias added to the scores
``s_aux``                   served (GPT-OSS and other learned-sink models): ``sinks``,
                            exact on ``reference`` and ``tiled``, with gradients
``is_causal``               served: decides the mask when ``attention_mask`` is None
``sliding_window``          served: already in the mask our mask function made (eager
                            ignores it the same way; flash kernels read it)
``output_attentions``       served: the weights (see :func:`weights_output`)
``position_ids``,           served: packing (several documents in one row) reaches
``cu_seq_lens_q/k``,        the mask from ``position_ids`` in transformers' mask
``max_length_q/k``          builders; these are flash kernels' copies of it, which
                            eager ignores too
``deterministic``           served: attnkit's kernels are deterministic on CPU
``use_cache``,              nothing to serve: cache, loss and output bookkeeping,
``output_hidden_states``,   not attention math (``num_items_in_batch``: the loss's
``num_items_in_batch``,     token count, passed through by every causal LM's training
``seq_idx``,                kwargs; ``seq_idx``: Mamba layers' document index, whose
                            attention layers get the packing through the mask)
``output_router_logits``,
``return_dict``,
``cache_position``,
``past_key_values``,
``past_key_value``,
``position_embeddings``,
``encoder_hidden_states``
``indices``,                refused: a selection of keys computed by the model
``block_indices``           (DeepSeek sparse attention, block-sparse variants)
``sinks``                   refused: sinks under another name and convention
                            (Inkling), not verified against its eager path
anything else               refused by name
==========================  ======================================================
"""
from __future__ import annotations

from ...core.errors import UnsupportedCall

__all__ = ["SERVED", "BOOKKEEPING", "REFUSED", "check_kwargs"]

# keywords of attnkit_attention_forward's own signature (served there)
SERVED = frozenset({"attention_mask", "scaling", "dropout", "softcap", "position_bias",
                    "s_aux", "is_causal", "sliding_window", "output_attentions"})
# keywords that carry no information the mask and the other arguments do not already
# carry (or no attention math at all)
BOOKKEEPING = frozenset({"position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                         "max_length_k", "deterministic", "use_cache", "output_hidden_states",
                         "output_router_logits", "return_dict", "cache_position",
                         "num_items_in_batch", "seq_idx",
                         "past_key_values", "past_key_value", "position_embeddings",
                         "encoder_hidden_states"})
REFUSED = {
    "indices": "a selection of keys computed by the model (sparse attention's indexer)",
    "block_indices": "a selection of key blocks computed by the model",
    "sinks": "sinks under another convention than GPT-OSS's s_aux (not verified)",
}


def check_kwargs(name: str, kwargs: dict) -> None:
    """Raise :class:`UnsupportedCall` naming the first keyword (with a value other than
    None) that attnkit does not serve."""
    for key, value in kwargs.items():
        if value is None or key in SERVED or key in BOOKKEEPING:
            continue
        why = REFUSED.get(key, "a keyword attnkit does not know, so it cannot say it serves "
                               "it exactly")
        raise UnsupportedCall(f"attn_implementation {name!r}: keyword argument {key!r} is not "
                              f"served ({why}); use attn_implementation='eager' for this model")
