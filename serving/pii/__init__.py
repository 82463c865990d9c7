"""Japanese personal-information guard (個人情報ガード).

Recognisers for Japanese identifiers (Individual Number with its check digit,
Corporate Number, phone, postal code, address, e-mail, credit card, bank
account, passport, driver's licence, date of birth; personal names opt-in),
an NFKC normaliser that maps positions back to the original text, the policy
engine (allow / mask / refuse / route, per tenant and per model), the router
step that applies it, and a streaming output scanner that masks identifiers
an answer spells out, even when they are split across SSE chunks.

This package's `settings` module is plain pydantic and imported by
serving.config; everything else is imported lazily by the router when a
policy is configured. See docs/pii.md.
"""
