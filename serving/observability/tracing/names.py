"""Names of govllm's spans, span attributes and trace header: shared by the router's hooks
and the tracer, importable without OpenTelemetry (the router imports it with tracing off).

Attribute names follow the OpenTelemetry GenAI semantic conventions (the
semantic-conventions-genai repository; tests/unit/test_tracing_spans.py checks each against
the installed opentelemetry-semantic-conventions); govllm's own carry the `govllm.` prefix.
"""

from __future__ import annotations

#: Response header carrying the request's trace id (32 hex digits) whenever tracing is on.
TRACE_ID_HEADER = "x-govllm-trace-id"

#: OpenTelemetry GenAI semantic conventions (semantic-conventions-genai; the names are checked
#: against the installed opentelemetry-semantic-conventions in tests/unit/test_tracing_spans.py).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_CHOICE_COUNT = "gen_ai.request.choice.count"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
ERROR_TYPE = "error.type"

#: govllm's own attributes (the governance view: who, under which rules).
TENANT = "govllm.tenant"
USAGE_TYPE = "govllm.usage_type"
CONFIDENTIALITY = "govllm.confidentiality"
REQUEST_ID = "govllm.request_id"
USAGE_ESTIMATED = "govllm.usage_estimated"
ATTEMPTS = "govllm.attempts"

#: Router operations -> gen_ai.operation.name (well-known values where one exists).
OPERATION_NAMES = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings",
                   "responses": "chat", "score": "score", "rerank": "rerank"}
#: gen_ai.provider.name of govllm's own engines (vendor endpoints: the contract's provider).
PROVIDER = "govllm"

#: Span names of the request-path steps, by the step's class; others get govllm.<snake_case>.
STEP_SPANS = {"Authenticate": "govllm.authenticate", "ParseRequest": "govllm.parse",
              "ResolveModel": "govllm.resolve_model", "ConfidentialityPolicy": "govllm.policy",
              "PIIGuard": "govllm.pii_guard", "QuotaLedger": "govllm.quota"}
DISPATCH_SPAN = "govllm.dispatch"
ADMISSION_SPAN = "govllm.admission"
AUDIT_BEGIN_SPAN = "govllm.audit.begin"
AUDIT_COMMIT_SPAN = "govllm.audit.commit"
