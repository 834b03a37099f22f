"""Write a benchmark's table into its own marked section of a docs page (replaced in place, or appended)."""

from __future__ import annotations

from pathlib import Path


def write_marked_section(path: Path, start: str, end: str, heading: str, lines: list[str]) -> None:
    """Put `lines` between the `start` and `end` markers of `path`; without them, append them under `heading`."""
    text = path.read_text(encoding="utf-8")
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        before, _, rest = text.partition(start)
        _, _, after = rest.partition(end)
        text = before + block + after
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
