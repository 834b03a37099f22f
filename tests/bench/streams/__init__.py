"""The event-stream flood benchmark (issue 20): 5,000 SSE streams on one generation against content in its own process,
PostgreSQL and RabbitMQ, while other owners call the API (`python -m tests.bench.streams`; not in `make test`)."""
