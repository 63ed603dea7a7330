"""attnkit inside Hugging Face ``transformers``: one attention implementation.

::

    import attnkit.hf
    attnkit.hf.register()                                   # idempotent
    model = AutoModelForCausalLM.from_pretrained(DIR, attn_implementation="attnkit")
    name = attnkit.hf.register("window:256")                # "attnkit:window:256"
    model.set_attn_implementation(name)                     # a variant in every layer
    with attnkit.hf.weights_for(layers=[3]):                # weights only where asked
        out = model(**batch, output_attentions=True)

``register`` adds the name to transformers' ``AttentionInterface`` (the attention
function: :mod:`.attention`) and ``AttentionMaskInterface`` (the mask function:
:mod:`.masks`, which hands the model's mask over as an attnkit spec). Names:
:mod:`.names`. :func:`check` refuses a model whose attention does not go through the
interface (it would silently keep its own attention). :mod:`.cache`: the KV caches that
hold only what a variant reads (``generate`` uses them by default). :mod:`.calls`: a
variant in some layers only (a module's own implementation name) and a record of the
attention calls (what the tools' model source, :mod:`attnkit.sources.hf`, reads).
"""
from __future__ import annotations

from .attention import attnkit_attention_forward, weights_for
from .cache import bounded_cache, cache_bytes
from .masks import attnkit_mask, mask_mod_reader, translate
from .names import Implementation, implementation_name, parse_implementation
from .support import check_transformers, mask_reader_problem, model_refusal

__all__ = ["register", "check", "from_pretrained", "use", "weights_for", "implementation_name",
           "parse_implementation", "Implementation", "attnkit_attention_forward",
           "attnkit_mask", "translate", "registered", "bounded_cache", "cache_bytes"]

_REGISTERED: set[str] = set()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("attnkit.hf needs transformers: pip install 'attnkit[hf]'") from None
    check_transformers(transformers)
    return transformers


def register(variant: str | None = None) -> str:
    """Register ``"attnkit"`` (or ``"attnkit:<backend>"``, ``"attnkit:<variant>"``...) with
    transformers' attention and mask interfaces; returns the name. Idempotent."""
    tf = _transformers()
    name = implementation_name(variant)
    if name not in _REGISTERED:
        problem = mask_reader_problem()
        if problem:
            raise ImportError(f"transformers {tf.__version__}: {problem}")
        tf.AttentionInterface.register(name, attnkit_attention_forward)
        tf.masking_utils.AttentionMaskInterface.register(name, attnkit_mask)
        from ...masks import register_mask_mod_reader
        register_mask_mod_reader(mask_mod_reader)  # masks.from_mask_mod knows HF's functions
        from .cache import install
        install()                  # generate: bounded caches for window/sinks/linear variants
        _REGISTERED.add(name)
    return name


def registered() -> list[str]:
    """The names registered so far in this process."""
    return sorted(_REGISTERED)


def check(model) -> None:
    """Raise ValueError naming the architecture when a model (or one of its sub-models)
    does not route its attention through transformers' ``AttentionInterface``: setting
    ``attn_implementation="attnkit"`` on it would silently change nothing."""
    tf = _transformers()
    subs = [m for m in model.modules() if isinstance(m, tf.PreTrainedModel)] or [model]
    for m in subs:
        why = model_refusal(type(m))
        if why:
            raise ValueError(f"model: {why}")
        impl = getattr(m.config, "_attn_implementation", None)
        if not (isinstance(impl, str) and impl.split(":")[0] == "attnkit"):
            raise ValueError(f"model: {type(m).__name__} runs attn_implementation={impl!r}, "
                             "not an attnkit one")


def use(model, variant: str | None = None):
    """Switch a loaded model to attnkit (``variant``: as for :func:`register`); checks it
    (see :func:`check`) and returns the model."""
    name = register(variant)
    model.set_attn_implementation(name)
    check(model)
    return model


def from_pretrained(path, variant: str | None = None, *, auto_class=None, **kwargs):
    """``AutoModel*.from_pretrained(path, attn_implementation=attnkit[:variant])`` from
    local files only, checked. ``auto_class`` defaults to the class named in config.json's
    ``architectures`` (else ``AutoModel``). A directory written by ``attnkit adapt`` runs
    the variant its config records (``variant=None``) with its learned attention tensors
    (:mod:`.learned`: missing or unused ones refused by name); another variant that would
    leave them unused is refused."""
    from . import learned
    tf = _transformers()
    cfg = tf.AutoConfig.from_pretrained(path, local_files_only=True)
    rec = learned.record(cfg)
    if rec is not None and variant is None:
        variant = rec["implementation"]
    name = register(variant)
    if rec is not None and rec.get("learned") and name != rec["implementation"]:
        raise ValueError(f"variant: {path} was adapted for {rec['implementation']!r} and holds "
                         f"its learned tensors ({learned.FILE}); {name!r} would leave them unused")
    kwargs.setdefault("local_files_only", True)
    if auto_class is None:
        arch = (getattr(cfg, "architectures", None) or [None])[0]
        auto_class = getattr(tf, arch, None) if arch else None
        auto_class = auto_class or tf.AutoModel
    model = auto_class.from_pretrained(path, attn_implementation=name, **kwargs)
    check(model)
    if rec is not None and rec.get("learned"):
        learned.load_learned(model, path)
    return model
