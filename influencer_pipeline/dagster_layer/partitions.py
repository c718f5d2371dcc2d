"""Partitions shared across groups: one dynamic partition per persona, and a content calendar that looks ahead.

The calendar's dates run from `CALENDAR_START` to a horizon in the future (default 14 days after today), so a
creator can plan, render and review a day before it comes, from the Materialize dialog, the schedule or n8n.
The horizon (`CONTENT_HORIZON_DAYS`) is the one setting read when this module is imported; why is explained by
`settings.horizon_days_at_import`, which parses it.
"""

import dagster as dg

from influencer_pipeline.dagster_layer.settings import horizon_days_at_import

personas = dg.DynamicPartitionsDefinition(name="personas")

CALENDAR_START = "2026-01-01"


def calendar_days(horizon_days: int) -> dg.DailyPartitionsDefinition:
    """Daily partitions up to `horizon_days` after today. Dagster's last partition is the last *completed* day
    plus `end_offset`: 1 makes today a partition, 1 + N makes the N days after it partitions too."""
    return dg.DailyPartitionsDefinition(start_date=CALENDAR_START, end_offset=1 + horizon_days)


HORIZON_DAYS = horizon_days_at_import()
days = calendar_days(HORIZON_DAYS)
calendar = dg.MultiPartitionsDefinition({"date": days, "persona": personas})
