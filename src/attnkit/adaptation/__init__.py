"""``attnkit adapt`` (``attnkit.adapt(...)``): turn a pretrained model into a cheaper-attention model that keeps its
quality -- attention transfer layer by layer, then distillation of the whole model, on the
user's text, with held-out fidelity before, during and after (bench's metrics), exact
resume, and an adapted Hugging Face directory that loads anywhere.

::

    import attnkit
    rec = attnkit.adapt("minilm", "window:64", "docs.txt", steps=200, out="minilm-w64",
                        seq=256)
    model = attnkit.hf.from_pretrained("minilm-w64")        # runs attnkit:window:64

Modules: :mod:`.config` (the settings), :mod:`.student` (teacher, student, what stage 1
trains), :mod:`.objectives` (losses, evaluation), :mod:`.run` (the loop), :mod:`.save`
(the directory).
"""
from .config import AdaptConfig
from .run import adapt

__all__ = ["adapt", "AdaptConfig"]
