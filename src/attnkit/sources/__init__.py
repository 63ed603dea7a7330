"""One model-source layer for ``attnkit inspect``, ``bench`` and ``adapt``: open a model,
tokenize, run it with a variant, capture q/k/v, outputs or weights of chosen layers.

:func:`open_source` chooses the implementation (``via="auto"``, the default): a
registered name (``minilm``) and any directory that ``attnkit.load`` loads -- it loads
only what its ports reproduce exactly and refuses the rest with a CheckpointError -- run
on attnkit's port (:class:`~.port.AttnkitSource`; ``backend`` applies). Every other
directory runs on transformers (:class:`~.hf.HFSource`: ``AutoConfig`` + the model class
of its ``architectures`` + its own tokenizer / image processor, local files only, attnkit
inside every attention layer), and the notes say why the port was not used. ``via=
"attnkit"`` / ``"transformers"`` force a path. Both implement
:class:`~.protocol.ModelSource`.

Before either path reads a weight, :func:`~.checkpoint.read_checkpoint` checks the
directory: config.json a JSON object, safetensors weights present (pickle files refused:
loading them can run code) and every file's header readable and complete. Every problem
is a :class:`~attnkit.core.errors.UsageError` naming ``--model``: one line, exit 2.

Modules: :mod:`.checkpoint` (the checks), :mod:`.port` and :mod:`.hf` (the two sources),
:mod:`.hf_plan` (a transformers checkpoint checked and loaded), :mod:`.hf_views`
(inspect's views of a transformers model), :mod:`.capture` (:class:`~.capture.Capture`,
:class:`~.capture.View`: attention maps with their tokens), :mod:`.words` (tokens ->
words for any tokenizer), :mod:`.protocol` (the protocol, :class:`~.protocol.Outputs`).
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import CheckpointError, UsageError
from .checkpoint import check_backend, port_archs, read_checkpoint
from .hf import HFSource
from .port import AttnkitSource
from .protocol import ModelSource, Outputs, text_windows

__all__ = ["open_source", "AttnkitSource", "HFSource", "ModelSource", "Outputs",
           "text_windows", "read_checkpoint", "check_backend"]


def open_source(model: str, via: str = "auto", backend: str = "auto", device: str = "cpu"):
    """Resolve ``model`` (a registered name or a checkpoint directory) and choose the path
    (module doc); nothing heavy runs yet except ``attnkit.load`` for a directory its port
    accepts. ``device``: where the model runs."""
    from ..loading import NAMED_MODELS, load, resolve
    if via not in ("auto", "attnkit", "transformers"):
        raise UsageError(f"--via: expected 'auto', 'attnkit' or 'transformers', got {via!r}")
    named = str(model).lower() in NAMED_MODELS and not Path(model).exists()
    try:
        d = resolve(model)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        raise UsageError(f"--model: {e}") from None
    cfg, shapes, files = read_checkpoint(d)
    port_error = None
    if via in ("auto", "attnkit"):
        try:
            m = load(d, backend=backend)
        except CheckpointError as e:
            if via == "attnkit" or named:
                raise UsageError(f"--model: {e}") from None
            port_error = str(e)
        else:
            try:
                return AttnkitSource(m.to(device), str(model), backend)
            except ValueError as e:
                raise UsageError(f"--model: {model}: {str(e).removeprefix('model: ')}") \
                    from None
    from . import hf_plan
    archs = port_archs()
    try:
        plan = hf_plan.plan(d, cfg, shapes, files, archs)
    except UsageError as e:
        arch = (cfg.get("architectures") or [None])[0]
        if port_error and arch in archs:      # a port exists and refused: say both
            hf_why = str(e).removeprefix("--model: ")
            raise UsageError(f"--model: attnkit's port: {port_error}; transformers: "
                             f"{hf_why}") from None
        raise
    notes = []
    if port_error and (cfg.get("architectures") or [None])[0] not in archs and archs:
        notes.append(f"attnkit has no port of {plan.arch}: running it on transformers")
    elif port_error:
        notes.append(f"attnkit's port does not load it ({port_error}); running it on "
                     f"transformers' {plan.arch}")
    return HFSource(plan, str(model), backend, device, notes)
