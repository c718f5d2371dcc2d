"""Settings of the Dagster layer read from the environment when the definitions are built, never at import.

Each is a typed, validated object with a `from_env` that takes the environment as a mapping (tests pass a dict)
and names the variable and the fix in its error. `influencer_pipeline/defs/` reads no environment variable itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from influencer_pipeline.dagster_layer.partitions import HORIZON_DAYS


@dataclass(frozen=True)
class CalendarSettings:
    """When the calendar runs and how far ahead it prepares; see docs/SETUP.md."""

    hour: int = 6
    minute: int = 0
    timezone: str = "UTC"
    lead_days: int = 1  # 1: each tick prepares tomorrow; 0: today (no review window)
    horizon_days: int = HORIZON_DAYS  # the last date partition is this many days after today

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.hour <= 23:
            problems.append(f"CONTENT_SCHEDULE_HOUR={self.hour}: must be 0-23")
        if not 0 <= self.minute <= 59:
            problems.append(f"CONTENT_SCHEDULE_MINUTE={self.minute}: must be 0-59")
        if not 0 <= self.lead_days <= self.horizon_days:
            problems.append(
                f"CONTENT_LEAD_DAYS={self.lead_days}: must be 0-{self.horizon_days} (CONTENT_HORIZON_DAYS), "
                "a day the calendar has a partition for"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"CONTENT_TIMEZONE={self.timezone!r}: not an IANA time zone such as 'Europe/Rome'")
        if problems:
            raise ValueError("; ".join(problems) + ". Fix: correct or unset these environment variables")

    @property
    def cron(self) -> str:
        return f"{self.minute} {self.hour} * * *"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CalendarSettings:
        env = dict(os.environ if env is None else env)

        def number(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r}: must be a whole number. Fix: e.g. {name}={default}") from None

        return cls(
            hour=number("CONTENT_SCHEDULE_HOUR", 6),
            minute=number("CONTENT_SCHEDULE_MINUTE", 0),
            timezone=env.get("CONTENT_TIMEZONE", "UTC"),
            lead_days=number("CONTENT_LEAD_DAYS", 1),
        )
