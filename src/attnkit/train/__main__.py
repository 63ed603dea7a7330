"""``python -m attnkit.train ARGS`` (also under torchrun) is ``attnkit train ARGS``: the
same parser, the same exit codes."""
import sys

from ..commands.main import main

sys.exit(main(["train", *sys.argv[1:]]))
