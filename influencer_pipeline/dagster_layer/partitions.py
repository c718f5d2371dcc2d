"""Partitions shared across groups: one dynamic partition per persona, and a content calendar that looks ahead.

The calendar's dates run from `CALENDAR_START` to a horizon in the future (default 14 days after today), so a
creator can plan, render and review a day before it comes, from the Materialize dialog, the schedule or n8n.
"""

import os

import dagster as dg

personas = dg.DynamicPartitionsDefinition(name="personas")

CALENDAR_START = "2026-01-01"
DEFAULT_HORIZON_DAYS = 14
MAX_HORIZON_DAYS = 366


def horizon_days_from_env() -> int:
    """`CONTENT_HORIZON_DAYS` (0-366): how many days after today are partitions.

    Read when the code location loads: the date partitions are part of the asset definitions, which are built
    when their module is imported, so unlike the schedule's settings this cannot wait for `build_definitions`.
    """
    raw = os.environ.get("CONTENT_HORIZON_DAYS", str(DEFAULT_HORIZON_DAYS))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_HORIZON_DAYS:
        raise ValueError(
            f"CONTENT_HORIZON_DAYS={raw!r}: must be a whole number of days from 0 to {MAX_HORIZON_DAYS}. "
            f"Fix: set it to e.g. {DEFAULT_HORIZON_DAYS}, or unset it"
        )
    return value


def calendar_days(horizon_days: int) -> dg.DailyPartitionsDefinition:
    """Daily partitions up to `horizon_days` after today. Dagster's last partition is the last *completed* day
    plus `end_offset`: 1 makes today a partition, 1 + N makes the N days after it partitions too."""
    return dg.DailyPartitionsDefinition(start_date=CALENDAR_START, end_offset=1 + horizon_days)


HORIZON_DAYS = horizon_days_from_env()
days = calendar_days(HORIZON_DAYS)
calendar = dg.MultiPartitionsDefinition({"date": days, "persona": personas})
