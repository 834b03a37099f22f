"""The playground's files: served at /playground with their types and a strict CSP, kept out of the API document,
and free of inline scripts (which the CSP would block)."""

from __future__ import annotations

import re

import httpx
import pytest

from services.content.main import build_app
from services.content.playground import ASSETS, ASSETS_DIR


async def _get(path: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app()), base_url="http://svc") as client:
        return await client.get(path)


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/playground", "text/html"),
        ("/playground/", "text/html"),
        ("/playground/index.html", "text/html"),
        ("/playground/playground.css", "text/css"),
        ("/playground/playground.js", "text/javascript"),
    ],
)
async def test_each_file_is_served_with_its_type_and_the_policy(path: str, media_type: str) -> None:
    response = await _get(path)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == media_type
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("path", ["/playground/missing.js", "/playground/..%2Fapi.py", "/playground/%2E%2E"])
async def test_nothing_else_is_served(path: str) -> None:
    response = await _get(path)

    assert response.status_code == 404
    assert response.json()["error_code"] == "NOT_FOUND"


def test_the_page_stays_out_of_the_api_document() -> None:
    paths = build_app().openapi()["paths"]

    assert not [path for path in paths if path.startswith("/playground")]


def test_the_page_has_no_inline_script_or_handler_and_loads_nothing_from_elsewhere() -> None:
    assert {path.name for path in ASSETS_DIR.iterdir()} == set(ASSETS)
    page = (ASSETS_DIR / "index.html").read_text()

    for script in re.findall(r"<script\b[^>]*>(.*?)</script>", page, flags=re.S):
        assert script.strip() == "", "inline script"
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "a file from another origin"
    script = (ASSETS_DIR / "playground.js").read_text()
    assert "console." not in script  # nothing the page does is logged, the token least of all
