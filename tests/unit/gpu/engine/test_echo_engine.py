"""The benchmark's echo engine answers in the contract's shape with a PNG of the requested size, at once."""

import base64
import io

from PIL import Image

from contracts.worker import WorkerRequest, WorkerSuccess
from gpu.engine.echo_engine import ECHO_BASE_MODEL, EchoEngine


def test_the_echo_engine_answers_a_png_of_the_requested_size_coloured_by_the_seed() -> None:
    engine = EchoEngine()

    first = engine.generate(WorkerRequest(prompt="x", width=96, height=64, seed=0x0A0B0C, request_id="r-1"))
    second = engine.generate(WorkerRequest(prompt="x", width=64, height=64, seed=7))

    assert isinstance(first, WorkerSuccess) and isinstance(second, WorkerSuccess)
    image = Image.open(io.BytesIO(base64.b64decode(first.image_base64)))
    assert image.format == "PNG" and image.size == (96, 64)
    assert image.getpixel((0, 0)) == (0x0C, 0x0B, 0x0A)
    assert first.request_id == "r-1" and first.model_info.base_model == ECHO_BASE_MODEL
    assert first.timings is not None and first.timings.total_ms > 0
    assert engine.requests_served == 2 and engine.poisoned is None
