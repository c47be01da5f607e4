"""Telemetry: Prometheus metrics, OpenTelemetry tracing, structured logs."""
