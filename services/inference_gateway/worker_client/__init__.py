"""The gateway's client of the worker contract: the HTTP calls (http), the endpoints a deployment names (endpoints)
and the one place their URLs are derived (urls)."""
