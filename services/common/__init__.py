"""Runtime shared by the services: settings, broker, events, outbox/inbox, database, storage, logging."""
