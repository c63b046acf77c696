"""What every training command does first: log with timestamps, read its arguments, and spell the command line
that its checkpoints and cards record as their recipe."""
from __future__ import annotations

import logging
import shlex
import sys


def start_command(module: str, argv: list[str] | None) -> tuple[list[str], str]:
    """The arguments (sys.argv's when none are given) and the recorded command, e.g. "python -m training.export ..."."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else list(argv)
    return argv, f"python -m {module} " + shlex.join(argv)
