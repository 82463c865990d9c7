"""Strict JSON for request bodies: one meaning per body, or a 400 that says why.

The router and the engine parse the same bytes, and the audit trail stores
what the router understood. Anything two JSON parsers may read differently,
or that later breaks encoding, is refused up front:

* duplicate keys (which value wins differs between parsers: a request could
  name one model to the router's policy and another to the engine);
* `NaN`/`Infinity` (not JSON; Python accepts them);
* lone UTF-16 surrogates such as "\\ud800" (valid JSON syntax, but no valid
  text: they cannot be encoded as UTF-8, so neither the engine nor the audit
  trail could store them);
* nesting deeper than MAX_DEPTH (deep structures exhaust parsers' recursion;
  no OpenAI request needs more than a few levels, JSON schemas a few dozen);
* numbers with more digits than Python converts (ValueError from the parser).

Costs stay proportional to the structure, not the text: the surrogate check
runs only when the raw bytes contain a surrogate escape, the depth walk only
when the body has more brackets than MAX_DEPTH.
"""

from __future__ import annotations

import json
import re
from typing import Any

from serving.request import APIError

MAX_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Duplicate(key)
            seen.add(key)
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _invalid(message: str) -> APIError:
    return APIError(400, f"Request body is not valid JSON: {message}.", code="invalid_json")


def parse_object(raw: bytes) -> Any:
    """Parse a request body strictly; returns the value (callers check it is an object)."""
    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _Duplicate as exc:
        name = str(exc)[:64]
        raise APIError(400, f"Request body has the key '{name}' more than once in one object; "
                       "send each key once.", code="duplicate_key") from None
    except RecursionError:
        raise _invalid(f"nested more than {MAX_DEPTH} levels deep") from None
    except UnicodeDecodeError:
        raise _invalid("it is not UTF-8 text") from None
    except ValueError as exc:
        raise _invalid(_short(exc)) from None
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff without its "
                           "pair), which is not text") from None
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise _invalid(f"nested more than {MAX_DEPTH} levels deep")
    return value


def _short(exc: ValueError) -> str:
    """The parser's reason without echoing the body (which may hold confidential text)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc).split(":")[0][:120]


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` levels (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False
