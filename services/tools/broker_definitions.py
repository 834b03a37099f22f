"""RabbitMQ definitions from the code's topology: exchanges, quorum queues with the arguments the services
declare, bindings, one broker user per service whose permissions and topic permissions let it publish only the
events it produces and consume only its own queues (and configure nothing: the topology is declared at deploy time,
`python -m services.common.messaging.broker_declare`), one per requesting service of VIXEN_SUBMIT_SERVICES, which
may publish generation.submit and read its own reply queue, and the autoscaler's user, which may only read queue
depths.

`python -m services.tools.broker_definitions --out definitions.json` (passwords from the environment, see
--help) writes a file RabbitMQ loads at boot (`load_definitions`) or `rabbitmqctl import_definitions` applies.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.topology import (
    SERVICE_CONTENT,
    SERVICE_IDENTITY,
    SERVICE_INFERENCE_GATEWAY,
    QueueSpec,
    Topology,
    requester_name_problem,
)
from services.common.messaging.broker import declarations

SERVICES = (SERVICE_IDENTITY, SERVICE_CONTENT, SERVICE_INFERENCE_GATEWAY)
# KEDA's user: it reads the gateway queue's depth with a passive queue.declare, which RabbitMQ answers without
# checking any permission, so it is granted none (and no management tag: the amqp protocol needs none).
AUTOSCALER = "autoscaler"
# Every broker user the definitions may hold besides the operator: the services and the autoscaler.
ROLES = (*SERVICES, AUTOSCALER)
# KEDA holds one connection with one channel per scaler (rebuilt after an error): room for a few, so that a leaked
# credential cannot exhaust the broker's connections or channels.
AUTOSCALER_LIMITS = {"max-connections": 4, "max-channels": 8}
NOTHING = "^$"
HASHING = "rabbit_password_hashing_sha256"
ADMIN_PASSWORD_VARIABLE = "RABBITMQ_ADMIN_PASSWORD"  # noqa: S105 (a variable name)


@dataclass(frozen=True)
class ServiceGrants:
    """What one role's broker user may do, as RabbitMQ permission and topic permission patterns."""

    role: str
    configure: str
    write: str
    read: str
    # Per topic exchange it may publish on: (write pattern, read pattern) on routing keys (publishing, binding).
    topics: dict[str, tuple[str, str]]


def exactly(names: Iterable[str]) -> str:
    """A pattern matching exactly these names (and nothing when there are none)."""
    unique = sorted(set(names))
    return f"^({'|'.join(re.escape(name) for name in unique)})$" if unique else NOTHING


def retry_keys(spec: QueueSpec) -> list[str]:
    """The keys its consumer publishes under on the retry exchange: its stages' names and its DLQ's key."""
    return [spec.dead_letter_routing_key, *spec.retry_queue_names]


