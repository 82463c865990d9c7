"""The personal-information policy as it appears in the spec (tenants[].pii, models[].pii).

Plain pydantic with no other imports from the package, so serving.config can
use it without loading any recogniser. Example (docs/pii.md has more):

    pii:
      default_action: allow
      actions: {JP_MY_NUMBER: refuse, JP_PHONE_NUMBER: mask, EMAIL_ADDRESS: mask}
      by_confidentiality:
        2: {JP_MY_NUMBER: route}
      restore: true
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.config.pii_entities import ENTITY_TYPES

PIIAction = Literal["allow", "mask", "refuse", "route"]
#: how strict each action is, when a tenant's and a model's policy meet
STRICTNESS: dict[str, int] = {"allow": 0, "route": 1, "mask": 2, "refuse": 3}


def _known(actions: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(actions) - set(ENTITY_TYPES))
    if unknown:
        raise ValueError(f"unknown personal-information type(s) {unknown}; known: "
                         f"{', '.join(ENTITY_TYPES)}")
    return actions


class PIIPolicy(BaseModel):
    """What to do with each type of personal information found in a request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_action: PIIAction = Field(
        default="allow", description="Action for types not named in `actions`."
    )
    actions: dict[str, PIIAction] = Field(
        default_factory=dict, description="Type -> allow | mask | refuse | route (see docs/pii.md)."
    )
    # int keys (not Literal): the rendered Serve config is JSON, whose keys come back as "2"
    by_confidentiality: dict[Annotated[int, Field(ge=1, le=2)], dict[str, PIIAction]] = Field(
        default_factory=dict,
        description="Overrides of `actions` for requests of one confidentiality level (機密性).",
    )
    min_score: float = Field(
        default=0.5, ge=0, le=1, description="Findings scoring below this are not acted on."
    )
    route_level: Literal[2] = Field(
        default=2, description="`route` raises the request to this level: only models whose "
        "max_confidentiality allows it may receive it.",
    )
    restore: bool = Field(
        default=False, description="With `mask`: numbered placeholders ([個人番号_1]) that the "
        "router turns back into the originals in this request's response only.",
    )
    scan_output: bool = Field(
        default=True, description="Mask, in answers (streamed too), every type whose action is "
        "mask or refuse.",
    )
    names: bool = Field(
        default=False, description="Detect personal names (SudachiPy; about 0.7 ms per 1,000 "
        "characters, docs/pii.md). PERSON actions apply only when set.",
    )

    @field_validator("actions")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        return _known(value)

    @field_validator("by_confidentiality")
    @classmethod
    def _level_types(cls, value: dict[int, dict[str, str]]) -> dict[int, dict[str, str]]:
        for actions in value.values():
            _known(actions)
        return value

    def action(self, entity: str, level: int) -> str:
        """The action for one type at a request's confidentiality level."""
        level_actions = self.by_confidentiality.get(level)
        if level_actions and entity in level_actions:
            return level_actions[entity]
        return self.actions.get(entity, self.default_action)

    def acts(self) -> bool:
        """Whether this policy could ever do anything but allow (else no scan is needed)."""
        every = [self.default_action, *self.actions.values()]
        every += [a for level in self.by_confidentiality.values() for a in level.values()]
        return any(a != "allow" for a in every)
