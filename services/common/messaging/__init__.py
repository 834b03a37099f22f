"""RabbitMQ: the broker connection and topology, consumers, events, the transactional outbox."""
