"""CPU seconds and peak resident memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far, with those of its children that ended and were
    waited for (0 once it is gone): a PostgreSQL backend that exits moves its CPU into the postmaster's count."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command's closing parenthesis: state is field 3, utime 14, stime 15, cutime 16, cstime 17 (1-based).
    return sum(int(field) for field in fields[11:15]) / TICKS


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
    """The oldest process whose command name is exactly `command_name` (the server: PostgreSQL's postmaster,
    RabbitMQ's VM) and its children of that name (the backends); not a younger namesake such as rabbitmqctl's VM."""
    oldest = _pgrep("-o", "-x", command_name)
    if not oldest:
        return []
    return oldest + _pgrep("-P", str(oldest[0]), "-x", command_name)


def _pgrep(*args: str) -> list[int]:
    found = subprocess.run(["pgrep", *args], capture_output=True, text=True, check=False)
    return [int(pid) for pid in found.stdout.split()]


@dataclass
class ProcessGroup:
    """A named set of processes measured together: fixed pids (one service's process), or a server and its children
    of a command name, found anew at each reading (PostgreSQL's backends come and go with connections)."""

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
    """CPU seconds each group used between two snapshots: the change of the group's total. A process that
    appeared meanwhile counts whole (its CPU was all used since); one that ended meanwhile was counted, whole, into
    its parent's (the postmaster's) total, so that what it had used before is taken away again."""
    return {name: max(0.0, sum(pids.values()) - sum(before.get(name, {}).values())) for name, pids in after.items()}
