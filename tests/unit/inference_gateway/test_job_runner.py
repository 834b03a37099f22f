"""The job table and its runner on a real SQLite file with a fake worker: one worker run per generation whatever
the deliveries, crash recovery (async calls polled again, sync jobs rerun once), cancels, shutdown hand-over."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy import update

from contracts.events import GenerationStarted
from contracts.worker import WorkerRequest, WorkerSuccess
from services.inference_gateway.jobs import AcceptOutcome, CancelOutcome, JobStore
from services.inference_gateway.metrics import JOBS_RECOVERED
from services.inference_gateway.models import Job, JobState
from services.inference_gateway.ports import WorkerCall
from tests.support.gateway.fakes import FakeWorker, gid, requested, success
from tests.support.gateway.jobs import RunnerParts, job_sessions, runner_parts, staged_events

COMPLETED = "generation.completed"
FAILED = "generation.failed"
STARTED = "generation.started"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


class HangingStandInWorker:
    """Fault injector: a worker call that never answers (until cancelled); async mode hands out a call id first."""

    def __init__(self, mode: Literal["sync", "async"] = "async") -> None:
        self._mode: Literal["sync", "async"] = mode
        self.entered = asyncio.Event()
        self.cancelled = False
        self.keeping_jobs = False

    @property
    def mode(self) -> Literal["sync", "async"]:
        return self._mode

    async def generate(
        self, request: WorkerRequest, timeout_seconds: float, *, on_call: Callable[[str], Awaitable[None]] | None = None
    ) -> WorkerSuccess:
        if on_call is not None and self._mode == "async":
            await on_call(f"call-{request.request_id}")
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")

    async def resume(self, call_id: str, timeout_seconds: float) -> WorkerSuccess:
        raise AssertionError("not expected")

    def keep_jobs_on_cancel(self) -> None:
        self.keeping_jobs = True


async def until_final(store: JobStore, generation_id: str, wait: float = 20.0) -> Job:
    async with asyncio.timeout(wait):
        while True:
            job = await store.job(generation_id)
            if job is not None and job.state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELED):
                return job
            await asyncio.sleep(0.02)


def types(events: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [kind for kind, _ in events]


async def crashed_runner_left(
    store: JobStore, generation_id: str, *, call: WorkerCall | None, expire: bool = True
) -> None:
    """What a runner that died mid-attempt leaves: the job running under its lease, attempt 1 started (and its
    worker call recorded, in async mode). The lease is then made to have ended."""
    [job] = await store.claim(1)
    assert job.generation_id == generation_id
    await store.start_attempt(
        GenerationStarted(
            generation_id=generation_id, attempt=job.attempts + 1, worker_mode="async" if call else "sync"
        ),
        None,
    )
    if call is not None:
        await store.record_call(generation_id, call)
    if expire:
        await expire_leases(store)


async def expire_leases(store: JobStore) -> None:
    async with store._sessions() as session, session.begin():  # the test plays the clock
        await session.execute(update(Job).values(lease_until=LONG_AGO))


async def run_until_final(parts: RunnerParts[FakeWorker], generation_id: str) -> Job:
    async with parts.runner.running_jobs(drain_seconds=1.0):
        parts.runner.notify()
        return await until_final(parts.store, generation_id)


async def test_a_request_delivered_three_times_runs_the_worker_once_and_a_late_one_reannounces(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success(request_id=gid("gen-1"))))
        request = requested(gid("gen-1"))

        outcomes = [await parts.store.accept(request, None) for _ in range(2)]
        job = await run_until_final(parts, gid("gen-1"))
        late = await parts.store.accept(request, None)

        assert outcomes == [AcceptOutcome.QUEUED, AcceptOutcome.ALREADY_PENDING]
        assert late is AcceptOutcome.REANNOUNCED
        assert job.state == JobState.COMPLETED and len(parts.worker.requests) == 1
        events = await staged_events(sessions)
        assert types(events) == [STARTED, COMPLETED, COMPLETED]
        assert events[1][1] == events[2][1]  # the same result, announced again


async def test_after_a_crash_an_async_job_polls_its_worker_call_again_and_submits_nothing(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        dead = JobStore(sessions, owner="dead-runner", lease_seconds=30.0)
        await dead.accept(requested(gid("gen-1")), None)
        await crashed_runner_left(dead, gid("gen-1"), call=WorkerCall("call-77", "primary"))
        parts = runner_parts(sessions, FakeWorker(success(request_id=gid("gen-1")), mode="async"), owner="new-runner")

        job = await run_until_final(parts, gid("gen-1"))

        assert job.state == JobState.COMPLETED and job.recoveries == 1
        assert parts.worker.resumed == ["call-77"] and parts.worker.requests == []
        events = await staged_events(sessions)
        assert types(events) == [STARTED, COMPLETED]  # no second generation.started: no second attempt
        assert events[1][1]["attempts"] == 1
        assert parts.metrics.value(JOBS_RECOVERED) == 1


async def test_after_a_crash_a_sync_job_is_run_once_more_and_after_a_second_crash_it_fails(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        dead = JobStore(sessions, owner="dead-runner", lease_seconds=30.0)
        await dead.accept(requested(gid("twice")), None)
        await crashed_runner_left(dead, gid("twice"), call=None)
        # gid("twice"): taken over once already, by a runner that died in its rerun too.
        dead_again = JobStore(sessions, owner="dead-again", lease_seconds=30.0)
        await crashed_runner_left(dead_again, gid("twice"), call=None, expire=False)
        await dead.accept(requested(gid("once")), None)
        await crashed_runner_left(dead, gid("once"), call=None)
        parts = runner_parts(sessions, FakeWorker(success()), owner="new-runner", concurrency=2)

        async with parts.runner.running_jobs(drain_seconds=1.0):
            once = await until_final(parts.store, gid("once"))
            twice = await until_final(parts.store, gid("twice"))

        assert once.state == JobState.COMPLETED and once.result is not None and once.result["attempts"] == 2
        assert [r.request_id for r in parts.worker.requests] == [gid("once")]
        assert twice.state == JobState.FAILED and twice.result is not None
        assert twice.result["error_code"] == "WORKER_UNAVAILABLE"
        assert twice.result["details"]["stopped_by"] == "gateway_restarts"


async def test_a_queued_job_canceled_never_runs_and_a_cancel_before_the_request_wins(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))
        await parts.store.accept(requested("queued"), None)

        assert await parts.runner.cancel("queued") is CancelOutcome.DROPPED
        assert await parts.runner.cancel("not-yet") is CancelOutcome.RECORDED_FIRST
        assert await parts.store.accept(requested("not-yet"), None) is AcceptOutcome.CANCELED
        assert await parts.runner.cancel("queued") is CancelOutcome.ALREADY_FINAL
        async with parts.runner.running_jobs(drain_seconds=1.0):
            parts.runner.notify()
            await asyncio.sleep(0.2)  # a claim pass or two: there must be nothing to claim

        assert parts.worker.requests == [] and await staged_events(sessions) == []


async def test_a_cancel_recorded_by_another_replica_stops_the_running_job_at_its_next_renewal(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        worker = HangingStandInWorker(mode="sync")
        parts = runner_parts(sessions, worker, lease_seconds=0.3)
        other_replica = JobStore(sessions, owner="replica-b", lease_seconds=0.3)
        await parts.store.accept(requested(gid("gen-1")), None)

        async with parts.runner.running_jobs(drain_seconds=1.0):
            parts.runner.notify()
            await asyncio.wait_for(worker.entered.wait(), 10)
            assert await other_replica.cancel(gid("gen-1")) is CancelOutcome.STOPPING
            job = await until_final(parts.store, gid("gen-1"))

        assert job.state == JobState.CANCELED and worker.cancelled
        assert types(await staged_events(sessions)) == [STARTED]


async def test_shutdown_hands_an_unfinished_async_job_to_the_next_runner_which_resumes_its_call(
    tmp_path: Path,
) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        hanging = HangingStandInWorker(mode="async")
        first = runner_parts(sessions, hanging, owner="first")
        await first.store.accept(requested(gid("gen-1")), None)

        async with first.runner.running_jobs(drain_seconds=0.1):
            first.runner.notify()
            await asyncio.wait_for(hanging.entered.wait(), 10)

        assert hanging.keeping_jobs and hanging.cancelled
        second = runner_parts(sessions, FakeWorker(success(request_id=gid("gen-1")), mode="async"), owner="second")
        job = await run_until_final(second, gid("gen-1"))  # at once: the lease was released, not left to expire

        assert job.state == JobState.COMPLETED
        assert second.worker.resumed == [f"call-{gid('gen-1')}"] and second.worker.requests == []


async def test_the_sweep_removes_old_final_jobs_and_keeps_the_rest(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success()))
        await parts.store.accept(requested("old"), None)
        await parts.store.accept(requested("pending"), None)
        await parts.runner.cancel("old")

        assert await parts.store.sweep(timedelta(days=1)) == 0
        assert await parts.store.sweep(timedelta(seconds=-1)) == 1

        assert await parts.store.job("old") is None and await parts.store.job("pending") is not None


@pytest.mark.parametrize("owner", ["first", "other"])
async def test_only_the_lease_holder_records_attempts(tmp_path: Path, owner: str) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        holder = JobStore(sessions, owner="first", lease_seconds=30.0)
        await holder.accept(requested(gid("gen-1")), None)
        await holder.claim(1)
        store = holder if owner == "first" else JobStore(sessions, owner=owner, lease_seconds=30.0)
        started = GenerationStarted(generation_id=gid("gen-1"), attempt=1, worker_mode="sync")

        if owner == "first":
            await store.start_attempt(started, None)
            assert types(await staged_events(sessions)) == [STARTED]
        else:
            from services.inference_gateway.jobs import LeaseLostError

            with pytest.raises(LeaseLostError):
                await store.start_attempt(started, None)
            assert await staged_events(sessions) == []


async def test_the_runner_exports_the_open_jobs_it_counted(tmp_path: Path) -> None:
    async with job_sessions(tmp_path / "jobs.db") as sessions:
        parts = runner_parts(sessions, FakeWorker(success(request_id=gid("gen-1"))))
        for generation_id in (gid("gen-1"), gid("gen-2"), gid("gen-3")):
            await parts.store.accept(requested(generation_id), None)
        assert "vixen_gateway_jobs_open" not in parts.metrics.render()  # nothing counted yet: no sample

        async with parts.runner.running_jobs(drain_seconds=1.0):
            async with asyncio.timeout(10):
                while True:  # the first count, made as the claim loop starts
                    if parts.runner.open_jobs is not None:
                        break
                    await asyncio.sleep(0.02)

        assert parts.runner.open_jobs == 3  # counted before the first claim
        assert re.search(r"^vixen_gateway_jobs_open(\{[^}]*\})? 3\.0$", parts.metrics.render(), re.M)
