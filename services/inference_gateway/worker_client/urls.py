"""The one place worker URLs are derived: from an endpoint id, the async and cancel URLs beside a generate URL,
a job's poll URL and a held poll's `?wait=`."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

# The local worker (gpu.serve.server) serves the sync contract on /generate and async jobs on /jobs.
LOCAL_GENERATE_PATH = "/generate"
# The Modal app's endpoint labels (gpu/modal/app.py): its URLs are https://<workspace>--<label>.modal.run.
MODAL_GENERATE_LABEL = "sdxl-lora-generate"
MODAL_SUBMIT_LABEL = "sdxl-lora-submit"
MODAL_RESULT_LABEL = "sdxl-lora-result"
MODAL_CANCEL_LABEL = "sdxl-lora-cancel"
CALL_ID_PLACEHOLDER = "{call_id}"
_ENDPOINT_ID = re.compile(r"^[a-z0-9][a-z0-9-]*--[a-z0-9][a-z0-9-]*$")


def url_from_endpoint_id(endpoint_id: str) -> str:
    """`<workspace>--<label>` → https://<workspace>--<label>.modal.run (how Modal names web endpoints)."""
    if not _ENDPOINT_ID.match(endpoint_id):
        raise ValueError("MODAL_SDXL_LORA_ENDPOINT_ID must look like <workspace>--<label>")
    return f"https://{endpoint_id}.modal.run"


def derive_async_urls(generate_url: str) -> tuple[str, str] | None:
    """Submit and result URLs next to a known generate URL: the local worker's or the Modal app's."""
    parts = urlsplit(generate_url)
    host = parts.hostname or ""
    if parts.path.rstrip("/").endswith(LOCAL_GENERATE_PATH):
        base = parts.path.rstrip("/")[: -len(LOCAL_GENERATE_PATH)]
        submit = urlunsplit((parts.scheme, parts.netloc, base + "/jobs", "", ""))
        return submit, urlunsplit((parts.scheme, parts.netloc, base + "/jobs/" + CALL_ID_PLACEHOLDER, "", ""))
    if host.endswith(".modal.run") and MODAL_GENERATE_LABEL in host:
        submit_host = parts.netloc.replace(MODAL_GENERATE_LABEL, MODAL_SUBMIT_LABEL)
        result_host = parts.netloc.replace(MODAL_GENERATE_LABEL, MODAL_RESULT_LABEL)
        return (
            urlunsplit((parts.scheme, submit_host, "/", "", "")),
            urlunsplit((parts.scheme, result_host, "/", "", "")),
        )
    return None


def derive_cancel_url(generate_url: str) -> str | None:
    """The cancel URL next to a known generate URL: the local `DELETE /jobs/{call_id}` or the Modal app's."""
    parts = urlsplit(generate_url)
    host = parts.hostname or ""
    if parts.path.rstrip("/").endswith(LOCAL_GENERATE_PATH):
        base = parts.path.rstrip("/")[: -len(LOCAL_GENERATE_PATH)]
        return urlunsplit((parts.scheme, parts.netloc, base + "/jobs/" + CALL_ID_PLACEHOLDER, "", ""))
    if host.endswith(".modal.run") and MODAL_GENERATE_LABEL in host:
        cancel_host = parts.netloc.replace(MODAL_GENERATE_LABEL, MODAL_CANCEL_LABEL)
        return urlunsplit((parts.scheme, cancel_host, "/", "", ""))
    return None


def result_url(template: str, call_id: str) -> str:
    """The poll URL of a job: `{call_id}` in the template replaced, else `call_id` added as a query."""
    quoted = quote(call_id, safe="")
    if CALL_ID_PLACEHOLDER in template:
        return template.replace(CALL_ID_PLACEHOLDER, quoted)
    separator = "&" if urlsplit(template).query else "?"
    return f"{template}{separator}call_id={quoted}"


def with_wait(url: str, wait_seconds: float) -> str:
    """A poll URL asking the worker to hold its answer up to `wait_seconds` (unchanged for 0)."""
    if wait_seconds <= 0:
        return url
    separator = "&" if urlsplit(url).query else "?"
    return f"{url}{separator}wait={wait_seconds:.3f}"
