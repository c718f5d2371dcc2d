"""The accounts table: tokens encrypted at rest, key rotation, key errors, row binding, leases, no leaks."""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, update

from influencer_pipeline.accounts.clock import utcnow
from influencer_pipeline.accounts.store import (
    GENERATE_KEY,
    KEYS_ENV,
    AccountNotFound,
    AccountStore,
    Identity,
    Secret,
    TokenCipher,
    TokenIntegrityError,
    TokenKeyError,
    TokenSet,
    accounts_table,
    default_url,
)

NOW = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
ACCESS = f"ya29.plain-access-{secrets.token_hex(16)}"
ACCESS_2 = f"ya29.plain-access-{secrets.token_hex(16)}"
REFRESH = f"1//plain-refresh-{secrets.token_hex(16)}"


def new_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "accounts.db"


def store_with(db_file: Path, *keys: str) -> AccountStore:
    return AccountStore(f"sqlite:///{db_file}", TokenCipher(list(keys)))


def tokens(access: str = ACCESS, refresh: str | None = REFRESH) -> TokenSet:
    return TokenSet(Secret(access), Secret(refresh) if refresh else None, NOW + timedelta(hours=1), None)


def link(store: AccountStore, persona: str = "ava", platform: str = "youtube", account_id: str = "UC1", **kw: str):
    identity = Identity(account_id, "Ava Virtual", ("youtube.upload", "youtube.readonly"))
    return store.save_link(persona, platform, identity, tokens(**kw), NOW)


def raw_bytes(db_file: Path) -> bytes:
    """The database file and any journal next to it, as an attacker with disk access would read them."""
    return b"".join(path.read_bytes() for path in db_file.parent.glob(db_file.name + "*"))


def test_tokens_are_unreadable_on_disk_without_the_key(db_file: Path) -> None:
    store = store_with(db_file, new_key())
    account = link(store)
    store.save_refresh(account, tokens(access=ACCESS_2, refresh=None), "owner", NOW)

    on_disk = raw_bytes(db_file)
    assert b"UC1" in on_disk and b"youtube.upload" in on_disk  # the clear columns are there: right file
    for secret in (ACCESS, ACCESS_2, REFRESH):
        assert secret.rsplit("-", 1)[-1].encode() not in on_disk  # not even its random tail
    read = store.read_tokens(store.get("ava", "youtube"))
    assert (read.access.reveal(), read.refresh and read.refresh.reveal()) == (ACCESS_2, REFRESH)


def test_sqlite_file_is_readable_by_its_owner_only(db_file: Path) -> None:
    store_with(db_file, new_key())
    assert db_file.stat().st_mode & 0o777 == 0o600


def test_rotation_re_encrypts_every_row_under_the_first_key(db_file: Path) -> None:
    old, new = new_key(), new_key()
    link(store_with(db_file, old), persona="ava")
    link(store_with(db_file, old), persona="bob", platform="tiktok", account_id="open-1", refresh="rt-bob-123456")
    before = _ciphertexts(db_file)

    assert store_with(db_file, new, old).rotate_keys() == 2

    after = _ciphertexts(db_file)
    assert all(a != b for a, b in zip(before, after, strict=True))
    only_new = store_with(db_file, new)
    assert only_new.read_tokens(only_new.get("ava", "youtube")).access.reveal() == ACCESS
    assert only_new.read_tokens(only_new.get("bob", "tiktok")).refresh.reveal() == "rt-bob-123456"
    only_old = store_with(db_file, old)
    with pytest.raises(TokenKeyError, match="no key in it decrypts the token stored for youtube:ava:UC1"):
        only_old.read_tokens(only_old.get("ava", "youtube"))


def test_rotation_is_all_or_nothing(db_file: Path) -> None:
    known, lost = new_key(), new_key()
    link(store_with(db_file, known), persona="ava")
    link(store_with(db_file, lost), persona="bob")
    before = _ciphertexts(db_file)
    with pytest.raises(TokenKeyError, match="youtube:bob"):
        store_with(db_file, new_key(), known).rotate_keys()
    assert _ciphertexts(db_file) == before