def grants(topo: Topology, role: str) -> ServiceGrants:
    """The least a role needs once the topology is declared (at deploy time, with an operator's credential).

    A service publishes the events it produces (write on the events exchange, topic write on those keys: content's
    answers to a requesting service under that service's own keys), consumes its own queues (read on them), and
    sends its own failed messages to their retry stages and DLQs (write on the retry exchange, topic write on its
    queues' keys). A requesting service (of `topo.requesters`) publishes generation.submit and nothing else, and
    reads its reply queue. No one configures anything: a passive declare, all a service does with
    RABBITMQ_DECLARE=check, needs no permission. Nobody may publish to the DLX or the default exchange, bind a
    queue (write on the queue, read on the exchange) or read another service's queue. The autoscaler (no queue, no
    event) gets nothing at all."""
    own = topo.queues_of(role)
    produced = list(topo.published_keys(role))
    own_retry_keys = [key for spec in own for key in retry_keys(spec)]
    topics: dict[str, tuple[str, str]] = {}
    if produced:
        topics[topo.events_exchange] = (exactly(produced), NOTHING)
    if own:
        topics[topo.retry_exchange] = (exactly(own_retry_keys), NOTHING)
    return ServiceGrants(
        role=role,
        configure=NOTHING,
        write=exactly(topics),
        read=exactly(spec.name for spec in own),
        topics=topics,
    )


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's salted SHA-256 password hash: base64(salt + sha256(salt + password)), 4 random salt bytes."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def definitions(
    topo: Topology,
    passwords: Mapping[str, str],
    *,
    vhost: str = "/",
    user_prefix: str = "vixenbliss-",
    admin: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The whole definitions document: the vhost, its exchanges, queues and bindings (`broker.declarations`: what
    the deploy step declares), a user per role in `passwords` (a service, a requesting service of `topo.requesters`
    or AUTOSCALER → password) with its grants, and `admin` (name, password), an operator with every right (a broker
    that loads definitions at boot creates no default user)."""
    plan = declarations(topo)
    users, permissions, topic_permissions = [], [], []
    if admin is not None:
        name, secret = admin
        users.append(
            {
                "name": name,
                "password_hash": password_hash(secret),
                "hashing_algorithm": HASHING,
                "tags": ["administrator"],
            }
        )
        permissions.append({"user": name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"})
    for role, password in passwords.items():
        if role not in ROLES and role not in topo.requesters:
            known = ", ".join((*ROLES, *topo.requesters))
            raise ValueError(f"no broker role named {role!r} (one of {known}, or a service of VIXEN_SUBMIT_SERVICES)")
        user = f"{user_prefix}{role}"
        granted = grants(topo, role)
        entry: dict[str, Any] = {
            "name": user,
            "password_hash": password_hash(password),
            "hashing_algorithm": HASHING,
            "tags": [],
        }
        if role == AUTOSCALER:
            entry["limits"] = dict(AUTOSCALER_LIMITS)
        users.append(entry)
        permissions.append(
            {"user": user, "vhost": vhost, "configure": granted.configure, "write": granted.write, "read": granted.read}
        )
        for exchange, (write, read) in granted.topics.items():
            topic_permissions.append({"user": user, "vhost": vhost, "exchange": exchange, "write": write, "read": read})
    return {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "parameters": [],
        "global_parameters": [],
        # Every queue argument is set at declaration (quorum, delivery limit, dead-lettering, TTLs): no policy.
        "policies": [],
        "exchanges": [
            {
                "name": name,
                "vhost": vhost,
                "type": kind.value,
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
            for name, kind in plan.exchanges
        ],
        "queues": [
            {"name": name, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": arguments}
            for name, arguments in plan.queues
        ],
        "bindings": [
            {
                "source": exchange,
                "vhost": vhost,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": key,
                "arguments": {},
            }
            for exchange, queue, key in plan.bindings
        ],
    }


def password_variable(role: str) -> str:
    """The variable holding a role's broker password: RABBITMQ_PASSWORD_CONTENT, …_INFERENCE_GATEWAY, …_AUTOSCALER"""
    return "RABBITMQ_PASSWORD_" + role.upper().replace("-", "_")


def submit_services(text: str) -> tuple[str, ...]:
    """The requesting services of a comma-separated list (VIXEN_SUBMIT_SERVICES), each name checked."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    for name in names:
        problem = requester_name_problem(name)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.tools.broker_definitions",
        description="Write RabbitMQ definitions (topology, per-service users, the requesting services' users, the "
        "autoscaler's user) as JSON. Passwords are read from "
        + ", ".join(password_variable(role) for role in ROLES)
        + " and RABBITMQ_PASSWORD_<SERVICE> for each requesting service; a role whose variable is unset gets no user.",
    )
    parser.add_argument("--out", type=Path, help="file to write (default: standard output)")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--prefix", default="", help="topology prefix (VIXEN_TOPOLOGY_PREFIX of the services)")
    parser.add_argument("--user-prefix", default="vixenbliss-")
    parser.add_argument(
        "--submit-services",
        type=submit_services,
        default=os.environ.get("VIXEN_SUBMIT_SERVICES", ""),
        help="services that may request generations by event, comma-separated (default: VIXEN_SUBMIT_SERVICES)",
    )
    parser.add_argument(
        "--admin-user", help=f"also an administrator of this name, its password from {ADMIN_PASSWORD_VARIABLE}"
    )
    args = parser.parse_args(argv)
    requesters: tuple[str, ...] = args.submit_services
    passwords = {
        role: os.environ[password_variable(role)]
        for role in (*ROLES, *requesters)
        if os.environ.get(password_variable(role))
    }
    admin = None
    if args.admin_user:
        if not os.environ.get(ADMIN_PASSWORD_VARIABLE):
            parser.error(f"--admin-user needs {ADMIN_PASSWORD_VARIABLE}")
        admin = (args.admin_user, os.environ[ADMIN_PASSWORD_VARIABLE])
    from services.common.app.runtime import broker_topology

    document = definitions(
        broker_topology(args.prefix, requesters=requesters),
        passwords,
        vhost=args.vhost,
        user_prefix=args.user_prefix,
        admin=admin,
    )
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
