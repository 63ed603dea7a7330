"""``python -m attnkit ARGS`` is the ``attnkit`` command."""
import sys

from .commands.main import main

sys.exit(main())
