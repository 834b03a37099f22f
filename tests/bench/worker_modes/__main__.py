"""python -m tests.bench.worker_modes: what async mode adds over sync, on the local worker (gpu.serve.server).

For each engine (`echo`: a PNG at once; `tiny`: the tiny random-weight SDXL on this machine's CPU or GPU) a fresh
`python -m gpu.serve.server` is started, and the gateway's own worker client
(services.inference_gateway.worker_client.http)
sends the same requests in three modes, interleaved: sync (`POST /generate`), async (submit, then polls held with
`?wait=`, as shipped) and async against a worker that ignores `wait` (MODAL_POLL_WAIT_SECONDS=0: the client's
backoff alone). Per mode: end-to-end p50 / p95, and what it adds over sync. Target: async adds ≤ 50 ms at p50 and
p95. Prints the table and, with --write-docs, puts it in docs/benchmarks.md between the worker-modes markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from contracts.worker import WorkerRequest
from services.inference_gateway.worker_client.http import ModalWorkerClient, ProviderConfig
from services.inference_gateway.worker_client.urls import derive_async_urls, derive_cancel_url
from tests.bench.docs_section import write_marked_section

START_MARK = "<!-- worker-modes-bench:start -->"
END_MARK = "<!-- worker-modes-bench:end -->"
TARGET_MS = 50.0
# The gateway's defaults (MODAL_POLL_SECONDS, MODAL_POLL_WAIT_SECONDS).
POLL_SECONDS = 2.0
POLL_WAIT_SECONDS = 30.0
# The worker builds the tiny model and warms up before /healthz answers 200.
START_TIMEOUT_SECONDS = 600.0
CALL_TIMEOUT_SECONDS = 120.0
ENGINES = ("echo", "tiny")
# mode label → (ProviderConfig mode, poll_wait_seconds)
MODES: dict[str, tuple[str, float]] = {
    "sync": ("sync", 0.0),
    "async": ("async", POLL_WAIT_SECONDS),
    "async, worker ignoring wait": ("async", 0.0),
}


@dataclass
class ModeResult:
    """One engine and mode: end-to-end seconds and the worker's own generation seconds, per request."""

    engine: str
    mode: str
    seconds: list[float] = field(default_factory=list)
    worker_seconds: list[float] = field(default_factory=list)

    def ms(self, q: float) -> float:
        return 1000.0 * percentile(self.seconds, q)

    def worker_ms(self, q: float) -> float:
        return 1000.0 * percentile(self.worker_seconds, q)

    def overhead_ms(self, q: float) -> float:
        """End to end minus the worker's own time: what the mode's HTTP exchange costs, whatever the engine took."""
        return 1000.0 * percentile([e - w for e, w in zip(self.seconds, self.worker_seconds, strict=True)], q)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def engine_env(engine: str, run_dir: Path) -> dict[str, str]:
    if engine == "echo":
        return {"WORKER_ENGINE": "echo"}
    return {"WORKER_ENGINE": "sdxl", "WORKER_BUILD_TINY_MODEL": "true", "MODEL_DIR": str(run_dir / "tiny-sdxl")}


