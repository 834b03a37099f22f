"""Pre-flight checks: does RabbitMQ answer, are the stack's ports free."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from scripts.stacklib.processes import port_open

# AMQP 0-9-1 protocol header; a broker answers with a Connection.Start method frame (type 1).
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_METHOD = 1


def rabbitmq_problem(url: str, timeout: float = 3.0) -> str | None:
    """None when an AMQP broker answers at `url`, else one line saying what is wrong and how to fix it."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    where = f"{host}:{port}"
    hint = "start it with `rabbitmq-server -detached` (or set RABBITMQ_URL)"
    if parts.scheme == "amqps":
        # A TLS broker needs a handshake first; a TCP answer is as far as this check goes.
        return None if port_open(host, port, timeout) else f"RabbitMQ does not answer on {where}: {hint}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_AMQP_HEADER)
            first = sock.recv(8)
    except OSError as error:
        return f"RabbitMQ does not answer on {where} ({type(error).__name__}): {hint}"
    if not first or first[0] != _FRAME_METHOD:
        return f"something answers on {where}, but it is not an AMQP 0-9-1 broker: {hint}"
    return None


def busy_ports(host: str, ports: Mapping[str, int]) -> list[str]:
    """`name:port` for each port something already listens on."""
    return [f"{name} {port}" for name, port in ports.items() if port_open(host, port, 0.3)]
