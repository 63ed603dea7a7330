"""attnkit's exception classes, in one place (every layer raises these, none defines its own).

* :class:`UnsupportedCall` -- a backend asked for by name cannot serve a call exactly
  (the message says why); attnkit never switches algorithm silently.
* :class:`CheckpointError` -- a checkpoint (a Hugging Face directory or a training run)
  cannot be read exactly; the message names the file, tensor or config field.
* :class:`UsageError` -- bad command-line arguments found after parsing (exit code 2).
"""
from __future__ import annotations

__all__ = ["UnsupportedCall", "CheckpointError", "UsageError"]


class UnsupportedCall(ValueError):
    """A backend was asked to serve a call it cannot serve exactly."""


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded exactly; the message says which file, tensor or field."""


class UsageError(Exception):
    """Bad arguments found after parsing (the CLI prints one line and exits with 2)."""