@contextlib.contextmanager
def local_worker(engine: str, run_dir: Path) -> Iterator[str]:
    """`python -m gpu.serve.server` with `engine`, until the block ends; its /generate URL once /healthz answers 200."""
    port = free_port()
    log_path = run_dir / f"worker-{engine}.log"
    env = {**os.environ, **engine_env(engine, run_dir)}
    env.pop("WORKER_API_KEY", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gpu.serve.server", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, process, log_path)
            yield f"{base}/generate"
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_healthy(base: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    with httpx.Client(timeout=5.0) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the worker stopped at start:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if http.get(f"{base}/healthz").status_code == 200:
                    return
            time.sleep(0.2)  # no event to wait on in another process: its health answer is the condition
    raise TimeoutError(f"the worker was not healthy within {START_TIMEOUT_SECONDS:.0f}s")


def clients(http: httpx.AsyncClient, generate_url: str) -> dict[str, ModalWorkerClient]:
    derived = derive_async_urls(generate_url)
    assert derived is not None
    made = {}
    for label, (mode, wait) in MODES.items():
        config = ProviderConfig(
            mode=mode,  # type: ignore[arg-type]
            generate_url=generate_url,
            submit_url=derived[0],
            result_url=derived[1],
            cancel_url=derive_cancel_url(generate_url),
            poll_seconds=POLL_SECONDS,
            poll_wait_seconds=wait,
        )
        made[label] = ModalWorkerClient(http, config)
    return made


async def run_engine(engine: str, generate_url: str, requests: int, warmup: int, steps: int) -> list[ModeResult]:
    results = {label: ModeResult(engine, label) for label in MODES}
    async with httpx.AsyncClient() as http:
        by_mode = clients(http, generate_url)
        labels = list(MODES)
        for index in range(warmup + requests):
            # Interleaved, the order turned each round: no mode gets the warmer worker or the quieter moment.
            shift = index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                request = WorkerRequest(
                    prompt="a portrait", width=64, height=64, steps=steps, seed=index, request_id=f"bench-{index}"
                )
                began = time.perf_counter()
                success = await by_mode[label].generate(request, CALL_TIMEOUT_SECONDS)
                took = time.perf_counter() - began
                if index >= warmup:
                    results[label].seconds.append(took)
                    results[label].worker_seconds.append(success.generation_time_seconds)
    return list(results.values())


def table(results: list[ModeResult], machine: str) -> list[str]:
    lines = [
        "| machine | engine | mode | n | end to end p50 / p95 ms | worker's own time p50 / p95 ms | "
        "overhead p50 / p95 ms | overhead over sync's p50 / p95 ms |",
        "|" + " --- |" * 8,
    ]
    for r in results:
        sync = sync_of(results, r)
        added = added_ms(r, sync)
        over = "—" if r is sync else f"{added[0]:+.1f} / {added[1]:+.1f}"
        lines.append(
            f"| {machine} | {r.engine} | {r.mode} | {len(r.seconds)} | {r.ms(50):.1f} / {r.ms(95):.1f} | "
            f"{r.worker_ms(50):.1f} / {r.worker_ms(95):.1f} | {r.overhead_ms(50):.1f} / {r.overhead_ms(95):.1f} | "
            f"{over} |"
        )
    return lines


def sync_of(results: list[ModeResult], result: ModeResult) -> ModeResult:
    return next(s for s in results if s.engine == result.engine and s.mode == "sync")


def added_ms(result: ModeResult, sync: ModeResult) -> tuple[float, float]:
    """What a mode adds over sync at p50 and p95: the difference of the overheads (the engine's time, which
    varies on its own on shared cores, taken out of both)."""
    return result.overhead_ms(50) - sync.overhead_ms(50), result.overhead_ms(95) - sync.overhead_ms(95)


def verdicts(results: list[ModeResult]) -> list[str]:
    """Whether async (as shipped) adds at most TARGET_MS over sync at p50 and p95, per engine."""
    said = []
    for r in results:
        if r.mode != "async":
            continue
        added = added_ms(r, sync_of(results, r))
        met = all(value <= TARGET_MS for value in added)
        said.append(
            f"{r.engine}: async adds {added[0]:+.1f} ms at p50 and {added[1]:+.1f} ms at p95 over sync "
            f"(target ≤ {TARGET_MS:.0f} ms): {'met' if met else 'NOT met'}."
        )
    return said


def machine_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} cores"
    except ImportError:
        pass
    return f"{cpu_model()}, {os.cpu_count()} cores"


def cpu_model() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.worker_modes", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30, help="measured requests per mode and engine")
    parser.add_argument("--warmup", type=int, default=3, help="requests per mode before measuring")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (tiny engine)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"some of {','.join(ENGINES)}")
    parser.add_argument("--write-docs", type=Path, default=None)
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    if unknown := set(engines) - set(ENGINES):
        parser.error(f"unknown engines: {sorted(unknown)}")
    machine = machine_name()
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory(prefix="vb-worker-modes-") as tmp:
        for engine in engines:
            print(f"{engine}: starting the local worker", flush=True)
            with local_worker(engine, Path(tmp)) as generate_url:
                measured = asyncio.run(run_engine(engine, generate_url, args.requests, args.warmup, args.steps))
            print("\n".join(table(measured, machine)[2:]), flush=True)
            results += measured
    lines = table(results, machine)
    said = verdicts(results)
    section = [
        f"Machine: {machine}, {platform.machine()}, Python {platform.python_version()}; {time.strftime('%Y-%m-%d')}; "
        f"command: `python -m tests.bench.worker_modes --requests {args.requests} --warmup {args.warmup} "
        f"--steps {args.steps} --engines {args.engines}`. A fresh `python -m gpu.serve.server` per engine; the "
        "gateway's worker client (`services/inference_gateway/worker_client/http.py`) sends each request in every "
        f"mode, interleaved, one at a time, 64×64 ({args.steps} steps for the tiny engine); "
        f"MODAL_POLL_SECONDS {POLL_SECONDS:g}, "
        f"MODAL_POLL_WAIT_SECONDS {POLL_WAIT_SECONDS:g} (0 for the worker that ignores `wait`). Client and worker "
        "share the cores. Overhead: end to end minus the worker's own `generation_time_seconds`.",
        "",
        *lines,
        "",
        *said,
    ]
    print("\n".join([*lines, "", *said]), flush=True)
    if args.write_docs:
        write_marked_section(args.write_docs, START_MARK, END_MARK, "Async against sync mode (issue 21)", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
