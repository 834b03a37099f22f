"""Inference gateway: turns generation.requested into a worker call, a stored PNG and a result event."""
