"""The personal-information guard: check digits, normaliser, recognisers, policy, stream masking."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from serving.config import ModelRoute, ServingConfig, TenantSettings
from serving.config.pii import PIIPolicy
from serving.pii.checkdigits import (
    corporate_number_check_digit,
    is_corporate_number,
    is_my_number,
    luhn_valid,
    my_number_check_digit,
)
from serving.pii.detector import Detector
from serving.pii.normalize import normalize
from serving.pii.step import PIIGuard
from serving.pii.stream import OutputFilter
from serving.request import APIError, RequestContext


def _my_number(rng: random.Random) -> str:
    base = "".join(str(rng.randrange(10)) for _ in range(11))
    return base + str(my_number_check_digit(base))


# -- check digits --------------------------------------------------------------------------------
def test_check_digits_of_published_examples():
    assert is_my_number("123456789018")  # the formula's worked example
    assert not is_my_number("123456789012")
    assert is_corporate_number("7000012050002")  # 国税庁's own Corporate Number
    assert not is_corporate_number("8000012050002")
    assert luhn_valid("4111 1111 1111 1111") and not luhn_valid("4111 1111 1111 1112")


def test_my_number_formula_by_hand():
    # P1 is the rightmost base digit; weights 2..7 then 2..6; remainder <= 1 -> 0
    base = "12345678901"
    total = sum(int(d) * w for d, w in zip(reversed(base), [2, 3, 4, 5, 6, 7, 2, 3, 4, 5, 6], strict=True))
    assert my_number_check_digit(base) == (0 if total % 11 <= 1 else 11 - total % 11) == 8
    assert corporate_number_check_digit("000012050002") == 7


def test_one_changed_digit_almost_always_breaks_the_check():
    # remainders 0 and 1 both give check digit 0, so a few single-digit changes survive
    rng = random.Random(7)
    caught = 0
    for _ in range(1000):
        number = _my_number(rng)
        assert is_my_number(number)
        i = rng.randrange(11)
        wrong = number[:i] + str((int(number[i]) + rng.randrange(1, 10)) % 10) + number[i + 1:]
        caught += not is_my_number(wrong)
    assert 900 <= caught < 1000


# -- normaliser ----------------------------------------------------------------------------------
def test_normaliser_maps_variants_and_keeps_positions():
    text = "電話：０９０ー１２３４－５６７８ メール"
    norm = normalize(text)
    assert norm.text == "電話:090-1234-5678 メール"  # ー becomes "-" only between digits
    assert norm.origin is None  # one-to-one: offsets are the identity
    expanding = "㍻元年1月8日生 ㈱テスト 個人番号123456789018"
    norm = normalize(expanding)
    assert norm.text.startswith("平成元年") and "(株)" in norm.text
    start = norm.text.index("123456789018")
    assert expanding[slice(*norm.span(start, start + 12))] == "123456789018"
    assert norm.span(0, 2) == (0, 1)  # 平成 came from the one character ㍻


# -- recognisers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector()


@pytest.mark.parametrize("text,entity,value", [
    ("個人番号は1234 5678 9018です", "JP_MY_NUMBER", "1234 5678 9018"),
    ("マイナンバー：１２３４－５６７８－９０１８", "JP_MY_NUMBER", "１２３４－５６７８－９０１８"),
    ("番号123456789018を確認", "JP_MY_NUMBER", "123456789018"),
    ("法人番号7000012050002", "JP_CORPORATE_NUMBER", "7000012050002"),
    ("登録番号T7000012050002", "JP_CORPORATE_NUMBER", "T7000012050002"),
    ("連絡先03-1234-5678まで", "JP_PHONE_NUMBER", "03-1234-5678"),
    ("TEL (03)1234-5678", "JP_PHONE_NUMBER", "(03)1234-5678"),
    ("携帯090ー1234ー5678", "JP_PHONE_NUMBER", "090ー1234ー5678"),
    ("フリーダイヤル0120-123-456", "JP_PHONE_NUMBER", "0120-123-456"),
    ("IP電話050-1234-5678", "JP_PHONE_NUMBER", "050-1234-5678"),
    ("+81-90-1234-5678に", "JP_PHONE_NUMBER", "+81-90-1234-5678"),
    ("〒100-8926", "JP_POSTAL_CODE", "100-8926"),
    ("100-8926 東京都千代田区霞が関2-1-2", "JP_POSTAL_CODE", "100-8926"),
    ("所在地は東京都千代田区霞が関二丁目1番2号です", "JP_ADDRESS", "東京都千代田区霞が関二丁目1番2号"),
    ("大阪府大阪市北区梅田1-1-3", "JP_ADDRESS", "大阪府大阪市北区梅田1-1-3"),
    ("ｍａｉｌ：ｔａｒｏ＠ｅｘａｍｐｌｅ．ｇｏ．ｊｐ", "EMAIL_ADDRESS", "ｔａｒｏ＠ｅｘａｍｐｌｅ．ｇｏ．ｊｐ"),
    ("カード番号4111111111111111", "CREDIT_CARD", "4111111111111111"),
    ("みずほ銀行渋谷支店 普通 1234567", "JP_BANK_ACCOUNT", "1234567"),
    ("旅券番号：TK1234567", "JP_PASSPORT", "TK1234567"),
    ("運転免許証番号 第123456789012号", "JP_DRIVER_LICENSE", "123456789012"),
    ("生年月日 昭和55年4月1日", "JP_DATE_OF_BIRTH", "昭和55年4月1日"),
    ("㍻3年12月1日生まれ", "JP_DATE_OF_BIRTH", "㍻3年12月1日"),
])
def test_recognisers_find_values_in_the_original(detector, text, entity, value):
    found = [(f.entity, text[f.start:f.end]) for f in detector.findings(text)]
    assert (entity, value) in found


@pytest.mark.parametrize("text", [
    "個人番号は123456789012です",  # wrong check digit
    "注文番号123456789018の商品",  # valid check digit, named as an order number
    "金額は1,234,567円です",
    "2024-01-15に開催",
    "カード番号4111111111111112",  # Luhn fails
    "会議は10時から",
    "電話番号 03-1234-56789",  # no numbering plan has 11 fixed-line digits
])
def test_near_misses_are_not_reported(detector, text):
    assert detector.findings(text) == [], text


def test_kanji_adjacent_numbers_are_found_where_english_boundaries_fail(detector):
    # \b between 号 and a digit never fires: kanji are word characters
    import re

    assert re.search(r"\b\d{12}\b", "番号123456789018です") is None
    assert [f.entity for f in detector.findings("番号123456789018です")] == ["JP_MY_NUMBER"]


# -- policy on the request path ------------------------------------------------------------------
MODELS = (ModelRoute(id="secure", max_model_len=2048, max_confidentiality=2),
          ModelRoute(id="vendor", max_model_len=2048, max_confidentiality=1))


def _config(policy: dict, *, max_confidentiality: int = 2, model_pii: dict | None = None) -> ServingConfig:
    models = MODELS if model_pii is None else (MODELS[0], MODELS[1].model_copy(
        update={"pii": PIIPolicy.model_validate(model_pii)}))
    return ServingConfig(models=models, tenants=(TenantSettings(
        id="t", name="t", kind="agency", max_confidentiality=max_confidentiality, pii=policy),))


def _ctx(config: ServingConfig, content: str, candidates=("secure", "vendor")) -> RequestContext:
    payload = {"model": "x", "messages": [{"role": "system", "content": "要約して"},
                                          {"role": "user", "content": content}]}
    ctx = RequestContext(request_id="r", operation="chat", scope={"type": "http", "headers": []},
                         payload=payload, raw_body=json.dumps(payload).encode())
    ctx.tenant = config.tenants[0]
    ctx.confidentiality = 1
    ctx.candidates = tuple(config.model(m) for m in candidates)
    return ctx


def _run(step) -> None:
    asyncio.run(step)


PROMPT = "申請者の個人番号は1234-5678-9018、電話は090-1234-5678です。"


def test_refuse_names_types_never_values():
    config = _config({"actions": {"JP_MY_NUMBER": "refuse"}})
    with pytest.raises(APIError) as err:
        _run(PIIGuard(config)(_ctx(config, PROMPT)))
    assert err.value.status == 400 and err.value.code == "pii_refused"
    assert "個人番号 (JP_MY_NUMBER) x1" in err.value.message
    assert "1234" not in err.value.message and "090" not in err.value.message


def test_mask_rewrites_what_the_engine_receives():
    config = _config({"actions": {"JP_MY_NUMBER": "mask", "JP_PHONE_NUMBER": "mask"}})
    ctx = _ctx(config, PROMPT)
    _run(PIIGuard(config)(ctx))
    sent = json.loads(ctx.raw_body)["messages"][1]["content"]
    assert sent == "申請者の個人番号は[個人番号]、電話は[電話番号]です。"
    assert ctx.pii["decision"] == "mask" and ctx.pii["types"] == {"JP_MY_NUMBER": 1, "JP_PHONE_NUMBER": 1}
    assert "1234-5678-9018" not in json.dumps(ctx.pii)


def test_route_keeps_only_cleared_models_and_raises_the_level():
    config = _config({"actions": {"JP_MY_NUMBER": "route"}})
    ctx = _ctx(config, PROMPT)
    _run(PIIGuard(config)(ctx))
    assert [m.id for m in ctx.candidates] == ["secure"] and ctx.confidentiality == 2
    with pytest.raises(APIError) as err:  # only an uncleared model asked for
        _run(PIIGuard(config)(_ctx(config, PROMPT, candidates=("vendor",))))
    assert err.value.status == 403 and err.value.code == "model_not_approved_for_confidentiality"
    low = _config({"actions": {"JP_MY_NUMBER": "route"}}, max_confidentiality=1)
    with pytest.raises(APIError) as err:  # the tenant itself is not cleared for level 2
        _run(PIIGuard(low)(_ctx(low, PROMPT)))
    assert err.value.code == "confidentiality_not_permitted"
    clean = _ctx(config, "会議の要約をお願いします")
    _run(PIIGuard(config)(clean))
    assert len(clean.candidates) == 2 and clean.confidentiality == 1


def test_by_confidentiality_and_model_policies_only_tighten():
    config = _config({"actions": {"JP_MY_NUMBER": "refuse"}, "by_confidentiality": {2: {"JP_MY_NUMBER": "allow"}}},
                     model_pii={"actions": {"JP_MY_NUMBER": "refuse"}})
    ctx = _ctx(config, PROMPT)
    ctx.confidentiality = 2
    _run(PIIGuard(config)(ctx))  # allowed at level 2 by the tenant, but the vendor model refuses it
    assert [m.id for m in ctx.candidates] == ["secure"] and ctx.pii["dropped_models"] == ["vendor"]
    only_vendor = _ctx(config, PROMPT, candidates=("vendor",))
    only_vendor.confidentiality = 2
    with pytest.raises(APIError) as err:
        _run(PIIGuard(config)(only_vendor))
    assert err.value.code == "pii_refused" and "vendor" in err.value.message


def test_policy_rejects_unknown_types():
    with pytest.raises(ValueError, match="unknown personal-information type"):
        PIIPolicy.model_validate({"actions": {"MY_NUMBER": "mask"}})


# -- streamed output -----------------------------------------------------------------------------
def _sse(delta: str, finish: str | None = None, index: int = 0) -> bytes:
    """One chunk exactly as vLLM 0.32 serialises it (continuous usage stats included)."""
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": index, "delta": {"content": delta}, "logprobs": None,
                          "finish_reason": finish, "token_ids": None}],
             "usage": {"prompt_tokens": 5, "total_tokens": 6, "completion_tokens": 1}}
    return b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _content(blocks: list[bytes]) -> str:
    text = []
    for block in blocks:
        for event in block.split(b"\n\n"):
            if event.startswith(b"data: {"):
                for choice in json.loads(event[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


def test_identifier_split_across_sse_chunks_is_masked():
    pieces = ["お問い合わせは", "0", "90", "-12", "34", "-", "56", "78", "まで。番号", "は1234", " 5678",
              " 9018", "です。"]
    filt = OutputFilter(Detector(), frozenset({"JP_PHONE_NUMBER", "JP_MY_NUMBER"}), operation="chat")
    out = [filt.filter_block(_sse(p)) for p in pieces] + [filt.filter_block(_sse("", "stop"))]
    text = _content(out)
    assert text == "お問い合わせは[電話番号]まで。番号は[個人番号]です。"
    assert dict(filt.counts) == {"JP_PHONE_NUMBER": 1, "JP_MY_NUMBER": 1}
    # plain text goes out in the chunk it arrived in: only the possible identifier waits
    assert _content([out[0]]) == "お問い合わせは"
    # the usage counts the meter reads stay where vLLM put them
    assert all(b'"usage":{"prompt_tokens":5,"total_tokens":6,"completion_tokens":1}' in b for b in out)


def test_every_split_of_an_identifier_is_masked():
    text = "連絡先：taro.yamada@example.go.jp、〒100-8926 東京都千代田区霞が関2-1-2、カード4111-1111-1111-1111。"
    types = frozenset({"EMAIL_ADDRESS", "JP_POSTAL_CODE", "JP_ADDRESS", "CREDIT_CARD"})
    want = "連絡先：[メールアドレス]、〒[郵便番号] [住所]、カード[クレジットカード番号]。"
    rng = random.Random(3)
    for _ in range(100):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(1, 30)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        filt = OutputFilter(Detector(), types, operation="chat")
        out = [filt.filter_block(_sse(p)) for p in pieces] + [filt.filter_block(_sse("", "stop"))]
        assert _content(out) == want, pieces


def test_restore_puts_back_this_requests_originals_even_when_split():
    restore = {"[個人番号_1]": "123456789018"}
    filt = OutputFilter(Detector(), frozenset(), operation="chat", restore=restore)
    pieces = ["[個人", "番号_", "1]の方の", "[電話番号_9]"]
    out = [filt.filter_block(_sse(p)) for p in pieces] + [filt.filter_block(_sse("", "stop"))]
    assert _content(out) == "123456789018の方の[電話番号_9]"


def test_whole_body_is_masked():
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": "番号は123456789018"}}]}).encode()
    filt = OutputFilter(Detector(), frozenset({"JP_MY_NUMBER"}), operation="chat")
    assert json.loads(filt.filter_body(body))["choices"][0]["message"]["content"] == "番号は[個人番号]"


def test_cli_scan_json(tmp_path):
    from typer.testing import CliRunner

    from govllm.cli.main import app

    doc = tmp_path / "doc.txt"
    doc.write_text("個人番号 1234-5678-9018\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["pii", "scan", str(doc), "--json"])
    assert result.exit_code == 3
    data = json.loads(result.stdout)
    assert data["findings"] == [{"type": "JP_MY_NUMBER", "start": 5, "end": 19, "score": 1.0,
                                 "recognizer": "JpMyNumberRecognizer"}]
    assert "1234" not in result.stdout.replace('"start"', "")


# -- the labelled test set -----------------------------------------------------------------------
def test_committed_test_set_is_the_generators_output():
    from tools.pii_testset import OUT, build

    rows = [json.loads(line) for line in OUT.read_text(encoding="utf-8").splitlines()]
    assert rows == build()


def test_quality_goals_on_the_test_set():
    from tools.pii_quality import evaluate

    result = evaluate()["per_type"]
    for entity in ("JP_MY_NUMBER", "JP_CORPORATE_NUMBER"):
        assert result[entity]["recall"] == 1.0
        assert result[entity]["precision"] >= 0.99 and result[entity]["near_miss_false_positives"] == 0
    for entity in ("JP_PHONE_NUMBER", "EMAIL_ADDRESS"):
        assert result[entity]["recall"] >= 0.98, (entity, result[entity])


def test_policy_survives_the_rendered_json_config():
    # the Serve config travels as JSON: level keys come back as strings
    policy = PIIPolicy.model_validate({"actions": {"JP_MY_NUMBER": "refuse"},
                                       "by_confidentiality": {2: {"JP_MY_NUMBER": "mask"}}})
    again = PIIPolicy.model_validate(json.loads(json.dumps(policy.model_dump(mode="json"))))
    assert again == policy and again.action("JP_MY_NUMBER", 2) == "mask"
    with pytest.raises(ValueError):
        PIIPolicy.model_validate({"by_confidentiality": {3: {}}})
