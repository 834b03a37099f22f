"""Serving the engine on any host: settings, the lifecycle, the request handler, the job queue, telemetry."""
