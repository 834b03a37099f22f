"""Start and stop a whole local stack (S3, worker, identity, content, gateway) and record it in stack.json."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from scripts.stacklib.checks import busy_ports, rabbitmq_problem
from scripts.stacklib.config import SERVICE_NAMES, ServiceSpec, StackConfig, service_specs
from scripts.stacklib.processes import (
    STOP_GRACE_SECONDS,
    ManagedProcess,
    StartError,
    kill_process_group,
    log_tail,
    pid_alive,
    start_process,
    stop,
    stop_process_group,
    wait_until_ready,
)
from services.tools import s3_local

Say = Callable[[str], None]


class StackError(RuntimeError):
    """A step of starting or using the stack failed; `step` names it, `detail` holds a log tail."""

    def __init__(self, step: str, message: str, detail: str = "") -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.detail = detail


class RabbitMQUnavailable(StackError):
    """RabbitMQ does not answer: nothing was started."""


def _quiet(_: str) -> None:
    return None


class LocalStack:
    """The stack's processes. `start()` brings every service up or raises StackError (having stopped
    what it started); `stop()` stops them in reverse order."""

    def __init__(self, config: StackConfig, services: Sequence[str] = SERVICE_NAMES, say: Say = _quiet) -> None:
        self.config = config
        self.services = [name for name in SERVICE_NAMES if name in services]
        self.specs: dict[str, ServiceSpec] = service_specs(config)
        self.processes: dict[str, ManagedProcess] = {}
        self.ready_seconds: dict[str, float] = {}
        self._say = say

    def log_path(self, service: str) -> Path:
        """Where a service writes its log."""
        return self.config.run_dir / f"{service}.log"

    def preflight(self) -> None:
        """RabbitMQ answers and every port is free, or RabbitMQUnavailable / StackError; starts nothing."""
        problem = rabbitmq_problem(self.config.rabbitmq_url)
        if problem:
            raise RabbitMQUnavailable("check RabbitMQ", problem)
        busy = busy_ports(self.config.host, {name: self.config.ports[name] for name in self.services})
        if busy:
            raise StackError(
                "check ports",
                f"already in use: {', '.join(busy)} (a stack already up? `python scripts/stack.py down`)",
            )

    def start(self) -> None:
        """Run the preflight checks, start every service and wait until each is ready."""
        self.preflight()
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare_databases()
            if "s3" in self.services:
                # A fresh folder per start, as the SQLite databases are fresh; a restart keeps what it holds.
                s3_local.prepare(self.config.run_dir, self.config.s3_credentials())
                self._start("s3")
                self._wait("s3")
                self._create_bucket()
            # The rest start together (each declares the whole topology, so order does not matter).
            for name in self.services:
                if name != "s3":
                    self._start(name)
            for name in self.services:
                if name != "s3":
                    self._wait(name)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process this stack started (SIGTERM to its group, then SIGKILL), newest first."""
        for name in reversed(list(self.processes)):
            stop(self.processes.pop(name))
        self.config.state_file.unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """SIGKILL a service's process group (a crash: no shutdown, nothing flushed); `restart` brings it back."""
        process = self.processes[name]
        kill_process_group(process.pid)
        if process.popen is not None:
            process.popen.wait(timeout=STOP_GRACE_SECONDS)

    def restart(self, name: str) -> None:
        """Start a service again on its port (stopping it first if it still runs) and wait until it is ready."""
        process = self.processes.get(name)
        if process is not None and process.exited() is None:
            stop(process)
        self._start(name)
        self._wait(name)

    def urls(self) -> dict[str, str]:
        """http://host:port of each service started."""
        return {name: self.config.url(name) for name in self.services}

    def bearer(self, subject: str, *, admin: bool = False) -> dict[str, str]:
        """An Authorization header for `subject`, signed with the secret this stack's services verify with."""
        from services.common.auth import mint_token

        return {"Authorization": f"Bearer {mint_token(self.config.auth_secret(), subject, admin=admin)}"}

    def tail(self, service: str, lines: int = 20) -> str:
        """The end of a service's log."""
        return log_tail(self.log_path(service), lines)

    def _prepare_databases(self) -> None:
        for service in ("identity", "content", "gateway"):
            if service not in self.services:
                continue
            if self.config.uses_sqlite(service):
                # A fresh embedded database per run: the local S3 endpoint starts empty too.
                for suffix in ("", "-wal", "-shm"):
                    (self.config.run_dir / f"{service}.db{suffix}").unlink(missing_ok=True)
            else:
                self._ensure_postgres_database(service)

    def _ensure_postgres_database(self, service: str) -> None:
        url = self.config.database_url(service)
        result = subprocess.run(  # noqa: S603 - our own helper with a URL we built
            [self.config.python, "-m", "scripts.stacklib.pg", url],
            cwd=self.config.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"prepare the {service} database", (result.stderr or result.stdout).strip()[-500:])

    def _start(self, name: str) -> None:
        spec = self.specs[name]
        self._say(f"starting {name} on {self.config.url(name)}")
        self.processes[name] = start_process(
            name, spec.argv, env=spec.env, log_path=self.log_path(name), cwd=self.config.root, port=spec.port
        )
        self._write_state()

    def _wait(self, name: str) -> None:
        spec = self.specs[name]
        try:
            seconds = wait_until_ready(
                self.processes[name], host=self.config.host, timeout=spec.ready_timeout, health_path=spec.health_path
            )
        except StartError as error:
            message, _, detail = str(error).partition("\n")
            raise StackError(f"start {name}", message, detail) from None
        self.ready_seconds[name] = seconds
        self._say(f"{name} ready ({seconds:.1f}s)")

    def _create_bucket(self) -> None:
        # weed creates the bucket (-bucket) once its filer is up; an open port comes earlier. Signed, as R2 wants.
        try:
            s3_local.wait_until_serving(self.config.url("s3"), self.config.s3_credentials(), self.config.bucket)
        except s3_local.LocalS3Error as error:
            raise StackError("create the bucket", str(error), self.tail("s3")) from None

    def _write_state(self) -> None:
        state = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "topology_prefix": self.config.topology_prefix,
            "bucket": self.config.bucket,
            "urls": self.urls(),
            "processes": [
                {
                    "name": process.name,
                    "pid": process.pid,
                    "port": process.port,
                    "module": self.specs[name].marker,
                    "log": str(process.log_path),
                }
                for name, process in self.processes.items()
            ],
        }
        self.config.state_file.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def read_state(state_file: Path) -> dict[str, object] | None:
    """The recorded stack, or None when there is none (or it is unreadable)."""
    try:
        value = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def recorded_processes(state: dict[str, object]) -> list[dict[str, object]]:
    """The process entries of a state file."""
    entries = state.get("processes")
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else []


def still_ours(pid: int, module: str) -> bool:
    """Whether `pid` is alive and still runs `module` (a recycled PID belongs to someone else)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (macOS): trust the record
    return module.encode() in cmdline


def stop_recorded(state_file: Path, say: Say = _quiet) -> int:
    """Stop what a state file lists (newest first); returns how many processes were stopped."""
    state = read_state(state_file)
    if state is None:
        return 0
    stopped = 0
    for entry in reversed(recorded_processes(state)):
        pid, module, name = entry.get("pid"), entry.get("module"), entry.get("name")
        if not isinstance(pid, int) or not isinstance(module, str):
            continue
        if still_ours(pid, module):
            say(f"stopping {name} (pid {pid})")
            stop_process_group(pid)
            stopped += 1
    state_file.unlink(missing_ok=True)
    return stopped


def running_from_state(state_file: Path) -> list[str]:
    """Names of the recorded processes that still run."""
    state = read_state(state_file)
    if state is None:
        return []
    return [
        str(entry.get("name"))
        for entry in recorded_processes(state)
        if isinstance(entry.get("pid"), int)
        and isinstance(entry.get("module"), str)
        and still_ours(int(str(entry["pid"])), str(entry["module"]))
    ]
