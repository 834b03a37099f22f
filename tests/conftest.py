"""Fixtures shared by all suites: the tiny SDXL on disk, LoRA files for it, a loopback file server; and every
test's logging configuration put back as it found it."""

import logging
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.file_server import FileServer

if TYPE_CHECKING:
    from tests.support.bad_loras import HostileLora

# A logger's configuration: level, handlers, filters, propagate, disabled (a tuple: this runs around every test).
_LoggerState = tuple[int, list[logging.Handler], list[Any], bool, bool]
_NEW_LOGGER_LEVEL = logging.NOTSET


def _loggers() -> list[tuple[str, logging.Logger]]:
    found = [(name, lg) for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)]
    return [("", logging.root), *found]


def _snapshot() -> tuple[int, dict[str, _LoggerState]]:
    return logging.root.manager.disable, {
        name: (lg.level, lg.handlers[:], lg.filters[:], lg.propagate, lg.disabled) for name, lg in _loggers()
    }


def _restore(snapshot: tuple[int, dict[str, _LoggerState]]) -> None:
    disable, states = snapshot
    if logging.root.manager.disable != disable:
        logging.disable(disable)
    for name, lg in _loggers():
        state = states.get(name)
        if state is None:
            # First named during the test: back to a new logger's state (a library's NullHandler stays).
            kept = [h for h in lg.handlers if isinstance(h, logging.NullHandler)]
            state = (_NEW_LOGGER_LEVEL, kept, [], True, False)
        level, handlers, filters, propagate, disabled = state
        if lg.level != level:
            lg.setLevel(level)  # clears every logger's level cache: only when it changed
        if lg.handlers != handlers:
            lg.handlers[:] = handlers
        if lg.filters != filters:
            lg.filters[:] = filters
        lg.propagate, lg.disabled = propagate, disabled


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """Put the logging configuration back after each test (setup, call and teardown).

    A test (or an app it starts) that calls setup_logging, adds a root handler or changes a level would otherwise
    leave it to every later test: a redacting root handler left behind once made caplog-based "no secret is
    logged" tests pass whatever the code logged. A hook around the whole test rather than a fixture, because
    pytest adds its own capture handlers per phase (setup, call, teardown) and those must not be restored.
    """
    snapshot = _snapshot()
    try:
        yield
    finally:
        _restore(snapshot)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight SDXL, built once per run (about a quarter of a second)."""
    from gpu.tiny.model import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different LoRAs for the tiny SDXL, and one shaped for SD1.5."""
    from gpu.tiny.lora import write_lora

    folder = tmp_path_factory.mktemp("loras")
    return {
        "a": write_lora(folder / "a.safetensors", seed=1),
        "b": write_lora(folder / "b.safetensors", seed=2),
        "sd15": write_lora(folder / "sd15.safetensors", seed=1, kind="sd15"),
    }


@pytest.fixture(scope="session")
def pickle_canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file the hostile corpus's pickles create when anything unpickles them: it must never appear."""
    return tmp_path_factory.mktemp("canary") / "pickle-ran"


@pytest.fixture(scope="session")
def hostile_corpus(lora_files: dict[str, Path], pickle_canary: Path) -> "dict[str, HostileLora]":
    """The hostile LoRA corpus (tests/support/bad_loras.py), capped as identity's tests cap uploads."""
    from tests.support.bad_loras import hostile_loras
    from tests.support.stack.service_fixtures import TEST_LORA_MAX_BYTES

    valid, sd15 = lora_files["a"].read_bytes(), lora_files["sd15"].read_bytes()
    return hostile_loras(valid, sd15, pickle_canary, TEST_LORA_MAX_BYTES)


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()
