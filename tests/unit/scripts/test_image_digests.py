"""scripts/image_digests.py: references parsed as Docker parses them, and the registry conversation (a bearer-token
challenge, then the manifest's digest) against a stand-in registry on 127.0.0.1, since no real registry is reachable
from here; a registry that does not answer is a clear error, not a hang."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from scripts import image_digests
from scripts.image_digests import DOCKER_HUB, ImageUse, Reference, RegistryClient, RegistryError, parse_reference

OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
TOKEN = "stand-in-token-never-printed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgres:16-bookworm@" + OLD, Reference(DOCKER_HUB, "library/postgres", "16-bookworm", OLD)),
        ("prom/prometheus:v2.55.1", Reference(DOCKER_HUB, "prom/prometheus", "v2.55.1", None)),
        ("ghcr.io/o/n:1.0@" + OLD, Reference("ghcr.io", "o/n", "1.0", OLD)),
        ("localhost:5000/x/y:t", Reference("localhost:5000", "x/y", "t", None)),
    ],
)
def test_references_are_split_as_docker_splits_them(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected
    assert expected.text == text


@pytest.mark.parametrize("text", ["postgres", "postgres@" + OLD, "localhost:5000/x", "x:1@sha256:abc"])
def test_a_reference_without_a_tag_or_with_a_short_digest_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"tag|digest"):
        parse_reference(text)


class StandInRegistry(BaseHTTPRequestHandler):
    """Distribution API v2 as Docker Hub answers it: 401 with a bearer challenge, a token, then the digest."""

    digests: ClassVar[dict[str, str]] = {}

    def do_HEAD(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send_response(401)
            realm = f"http://{self.headers['Host']}/token"
            self.send_header("WWW-Authenticate", f'Bearer realm="{realm}",service="stand-in",scope="x"')
            self.end_headers()
            return
        digest = self.digests.get(self.path)
        self.send_response(200 if digest else 404)
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()

    def do_GET(self) -> None:
        body = json.dumps({"token": TOKEN}).encode()
        self.send_response(200 if self.path.startswith("/token?service=stand-in&scope=x") else 400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInRegistry)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    StandInRegistry.digests = {"/v2/team/app/manifests/1.0": NEW}
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client() -> RegistryClient:
    return RegistryClient(image_digests.urllib_fetch(5.0), scheme="http")


def test_the_digest_comes_after_the_bearer_token_challenge(registry: str) -> None:
    assert client().digest(parse_reference(f"{registry}/team/app:1.0@{OLD}")) == NEW
    with pytest.raises(RegistryError, match="no such tag"):
        client().digest(parse_reference(f"{registry}/team/app:2.0"))


def test_check_names_a_moved_tag_and_update_repins_it_without_printing_the_token(
    registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(f"services:\n  app:\n    image: {registry}/team/app:1.0@{OLD}\n", encoding="utf-8")
    monkeypatch.setattr(image_digests, "ROOT", tmp_path)
    uses = [ImageUse(f"{registry}/team/app:1.0@{OLD}", compose)]
    (moved,) = image_digests.check(uses, client())
    assert moved == f"compose.yaml: {registry}/team/app:1.0@{OLD} -> {registry}/team/app:1.0@{NEW}"
    assert image_digests.update(uses, client()) == [f"compose.yaml: {registry}/team/app:1.0@{NEW}"]
    assert f"image: {registry}/team/app:1.0@{NEW}\n" in compose.read_text(encoding="utf-8")
    assert image_digests.check([ImageUse(f"{registry}/team/app:1.0@{NEW}", compose)], client()) == []
    assert TOKEN not in capsys.readouterr().out + moved


def test_a_registry_that_does_not_answer_is_an_error_that_names_it() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(RegistryError, match=f"127.0.0.1:{port}/v2/team/app/manifests/1.0"):
        client().digest(parse_reference(f"127.0.0.1:{port}/team/app:1.0"))


def test_the_command_line_exits_2_when_no_registry_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(request: object) -> tuple[int, dict[str, str], bytes]:
        raise RegistryError("registry-1.docker.io: unreachable")

    monkeypatch.setattr(image_digests, "urllib_fetch", lambda timeout: unreachable)
    assert image_digests.main(["check"]) == 2


def test_release_writes_the_tag_and_each_digest_and_refuses_a_partial_or_bad_set() -> None:
    overlay = image_digests.PRODUCTION.read_text(encoding="utf-8")
    digests = {name: NEW for name in image_digests.OWN_IMAGES}
    written = image_digests.set_release(overlay, "1.2.3", digests)
    assert written.count(f"    digest: {NEW}\n") == len(image_digests.OWN_IMAGES)
    assert written.count('    newTag: "1.2.3"\n') == len(image_digests.OWN_IMAGES)
    # The release label names the release's Jobs: it moves with the tag (tests/unit/deploy/test_k8s.py).
    assert 'app.kubernetes.io/version: "1.2.3"' in written and 'app.kubernetes.io/version: "0.1.0"' not in written
    assert image_digests.set_release(written, "1.2.3", digests) == written
    with pytest.raises(ValueError, match="missing"):
        image_digests.set_release(overlay, "1.2.3", {"vixenbliss/identity": NEW})
    assert image_digests.main(["release", "--tag", "1", *(f"{n}=sha256:abc" for n in image_digests.OWN_IMAGES)]) == 2


def test_list_passes_on_the_repository_as_committed() -> None:
    assert image_digests.main(["list"]) == 0
    assert image_digests.unpinned(["postgres:16", "postgres:16@" + OLD]) == ["postgres:16"]
