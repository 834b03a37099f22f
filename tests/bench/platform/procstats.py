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
    """A named set of processes measured together: fixed pids (one service's process), or every process of a
    command name found anew at each reading (PostgreSQL's backends come and go with connections)."""

    name: str
    pids: list[int]
    command: str | None = None

    def current(self) -> list[int]:
        return pids_of(self.command) if self.command else self.pids

    def cpu_by_pid(self) -> dict[int, float]:
        return {pid: cpu_seconds(pid) for pid in self.current()}

    def peak_rss(self) -> float:
        return sum(peak_rss_mib(pid) for pid in self.current())


Snapshot = dict[str, dict[int, float]]


def snapshot(groups: list[ProcessGroup]) -> Snapshot:
    """CPU seconds so far of every process of each group."""
    return {group.name: group.cpu_by_pid() for group in groups}


def cpu_between(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds each group used between two snapshots; a process that appeared meanwhile counts whole (its
    CPU was all used since), one that ended meanwhile is missed."""
    return {
        name: sum(max(0.0, seconds - before.get(name, {}).get(pid, 0.0)) for pid, seconds in pids.items())
        for name, pids in after.items()
    }
