"""What every layer uses and nothing of attnkit's: the exception classes (:mod:`.errors`),
argument checks (:mod:`.checks`) and the version (:mod:`.version`)."""
from .errors import CheckpointError, UnsupportedCall, UsageError
from .version import __version__

__all__ = ["CheckpointError", "UnsupportedCall", "UsageError", "__version__"]
