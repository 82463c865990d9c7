"""What `govllm audit verify` finds: problems, unclosed requests, and the verdict.

Three outcomes, each with its exit code:
  ok        (0) every chain in the range is complete and authentic, every request closed
  broken    (2) something is missing, altered or unreadable (`problems`)
  unclosed  (3) intact, but some requests have a begin record and no end record: the router
                died mid-request (or the request is still running / its end is not uploaded yet)
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Problem kinds and what they mean.
KINDS = {
    "tampered": "a frame, header or manifest fails authentication or does not match its name",
    "gap": "segments or records are missing (the chain's first and last segments included)",
    "broken_link": "a record does not carry the digest of its predecessor",
    "bad_segment": "an object is not a readable segment (or its data key cannot be unwrapped)",
    "missing_tail": "records the manifest or the shared store recorded are not in the archive",
    "missing_manifest": "a chain has no manifest, so deleted segments could go unnoticed",
    "duplicate": "one segment is stored twice",
}

EXIT_CODES = {"ok": 0, "broken": 2, "unclosed": 3}


@dataclass
class Problem:
    chain: str
    kind: str
    detail: str
    key: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Report:
    objects: int = 0
    records: int = 0
    chains: dict[str, dict] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    unclosed: list[dict] = field(default_factory=list)  # {"request_id", "chain", "time", "tenant"}

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        if self.problems:
            return "broken"
        return "unclosed" if self.unclosed else "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def problem(self, chain: str, kind: str, detail: str, key: str | None = None) -> None:
        self.problems.append(Problem(chain, kind, detail, key))

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "status": self.status,
            "intact": self.intact,
            "objects": self.objects,
            "records": self.records,
            "chains": self.chains,
            "problems": [p.as_dict() for p in self.problems],
            "unclosed": list(self.unclosed),
        }
