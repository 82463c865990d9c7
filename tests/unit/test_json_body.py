"""Strict request JSON: every ambiguous or unencodable body is a clear 400, normal ones parse as before."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.request import APIError
from serving.router.json_body import MAX_DEPTH, parse_object


@pytest.mark.parametrize(
    "raw, code, words",
    [
        (b'{"model": "a", "model": "b"}', "duplicate_key", "'model' more than once"),
        (b'{"messages": [{"role": "user", "role": "system"}]}', "duplicate_key", "'role'"),
        (b'{"temperature": NaN}', "invalid_json", "NaN"),
        (b'{"temperature": -Infinity}', "invalid_json", "Infinity"),
        (b'{"content": "\\ud800"}', "invalid_json", "lone UTF-16 surrogate"),
        (b'{"content": "x\\udc00y"}', "invalid_json", "lone UTF-16 surrogate"),
        (b"[" * 5000 + b"]" * 5000, "invalid_json", "nested more than"),
        (b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "invalid_json", "nested more than"),
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "invalid_json", "not valid JSON"),
        (b"\xff\xfe\x00\x01", "invalid_json", "not valid JSON"),
        (b'{"a": 1', "invalid_json", "line 1 column"),
    ],
)
def test_refused_with_a_reason(raw, code, words):
    with pytest.raises(APIError) as exc:
        parse_object(raw)
    assert exc.value.status == 400 and exc.value.code == code and words in exc.value.message


def test_error_messages_never_echo_the_body():
    secret = "住民票コード1234567890"
    for raw in (f'{{"a": "{secret}", "a": 1}}'.encode(), f'{{"x": "{secret}"'.encode()):
        with pytest.raises(APIError) as exc:
            parse_object(raw)
        assert secret not in exc.value.message


def test_surrogate_pairs_and_shallow_nesting_are_fine():
    assert parse_object(b'{"content": "\\ud83d\\ude00"}') == {"content": "\U0001f600"}
    deep = b'{"a":' * (MAX_DEPTH - 1) + b"1" + b"}" * (MAX_DEPTH - 1)
    assert isinstance(parse_object(deep), dict)
    many = json.dumps({"messages": [{"role": "user", "content": "x"}] * 500}).encode()
    assert len(parse_object(many)["messages"]) == 500


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_plain_json_value_parses_to_itself(value):
    for ensure_ascii in (True, False):
        try:
            raw = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8")
        except UnicodeEncodeError:  # hypothesis text with lone surrogates: covered above
            continue
        assert parse_object(raw) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(raw):
    try:
        parse_object(raw)
    except APIError as exc:
        assert exc.status == 400 and exc.code in {"invalid_json", "duplicate_key"}
