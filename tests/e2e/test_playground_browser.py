"""The playground in headless Chromium against the whole local stack: a generation followed through EventSource to
its image, a cancel, the API's field error, a side-by-side run, the gallery's pages, and a screenshot of the page.

Chromium is Debian's (`scripts/ensure-browser.sh` installs it); Playwright only drives it and never downloads one.
PLAYGROUND_SCREENSHOT names where the screenshot goes (docs/playground.png for the README), else the test's folder."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Locator, Page, expect, sync_playwright

from scripts.stacklib.runner import LocalStack
from tests.support.stack.fault_stack import avatar_with_lora

pytestmark = pytest.mark.slow

CHROMIUM = Path(os.environ.get("PLAYGROUND_CHROMIUM", "/usr/bin/chromium"))
# Headless, and quiet on the network: without the background-networking flags Chromium dials out at start, and on
# a closed network those connections are refused.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FINAL_WAIT_MS = 60_000
# Wraps EventSource before the page runs, so the test sees exactly which statuses arrived through it, in order.
RECORD_EVENT_SOURCE = """
window.__sse = [];
const NativeEventSource = window.EventSource;
window.EventSource = class extends NativeEventSource {
  constructor(url, init) {
    super(url, init);
    this.addEventListener("status", (event) => window.__sse.push(JSON.parse(event.data).status));
  }
};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; the test skips where there is none."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/ensure-browser.sh (apt-get install chromium) as root")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab that records what arrives through EventSource, and fails the test on a script error or a
    Content-Security-Policy refusal."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    opened.add_init_script(RECORD_EVENT_SOURCE)
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def console(message: ConsoleMessage) -> None:
        # A refused request is logged by Chromium as "Failed to load resource" (the 422 the test asks for); a CSP
        # refusal reads "Refused to ...".
        if message.type == "error" and "Failed to load resource" not in message.text:
            problems.append(f"console: {message.text}")

    opened.on("console", console)
    try:
        yield opened
        assert problems == []
    finally:
        context.close()


def _statuses(page: Page, run: int = 0) -> list[str]:
    progress = page.get_by_test_id("run").nth(run).get_by_test_id("progress").locator("li")
    return list(progress.evaluate_all("items => items.map(item => item.dataset.status)"))


def _fill(page: Page, **fields: str) -> None:
    for name, value in fields.items():
        page.get_by_test_id(name).fill(value)


def _image_size(page: Page, run: int) -> tuple[int, int]:
    image = page.get_by_test_id("run").nth(run).get_by_test_id("image")
    expect(image).to_be_visible(timeout=FINAL_WAIT_MS)
    image.evaluate("img => img.decode()")  # resolves once the PNG has loaded and decoded
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    return int(width), int(height)


def _submit(page: Page) -> Locator:
    """Submit the form; the card of the new generation, once it has replaced the previous run's (which stays on
    the page until the API has answered: a locator taken before would find the old card's statuses)."""
    runs = page.get_by_test_id("run")
    before = runs.first.get_attribute("data-id") if runs.count() else None
    page.get_by_test_id("submit").click()
    if before is not None:
        expect(runs.first).not_to_have_attribute("data-id", before)
    expect(runs.first).to_have_attribute("data-id", re.compile(r"^[0-9a-f-]{36}$"))
    return page.locator(f'[data-testid="run"][data-id="{runs.first.get_attribute("data-id")}"]')


def _gallery_ids(page: Page) -> list[str]:
    items = page.get_by_test_id("gallery-item")
    return list(items.evaluate_all("items => items.map(item => item.dataset.id)"))


