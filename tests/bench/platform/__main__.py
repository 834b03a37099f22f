"""python -m tests.bench.platform: the platform's own cost per generation, with the echo worker.

For each database (SQLite, PostgreSQL) the whole stack starts with `WORKER_ENGINE=echo`; open-loop clients submit
at fixed rates, each POST waiting for its generation's end (`Prefer: wait`); the same rates straight at the worker
give the floor; a closed loop finds the saturation throughput. Per phase: throughput, end-to-end latency and
overhead (end to end minus the worker's time) p50/p95/p99, CPU milliseconds per generation of each process
(RabbitMQ and PostgreSQL included), and each service's peak RSS. Prints the tables and, with --write-docs, puts
them in docs/benchmarks.md between the platform markers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from scripts.stacklib import flow
from scripts.stacklib.config import StackConfig
from scripts.stacklib.runner import LocalStack
from services.common.persistence.db import create_test_database, drop_test_database
from tests.bench.docs_section import write_marked_section
from tests.bench.platform import profile
from tests.bench.platform.load import Call, Sample, closed_loop, content_call, open_loop, worker_call
from tests.bench.platform.procstats import ProcessGroup, cpu_between, snapshot
from tests.support.queues import delete_run_topology

DEFAULT_RATES = (5.0, 20.0, 50.0, 100.0)
DEFAULT_PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
START_MARK = "<!-- platform-bench:start -->"
END_MARK = "<!-- platform-bench:end -->"
SERVICES = ("content", "gateway", "identity", "worker", "s3")
# Every process that works for a generation: the services, then the broker and the database.
GROUPS = (*SERVICES, "rabbitmq", "postgresql")


@dataclass
class Phase:
    """One load phase's figures."""

    name: str
    samples: list[Sample]
    wall: float
    cpu: dict[str, float]

    @property
    def completed(self) -> int:
        return sum(1 for s in self.samples if s.ok)

    def latency(self, q: float) -> float:
        return percentile([s.seconds for s in self.samples if s.ok], q)

    def overhead(self, q: float) -> float:
        return percentile([s.seconds - s.worker_seconds for s in self.samples if s.ok], q)

    def cpu_ms_per_generation(self, group: str) -> float:
        return 1000.0 * self.cpu.get(group, 0.0) / max(self.completed, 1)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def groups_of(stack: LocalStack) -> list[ProcessGroup]:
    groups = [ProcessGroup(name, [stack.processes[name].pid]) for name in SERVICES]
    groups.append(ProcessGroup("rabbitmq", [], command="beam.smp"))
    groups.append(ProcessGroup("postgresql", [], command="postgres"))
    return groups


async def measure(name: str, groups: list[ProcessGroup], load: asyncio.Future[tuple[list[Sample], float]]) -> Phase:
    before = snapshot(groups)
    samples, wall = await load
    return Phase(name, samples, wall, cpu_between(before, snapshot(groups)))


async def idle_cpu(groups: list[ProcessGroup], seconds: float) -> dict[str, float]:
    """CPU milliseconds per second each group spends with no load (pollers, relays, sweepers, heartbeats)."""
    before = snapshot(groups)
    await asyncio.sleep(seconds)
    return {name: 1000.0 * used / seconds for name, used in cpu_between(before, snapshot(groups)).items()}


@contextmanager
def bench_stack(backend: str, pg_admin_url: str, run_dir: Path) -> Iterator[LocalStack]:
    """The stack with the echo worker, on SQLite files or on fresh PostgreSQL databases (removed after)."""
    prefix = f"bench-{secrets.token_hex(4)}"
    databases = (
        [asyncio.run(create_test_database(pg_admin_url, prefix="vb_bench_")) for _ in range(3)]
        if backend == "postgresql"
        else []
    )
    urls = [url.render_as_string(hide_password=False) for url in databases]
    config = StackConfig(
        run_dir=run_dir,
        topology_prefix=prefix,
        identity_database_url=urls[0] if urls else None,
        content_database_url=urls[1] if urls else None,
        gateway_database_url=urls[2] if urls else None,
        bucket=f"vb-{prefix}",
        model_dir=run_dir / "no-model",
        extra_env={
            "CONTENT_SUBMIT_RATE_PER_MINUTE": "60000",
            "CONTENT_SUBMIT_BURST": "10000",
            "CONTENT_MAX_IN_FLIGHT": "10000",
            "GATEWAY_CONCURRENCY": "64",
            "WORKER_MAX_PENDING_JOBS": "10000",
        },
        service_env={"worker": {"WORKER_ENGINE": "echo", "WORKER_BUILD_TINY_MODEL": "0"}},
    ).with_free_ports()
    stack = LocalStack(config)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        asyncio.run(delete_run_topology(config.rabbitmq_url, prefix))
        for url in databases:
            asyncio.run(drop_test_database(pg_admin_url, url))


def owner_with_avatar(stack: LocalStack, lora: bytes) -> tuple[dict[str, str], str]:
    auth = stack.bearer(f"bench-{uuid.uuid4()}")
    urls = stack.urls()
    with httpx.Client(timeout=30.0) as client:
        avatar_id = flow.create_avatar(client, urls["identity"], auth, name="bench avatar")
        flow.register_lora(client, urls["identity"], auth, avatar_id, lora)
        flow.wait_avatar_ready(client, urls["content"], auth, avatar_id)
    return auth, avatar_id


