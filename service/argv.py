"""Command-line helpers shared by the service's CLI and the training commands."""
from __future__ import annotations

from typing import Iterable, Sequence


def join_option_values(argv: Sequence[str], options: Iterable[str]) -> list[str]:
    """`--tta -15,0,15` reads to argparse as two options; join such values into `--tta=-15,0,15`.

    Every listed option is joined with the argument after it, whatever that argument looks like.
    """
    wanted = set(options)
    joined, i = [], 0
    while i < len(argv):
        if argv[i] in wanted and i + 1 < len(argv):
            joined.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            joined.append(argv[i])
            i += 1
    return joined
