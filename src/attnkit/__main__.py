"""``python -m attnkit ARGS`` is the ``attnkit`` command."""
import sys

from .cli import main

sys.exit(main())