async def run_phases(
    stack: LocalStack, call: Call, floor: Call, rates: list[float], seconds: float, concurrency: int
) -> tuple[dict[str, float], list[tuple[Phase, Phase | None]]]:
    """Idle CPU, then each rate open loop beside its floor, then the closed loop."""
    groups = groups_of(stack)
    await open_loop(call, 10.0, 2.0)  # warm up: connections, caches, first-call paths
    idle = await idle_cpu(groups, seconds)
    print("  idle CPU ms/s: " + ", ".join(f"{name} {ms:.1f}" for name, ms in idle.items()), flush=True)
    phases: list[tuple[Phase, Phase | None]] = []
    for rate in rates:
        platform_phase = await measure(f"{rate:g}/s", groups, asyncio.ensure_future(open_loop(call, rate, seconds)))
        floor_phase = await measure(f"{rate:g}/s", groups, asyncio.ensure_future(open_loop(floor, rate, seconds)))
        phases.append((platform_phase, floor_phase))
        done = f"{platform_phase.completed}/{len(platform_phase.samples)}"
        print(f"  {platform_phase.name}: {done} completed", flush=True)
    saturation = await measure(
        f"closed loop ×{concurrency}", groups, asyncio.ensure_future(closed_loop(call, concurrency, seconds))
    )
    phases.append((saturation, None))
    return idle, phases


def profiled_phase(stack: LocalStack, call: Call, backend: str, rate: float, seconds: float, folder: Path) -> list[str]:
    """One more open-loop phase at `rate` while py-spy samples content, the gateway and the worker; the report is
    written to `folder` and returned."""
    folder.mkdir(parents=True, exist_ok=True)
    services = ("content", "gateway", "worker")
    outputs = {name: folder / f"{backend}-{name}.txt" for name in services}
    samplers = [profile.start(stack.processes[name].pid, seconds, outputs[name]) for name in services]
    asyncio.run(open_loop(call, rate, seconds))
    for sampler in samplers:
        sampler.wait(timeout=seconds + 30)
    lines = [f"{backend}: py-spy at {rate:g}/s for {seconds:g} s (inclusive share of busy samples)"]
    lines += profile.report([profile.read(name, path) for name, path in outputs.items() if path.exists()])
    (folder / f"{backend}-report.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return lines


def table(
    backend: str, idle: dict[str, float], phases: list[tuple[Phase, Phase | None]], rss: dict[str, float]
) -> list[str]:
    head = (
        "| load | completed in 30 s | gen/s | e2e p50 / p95 / p99 ms | overhead p50 / p95 / p99 ms | "
        "floor p50 / p99 ms | "
        "CPU ms/gen: " + " · ".join(GROUPS) + " | platform CPU ms/gen |"
    )
    lines = [f"**{backend}**", "", head, "|" + " --- |" * 8]
    for phase, floor in phases:
        cpu = [phase.cpu_ms_per_generation(group) for group in GROUPS]
        floor_cell = f"{1000 * floor.latency(50):.1f} / {1000 * floor.latency(99):.1f}" if floor else "-"
        lines.append(
            f"| {phase.name} | {phase.completed}/{len(phase.samples)} | {phase.completed / phase.wall:.1f} | "
            f"{1000 * phase.latency(50):.0f} / {1000 * phase.latency(95):.0f} / {1000 * phase.latency(99):.0f} | "
            f"{1000 * phase.overhead(50):.0f} / {1000 * phase.overhead(95):.0f} / {1000 * phase.overhead(99):.0f} | "
            f"{floor_cell} | {' · '.join(f'{c:.1f}' for c in cpu)} | {sum(cpu):.1f} |"
        )
    lines += [
        "",
        "Idle CPU (ms per second, no load): " + ", ".join(f"{name} {idle.get(name, 0.0):.1f}" for name in GROUPS),
        "",
        "Peak RSS (MiB): " + ", ".join(f"{name} {rss[name]:.0f}" for name in SERVICES),
    ]
    return lines


def write_docs(path: Path, section: list[str]) -> None:
    write_marked_section(path, START_MARK, END_MARK, "Platform overhead (echo worker)", section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.platform", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES))
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=64, help="callers of the saturation run")
    parser.add_argument("--pg-admin-url", default=os.environ.get("PG_ADMIN_URL", DEFAULT_PG_ADMIN_URL))
    parser.add_argument("--write-docs", type=Path, default=None)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="after the phases, sample content and the gateway with py-spy at --profile-rate into this folder",
    )
    parser.add_argument("--profile-rate", type=float, default=20.0)
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    if args.profile and not profile.available():
        parser.error("--profile needs py-spy (pip install py-spy)")

    from gpu.tiny.lora import write_lora

    section = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}; command: `python -m tests.bench.platform "
        f"--seconds {args.seconds:g} --rates {args.rates}`. Echo worker (a flat PNG, ~1 ms); 64×64; each POST "
        "waits for its generation (`Prefer: wait`); overhead = end to end minus the worker's time; floor = the "
        "same client calling the worker's /generate directly. The load client runs on the same 2 cores.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="vb-platform-bench-") as tmp:
        lora = write_lora(Path(tmp) / "a.safetensors", seed=1).read_bytes()
        for backend in args.backends.split(","):
            print(f"{backend}: starting the stack", flush=True)
            with bench_stack(backend, args.pg_admin_url, Path(tmp) / backend) as stack:
                auth, avatar_id = owner_with_avatar(stack, lora)
                urls = stack.urls()
                call = content_call(urls["content"], auth, avatar_id)
                idle, phases = asyncio.run(
                    run_phases(stack, call, worker_call(urls["worker"]), rates, args.seconds, args.concurrency)
                )
                rss = {group.name: group.peak_rss() for group in groups_of(stack) if group.name in SERVICES}
                profiled = (
                    profiled_phase(stack, call, backend, args.profile_rate, args.seconds, args.profile)
                    if args.profile
                    else []
                )
            lines = table(backend, idle, phases, rss)
            print("\n".join(lines), flush=True)
            print("\n".join(profiled), flush=True)
            section += [*lines, ""]
    if args.write_docs:
        write_docs(args.write_docs, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
