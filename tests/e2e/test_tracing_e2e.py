"""Observability over the real path: every process exports its spans over OTLP/HTTP to a receiver in this test,
and one generation's spans form one trace from content's POST to its handling of generation.completed; the
services' /metrics count what happened, by error code."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection

from contracts.topology import topology
from scripts.stacklib import flow
from scripts.stacklib.runner import LocalStack
from tests.e2e.conftest import running_stack
from tests.e2e.test_generation_e2e import avatar_with_lora
from tests.support.bad_loras import with_nan
from tests.support.otlp_receiver import OtlpReceiver, ReceivedSpan, render_tree
from tests.support.prometheus import metric_value
from tests.support.queues import bound_queue

pytestmark = pytest.mark.slow

# W3C Trace Context: version 00, trace id, parent id, flags (01 sampled; level 2 adds 02, a random trace id).
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(
    receiver: OtlpReceiver,
    rabbitmq_url: str,
    pg_admin_url: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LocalStack]:
    """The stack with every process exporting its spans to `receiver` (batches sent every 100 ms)."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running_stack(rabbitmq_url, pg_admin_url, tiny_model_dir, tmp_path_factory.mktemp("traced"), env) as local:
        yield local


@pytest.fixture
async def every_message(traced_stack: LocalStack, amqp: AbstractRobustConnection) -> AsyncIterator[AbstractQueue]:
    """A test queue bound to every routing key of this run's exchange."""
    async with bound_queue(amqp, topology(traced_stack.config.topology_prefix).events_exchange, "#") as queue:
        yield queue


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    """The span's parent, grandparent, … up to the root (as far as they arrived)."""
    chain: list[ReceivedSpan] = []
    while span.parent_span_id is not None and span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


def one(spans: list[ReceivedSpan], service: str, kind: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service_name == service and s.kind == kind and s.name.startswith(name)]
    assert len(found) == 1, f"{service} {kind} {name!r}: {len(found)} found\n{render_tree(spans)}"
    return found[0]


async def test_one_generation_is_one_trace_from_the_post_to_the_result(
    traced_stack: LocalStack, receiver: OtlpReceiver, every_message: AbstractQueue, lora_files: dict[str, Path]
) -> None:
    content = traced_stack.urls()["content"]

    def drive() -> flow.Generation:
        with httpx.Client(timeout=30.0) as client:
            avatar_id, auth = avatar_with_lora(traced_stack, client, lora_files["a"].read_bytes())
            accepted = flow.request_generation(client, content, auth, avatar_id, width=64, height=64, steps=2)
            return flow.wait_generation(client, content, auth, str(accepted["id"]), timeout=60.0)

    generation = await asyncio.to_thread(drive)
    assert generation.status == "completed", generation.body

    def posted(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.service_name == "vixenbliss-content" and s.kind == "SERVER" and "/api/v1/content/generate" in s.name
        ]

    # Every span asserted on below: each process exports on its own schedule, so content's last span can arrive
    # before the gateway's (the gateway's job span ends after the result it published was consumed).
    awaited = {
        ("vixenbliss-content", "publish generation.requested"),
        ("vixenbliss-inference-gateway", "process generation.requested"),
        ("vixenbliss-inference-gateway", "run generation"),
        ("vixenbliss-inference-gateway", "publish generation.completed"),
        ("vixenbliss-content", "process generation.completed"),
        ("vixenbliss-worker", "worker.generate"),
        ("vixenbliss-worker", "worker.denoise"),
    }
    awaited_kinds = {("vixenbliss-inference-gateway", "CLIENT"), ("vixenbliss-worker", "SERVER")}

    def complete(spans: list[ReceivedSpan]) -> bool:
        roots = posted(spans)
        if not roots:
            return False
        trace = [s for s in spans if s.trace_id == roots[0].trace_id]
        names = {(s.service_name, s.name) for s in trace}
        kinds = {(s.service_name, s.kind) for s in trace}
        return awaited <= names and awaited_kinds <= kinds

    spans = await asyncio.to_thread(receiver.wait_for, complete, 30.0)
    post = posted(spans)[0]
    trace = receiver.trace(post.trace_id)
    by_id = {s.span_id: s for s in trace}

    requested_publish = one(trace, "vixenbliss-content", "PRODUCER", "publish generation.requested")
    requested_process = one(trace, "vixenbliss-inference-gateway", "CONSUMER", "process generation.requested")
    run = one(trace, "vixenbliss-inference-gateway", "INTERNAL", "run generation")
    worker_call = [s for s in trace if s.service_name == "vixenbliss-inference-gateway" and s.kind == "CLIENT"]
    worker_server = [s for s in trace if s.service_name == "vixenbliss-worker" and s.kind == "SERVER"]
    completed_publish = one(trace, "vixenbliss-inference-gateway", "PRODUCER", "publish generation.completed")
    completed_process = one(trace, "vixenbliss-content", "CONSUMER", "process generation.completed")
    tree = render_tree(trace)

    assert post in ancestors(requested_publish, by_id), tree
    assert requested_process.parent_span_id == requested_publish.span_id, tree
    assert (requested_publish.trace_id, requested_publish.span_id) in requested_process.links, tree
    assert requested_process in ancestors(run, by_id), tree
    assert any(run in ancestors(call, by_id) for call in worker_call), tree
    assert worker_server and all(s.parent_span_id in {c.span_id for c in worker_call} for s in worker_server), tree
    worker_phases = {s.name for s in trace if s.service_name == "vixenbliss-worker" and s.kind == "INTERNAL"}
    assert {"worker.generate", "worker.denoise"} <= worker_phases, tree
    assert run in ancestors(completed_publish, by_id), tree
    assert completed_process.parent_span_id == completed_publish.span_id, tree
    assert completed_process.attributes.get("messaging.message.id"), tree
    # The statements of each service that keeps its state in a database, in the generation's own trace.
    with_database = {s.service_name for s in trace if s.kind == "CLIENT" and s.attributes.get("db.system")}
    assert {"vixenbliss-content", "vixenbliss-inference-gateway"} <= with_database, tree

    # Every message on the exchange carries a valid traceparent; the generation's carry its trace id.
    seen = 0
    while (message := await every_message.get(fail=False, no_ack=True)) is not None:
        seen += 1
        header = str((message.headers or {}).get("traceparent", ""))
        match = TRACEPARENT.match(header)
        assert match, (message.routing_key, header)
        if message.routing_key and message.routing_key.startswith("generation."):
            assert match.group(1) == post.trace_id, (message.routing_key, header)
    assert seen >= 4  # avatar and LoRA events, generation.requested, started, completed


