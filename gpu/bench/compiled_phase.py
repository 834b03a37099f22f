"""The fast path beside the eager one, on the same engine: compile the UNet, then time it and count recompilations
over alternating LoRA requests (`python -m gpu.bench --compile`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from contracts.worker import WorkerSuccess
from gpu.compiled import compile_unet
from gpu.fingerprint import fingerprint_pipeline

Request = Callable[..., WorkerSuccess]


def compiled_phase(
    pipeline: Any,
    request: Request,
    urls: Sequence[str],
    *,
    runs: int,
    alternating: int,
    alternating_steps: int,
    summarize: Callable[[list[float]], dict[str, float]],
) -> dict[str, Any]:
    """After the eager phases (the weights as found): the first request's time (it compiles), warm requests with a
    cached LoRA swap, and the graphs made over `alternating` requests through the LoRAs, none and scales; then the
    weights' fingerprint. A failure to compile is reported, not raised: the eager figures stand on their own."""
    from torch._dynamo.utils import counters

    before = fingerprint_pipeline(pipeline)
    torch._dynamo.reset()
    counters.clear()
    try:
        compile_unet(pipeline)
        started = time.perf_counter()
        request(urls[0])
        first_seconds = time.perf_counter() - started
        graphs_after_first = counters["stats"]["unique_graphs"]
        warm = [request(urls[0]).generation_time_seconds for _ in range(runs)]
        cycle: list[str | None] = [*urls, None]
        for index in range(alternating):
            # The same size as the rest (another size is another graph): few steps, so many swaps fit the budget.
            request(cycle[index % len(cycle)], steps=alternating_steps, scale=0.5 + 0.5 * (index % 2))
    except Exception as error:  # an op inductor cannot compile on this machine: say so, keep the eager table
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    return {
        "first_request_seconds": round(first_seconds, 2),
        "warm_cached_lora_seconds": summarize(warm),
        "alternating_requests": alternating,
        "recompilations": counters["stats"]["unique_graphs"] - graphs_after_first,
        "fingerprint_identical": fingerprint_pipeline(pipeline) == before,
    }
