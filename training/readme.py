"""The README's generated sections: text between `<!-- generalise:NAME -->` and `<!-- /generalise:NAME -->`
that a command (training.generalise, training.calibrate) replaces with its latest table."""
from __future__ import annotations

from pathlib import Path


class SectionError(ValueError):
    """A README that cannot take the table, with a one-line reason."""


def _span(readme: Path, name: str) -> tuple[str, int, int]:
    begin, end = f"<!-- generalise:{name} -->", f"<!-- /generalise:{name} -->"
    if not readme.is_file():
        raise SectionError(f"README not found: {readme}")
    text = readme.read_text()
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SectionError(f"{readme} has no {begin} ... {end} section to write the {name} table into")
    return text, start + len(begin), stop


def check_section(readme: Path | None, name: str) -> None:
    """Refuse before hours of work, not after, when the README has no place for the table."""
    if readme is not None:
        _span(readme, name)


def write_section(readme: Path, name: str, body: str) -> None:
    text, start, stop = _span(readme, name)
    readme.write_text(text[:start] + "\n" + body.strip() + "\n" + text[stop:])
