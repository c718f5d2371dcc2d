"""Partitions shared across groups: one dynamic partition per persona, added by the upload sensor or GraphQL."""

import dagster as dg

personas = dg.DynamicPartitionsDefinition(name="personas")

CALENDAR_START = "2026-01-01"

# The content calendar: one partition per (day, persona). `end_offset=1` makes *today* a partition, so the
# daily schedule plans today's posts instead of Dagster's default of the last completed day.
days = dg.DailyPartitionsDefinition(start_date=CALENDAR_START, end_offset=1)
calendar = dg.MultiPartitionsDefinition({"date": days, "persona": personas})
