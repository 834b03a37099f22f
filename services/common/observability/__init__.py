"""Metrics and traces: Prometheus instruments and OpenTelemetry setup."""
