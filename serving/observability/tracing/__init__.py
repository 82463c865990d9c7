"""OpenTelemetry traces of a request across the router and the model replica (docs/observability.md).

`config` holds the settings (pydantic only, shared by the cluster spec and the router's
ServingConfig, so rendering a config imports no OpenTelemetry); `engine` turns them into
vLLM's own tracing arguments; `spans` is the router's side, imported only when tracing is on.
"""