def test_the_playground_generates_cancels_compares_pages_and_shows_field_errors(
    stack: LocalStack, page: Page, lora_files: dict[str, Path], tmp_path: Path
) -> None:
    content = stack.urls()["content"]
    auth = stack.bearer(f"playground-{uuid.uuid4()}")
    avatar_id = avatar_with_lora(stack, auth, lora_files["a"].read_bytes(), name="Vixen (tiny LoRA)")

    page.goto(f"{content}/playground")
    # An owner without avatars is told how to get one.
    newcomer = stack.bearer(f"newcomer-{uuid.uuid4()}")["Authorization"].removeprefix("Bearer ")
    page.get_by_test_id("token").fill(newcomer)
    page.get_by_test_id("token-use").click()
    expect(page.get_by_test_id("token-status")).to_contain_text("no avatar yet: run `make playground SUB=<you>`")

    page.get_by_test_id("token").fill(auth["Authorization"].removeprefix("Bearer "))
    page.get_by_test_id("token-use").click()
    expect(page.get_by_test_id("token-status")).to_contain_text("token accepted")
    expect(page.get_by_test_id("avatar")).to_have_value(avatar_id)
    expect(page.locator('[data-bounds="width"]')).to_have_text("64–2048, multiple of 8")

    # One generation, followed through EventSource to its image.
    _fill(page, width="64", height="96", steps="3", seed="7", lora_scale="0.8")
    run = _submit(page)
    expect(run.locator('li[data-status="completed"]')).to_be_visible(timeout=FINAL_WAIT_MS)
    assert _statuses(page) == ["queued", "running", "completed"]
    assert page.evaluate("window.__sse") == ["queued", "running", "completed"]
    assert _image_size(page, 0) == (64, 96)
    expect(run.get_by_test_id("caption")).to_contain_text("seed 7 · 64×96 · 3 steps")
    expect(run.get_by_test_id("cancel")).to_be_hidden()

    # The stream refused (as when its signed link has expired): the page follows the run with the token instead.
    refuse_stream = "**/api/v1/content/*/events?*"
    page.route(refuse_stream, lambda route: route.fulfill(status=401, content_type="application/json", body="{}"))
    _fill(page, width="64", height="64", steps="2", seed="5")
    run = _submit(page)
    expect(run.locator('li[data-status="completed"]')).to_be_visible(timeout=FINAL_WAIT_MS)
    assert _statuses(page) == ["queued", "running", "completed"]
    assert _image_size(page, 0) == (64, 64)
    page.unroute(refuse_stream)

    # A longer one (seconds on the tiny model's CPU), canceled while it is open. Not longer still: the worker may
    # finish it anyway, and the next runs wait for that.
    _fill(page, width="256", height="256", steps="40", seed="")
    run = _submit(page)
    expect(run.locator('li[data-status="queued"]')).to_be_visible()
    run.get_by_test_id("cancel").click()
    expect(run.locator('li[data-status="canceled"]')).to_be_visible(timeout=FINAL_WAIT_MS)
    assert _statuses(page)[-1] == "canceled" and "completed" not in _statuses(page)
    expect(run.get_by_test_id("cancel")).to_be_hidden()

    # The browser lets a bad width through; the API refuses it and the page says so next to the field.
    _fill(page, width="1001", height="64", steps="3")
    page.get_by_test_id("submit").click()
    expect(page.get_by_test_id("error-width")).to_contain_text("multiple of 8")
    expect(page.get_by_test_id("form-error")).not_to_be_empty()
    expect(page.get_by_test_id("width")).to_have_class("invalid")
    expect(page.get_by_test_id("error-height")).to_be_empty()

    # Side by side: one prompt and seed, with the LoRA at 0.8 and without it.
    _fill(page, width="64", height="64", steps="3", seed="11", lora_scale="0.8", lora_scale_b="0")
    page.get_by_test_id("compare").check()
    _submit(page)
    expect(page.get_by_test_id("error-width")).to_be_empty()
    expect(page.get_by_test_id("run")).to_have_count(2)
    for index in range(2):
        run = page.get_by_test_id("run").nth(index)
        expect(run.locator('li[data-status="completed"]')).to_be_visible(timeout=FINAL_WAIT_MS)
        assert _image_size(page, index) == (64, 64)
        expect(run.get_by_test_id("caption")).to_contain_text("seed 11")
    expect(page.get_by_test_id("run").nth(0).get_by_test_id("caption")).to_contain_text("LoRA scale 0.8")
    expect(page.get_by_test_id("run").nth(1).get_by_test_id("caption")).to_contain_text("LoRA scale 0 ")
    pair = page.get_by_test_id("run").evaluate_all("runs => runs.map(run => run.dataset.id)")
    with httpx.Client(timeout=30.0) as client:
        images = [client.get(f"{content}/api/v1/content/{run_id}", headers=auth).json()["image"] for run_id in pair]
    assert images[0]["sha256"] != images[1]["sha256"]  # the LoRA made a difference

    # The gallery in pages of two: five generations, so three pages, each of different ones, the last of one.
    _fill(page, **{"page-size": "2"})
    page.get_by_test_id("gallery-reload").click()
    expect(page.get_by_test_id("gallery-item")).to_have_count(2)
    pages = [_gallery_ids(page)]
    for shown in (4, 5):
        page.get_by_test_id("gallery-more").click()
        expect(page.get_by_test_id("gallery-item")).to_have_count(shown)
        pages.append(_gallery_ids(page)[len(pages) * 2 :])
    assert [len(ids) for ids in pages] == [2, 2, 1] and len({i for ids in pages for i in ids}) == 5
    expect(page.get_by_test_id("gallery-more")).to_be_hidden()
    oldest = page.get_by_test_id("gallery-item").nth(4)
    expect(oldest).to_have_attribute("data-status", "completed")
    oldest.get_by_test_id("same-seed").click()
    expect(page.get_by_test_id("seed")).to_have_value("7")
    expect(page.get_by_test_id("height")).to_have_value("96")

    _fill(page, **{"page-size": "8"})
    page.get_by_test_id("gallery-reload").click()
    expect(page.get_by_test_id("gallery-item")).to_have_count(5)
    for image in page.get_by_test_id("gallery-item").locator("img:visible").all():
        image.evaluate("img => img.decode()")
    screenshot = Path(os.environ.get("PLAYGROUND_SCREENSHOT") or tmp_path / "playground.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
