"""attnkit inside other libraries. :mod:`.hf`: an attention implementation for Hugging Face
``transformers`` (``attn_implementation="attnkit"``), also importable as ``attnkit.hf``."""
