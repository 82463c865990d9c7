"""Vendor-hosted model endpoints: models govllm does not run itself, behind the same front door.

A model whose spec `source` is an `endpoint` is served by an OpenAI-compatible
server that someone else runs (a vendor's API inside the Government Cloud, or
a self-hosted engine govllm's pinned vLLM cannot run, such as PLaMo 2 on an
older vLLM). The router treats it as a model with one replica at a fixed URL:
the same authentication, confidentiality policy, quotas, admission, audit and
failover as self-hosted models, plus what a contract adds: the vendor's
credential (never the client's), its TLS trust, its contractual limits
enforced across every router replica, a circuit breaker, prices in yen and the
data-use terms that every audit record of it carries.

  config.py   what the operator declares (pydantic, shared by spec and router)
  link.py     how a router reaches one endpoint (credential, TLS, paths, body)
  contract.py the contractual RPM/TPM limits, counted in the shared store
"""
