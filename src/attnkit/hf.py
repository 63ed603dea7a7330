"""``attnkit.hf``: attnkit as an attention implementation inside Hugging Face
``transformers`` models (see :mod:`attnkit.integrations.hf`)::

    import attnkit.hf
    attnkit.hf.register()
    model = AutoModel.from_pretrained(DIR, attn_implementation="attnkit")
"""
from .integrations.hf import *  # noqa: F401,F403
from .integrations.hf import __all__  # noqa: F401