def test_missing_key_says_how_to_generate_one(db_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link(store_with(db_file, new_key()))
    monkeypatch.delenv(KEYS_ENV, raising=False)
    store = AccountStore(f"sqlite:///{db_file}")
    assert [a.persona for a in store.list()] == ["ava"]  # listing needs no key

    with pytest.raises(TokenKeyError) as caught:
        store.read_tokens(store.get("ava", "youtube"))
    message = str(caught.value)
    assert message.startswith(f"{KEYS_ENV}: is not set") and GENERATE_KEY in message and "export" in message
    generated = subprocess.run(["sh", "-c", GENERATE_KEY.replace("python", sys.executable, 1)], capture_output=True)
    Fernet(generated.stdout.strip())  # the advertised command really makes a valid key


def test_malformed_key_is_named_by_position_not_echoed() -> None:
    with pytest.raises(TokenKeyError, match="key #2 is not a Fernet key") as caught:
        TokenCipher.from_env({KEYS_ENV: f"{new_key()}, my-secret-passphrase"})
    assert "my-secret-passphrase" not in str(caught.value)


def test_a_ciphertext_moved_to_another_row_or_slot_is_refused(db_file: Path) -> None:
    store = store_with(db_file, new_key())
    link(store, persona="ava")
    link(store, persona="bob", access="ya29.bob-token-0123456789")
    with store.engine.begin() as conn:
        rows = {r.persona: r for r in conn.execute(select(accounts_table))}
        conn.execute(
            update(accounts_table)
            .where(accounts_table.c.persona == "bob")
            .values(access_token=rows["ava"].access_token)
        )
        conn.execute(
            update(accounts_table)
            .where(accounts_table.c.persona == "ava")
            .values(refresh_token=rows["ava"].access_token)
        )
    with pytest.raises(TokenIntegrityError, match="youtube:bob:UC1:access"):
        store.read_tokens(store.get("bob", "youtube"))
    with pytest.raises(TokenIntegrityError, match="youtube:ava:UC1:refresh"):
        store.read_tokens(store.get("ava", "youtube"))


def test_relink_without_a_new_refresh_token_keeps_the_stored_one(db_file: Path) -> None:
    store = store_with(db_file, new_key())
    link(store)
    relinked = link(store, access="ya29.second-access-token", refresh=None)
    assert store.read_tokens(relinked).refresh.reveal() == REFRESH
    other_account = link(store, account_id="UC2", refresh=None)  # another channel: the old token is not its own
    assert store.read_tokens(other_account).refresh is None


def test_refresh_lease_is_compare_and_set(db_file: Path) -> None:
    store = store_with(db_file, new_key())
    account = link(store)
    assert store.try_lease(account, "a", NOW, NOW + timedelta(minutes=2))
    assert not store.try_lease(account, "b", NOW + timedelta(minutes=1), NOW + timedelta(minutes=3))
    assert store.try_lease(account, "b", NOW + timedelta(minutes=3), NOW + timedelta(minutes=5))  # a's expired
    store.release_lease(account, "a")  # a no longer holds it: b's lease stays
    assert not store.try_lease(account, "c", NOW + timedelta(minutes=4), NOW + timedelta(minutes=6))
    store.release_lease(account, "b")
    assert store.try_lease(account, "c", NOW + timedelta(minutes=4), NOW + timedelta(minutes=6))


def test_health_change_is_reported_once(db_file: Path) -> None:
    store = store_with(db_file, new_key())
    account = link(store)
    assert store.set_health(account, "needs_reconnect")
    assert not store.set_health(account, "needs_reconnect")
    assert store.get("ava", "youtube").health == "needs_reconnect"
    assert link(store).health == "ok"  # linking again heals it


def test_unknown_account_says_how_to_link(db_file: Path) -> None:
    with pytest.raises(AccountNotFound, match="accounts link tiktok --persona ava"):
        store_with(db_file, new_key()).get("ava", "tiktok")


def test_default_url(tmp_path: Path) -> None:
    assert default_url({"INFLUENCER_ACCOUNTS_DB": "postgresql://db/x"}) == "postgresql://db/x"
    assert default_url({"DAGSTER_HOME": str(tmp_path)}) == f"sqlite:///{tmp_path.resolve() / 'accounts.db'}"


def test_reprs_and_logs_never_show_tokens(db_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # SQLAlchemy logs statements and parameters at this level
    key = new_key()
    store = store_with(db_file, key)
    account = link(store)
    read = store.read_tokens(account)
    token_set = tokens()
    logger = logging.getLogger("tests.accounts")
    logger.info("tokens %s %r %s %r", read, read, token_set, token_set)
    logger.info("secret %s, %r, %s", read.access, read.refresh, f"{read.access}")
    logger.info("store %r cipher %r account %r", store, store.cipher, account)

    shown = caplog.text + repr(read) + str(token_set) + repr(store.cipher) + repr(store) + repr(account)
    assert ACCESS not in shown and REFRESH not in shown and key not in shown
    assert "Secret('***')" in shown
    assert os.fspath(db_file) in repr(store)


def _ciphertexts(db_file: Path) -> list[str]:
    store = AccountStore(f"sqlite:///{db_file}")
    with store.engine.connect() as conn:
        rows = conn.execute(select(accounts_table).order_by(accounts_table.c.id))
        return [value for row in rows for value in (row.access_token, row.refresh_token) if value]


def test_utc_datetimes_survive_the_round_trip(db_file: Path) -> None:
    store = store_with(db_file, new_key())
    account = link(store)
    assert account.expires_at == NOW + timedelta(hours=1) and account.expires_at.tzinfo is not None
    assert account.linked_at == NOW and utcnow().tzinfo is not None


def test_the_login_an_account_was_linked_with_is_recorded(db_file: Path) -> None:
    """Instagram's API host depends on it: Instagram Login (graph.instagram.com) or Facebook Login."""
    store = store_with(db_file, new_key())
    identity = Identity("17841400000000001", "ava.virtual", ("instagram_basic",))
    assert link(store).login == "google"
    assert store.save_link("ava", "instagram", identity, tokens(), NOW).login == "instagram"  # the default login
    relinked = store.save_link("ava", "instagram", identity, tokens(refresh=None), NOW, login="facebook")
    assert relinked.login == "facebook"
    assert store.read_tokens(relinked).refresh is None  # another login's refresh token is not kept
    assert {a.platform: a.login for a in store.list()} == {"youtube": "google", "instagram": "facebook"}


def test_a_table_from_before_the_login_column_gains_it_and_reads_as_the_default_login(db_file: Path) -> None:
    key = new_key()
    store_with(db_file, key)
    link(store_with(db_file, key), platform="instagram")
    with sqlite3.connect(db_file) as conn:  # the table as the previous release created it
        conn.execute("ALTER TABLE accounts DROP COLUMN login")
    store = store_with(db_file, key)

    [account] = store.list()
    assert account.login == "instagram"  # Instagram Login: the only way Instagram was linked before
    with sqlite3.connect(db_file) as conn:
        assert "login" in [row[1] for row in conn.execute("PRAGMA table_info(accounts)")]
