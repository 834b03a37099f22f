"""Modal's cancel of a sync input, reproduced: SIGUSR1 raises `InputCancellation` in the main thread.

Modal's container installs this handler around each sync input and, on a cancel, signals the process; here the
signal goes to the main thread with `pthread_kill` (deterministic, whichever thread sends it).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import pytest
from modal.exception import InputCancellation


class CancelSignal:
    """Counts the cancels delivered; each raises InputCancellation("cancel <n>") in the main thread."""

    def __init__(self) -> None:
        self.delivered = 0
        # Cancels sent once the handler was gone (the test had moved on): not signalled, which would kill pytest.
        self.late = 0
        self.active = True
        self._main = threading.main_thread().ident

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.delivered += 1
        raise InputCancellation(f"cancel {self.delivered}")

    def send(self) -> None:
        """Cancel the input, from any thread: the main thread raises InputCancellation where it is."""
        assert self._main is not None
        if not self.active:
            self.late += 1
            return
        signal.pthread_kill(self._main, signal.SIGUSR1)


@contextmanager
def modal_cancel_signal() -> Iterator[CancelSignal]:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread only")
    cancel = CancelSignal()
    previous = signal.signal(signal.SIGUSR1, cancel._handler)
    try:
        yield cancel
    finally:
        cancel.active = False
        signal.signal(signal.SIGUSR1, previous)
