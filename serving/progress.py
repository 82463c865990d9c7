"""What a long operation reports about its progress, and nothing of how it is shown.

`govllm weights push|pull|verify` and `govllm audit verify|export` run for minutes; their
core functions (cluster/ops/weights.py, serving/audit/verify.py) take a `ProgressSink` and
only call `start(total)` and `advance(n)`, from any thread. The bar and the periodic log
lines live with the command line (govllm/progress.py), the lowest layer owns the contract.
"""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    """What a long operation reports: the total once it is known, then increments."""

    def start(self, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
