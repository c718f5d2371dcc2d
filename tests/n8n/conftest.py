"""Fixtures of the n8n tests (defined in tests/n8n/services.py)."""

from tests.n8n.services import dagster_dev

__all__ = ["dagster_dev"]
