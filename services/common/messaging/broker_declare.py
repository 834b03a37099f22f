"""The deploy-time step that declares the broker's topology with an operator's credential, so that no service's
broker user needs any configure right (the services run with RABBITMQ_DECLARE=check and only look).

    RABBITMQ_ADMIN_URL=amqp://admin:…@host:5672/vhost python -m services.common.messaging.broker_declare

Exchanges, quorum queues (with their retry stages and DLQs) and bindings come from the same code as the services'
(`broker.declarations`), under VIXEN_TOPOLOGY_PREFIX with BROKER_RETRY_DELAYS_SECONDS and the queues of the
requesting services of VIXEN_SUBMIT_SERVICES, read as the services read them. Safe to repeat: run it on every
release, before the services roll out (a Kubernetes Job, a compose one-shot service). It creates no users: they
and their permissions come from `python -m services.tools.broker_definitions`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

from aio_pika.exceptions import AMQPError
from pydantic import Field, SecretStr

from services.common.app.runtime import broker_topology
from services.common.app.settings import BrokerDeliverySettings, TopologySettings, load_settings
from services.common.messaging.broker import connect, declarations, declare_topology_on, missing_declarations


class DeclareStepSettings(BrokerDeliverySettings, TopologySettings):
    """What the step reads: the operator's broker URL (a secret), the topology prefix, the retry stages."""

    rabbitmq_admin_url: SecretStr = Field(validation_alias="RABBITMQ_ADMIN_URL")


async def declare_and_check(settings: DeclareStepSettings) -> str:
    """Declare the whole topology, then check it passively as the services will; a one-line summary."""
    topo = broker_topology(settings.topology_prefix, settings, settings.submit_services)
    connection = await connect(settings.rabbitmq_admin_url.get_secret_value(), name="vixenbliss-broker-declare")
    try:
        await declare_topology_on(connection, topo)
        missing = await missing_declarations(connection, topo)
    finally:
        await connection.close()
    if missing:
        raise RuntimeError("declared, yet the broker lacks " + ", ".join(missing))
    plan = declarations(topo)
    return f"declared {len(plan.exchanges)} exchanges, {len(plan.queues)} queues and {len(plan.bindings)} bindings"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: exit 0 once declared, 1 with one line when the broker refused or could not be reached."""
    argparse.ArgumentParser(
        prog="python -m services.common.messaging.broker_declare", description=__doc__.split("\n", 1)[0]
    ).parse_args(argv)
    settings = load_settings(DeclareStepSettings)
    try:
        print(asyncio.run(declare_and_check(settings)))
    except (AMQPError, OSError, TimeoutError, RuntimeError) as error:
        # aio-pika's errors name the broker's reply or the address; the password is masked should one echo the URL.
        password = unquote(urlsplit(settings.rabbitmq_admin_url.get_secret_value()).password or "")
        reason = str(error).replace(password, "***") if password else str(error)
        print(f"broker topology not declared: {type(error).__name__}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
