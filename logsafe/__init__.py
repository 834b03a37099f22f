"""Logging that never leaks: the redacting handlers and JSON lines that the services and the GPU worker share."""
