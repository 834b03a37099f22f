"""Child processes of the stack: start in their own process group, wait until ready, stop, read log tails."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

STOP_GRACE_SECONDS = 10.0


class StartError(RuntimeError):
    """A process did not come up; the message names it and carries the tail of its log."""


@dataclass
class ManagedProcess:
    """One started child: its name, process (group) id, log file and the port it serves on."""

    name: str
    pid: int
    log_path: Path
    port: int | None = None
    popen: subprocess.Popen[bytes] | None = None

    def exited(self) -> int | None:
        """The exit status if the process has ended, else None."""
        if self.popen is not None:
            return self.popen.poll()
        return None if pid_alive(self.pid) else -1

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of its log."""
        return log_tail(self.log_path, lines)


EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below Linux's default ephemeral range (32768-60999), above the registered ports most local services use.
FALLBACK_PORTS = range(20000, 32768)


def listen_ports(ephemeral: tuple[int, int] | None = None) -> range:
    """Ports to pick a listening port from: below the kernel's ephemeral range.

    A port from the ephemeral range (what bind(0) returns) can be taken, before the child binds it, as the local end
    of any outgoing connection on this machine; a slow starter (the worker imports torch for ~10 s) then fails with
    "address already in use". Outgoing connections never use ports outside that range."""
    low, _ = ephemeral or read_ephemeral_range()
    return range(max(1024, low - 12768), low) if low > 2048 else FALLBACK_PORTS


def read_ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default where it cannot be read)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return (32768, 60999)
    return (low, high)


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A port nothing listens on right now, chosen at random outside the ephemeral range (see listen_ports)."""
    candidates = listen_ports()
    for _ in range(attempts):
        port = random.choice(candidates)  # spreading test ports, not security
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port on {host} in {candidates.start}-{candidates.stop - 1} after {attempts} tries")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path,
    port: int | None = None,
) -> ManagedProcess:
    """Start `argv` in a new session (its own process group), stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(  # noqa: S603 - argv is built by the launcher, never from user text
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(name=name, pid=popen.pid, log_path=log_path, port=port, popen=popen)


def wait_until_ready(
    process: ManagedProcess,
    *,
    host: str,
    timeout: float,
    health_path: str | None = None,
    interval: float = 0.2,
) -> float:
    """Wait until the process answers (GET health_path → 200, or the port accepts); seconds it took.

    Raises StartError with the log tail when the process exits or the timeout passes first.
    """
    started = time.monotonic()
    deadline = started + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        status = process.exited()
        if status is not None:
            raise StartError(
                f"{process.name} exited with status {status} while starting: {last_line(process.log_tail())}\n"
                f"{process.log_tail()}"
            )
        if process.port is not None:
            if health_path is None:
                if port_open(host, process.port):
                    return time.monotonic() - started
            else:
                try:
                    response = httpx.get(f"http://{host}:{process.port}{health_path}", timeout=2.0)
                    if response.status_code == 200:
                        return time.monotonic() - started
                    last = f"{health_path} answered {response.status_code}: {response.text[:200]}"
                    if gave_up(response):
                        raise StartError(f"{process.name} cannot become ready ({last})\n{process.log_tail()}")
                except httpx.HTTPError as error:
                    last = f"{type(error).__name__}"
        time.sleep(interval)
    raise StartError(f"{process.name} was not ready within {timeout:.0f}s ({last})\n{process.log_tail()}")


def last_line(text: str) -> str:
    """The last non-empty line of a log tail (what a one-line summary of a failure should show)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(empty log)"


def gave_up(response: httpx.Response) -> bool:
    """Whether a health answer says the service will not become ready (e.g. the worker's model failed to load)."""
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict) or body.get("status") not in ("unavailable", "retired"):
        return False
    return body.get("reason") not in (None, "", "loading")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie we could reap)."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the kernel below
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(pid: int, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the process group led by `pid`, then SIGKILL to what is left after `grace` seconds."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:
        # The launcher starts every child as a group leader; anything else is not ours to signal as a group.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        pgid = 0
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
        elif pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    # Reap it if it is our child, so no zombie stays behind.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def kill_process_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` at once (no grace: what a crash or the OOM killer does)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def stop(process: ManagedProcess, grace: float = STOP_GRACE_SECONDS) -> None:
    """Stop one managed process and its children."""
    stop_process_group(process.pid, grace)
    if process.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=1.0)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file (empty when there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    | {line}" for line in tail)
