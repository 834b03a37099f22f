"""The playground: a static page (HTML, CSS, JS from services/content/playground/) at /playground, outside the API."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter, Response

from services.common.http.errors import NotFoundError

ASSETS_DIR = Path(__file__).with_name("playground")
PAGE_PATH = "/playground"
# Every file the page loads, with its type: nothing else under the folder is served (no path from the URL is ever
# joined to a file system path).
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
}
# Scripts and styles from this origin only (no inline script), API calls and the event stream to this origin only;
# images also from the storage the presigned URLs point at (R2, or the local S3 endpoint), whichever host that is.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' http: https: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # The page's address is all there is to leak, but image hosts need not learn it.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _asset(name: str) -> bytes:
    """A file of the page, read once (they ship in the package and do not change while it runs)."""
    return (ASSETS_DIR / name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)


@router.get(PAGE_PATH)
@router.get(f"{PAGE_PATH}/")
async def playground_page() -> Response:
    """The page itself."""
    return _serve("index.html")


@router.get(PAGE_PATH + "/{name}")
async def playground_asset(name: str) -> Response:
    """One of the page's files; 404 for any other name."""
    if name not in ASSETS:
        raise NotFoundError("no such file of the playground")
    return _serve(name)
