"""`python -m services.tools.smoke`: one line per hop (storage, broker, worker, generation) with pass/fail and its time;
exit status 1 when any hop failed, 2 when the settings are incomplete. Every hop runs, whatever the others did."""

from __future__ import annotations

import asyncio
import functools
import sys

from logsafe.logs import setup_logging
from services.common.app.settings import load_settings
from services.tools.smoke import hops
from services.tools.smoke.settings import SmokeSettings


async def run(settings: SmokeSettings) -> list[hops.HopResult]:
    checks = {
        "storage": hops.storage,
        "broker": hops.broker,
        "worker": hops.worker,
        "generation": hops.generation,
    }
    return [await hops.timed(name, functools.partial(check, settings)) for name, check in checks.items()]


def main() -> int:
    settings = load_settings(SmokeSettings)  # exits 2 with the variable's name when one is missing
    # Library logs (httpx request lines carry presigned URLs) go through the services' redaction, at WARNING.
    setup_logging("WARNING", json_lines=False, secrets=settings.secret_values(), service="smoke")
    results = asyncio.run(run(settings))
    for result in results:
        print(result.line(), flush=True)
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
