"""CPU seconds and peak resident memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command's closing parenthesis: state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM) in MiB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pids_of(command_name: str) -> list[int]:
    """Every process whose command name is exactly `command_name` (pgrep -x)."""
    found = subprocess.run(["pgrep", "-x", command_name], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


@dataclass
class ProcessGroup:
    """A named set of processes measured together (PostgreSQL's backends, one service's process)."""

    name: str
    pids: list[int]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids)

    def peak_rss(self) -> float:
        return sum(peak_rss_mib(pid) for pid in self.pids)


def snapshot(groups: list[ProcessGroup]) -> dict[str, float]:
    """CPU seconds so far per group."""
    return {group.name: group.cpu() for group in groups}
