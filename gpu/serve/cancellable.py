"""Run the engine on a worker thread so an interruption of the caller's thread stops it cleanly.

Modal cancels a running input of a sync method by raising `InputCancellation` (a BaseException) from a SIGUSR1
handler in the main thread, at whatever line runs. Were the engine running there, the exception could land in the
middle of restoring the base weights. Here the engine runs on a pool thread, which signals never reach; the
interruption lands in the caller's wait, which cancels the request's budget (the engine stops at its next
denoising step and restores the weights itself, as after any cancel), waits for the engine to finish, and only
then lets the interruption go on. No modal or torch import: tests drive it with the tiny engine.
"""

import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from gpu.engine.budget import RequestBudget

T = TypeVar("T")

INTERRUPTED_REASON = "modal input canceled"


def run_cancellable(
    pool: concurrent.futures.Executor,
    fn: Callable[[], T],
    budget: RequestBudget,
    reason: str = INTERRUPTED_REASON,
) -> T:
    """`fn()` on `pool` (one thread: one request at a time), its result here.

    On a BaseException raised in this thread while waiting (or one that `fn` raised), `budget` is canceled with
    `reason`, and this thread waits until `fn` has returned, however many further interruptions come, before the
    first exception is raised again. `fn` must read `budget` (the engine checks it at every step).
    """
    future: concurrent.futures.Future[T] | None = None
    try:
        future = pool.submit(fn)
        return future.result()
    except BaseException:
        # Every step below is retried if interrupted: neither the cancel nor the wait may be skipped.
        while True:
            try:
                budget.cancel(reason)
                # An interruption inside `submit` leaves no future: the request may still be queued, but its
                # budget is canceled (it will not run) and the pool's one thread keeps the next request behind it.
                while future is not None and not future.done():
                    concurrent.futures.wait([future])
                break
            except BaseException:  # noqa: S112 - a second interruption must not skip the wait
                continue
        raise
