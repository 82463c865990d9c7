"""OpenTelemetry traces of a request across the router and the model replica (docs/observability.md).

The settings live in serving/config/tracing.py (pydantic only, shared by the cluster spec and
the router's ServingConfig, so rendering a config imports no OpenTelemetry). Here: `engine`
turns them into vLLM's own tracing arguments; `names` the span and attribute names; `off` the
no-op hooks of tracing off; `logs` the rate limit on export-failure logs; `spans` the router's
side, imported only when tracing is on.
"""
