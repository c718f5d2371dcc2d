"""Ledger fixtures: every ledger test runs on SQLite and on PostgreSQL, each in its own throwaway schema.

PostgreSQL is expected at 127.0.0.1:5432 (trust auth, user `postgres` or `root`, database `test`). Without it the
PostgreSQL half is skipped on a laptop, but under `CI=true` it fails: CI must never go green on SQLite alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import create_engine, text

from influencer_pipeline.publishing.ledger import Ledger
from tests.publishing.fake_platform import FakeClock
from tests.support.services import service_missing

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USERS = ("postgres", "root")
PG_DATABASE = "test"


@cache
def _postgres_user(host: str, port: int) -> str | Exception:
    """The first user the server lets in, or the last connection error (probed once per session)."""
    error: Exception = ConnectionError("no user tried")
    for user in PG_USERS:
        try:
            psycopg2.connect(host=host, port=port, user=user, dbname=PG_DATABASE, connect_timeout=3).close()
        except psycopg2.OperationalError as exc:
            error = exc
        else:
            return user
    return error


def require_postgres(host: str = PG_HOST, port: int = PG_PORT) -> str:
    """The server's SQLAlchemy URL; skip the test when it is unreachable, except under CI=true, where it fails."""
    found = _postgres_user(host, port)
    if isinstance(found, str):
        return f"postgresql+psycopg2://{found}@{host}:{port}/{PG_DATABASE}"
    service_missing("PostgreSQL", host, port, found)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh schema per test (the URL pins `search_path` to it), dropped afterwards."""
    server = require_postgres()
    schema = f"ledger_test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{server}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    ledger = Ledger(ledger_url)
    ledger.upgrade()
    yield ledger
    ledger.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
