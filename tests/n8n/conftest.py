"""Fixtures of the n8n tests (the Dagster side is defined in tests/n8n/services.py)."""

from pathlib import Path

import pytest

from tests.n8n.n8n_server import require_n8n
from tests.n8n.services import dagster_dev

__all__ = ["dagster_dev", "n8n_installed"]


@pytest.fixture
def n8n_installed() -> Path:
    """The installed n8n's bin/ folder; asked for first, so a missing install skips (or fails under CI=true)
    before Dagster is started."""
    return require_n8n()
