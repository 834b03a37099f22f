"""The launcher's command line and process handling, without starting a whole stack."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.stacklib.checks import rabbitmq_problem
from scripts.stacklib.processes import StartError, free_port, pid_alive, start_process, stop, wait_until_ready
from scripts.stacklib.runner import stop_recorded

ROOT = Path(__file__).resolve().parents[3]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/stack.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )


def test_demo_without_rabbitmq_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    result = run_cli("demo", "--run-dir", str(tmp_path), "--rabbitmq-url", nowhere, "--free-ports")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "RabbitMQ does not answer" in lines[0] and "rabbitmq-server -detached" in lines[0]
    assert not (tmp_path / "stack.json").exists()


def test_a_busy_port_fails_the_named_step_before_anything_starts(tmp_path: Path, rabbitmq_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        flags = ["--run-dir", str(tmp_path), "--rabbitmq-url", rabbitmq_url, "--free-ports"]
        result = run_cli("up", *flags, "--content-port", str(port))
    assert result.returncode == 1
    assert f"FAILED at step 'check ports': already in use: content {port}" in result.stderr
    assert not (tmp_path / "stack.json").exists()


def test_rabbitmq_check_tells_a_broker_from_other_servers(rabbitmq_url: str) -> None:
    assert rabbitmq_problem(rabbitmq_url) is None
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        problem = rabbitmq_problem(f"amqp://127.0.0.1:{other.getsockname()[1]}/", timeout=0.5)
    assert problem is not None and "rabbitmq-server -detached" in problem


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A process that serves HTTP (python -m http.server), started the way the launcher starts services."""
    port = free_port()
    process = start_process(
        "sleeper",
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        env={"PATH": "/usr/bin:/bin"},
        log_path=tmp_path / "sleeper.log",
        cwd=tmp_path,
        port=port,
    )
    wait_until_ready(process, host="127.0.0.1", timeout=20)
    yield process.pid, tmp_path
    stop(process)


def write_state(folder: Path, pid: int, module: str) -> Path:
    state = folder / "stack.json"
    state.write_text(json.dumps({"processes": [{"name": "sleeper", "pid": pid, "module": module}]}))
    return state


def test_down_stops_what_the_state_file_lists(sleeper: tuple[int, Path]) -> None:
    pid, folder = sleeper
    state = write_state(folder, pid, "http.server")
    assert stop_recorded(state) == 1
    assert not pid_alive(pid) and not state.exists()


def test_down_leaves_a_recycled_pid_alone(sleeper: tuple[int, Path]) -> None:
    pid, folder = sleeper
    state = write_state(folder, pid, "services.content")
    assert stop_recorded(state) == 0
    assert pid_alive(pid)


def test_a_process_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    process = start_process(
        "broken",
        [sys.executable, "-c", "import sys; print('cannot start: no config'); sys.exit(3)"],
        env={"PATH": "/usr/bin:/bin"},
        log_path=tmp_path / "broken.log",
        cwd=tmp_path,
        port=free_port(),
    )
    with pytest.raises(StartError) as caught:
        wait_until_ready(process, host="127.0.0.1", timeout=20, health_path="/healthz")
    assert "broken exited with status 3" in str(caught.value) and "cannot start: no config" in str(caught.value)
