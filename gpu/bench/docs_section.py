"""Put a benchmark's table between its own markers in docs/benchmarks.md (replaced in place, or appended at the end)."""

from pathlib import Path


def write_marked(docs: Path, begin: str, end: str, body: str) -> None:
    """Replace what stands between `begin` and `end` in `docs` with `body`; without both markers, append the block."""
    text = docs.read_text(encoding="utf-8")
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    docs.write_text(text, encoding="utf-8")