async def test_metrics_count_a_success_and_a_lora_load_failure_under_their_labels(
    traced_stack: LocalStack, lora_files: dict[str, Path]
) -> None:
    urls = traced_stack.urls()
    # Identity checks names, shapes and dtypes from the header; only the worker reads the values.
    poisoned = with_nan(lora_files["a"].read_bytes())

    def drive() -> tuple[flow.Generation, flow.Generation, str, str]:
        with httpx.Client(timeout=30.0) as client:
            before = client.get(f"{urls['content']}/metrics").text
            outcomes = []
            for lora in (lora_files["b"].read_bytes(), poisoned):
                avatar_id, auth = avatar_with_lora(traced_stack, client, lora)
                accepted = flow.request_generation(client, urls["content"], auth, avatar_id, width=64, height=64)
                outcomes.append(flow.wait_generation(client, urls["content"], auth, str(accepted["id"]), 60.0))
            return outcomes[0], outcomes[1], before, client.get(f"{urls['content']}/metrics").text

    completed, failed, before, content = await asyncio.to_thread(drive)
    async with httpx.AsyncClient(base_url=urls["gateway"], timeout=10.0) as gateway_client:
        gateway = (await gateway_client.get("/metrics")).text

    assert completed.status == "completed" and failed.error_code == "LORA_LOAD_FAILED", failed.body

    def grew(name: str, **labels: str) -> float:
        return (metric_value(content, name, **labels) or 0) - (metric_value(before, name, **labels) or 0)

    assert grew("vixen_content_generations_submitted_total") == 2
    assert grew("vixen_content_generations_finished_total", status="completed") == 1
    assert grew("vixen_content_generations_finished_total", status="failed", error_code="LORA_LOAD_FAILED") == 1
    assert grew("vixen_content_generation_seconds_count", status="completed") == 1
    assert grew("vixen_content_generation_seconds_count", status="failed") == 1
    assert metric_value(content, "vixen_outbox_lag_seconds") is not None
    assert (metric_value(gateway, "vixen_gateway_generations_failed_total", error_code="LORA_LOAD_FAILED") or 0) >= 1
    assert (metric_value(gateway, "vixen_gateway_generations_completed_total") or 0) >= 1
    assert (metric_value(gateway, "vixen_gateway_worker_calls_total", outcome="LORA_LOAD_FAILED") or 0) >= 1
    assert metric_value(gateway, "vixen_gateway_worker_calls_in_flight") == 0
