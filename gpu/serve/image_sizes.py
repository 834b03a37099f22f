"""`WIDTHxHEIGHT,…` lists (warm-up sizes) parsed and held to the worker contract's bounds, with nothing but the
standard library: the deploy check runs it in every container, the web endpoints' small image included."""

from __future__ import annotations

# The worker contract's bounds for width and height (contracts/worker.py; a test keeps the two in step).
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 64, 2048, 8


def parse_sizes(raw: str) -> list[tuple[int, int]]:
    """The sizes of a comma-separated `WIDTHxHEIGHT` list (blank: none); ValueError naming the first bad one."""
    sizes = []
    for item in (part.strip().lower() for part in raw.split(",")):
        if not item:
            continue
        width, sep, height = item.partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise ValueError(f"{item!r} is not WIDTHxHEIGHT (e.g. 1024x1024)")
        w, h = int(width), int(height)
        if w % SIDE_MULTIPLE or h % SIDE_MULTIPLE or not (min(w, h) >= MIN_SIDE and max(w, h) <= MAX_SIDE):
            raise ValueError(f"{item!r}: sides are multiples of {SIDE_MULTIPLE} within {MIN_SIDE}..{MAX_SIDE}")
        sizes.append((w, h))
    return sizes
