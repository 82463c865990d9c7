"""Load shapes as plain functions of elapsed time: steady, step, spike and a working day.

Each shape's `tick(t)` returns `(users, spawn_rate)` or None when the test should end, which is
exactly what locust's `LoadTestShape.tick` returns; the locustfile's shape class only forwards
to one of these, so the arithmetic is testable without locust.

The day profile replays a compressed working day for a headcount (the programme: about
180,000 staff). Its activity model (docs/loadtest.md):

    concurrent sessions(h) = headcount x active_share x (minutes_per_user / 60) x weight(h)
    requests/s(h)          = concurrent sessions(h) / request_interval_s
    simulated users(h)     = requests/s(h) x seconds per simulated request cycle

weight(h) is the share of the day's use falling in office hour h (8:00-19:00, summing to 1,
with the morning and afternoon peaks and the lunch dip). A simulated user does one request
per cycle (think time plus the request itself), far faster than a person, so one simulated
user stands for many staff. When the modelled peak needs more simulated users than the
target takes (`max_users`, locust's -u), every hour is scaled by the same factor, and the
summary states the factor so results can be read back as a share of the real headcount.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

Tick = tuple[int, float] | None

#: share of a working day's assistant use per clock hour (8 = 8:00-9:00); sums to 1
DAY_WEIGHTS: dict[int, float] = {
    8: 0.03, 9: 0.10, 10: 0.14, 11: 0.13, 12: 0.05, 13: 0.11,
    14: 0.13, 15: 0.12, 16: 0.10, 17: 0.06, 18: 0.03,
}
PROGRAMME_HEADCOUNT = 180_000


@dataclass
class Steady:
    """`users` from the start (ramped at `spawn_rate`), until `run_time_s` (None: until stopped)."""

    users: int
    spawn_rate: float
    run_time_s: float | None = None

    def tick(self, t: float) -> Tick:
        if self.run_time_s is not None and t >= self.run_time_s:
            return None
        return self.users, self.spawn_rate

    def describe(self) -> dict[str, Any]:
        return {"shape": "steady", "users": self.users, "spawn_rate": self.spawn_rate,
                "run_time_s": self.run_time_s}


@dataclass
class Step:
    """Add `step_users` every `step_s` seconds up to `max_users`, then hold.

    Ends after `run_time_s`, or (without one) after the step that reached `max_users` and one
    more step of holding it.
    """

    max_users: int
    step_users: int
    step_s: float
    spawn_rate: float
    run_time_s: float | None = None

    def __post_init__(self) -> None:
        if self.step_users < 1 or self.step_s <= 0:
            raise ValueError("step shape: step users must be >= 1 and step seconds > 0")

    @property
    def steps(self) -> int:
        return math.ceil(self.max_users / self.step_users)

    def tick(self, t: float) -> Tick:
        end = self.run_time_s if self.run_time_s is not None else (self.steps + 1) * self.step_s
        if t >= end:
            return None
        users = min(self.max_users, (int(t // self.step_s) + 1) * self.step_users)
        return users, self.spawn_rate

    def describe(self) -> dict[str, Any]:
        return {"shape": "step", "max_users": self.max_users, "step_users": self.step_users,
                "step_s": self.step_s, "run_time_s": self.run_time_s}


@dataclass
class Spike:
    """`base_users`, jumping to `peak_users` at `spike_at_s` for `spike_s` seconds, then back."""

    base_users: int
    peak_users: int
    spike_at_s: float
    spike_s: float
    run_time_s: float
    spawn_rate: float
    spike_rate: float

    def tick(self, t: float) -> Tick:
        if t >= self.run_time_s:
            return None
        if self.spike_at_s <= t < self.spike_at_s + self.spike_s:
            return self.peak_users, self.spike_rate
        # leaving the spike: users are stopped as fast as they were started
        return self.base_users, self.spike_rate if t >= self.spike_at_s else self.spawn_rate

    def describe(self) -> dict[str, Any]:
        return {"shape": "spike", "base_users": self.base_users, "peak_users": self.peak_users,
                "spike_at_s": self.spike_at_s, "spike_s": self.spike_s, "run_time_s": self.run_time_s}


@dataclass
class DayProfile:
    """A working day (8:00-19:00) compressed into `day_s` seconds; see the module docstring."""

    max_users: int
    day_s: float
    headcount: int = PROGRAMME_HEADCOUNT
    active_share: float = 0.3
    minutes_per_user: float = 40.0
    request_interval_s: float = 60.0
    cycle_s: float = 3.0
    weights: dict[int, float] = field(default_factory=lambda: dict(DAY_WEIGHTS))

    def __post_init__(self) -> None:
        total = sum(self.weights.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"day weights must sum to 1, not {total:g}")
        if self.max_users < 1 or self.day_s <= 0 or self.request_interval_s <= 0 or self.cycle_s <= 0:
            raise ValueError("day shape: max users >= 1 and positive durations are required")
        self.first_hour = min(self.weights)
        self.hours = max(self.weights) + 1 - self.first_hour

    def weight_at(self, clock_hour: float) -> float:
        """Hourly weight, interpolated linearly between hour midpoints (no cliffs on the hour)."""
        last = max(self.weights)
        x = min(max(clock_hour - 0.5, self.first_hour), last)
        lo = min(math.floor(x), last - 1)
        frac = x - lo
        return self.weights[lo] + (self.weights[lo + 1] - self.weights[lo]) * frac

    def sessions_at(self, clock_hour: float) -> float:
        """Staff in an active session at that time of day."""
        return (self.headcount * self.active_share * self.minutes_per_user / 60.0
                * self.weight_at(clock_hour))

    def requests_per_s_at(self, clock_hour: float) -> float:
        return self.sessions_at(clock_hour) / self.request_interval_s

    def modelled_users_at(self, clock_hour: float) -> float:
        return self.requests_per_s_at(clock_hour) * self.cycle_s

    @property
    def peak_hour(self) -> int:
        return max(self.weights, key=self.weights.__getitem__)

    @property
    def scale(self) -> float:
        """Factor applied to the modelled load so its peak fits `max_users` (1: it all fits)."""
        peak = self.modelled_users_at(self.peak_hour + 0.5)
        return min(1.0, self.max_users / peak) if peak > 0 else 1.0

    def clock_hour(self, t: float) -> float:
        return self.first_hour + self.hours * t / self.day_s

    def tick(self, t: float) -> Tick:
        if t >= self.day_s:
            return None
        users = max(1, round(self.modelled_users_at(self.clock_hour(t)) * self.scale))
        users = min(users, self.max_users)
        # fast enough to follow the curve between ticks (locust ticks every second)
        return users, float(max(1, self.max_users))

    def describe(self) -> dict[str, Any]:
        peak = self.peak_hour + 0.5
        return {
            "shape": "day",
            "headcount": self.headcount,
            "active_share": self.active_share,
            "minutes_per_user": self.minutes_per_user,
            "request_interval_s": self.request_interval_s,
            "cycle_s": self.cycle_s,
            "day_s": self.day_s,
            "hours": f"{self.first_hour}:00-{self.first_hour + self.hours}:00",
            "peak_sessions": round(self.sessions_at(peak), 1),
            "peak_requests_per_s": round(self.requests_per_s_at(peak), 2),
            "peak_modelled_users": round(self.modelled_users_at(peak), 1),
            "max_users": self.max_users,
            "scale": self.scale,
            # the run is the modelled day of this many staff
            "equivalent_headcount": round(self.headcount * self.scale),
        }
