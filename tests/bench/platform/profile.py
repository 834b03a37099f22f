"""py-spy samples of the services under load, reduced to the functions that hold the most busy samples."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Leaf frames of a thread waiting for I/O (py-spy leaves out most idle samples itself).
IDLE_FRAMES = ("select (selectors.py", "_run_once (asyncio/base_events.py", "poll (selectors.py")


@dataclass(frozen=True)
class Profile:
    """One process's samples: each collapsed stack with how many samples ended in it."""

    service: str
    stacks: Counter[str]

    @property
    def busy(self) -> Counter[str]:
        """Stacks whose leaf is not the event loop waiting for I/O."""
        return Counter({stack: n for stack, n in self.stacks.items() if not _idle(stack)})

    def own_functions(self, count: int = 15) -> list[tuple[str, float]]:
        """The project's functions (services/, contracts/, gpu/) by inclusive share of the busy samples."""
        busy = self.busy
        total = sum(busy.values()) or 1
        inclusive: Counter[str] = Counter()
        for stack, n in busy.items():
            for frame in {f for f in stack.split(";") if _OWN.search(f)}:
                inclusive[frame] += n
        return [(frame, 100.0 * n / total) for frame, n in inclusive.most_common(count)]

    def by_library(self, count: int = 12) -> list[tuple[str, float]]:
        """Where the busy samples were when taken: the package of the innermost frame (self time)."""
        busy = self.busy
        total = sum(busy.values()) or 1
        packages: Counter[str] = Counter()
        for stack, n in busy.items():
            packages[_package(stack.rsplit(";", 1)[-1])] += n
        return [(package, 100.0 * n / total) for package, n in packages.most_common(count)]


_OWN = re.compile(r"\((services|contracts|gpu)/")
_FILE = re.compile(r"\(([^/():]+)/")


def _package(frame: str) -> str:
    # `func (package/module.py:line)`. The loop's own frame as the innermost one means C code under it (uvloop, the
    # drivers' protocols, httptools); a frame in a top-level module is named as is.
    if frame.startswith("Runner.run ("):
        return "event loop and C extensions"
    match = _FILE.search(frame)
    return match.group(1) if match else frame.split(" (")[0]


def _idle(stack: str) -> bool:
    leaf = stack.rsplit(";", 1)[-1]
    return any(leaf.startswith(frame) for frame in IDLE_FRAMES)


def executable() -> str | None:
    """py-spy beside this interpreter (`pip install py-spy` in the venv) or on PATH; it is not a dependency."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def available() -> bool:
    """Whether py-spy is installed."""
    return executable() is not None


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` for `seconds` into `out` (collapsed stacks), without pausing it."""
    command = [
        executable() or "py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
        "--format", "raw", "--nonblocking", "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read(service: str, path: Path) -> Profile:
    """Parse py-spy's raw output: `frame;frame;... count` per line."""
    stacks: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return Profile(service, stacks)


def report(profiles: list[Profile]) -> list[str]:
    """Per service: self time by package, then the project's functions by inclusive share."""
    lines: list[str] = []
    for profile in profiles:
        lines.append(f"{profile.service}: {sum(profile.busy.values())} busy samples")
        packages = ", ".join(f"{name} {share:.0f}%" for name, share in profile.by_library())
        lines.append(f"  self time by package: {packages}")
        # The entry points (main, serve, <module>) hold every sample of the main thread: left out.
        functions = profile.own_functions(25)
        entry = functions[0][1] if functions else 0.0
        lines += [f"  {share:5.1f}%  {frame}" for frame, share in functions if share < entry][:15]
    return lines
