"""Every container image the project names, pinned by tag and digest: list them, check the digests against their
registries, re-pin them to what a tag names now, and write the release's digests into the production overlay.

`python -m scripts.image_digests list | check | update | release --tag T NAME=sha256:...` (docs/deploy.md § Images:
pinned by digest). `check` and `update` need the registries (Docker Hub, ghcr.io, quay.io, ...) reachable;
`list` and `release` work offline. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILES = tuple(sorted((ROOT / "deploy" / "docker").glob("*.Dockerfile")))
PRODUCTION = ROOT / "deploy" / "k8s" / "overlays" / "production" / "kustomization.yaml"
# The project's own images: the release pipeline builds and pushes them, then `release` writes their digests.
OWN_IMAGES = ("vixenbliss/identity", "vixenbliss/content", "vixenbliss/inference-gateway")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
PINNED = re.compile(
    r"(?P<name>[^\s@:]+(?::\d+)?(?:/[^\s@:]+)*):(?P<tag>[\w][\w.-]{0,127})@(?P<digest>sha256:[0-9a-f]{64})"
)
DOCKER_HUB = "registry-1.docker.io"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


class RegistryError(Exception):
    """A registry could not be asked (unreachable, refused, or an answer without a digest)."""


@dataclass(frozen=True)
class ImageUse:
    """One image reference and the file that names it."""

    reference: str
    where: Path


@dataclass(frozen=True)
class Reference:
    """An image reference split the way a registry is asked about it."""

    registry: str
    repository: str
    tag: str
    digest: str | None

    @property
    def text(self) -> str:
        return self.text_with(self.digest)

    def text_with(self, digest: str | None) -> str:
        host = "" if self.registry == DOCKER_HUB else f"{self.registry}/"
        repository = self.repository.removeprefix("library/") if not host else self.repository
        return f"{host}{repository}:{self.tag}" + (f"@{digest}" if digest else "")


def parse_reference(text: str) -> Reference:
    """`[registry/]name:tag[@sha256:...]`, Docker's rules: a first part with a dot, a colon or `localhost` is the
    registry; otherwise Docker Hub, where a one-part name is an official image under `library/`."""
    name, _, digest = text.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon <= slash:
        raise ValueError(f"{text}: no tag (pin images by tag and digest)")
    name, tag = name[:colon], name[colon + 1 :]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DOCKER_HUB, name if "/" in name else f"library/{name}"
    if digest and not DIGEST.fullmatch(digest):
        raise ValueError(f"{text}: the digest is not sha256:<64 hex>")
    return Reference(registry, repository, tag, digest or None)


def compose_images(text: str) -> list[str]:
    """The `image:` values of a compose file."""
    return re.findall(r"^\s+image:\s*(\S+)\s*$", text, flags=re.MULTILINE)


def dockerfile_images(text: str) -> list[str]:
    """The base images a Dockerfile names: `FROM` lines and the defaults of the ARGs they use."""
    found = [m.group(1) for m in re.finditer(r"^ARG\s+\w*IMAGE\w*=(\S+)\s*$", text, flags=re.MULTILINE)]
    for base in re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, flags=re.MULTILINE):
        if "$" not in base and ":" in base:
            found.append(base)
    return found


def image_uses() -> list[ImageUse]:
    """Every third-party image the compose file and the Dockerfiles name."""
    uses = [ImageUse(ref, COMPOSE) for ref in compose_images(COMPOSE.read_text(encoding="utf-8"))]
    for path in DOCKERFILES:
        uses += [ImageUse(ref, path) for ref in dockerfile_images(path.read_text(encoding="utf-8"))]
    return uses


Fetch = Callable[[urllib.request.Request], tuple[int, dict[str, str], bytes]]


def urllib_fetch(timeout: float) -> Fetch:
    """An HTTP call that answers (status, headers, body) for any status, and raises only when nothing answered."""

    def fetch(request: urllib.request.Request) -> tuple[int, dict[str, str], bytes]:
        try:
            # RegistryClient._request admits only its own http(s) scheme.
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()
        except (urllib.error.URLError, OSError) as error:
            raise RegistryError(f"{request.full_url.split('?')[0]}: {getattr(error, 'reason', error)}") from None

    return fetch


def bearer_challenge(header: str) -> dict[str, str]:
    """The parameters of a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge."""
    if not header.lower().startswith("bearer "):
        raise RegistryError(f"the registry asks for an authentication this tool does not do: {header.split()[0]}")
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


class RegistryClient:
    """Asks a registry (Distribution API v2) which manifest digest a tag names, anonymously."""

    def __init__(self, fetch: Fetch, *, scheme: str = "https") -> None:
        if scheme not in ("https", "http"):
            raise ValueError(f"registries are asked over https (http for a local test registry), not {scheme}")
        self._fetch = fetch
        self._scheme = scheme

    def _request(self, url: str, headers: dict[str, str] | None = None, method: str = "GET") -> urllib.request.Request:
        """A request to a URL of this client's scheme only (a token realm named by a registry included)."""
        if not url.startswith(f"{self._scheme}://"):
            raise RegistryError(f"the registry pointed to {url.split('?')[0]}, not an {self._scheme} URL")
        return urllib.request.Request(url, headers=headers or {}, method=method)  # noqa: S310 - scheme checked above

    def digest(self, reference: Reference) -> str:
        url = f"{self._scheme}://{reference.registry}/v2/{reference.repository}/manifests/{reference.tag}"
        headers = {"Accept": MANIFEST_TYPES}
        status, answer, _ = self._fetch(self._request(url, headers, "HEAD"))
        if status == 401:
            token = self._token(bearer_challenge(answer.get("www-authenticate", "")), reference)
            headers["Authorization"] = f"Bearer {token}"
            status, answer, _ = self._fetch(self._request(url, headers, "HEAD"))
        if status == 404:
            raise RegistryError(f"{reference.text_with(None)}: no such tag")
        digest = answer.get("docker-content-digest", "")
        if status != 200 or not DIGEST.fullmatch(digest):
            raise RegistryError(f"{reference.text_with(None)}: the registry answered {status} without a digest")
        return digest

    def _token(self, challenge: dict[str, str], reference: Reference) -> str:
        realm = challenge.get("realm")
        if not realm:
            raise RegistryError("the registry's challenge names no token realm")
        query = {"service": challenge.get("service", reference.registry)}
        query["scope"] = challenge.get("scope") or f"repository:{reference.repository}:pull"
        status, _, body = self._fetch(self._request(f"{realm}?{urllib.parse.urlencode(query)}"))
        if status != 200:
            raise RegistryError(f"{reference.registry}: the token service answered {status}")
        answer = json.loads(body or b"{}")
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{reference.registry}: the token service gave no token")
        return token


