"""``python -m attnkit.train`` (and ``torchrun ... -m attnkit.train``)."""
import sys

from .command import main

sys.exit(main())
