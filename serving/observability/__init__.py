"""What an operator sees of the running application: metrics (Prometheus, through Ray's
metrics agent) and traces (OpenTelemetry). Nothing here is on the request path beyond a
record per request at its end; see docs/observability.md."""
