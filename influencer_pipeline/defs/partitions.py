"""Partitions shared across groups: one dynamic partition per persona, added by the upload sensor or GraphQL."""

import dagster as dg

personas = dg.DynamicPartitionsDefinition(name="personas")
