"""python -m tests.bench.streams: 5,000 event streams on one generation, as issue 20's attacker opened them.

Content runs as deployed (its own process, PostgreSQL, RabbitMQ). Each phase starts a fresh content process, queues
one generation, opens `--streams` raw SSE connections on its signed `events_url` (no token) `--concurrency` at a
time, then moves the generation to running and to failed while every open stream watches; other owners call
`GET /api/v1/content/{id}` at `--other-rate` per second throughout. Phases: `default` (the shipped caps) and `raised`
(caps raised to the stream count, so that every stream opens and the shared read is what holds). Per phase: streams
opened / refused (429) / 5xx / unanswered, database reads of the generation while opening and per change (content's
`vixen_content_follower_reads_total`), time for a change to reach every stream, other owners' latency, content's RSS
and CPU. Prints the table and, with --write-docs, puts it in docs/benchmarks.md between the streams markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from contracts.events import GenerationFailed
from contracts.topology import topology
from services.common.messaging.broker import Publisher, connect
from services.common.persistence.db import create_test_database, drop_test_database
from tests.bench.docs_section import write_marked_section
from tests.bench.platform import profile
from tests.bench.streams.content_process import ContentProcess, content_process
from tests.bench.streams.other_owners import Call, OtherOwners
from tests.support.auth import bearer
from tests.support.content.client import GATEWAY, publish, ready_avatar, started, submit
from tests.support.queues import delete_run_topology
from tests.support.sse_flood import Answer, OpenStream, all_reach, close_all, open_many

DEFAULT_PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
START_MARK = "<!-- streams-bench:start -->"
END_MARK = "<!-- streams-bench:end -->"
READS_METRIC = "vixen_content_follower_reads_total"
OTHER_OWNERS = 4
# How long every stream may take to get one change, on a machine the client shares with the server.
CHANGE_TIMEOUT = 120.0
# Other owners' calls slower than this are counted, and said whether they came just after a change.
SLOW_SECONDS = 0.2
CHANGE_WINDOW = 3.0
# The flood client's niceness (the server, the database and the other owners' client keep 0).
FLOOD_NICENESS = 10
# How long --profile samples content from the flood's start.
PROFILE_SECONDS = 20


def raised_caps(streams: int) -> dict[str, str]:
    return {
        "CONTENT_MAX_STREAMS_PER_GENERATION": str(streams),
        "CONTENT_MAX_STREAMS_PER_OWNER": str(streams),
        "CONTENT_MAX_STREAMS": str(streams),
    }


PHASES: dict[str, tuple[str, Callable[[int], dict[str, str]]]] = {
    "default": ("shipped caps", lambda _streams: {}),
    "raised": ("caps raised to the stream count", raised_caps),
}


@dataclass
class PhaseResult:
    """One phase's figures."""

    name: str
    asked: int
    opened: int = 0
    refusals: dict[int, int] = field(default_factory=dict)
    open_seconds: float = 0.0
    reads_opening: float | None = None
    reads_per_change: list[float | None] = field(default_factory=list)
    change_seconds: list[float] = field(default_factory=list)
    changed_at: list[float] = field(default_factory=list)
    delivered: list[int] = field(default_factory=list)
    others: list[Call] = field(default_factory=list)
    rss_open: float = 0.0
    rss_peak: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.refusals.items() if status >= 500) + sum(
            1 for call in self.others if call.status >= 500
        )

    def slow_calls(self, threshold: float = SLOW_SECONDS) -> tuple[int, int]:
        """The other owners' calls slower than `threshold`: (begun within CHANGE_WINDOW after a change, others)."""
        slow = [call for call in self.others if call.seconds > threshold]
        near = sum(1 for call in slow if any(0 <= call.at - at <= CHANGE_WINDOW for at in self.changed_at))
        return near, len(slow) - near

    @property
    def unanswered(self) -> int:
        return self.refusals.get(0, 0) + sum(1 for call in self.others if call.status == 0)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def raise_own_file_limit() -> tuple[int, int]:
    """Raise this process's soft open-file limit to its hard one (the client holds a socket per stream; content,
    its child, inherits the limit and raises its own too); (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def run_phase(
    name: str,
    content: ContentProcess,
    publisher: Publisher,
    streams: int,
    concurrency: int,
    open_rate: float | None,
    other_rate: float,
    profile_to: Path | None = None,
) -> PhaseResult:
    """Set up the owners, flood one generation's events_url, change the generation twice, measure (and sample
    content with py-spy meanwhile into `profile_to`)."""
    result = PhaseResult(name, streams)
    async with httpx.AsyncClient(base_url=content.url, timeout=30.0) as client:
        owner = f"bench-attacked-{secrets.token_hex(4)}"
        auth = bearer(owner, ttl_seconds=3600)
        avatar_id, _ = await ready_avatar(client, publisher, owner, auth)
        attacked = await submit(client, auth, avatar_id)
        others: list[tuple[dict[str, str], str]] = []
        for _ in range(OTHER_OWNERS):
            other = f"bench-other-{secrets.token_hex(4)}"
            other_auth = bearer(other, ttl_seconds=3600)
            other_avatar, _ = await ready_avatar(client, publisher, other, other_auth)
            others.append((other_auth, (await submit(client, other_auth, other_avatar))["id"]))

    cpu_before = content.cpu_seconds()
    load = OtherOwners(content.url, others, other_rate)
    load.start()
    # The flood client yields the cores to the server and to the measuring client: an attacker's client does not
    # run on the server's cores, and on two cores its parsing of 5,000 streams would otherwise be what is measured.
    flood_priority = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, FLOOD_NICENESS)
    sampler = profile.start(content.pid, PROFILE_SECONDS, profile_to) if profile_to is not None else None
    opened: list[OpenStream] = []
    try:
        reads = content.metric(READS_METRIC)
        begun = time.perf_counter()
        opened, refused = await open_many(
            content.url, attacked["events_url"], streams, concurrency=concurrency, per_second=open_rate
        )
        result.open_seconds = time.perf_counter() - begun
        result.opened = len(opened)
        result.refusals = count_statuses(refused)
        async with asyncio.timeout(CHANGE_TIMEOUT):
            await all_reach(opened, "1")
        result.reads_opening = reads_delta(content, reads)
        result.rss_open = content.rss_mib()
        failure = GenerationFailed(generation_id=attacked["id"], error_code="CUDA_OOM", error="bench")
        for event_id, payload in (("2", started(attacked["id"])), ("3", failure)):
            reads = content.metric(READS_METRIC)
            begun = time.perf_counter()
            result.changed_at.append(begun)
            await publish(publisher, payload, GATEWAY)
            async with asyncio.timeout(CHANGE_TIMEOUT):
                result.delivered.append(await all_reach(opened, event_id))
            result.change_seconds.append(time.perf_counter() - begun)
            result.reads_per_change.append(reads_delta(content, reads))
    finally:
        result.others = await asyncio.to_thread(load.stop)
        close_all(opened)
        with contextlib.suppress(PermissionError):  # lowering a niceness back takes privileges
            os.setpriority(os.PRIO_PROCESS, 0, flood_priority)
    result.cpu_seconds = content.cpu_seconds() - cpu_before
    result.rss_peak = content.peak_rss_mib()
    if sampler is not None and profile_to is not None:
        await asyncio.to_thread(sampler.wait, PROFILE_SECONDS + 30)
        print("\n".join(profile.report([profile.read("content", profile_to)])), flush=True)
    return result


def count_statuses(answers: list[Answer]) -> dict[int, int]:
    found: dict[int, int] = {}
    for answer in answers:
        found[answer.status] = found.get(answer.status, 0) + 1
    return found


def reads_delta(content: ContentProcess, before: float) -> float | None:
    after = content.metric(READS_METRIC)
    return after - before if after or before else None  # absent: code without the metric


def _reads(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(results: list[PhaseResult]) -> list[str]:
    head = (
        "| phase | streams asked | opened | refused 429 | 5xx | unanswered | opening s | reads while opening | "
        "reads per change (running / final) | change reaches every stream, s | other owners p50 / p99 / max ms (n) | "
        f"other owners' calls over {SLOW_SECONDS * 1000:.0f} ms: within {CHANGE_WINDOW:g} s of a change / "
        "elsewhere | content RSS with streams open / peak MiB | content CPU s |"
    )
    lines = [head, "|" + " --- |" * 14]
    for r in results:
        latencies = [1000 * call.seconds for call in r.others if call.status == 200]
        delivered = " / ".join(f"{d}/{r.opened}" for d in r.delivered)
        changes = " / ".join(f"{s:.2f}" for s in r.change_seconds)
        lines.append(
            f"| {r.name} | {r.asked} | {r.opened} | {r.refusals.get(429, 0)} | {r.server_errors} | {r.unanswered} | "
            f"{r.open_seconds:.1f} | {_reads(r.reads_opening)} | "
            f"{' / '.join(_reads(value) for value in r.reads_per_change)} | {changes} ({delivered} streams) | "
            f"{percentile(latencies, 50):.0f} / {percentile(latencies, 99):.0f} / "
            f"{max(latencies, default=float('nan')):.0f} ({len(r.others)}) | "
            f"{' / '.join(str(n) for n in r.slow_calls())} | "
            f"{r.rss_open:.0f} / {r.rss_peak:.0f} | {r.cpu_seconds:.1f} |"
        )
    return lines


def write_docs(path: Path, section: list[str]) -> None:
    write_marked_section(path, START_MARK, END_MARK, "Event-stream flood (issue 20)", section)


async def bench(args: argparse.Namespace, run_dir: Path) -> list[PhaseResult]:
    prefix = f"bench-streams-{secrets.token_hex(4)}"
    database = await create_test_database(args.pg_admin_url, prefix="vb_bench_")
    database_url = database.render_as_string(hide_password=False)
    results: list[PhaseResult] = []
    try:
        for phase in args.phases.split(","):
            label, env_of = PHASES[phase]
            print(f"{phase}: starting content ({label})", flush=True)
            extra: Mapping[str, str] = env_of(args.streams)
            with content_process(
                database_url=database_url,
                rabbitmq_url=args.rabbitmq_url,
                prefix=prefix,
                log_path=run_dir / "content.log",
                extra_env=extra,
            ) as content:
                connection = await connect(args.rabbitmq_url, name="vixenbliss-bench-streams")
                try:
                    publisher = await Publisher.open(connection, topology(prefix).events_exchange)
                    try:
                        result = await run_phase(
                            f"{phase} ({label})",
                            content,
                            publisher,
                            args.streams,
                            args.concurrency,
                            args.open_rate or None,
                            args.other_rate,
                            args.profile / f"{phase}.txt" if args.profile else None,
                        )
                    finally:
                        await publisher.close()
                finally:
                    await connection.close()
            print("\n".join(table([result])[2:]), flush=True)
            results.append(result)
    finally:
        await delete_run_topology(args.rabbitmq_url, prefix)
        await drop_test_database(args.pg_admin_url, database)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.streams", description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=500, help="requests the flood keeps in flight")
    parser.add_argument(
        "--open-rate", type=float, default=250.0, help="streams the flood begins a second (0: as fast as answered)"
    )
    parser.add_argument("--other-rate", type=float, default=20.0, help="other owners' calls per second")
    parser.add_argument("--phases", default="default,raised", help=f"some of {','.join(PHASES)}")
    parser.add_argument("--pg-admin-url", default=os.environ.get("PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL))
    parser.add_argument("--rabbitmq-url", default=os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL))
    parser.add_argument("--write-docs", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="sample content with py-spy into this folder")
    args = parser.parse_args(argv)
    if args.profile:
        if not profile.available():
            parser.error("--profile needs py-spy (pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)
    soft, hard = raise_own_file_limit()
    if soft < 2 * args.streams + 1000:
        parser.error(f"the open-file limit ({soft}, hard {hard}) is too low for {args.streams} streams: raise it")
    with tempfile.TemporaryDirectory(prefix="vb-streams-bench-") as tmp:
        results = asyncio.run(bench(args, Path(tmp)))
    lines = table(results)
    section = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; command: `python -m tests.bench.streams --streams {args.streams} "
        f"--concurrency {args.concurrency} --open-rate {args.open_rate:g} --other-rate {args.other_rate:g}`. "
        "Content in its own process on PostgreSQL and RabbitMQ, all on the same cores as the clients: the flood "
        f"(raw sockets, `tests/support/sse_flood.py`, at nice {FLOOD_NICENESS}) from the benchmark's process, "
        f"{OTHER_OWNERS} other owners' `GET` of their own generation (open loop) from another. Open-file limit raised "
        f"to {soft} (the hard limit) for the client, and by content itself at start. Reads: content's count of "
        "generation reads for streams and waits (`vixen_content_follower_reads_total`), each one `SELECT` of the "
        "row.",
        "",
        *lines,
    ]
    print("\n".join(lines), flush=True)
    if args.write_docs:
        write_docs(args.write_docs, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
