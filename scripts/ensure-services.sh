#!/usr/bin/env bash
# Make sure the local RabbitMQ and PostgreSQL that the tests use answer; start them if they are installed but down.
set -u
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 1; done
  return 1
}

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null; then
    echo "RabbitMQ is not answering on 127.0.0.1:5672; starting it (rabbitmq-server -detached)"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_port 5672 || echo "RabbitMQ did not come up; tests that need it will fail"
  else
    echo "RabbitMQ is not answering on 127.0.0.1:5672 and is not installed here; set RABBITMQ_URL"
  fi
fi

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    wait_port 5432 || echo "PostgreSQL did not come up; tests that need it will fail"
  else
    echo "PostgreSQL is not answering on 127.0.0.1:5432 and is not installed here; set TEST_DATABASE_URL"
  fi
fi
exit 0