def unpinned(references: Iterable[str]) -> list[str]:
    """The references that do not name both a tag and a sha256 digest."""
    return [ref for ref in references if not PINNED.fullmatch(ref)]


def check(uses: Sequence[ImageUse], client: RegistryClient) -> list[str]:
    """One line per image whose tag names another digest now (empty: every pin is current)."""
    moved = []
    for use in uses:
        reference = parse_reference(use.reference)
        current = client.digest(reference)
        if current != reference.digest:
            moved.append(f"{use.where.relative_to(ROOT)}: {use.reference} -> {reference.text_with(current)}")
    return moved


def update(uses: Sequence[ImageUse], client: RegistryClient) -> list[str]:
    """Re-pin every image to the digest its tag names now; the lines changed."""
    changed = []
    for use in uses:
        reference = parse_reference(use.reference)
        pinned = reference.text_with(client.digest(reference))
        if pinned != use.reference:
            text = use.where.read_text(encoding="utf-8")
            use.where.write_text(text.replace(use.reference, pinned), encoding="utf-8")
            changed.append(f"{use.where.relative_to(ROOT)}: {pinned}")
    return changed


def set_release(overlay: str, tag: str, digests: dict[str, str]) -> str:
    """The overlay's `images:` entries of the project's images with the released tag and the pushed digests, and its
    `app.kubernetes.io/version` label set to the same tag (it names the release's Jobs: the two move together)."""
    missing = set(OWN_IMAGES) - set(digests)
    unknown = set(digests) - set(OWN_IMAGES)
    if missing or unknown:
        raise ValueError(
            f"give a digest for each of {', '.join(OWN_IMAGES)} (missing {sorted(missing)}, unknown {sorted(unknown)})"
        )
    lines = overlay.splitlines(keepends=True)
    out: list[str] = []
    current: str | None = None
    for line in lines:
        entry = re.match(r"^  - name: (\S+)\s*$", line)
        if entry:
            current = entry.group(1) if entry.group(1) in digests else None
        elif current and re.match(r"^    (newTag|digest):", line):
            continue
        elif current and not line.startswith("    "):
            current = None
        out.append(line)
        if current and re.match(r"^    newName:", line):
            out.append(f'    newTag: "{tag}"\n    digest: {digests[current]}\n')
    return re.sub(r'(app\.kubernetes\.io/version: )"[^"\n]*"', lambda m: f'{m.group(1)}"{tag}"', "".join(out))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.image_digests", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every third-party image and the file that names it")
    commands.add_parser("check", help="exit 1 when a tag names another digest now (needs the registries)")
    commands.add_parser("update", help="re-pin every image to its tag's current digest (needs the registries)")
    release = commands.add_parser("release", help="write the pushed images' tag and digests into the overlay")
    release.add_argument("--tag", required=True)
    release.add_argument("digests", nargs="+", metavar="NAME=sha256:...", help=f"each of {', '.join(OWN_IMAGES)}")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds for each registry call")
    args = parser.parse_args(argv)
    uses = image_uses()
    if args.command == "list":
        for use in uses:
            print(f"{use.where.relative_to(ROOT)}: {use.reference}")
        loose = unpinned(use.reference for use in uses)
        return 1 if loose else 0
    if args.command == "release":
        pairs = dict(item.partition("=")[::2] for item in args.digests)
        bad = [name for name, digest in pairs.items() if not DIGEST.fullmatch(digest)]
        if bad:
            print(f"image_digests: not sha256:<64 hex>: {', '.join(bad)}", file=sys.stderr)
            return 2
        try:
            released = set_release(PRODUCTION.read_text(encoding="utf-8"), args.tag, pairs)
        except ValueError as error:
            print(f"image_digests: {error}", file=sys.stderr)
            return 2
        PRODUCTION.write_text(released, encoding="utf-8")
        return 0
    client = RegistryClient(urllib_fetch(args.timeout))
    try:
        lines = check(uses, client) if args.command == "check" else update(uses, client)
    except RegistryError as error:
        print(f"image_digests: cannot ask the registry: {error}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 1 if args.command == "check" and lines else 0


if __name__ == "__main__":
    sys.exit(main())
