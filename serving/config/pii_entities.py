"""The personal-information types the guard knows, and their placeholders.

Type ids are what policies, audit records, metrics and `govllm pii scan`
use; the Japanese label is the placeholder that replaces a masked value
(`[個人番号]`). Presidio's own ids are kept where one exists (EMAIL_ADDRESS,
CREDIT_CARD, PERSON), Japanese ones are prefixed JP_.
"""

from __future__ import annotations

LABELS: dict[str, str] = {
    "JP_MY_NUMBER": "個人番号",
    "JP_CORPORATE_NUMBER": "法人番号",
    "JP_PHONE_NUMBER": "電話番号",
    "JP_POSTAL_CODE": "郵便番号",
    "JP_ADDRESS": "住所",
    "EMAIL_ADDRESS": "メールアドレス",
    "CREDIT_CARD": "クレジットカード番号",
    "JP_BANK_ACCOUNT": "口座番号",
    "JP_PASSPORT": "旅券番号",
    "JP_DRIVER_LICENSE": "運転免許証番号",
    "JP_DATE_OF_BIRTH": "生年月日",
    "PERSON": "氏名",
}

ENTITY_TYPES: tuple[str, ...] = tuple(LABELS)


def placeholder(entity: str, number: int | None = None) -> str:
    """`[個人番号]`, or `[個人番号_2]` when originals are to be restored (numbered per type)."""
    label = LABELS[entity]
    return f"[{label}]" if number is None else f"[{label}_{number}]"
