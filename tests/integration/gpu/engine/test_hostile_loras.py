"""The hostile LoRA corpus against the real tiny engine: each file gets its documented answer, never loads, and
nothing in it runs (the base weights stay bit-identical, the pickle canary never appears)."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.errors import WORKER_ERROR_RETRYABLE
from contracts.worker import WorkerSuccess
from gpu.engine.engine import SdxlLoraEngine
from gpu.engine.fingerprint import fingerprint_pipeline
from tests.support.bad_loras import CASE_NAMES, HostileLora
from tests.support.engine import image_size, png_of, request, tiny_engine
from tests.support.file_server import FileServer
from tests.support.stack.service_fixtures import TEST_LORA_MAX_BYTES


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> SdxlLoraEngine:
    # The same size cap as identity's tests, so that the file over it is refused by both.
    return tiny_engine(tiny_model_dir, LORA_MAX_BYTES=TEST_LORA_MAX_BYTES)


@pytest.fixture(scope="module")
def base_fingerprint(engine: SdxlLoraEngine) -> str:
    return fingerprint_pipeline(engine.pipeline)


@pytest.fixture(scope="module")
def corpus_server() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_the_worker_answers_each_hostile_file_as_documented_and_never_loads_a_refused_one(
    engine: SdxlLoraEngine,
    base_fingerprint: str,
    corpus_server: FileServer,
    hostile_corpus: dict[str, HostileLora],
    pickle_canary: Path,
    name: str,
) -> None:
    case = hostile_corpus[name]
    url = corpus_server.add(f"/corpus/{case.name}/{case.file_name}", case.data)

    outcome = engine.generate(request(lora_url=url))

    if case.worker.code is None:
        assert isinstance(outcome, WorkerSuccess), (case.why, outcome)
        assert outcome.model_info.lora_applied, case.why
        assert image_size(png_of(outcome)) == (64, 64)
    else:
        assert not isinstance(outcome, WorkerSuccess), f"{name} was loaded: {case.why}"
        said = outcome.error + " " + json.dumps(outcome.details)
        assert (outcome.error_code, case.worker.says in said) == (case.worker.code, True), (case.why, outcome)
        assert outcome.retryable is WORKER_ERROR_RETRYABLE[case.worker.code]
    assert not pickle_canary.exists(), "a pickle was unpickled"
    assert engine.poisoned is None
    assert fingerprint_pipeline(engine.pipeline) == base_fingerprint
